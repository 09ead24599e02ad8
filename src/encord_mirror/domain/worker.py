"""The worker: sync one chunk of label rows into the lake, idempotently.

Every write is decided against the row index and made conditional on what the index last saw, so a
duplicated, reordered or redelivered chunk leaves the lake exactly as one delivery would: an older
version never overwrites a newer one ("stale"), unchanged content is never rewritten ("unchanged"), and a
row's old copy is removed when it moves to another partition ("moved"). A row that fails is reported on
its own; the others in its chunk carry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.lake import label_key, partition_of, stage_value
from encord_mirror.domain.models import (
    STRAY_COPY,
    ChunkMessage,
    ChunkResult,
    Gap,
    IndexEntry,
    LoadedRow,
    LoadResult,
    Partition,
    RowOutcome,
    SnapshotDebt,
)
from encord_mirror.domain.ports import PreconditionFailedError
from encord_mirror.domain.rowdoc import (
    build_document,
    encode_document,
    filter_features,
    intact_sha256,
    read_mirror,
)
from encord_mirror.domain.watermark import is_newer, require_utc

_CAS_TRIES = 5
SYNCED_IN_THIS_RUN = "already synced since this run began"
NOT_IN_LAKE = "not in the lake"
# "unchanged" for these reasons may hide what an earlier delivery of the chunk did.
MAYBE_EARLIER = (SYNCED_IN_THIS_RUN, NOT_IN_LAKE)


class WriteContentionError(Exception):
    """A row's lake object kept changing under us; the chunk retries it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"gave up writing {key!r} after {_CAS_TRIES} conflicting writes")
        self.key = key


@dataclass(frozen=True, slots=True)
class _Write:
    status: Literal["written", "unchanged", "stale"]
    etag: str | None


def process_chunk(
    msg: ChunkMessage, config: MirrorConfig, deps: MirrorDeps, *, attempt: int, max_attempts: int
) -> ChunkResult:
    now = require_utc(deps.clock(), "clock")
    state = deps.state
    run = state.get_run(msg.project_hash, msg.run_id)
    signpost = run.signpost if run is not None else None  # Encord's clock: compared with edit times
    # Our clock when the run began: compared with sync times (ours). A run recorded before `started_at`
    # was kept had the same value as its signpost.
    started = (run.started_at or run.signpost) if run is not None else None
    entries = {h: state.get_index(msg.project_hash, h) for h in (*msg.label_hashes, *msg.removals)}
    loaded = _load(msg, config, deps) if msg.label_hashes else None
    _owe_snapshots_first(msg, loaded, entries, deps)
    outcomes: list[RowOutcome] = []
    if msg.label_hashes:
        outcomes.extend(_sync_rows(msg, loaded, config, deps, now, started, entries))
    if msg.removals:
        outcomes.extend(_remove_rows(msg, deps, signpost, entries))
    if msg.strays:
        outcomes.extend(_remove_strays(msg, deps))

    if attempt > 1 or any(o.status == "unchanged" and o.reason in MAYBE_EARLIER for o in outcomes):
        outcomes = _keep_earlier_effects(
            outcomes, state.chunk_results(msg.project_hash, msg.run_id), msg.chunk_id
        )
    failed = [o for o in outcomes if o.status == "failed"]
    final = not failed or attempt >= max_attempts
    if final and failed:
        state.add_gaps(
            [
                Gap(msg.project_hash, o.label_hash, o.last_edited_at, msg.run_id, o.reason or "failed")
                for o in failed
            ]
        )
    succeeded = [o.label_hash for o in outcomes if o.status != "failed"]
    if succeeded:
        state.clear_gaps(msg.project_hash, succeeded)
    result = ChunkResult(run_id=msg.run_id, chunk_id=msg.chunk_id, outcomes=tuple(outcomes), final=final)
    progress = state.record_chunk(msg.project_hash, result)
    if final and progress.complete:
        deps.queue.request_finalize(msg.project_hash, msg.run_id)
    return result


def _keep_earlier_effects(
    outcomes: list[RowOutcome], recorded: list[ChunkResult], chunk_id: str
) -> list[RowOutcome]:
    """A redelivery or a duplicate finds the rows an earlier delivery already wrote "unchanged"; the run's
    counts, manifest and touched partitions should still say what this chunk did, whichever record of
    the chunk the ledger keeps, so the earlier effect is carried over. Only read when there is a sign
    of an earlier delivery: a retry, a row synced since the run began, a removal with nothing left."""
    earlier = next((r for r in recorded if r.chunk_id == chunk_id), None)
    if earlier is None:
        return outcomes
    effects = {o.label_hash: o for o in earlier.outcomes if o.status in ("written", "moved", "removed")}
    return [effects.get(o.label_hash, o) if o.status == "unchanged" else o for o in outcomes]


def _load(msg: ChunkMessage, config: MirrorConfig, deps: MirrorDeps) -> LoadResult | str:
    """The chunk's rows, or why they could not be loaded."""
    try:
        if msg.rows:
            # The planner's listing rides in the message: initialise at once (one request per bundle).
            # A stage or task-status change since planning is not seen here: the lake may hold the
            # row's old stage until the next reconciling run, exactly as for a change made just after
            # this chunk. A row deleted since planning is listed again by the source and removed.
            return deps.source.load_listed(msg.project_hash, msg.rows, bundle_size=config.bundle_size)
        return deps.source.load_rows(msg.project_hash, msg.label_hashes, bundle_size=config.bundle_size)
    except Exception as exc:  # a 429 storm or an outage: every row of the chunk retries
        return f"load failed: {type(exc).__name__}: {exc}"


def _owe_snapshots_first(
    msg: ChunkMessage,
    loaded: LoadResult | str | None,
    entries: Mapping[str, IndexEntry | None],
    deps: MirrorDeps,
) -> None:
    """Before a row changes, its partitions (where it goes, where it was) are recorded as owed a snapshot
    by this run: a worker or finalizer killed after the change cannot leave a stale snapshot unnoticed,
    since the debt stays until a finalizer has refreshed the partition (see `finalizer`). A partition
    owed already keeps its debt: one of another run says that run's changes may be missing too."""
    parts = {Partition(e.project_hash, e.branch, e.partition_stage) for e in entries.values() if e}
    parts.update(partition_of(key) for key in msg.strays)
    if isinstance(loaded, LoadResult):
        parts.update(
            Partition(r.meta.project_hash, r.meta.branch, stage_value(r.meta.stage_uuid, r.meta.stage_title))
            for r in loaded.loaded
        )
    if parts:
        parts -= {d.partition for d in deps.state.owed_snapshots(msg.project_hash)}
    if parts:
        deps.state.owe_snapshots([SnapshotDebt.writing(p, msg.run_id) for p in sorted(parts)])


def _sync_rows(
    msg: ChunkMessage,
    loaded: LoadResult | str | None,
    config: MirrorConfig,
    deps: MirrorDeps,
    now: datetime,
    started: datetime | None,
    entries: Mapping[str, IndexEntry | None],
) -> list[RowOutcome]:
    if not isinstance(loaded, LoadResult):
        return [RowOutcome(h, "failed", reason=loaded or "not loaded") for h in msg.label_hashes]

    outcomes: list[RowOutcome] = []
    by_hash = {r.meta.label_hash: r for r in loaded.loaded if r.meta.label_hash}
    for label_hash in msg.label_hashes:
        row = by_hash.get(label_hash)
        entry = entries.get(label_hash)
        try:
            if row is not None:
                outcomes.append(_sync_one(row, entry, config, deps, now, started, planned=bool(msg.rows)))
            elif label_hash in loaded.gone:
                outcomes.append(_remove_one(msg.project_hash, label_hash, entry, deps))
            else:
                outcomes.append(RowOutcome(label_hash, "failed", reason=_why_missing(label_hash, loaded)))
        except Exception as exc:  # a poison row must not block the rest of its chunk
            edited = row.meta.last_edited_at if row is not None else None
            reason = f"{type(exc).__name__}: {exc}"
            outcomes.append(RowOutcome(label_hash, "failed", last_edited_at=edited, reason=reason))
    return outcomes


def _why_missing(label_hash: str, loaded: LoadResult) -> str:
    return loaded.failed.get(label_hash, "left uninitialised: missing from the bundle response")


def _sync_one(
    row: LoadedRow,
    entry: IndexEntry | None,
    config: MirrorConfig,
    deps: MirrorDeps,
    now: datetime,
    started: datetime | None,
    *,
    planned: bool = False,
) -> RowOutcome:
    meta = row.meta
    label_hash = meta.label_hash
    assert label_hash is not None
    project = meta.project_hash
    if not config.selects(meta):
        # The row left the stage / status filter since it was planned: it no longer belongs in the lake.
        return _remove_one(project, label_hash, entry, deps)
    labels = filter_features(row.labels, config.object_feature_hashes, config.classification_feature_hashes)
    document, sha = build_document(row, labels, synced_at=now)
    body = encode_document(document)
    stage = stage_value(meta.stage_uuid, meta.stage_title)
    key = label_key(project, meta.branch, stage, label_hash)
    if entry is not None and is_newer(entry.last_edited_at, meta.last_edited_at):
        return RowOutcome(label_hash, "stale", key=entry.key, last_edited_at=meta.last_edited_at, sha256=sha)
    # `planned`: the stage and task status are the planner's listing. A copy of this version synced
    # since the run began was listed no earlier (by this run, or by a later one): a late duplicate of
    # this chunk must not move it back to where the row stood when this run was planned.
    if (
        planned
        and entry is not None
        and started is not None
        and entry.synced_at >= started
        and entry.last_edited_at == meta.last_edited_at
        and (entry.sha256, entry.key) != (sha, key)
    ):
        return RowOutcome(
            label_hash,
            "unchanged",
            key=entry.key,
            last_edited_at=meta.last_edited_at,
            sha256=entry.sha256,
            reason=SYNCED_IN_THIS_RUN,
        )
    if entry is not None and entry.sha256 == sha and entry.key == key:
        if (entry.task_status, entry.stage_uuid) != (meta.task_status, meta.stage_uuid):
            # An entry from before the index kept the task status: record it, or every reconciling run
            # would send this row again.
            deps.state.put_index(replace(entry, task_status=meta.task_status, stage_uuid=meta.stage_uuid))
        earlier = started is not None and entry.synced_at >= started
        return RowOutcome(
            label_hash,
            "unchanged",
            key=key,
            last_edited_at=meta.last_edited_at,
            sha256=sha,
            reason=SYNCED_IN_THIS_RUN if earlier else None,
        )

    write = _conditional_put(deps, key, body, sha, meta.last_edited_at, entry)
    if write.status == "stale":
        return RowOutcome(label_hash, "stale", key=key, last_edited_at=meta.last_edited_at, sha256=sha)
    assert write.etag is not None
    # The old copy goes before the index moves on: a worker killed between the two leaves an index
    # that still points at the old key, so the redelivery redoes the move instead of skipping it.
    old_key = entry.key if entry is not None and entry.key != key else None
    if entry is not None and old_key is not None:
        _delete_if_unchanged(deps, old_key, entry.etag)
    new_entry = IndexEntry(
        project_hash=project,
        label_hash=label_hash,
        data_hash=meta.data_hash,
        branch=meta.branch,
        key=key,
        partition_stage=stage,
        last_edited_at=meta.last_edited_at,
        sha256=sha,
        etag=write.etag,
        synced_at=now,
        task_status=meta.task_status,
        stage_uuid=meta.stage_uuid,
    )
    if not deps.state.put_index(new_entry):
        # A newer version reached the index first; if it lives elsewhere, our copy must not linger.
        _drop_orphan(deps, project, label_hash, key, write.etag)
        return RowOutcome(label_hash, "stale", key=key, last_edited_at=meta.last_edited_at, sha256=sha)
    if old_key is not None:
        return RowOutcome(
            label_hash, "moved", key=key, old_key=old_key, last_edited_at=meta.last_edited_at, sha256=sha
        )
    # Written, also when the lake held this content already (an attempt killed before it recorded the
    # index, or a duplicate delivery): the index had another version, so the partition's snapshot did too.
    return RowOutcome(label_hash, "written", key=key, last_edited_at=meta.last_edited_at, sha256=sha)


def _conditional_put(
    deps: MirrorDeps, key: str, body: bytes, sha: str, edited: datetime | None, entry: IndexEntry | None
) -> _Write:
    """Put `body` at `key` only over what we expect to be there; on a lost race, look at the winner."""
    lake = deps.lake
    if_match = entry.etag if entry is not None and entry.key == key else None
    for _ in range(_CAS_TRIES):
        try:
            return _Write("written", lake.put(key, body, if_match=if_match, if_none_match=if_match is None))
        except PreconditionFailedError:
            current = lake.get(key)
        if current is None:
            if_match = None
            continue
        # Only an intact object is trusted: one truncated or edited by hand is written over.
        held = intact_sha256(current.body)
        if held == sha:
            return _Write("unchanged", current.etag)  # a duplicate delivery wrote the same version
        theirs = (read_mirror(current.body) or {}).get("last_edited_at") if held is not None else None
        if isinstance(theirs, str) and is_newer(datetime.fromisoformat(theirs), edited):
            return _Write("stale", None)
        if_match = current.etag
    raise WriteContentionError(key)


def _drop_orphan(deps: MirrorDeps, project: str, label_hash: str, key: str, etag: str) -> None:
    winner = deps.state.get_index(project, label_hash)
    if winner is None or winner.key != key:
        _delete_if_unchanged(deps, key, etag)


def _delete_if_unchanged(deps: MirrorDeps, key: str, etag: str) -> None:
    """Delete `key` only if it still holds the version we know: a newer copy written there meanwhile stays.
    (The port has no conditional delete; the window between the read and the delete is small.)"""
    current = deps.lake.get(key)
    if current is not None and current.etag == etag:
        deps.lake.delete(key)


def _remove_rows(
    msg: ChunkMessage, deps: MirrorDeps, signpost: datetime | None, entries: Mapping[str, IndexEntry | None]
) -> list[RowOutcome]:
    outcomes = []
    for label_hash in msg.removals:
        try:
            entry = entries.get(label_hash)
            outcomes.append(_remove_one(msg.project_hash, label_hash, entry, deps, not_after=signpost))
        except Exception as exc:
            outcomes.append(
                RowOutcome(label_hash, "failed", reason=f"remove failed: {type(exc).__name__}: {exc}")
            )
    return outcomes


def _remove_strays(msg: ChunkMessage, deps: MirrorDeps) -> list[RowOutcome]:
    """Delete the copies a reconciling run found where their row does not belong (see `lakecheck`); a key
    the row index points at now (a later run put the row back there) stays."""
    outcomes = []
    for key in msg.strays:
        label_hash = key.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            entry = deps.state.get_index(msg.project_hash, label_hash)
            if entry is not None and entry.key == key:
                outcomes.append(RowOutcome(label_hash, "unchanged", key=key, reason=STRAY_COPY))
                continue
            deps.lake.delete(key)
            outcomes.append(RowOutcome(label_hash, "removed", old_key=key, reason=STRAY_COPY))
        except Exception as exc:
            reason = f"removing the stray copy {key} failed: {type(exc).__name__}: {exc}"
            outcomes.append(RowOutcome(label_hash, "failed", old_key=key, reason=reason))
    return outcomes


def _remove_one(
    project: str,
    label_hash: str,
    entry: IndexEntry | None,
    deps: MirrorDeps,
    *,
    not_after: datetime | None = None,
) -> RowOutcome:
    """Remove a row (`entry`: its index entry) from the current view (history stays in object versions and
    run manifests).

    `not_after`: a removal planned by a run never deletes a version edited after that run's signpost, so
    a late redelivery of an old removal cannot undo a newer sync.
    """
    if entry is None:
        return RowOutcome(label_hash, "unchanged", reason=NOT_IN_LAKE)
    if not_after is not None and entry.last_edited_at is not None and entry.last_edited_at > not_after:
        return RowOutcome(label_hash, "stale", key=entry.key, last_edited_at=entry.last_edited_at)
    deps.lake.delete(entry.key)
    deps.state.delete_index(project, label_hash)
    return RowOutcome(label_hash, "removed", old_key=entry.key, last_edited_at=entry.last_edited_at)
