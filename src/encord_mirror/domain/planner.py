"""The planner: decide which rows a run syncs or removes, record the run, fan the work out in chunks.

One planner per project at a time (a lease owned by the run id). Incremental runs list the rows edited
since `watermark - overlap` up to the signpost, plus every open gap by label hash; every
`reconcile_every`-th run (and the first, and on request) lists everything and diffs it with the row index,
which is the only way to see stage moves, task-status changes, deletions, new branches and never-labelled
rows. A run planned with other filters than the last completed run reconciles (other branches, stages or
task statuses) and sends every selected row again (other feature filters), so the lake follows a
configuration change at once. Filters naming what the project lacks (a feature hash, a stage, a branch)
are refused before any work, and so is a filter change that would take more than
`filter_shrink_limit` percent of the current view out of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import orjson

from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.lake import label_key, run_manifest_key, stage_value
from encord_mirror.domain.lakecheck import LakeCheck, check_lake, labels_prefix
from encord_mirror.domain.models import (
    ChunkMessage,
    ChunkResult,
    Gap,
    IndexEntry,
    Lease,
    RowMeta,
    RowOutcome,
    RowQuery,
    RunFailure,
    RunRecord,
)
from encord_mirror.domain.watermark import (
    DATE_RESOLUTION,
    clock_skew,
    dedupe_key,
    encord_signpost,
    is_newer,
    listing_window,
    require_utc,
)

_SEND_TRIES = 2
_POINT_READS_MAX = 1000
_STRAYS_PER_CHUNK = 100  # keys of about 120 bytes: a chunk message stays small
# Past this, a run warns that the host's clock is off (the listing uses Encord's clock either way).
CLOCK_SKEW_WARN = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class PlanResult:
    """What the planner did for one project. `status` "lease_held": another run owns the project
    (`lease` says which, since when and until when)."""

    project_hash: str
    run_id: str
    status: Literal["planned", "lease_held"]
    full: bool = False
    # The feature filters changed since the last completed run: every selected row is sent again.
    refilter: bool = False
    # The selection changed: the rows it takes out of the current view, of the `lake_rows` it held.
    deselected: int = 0
    lake_rows: int = 0
    signpost: datetime | None = None
    previous_watermark: datetime | None = None
    listed: int = 0  # metadata items the listing(s) returned
    to_sync: int = 0  # label rows sent to workers (each is initialised once)
    removals: int = 0
    skipped: int = 0  # listed rows whose version the lake already holds
    unlabelled: int = 0
    chunks: int = 0
    send_failed: int = 0  # chunks the queue refused twice: recorded as failed, so the run still finishes
    lease: Lease | None = None  # the lease that kept this run from starting
    # A reconciling run's check of the lake (see `lakecheck`): row objects missing or damaged (sent again),
    # objects the row index lacked (adopted from their `mirror` key), stray copies (deleted).
    damaged: int = 0
    adopted: int = 0
    strays: int = 0
    clock_skew: timedelta | None = None  # Encord's clock minus ours (None: Encord's clock unknown)
    clock_problem: str | None = None  # why Encord's clock is unknown: the signpost is ours

    @property
    def clock_warning(self) -> str | None:
        """What the operator should hear about the clocks, if anything."""
        if self.clock_problem is not None:
            return (
                f"Encord's clock could not be read ({self.clock_problem}): this run's signpost is this "
                "host's clock, and a host clock off from Encord's by more than the overlap can make "
                "incremental runs miss edits until the next reconciling run"
            )
        skew = self.clock_skew
        if skew is None or abs(skew) <= CLOCK_SKEW_WARN:
            return None
        side = "behind" if skew > timedelta(0) else "ahead of"
        return (
            f"this host's clock is {abs(skew.total_seconds()):.0f}s {side} Encord's: the listing uses "
            "Encord's clock, so no edit is missed, but set the host's time right (NTP): leases, run ids "
            "and sync times use it"
        )


def new_run_id(now: datetime) -> str:
    """`20261123T182200.123Z-<8 hex>`: sorts by start time to the millisecond (fixed width, so text order
    is time order); the random tail keeps two runs of the same millisecond apart. Safe in S3 keys and as a
    snapshot id (`[0-9A-Za-z.-]` only)."""
    start = require_utc(now, "now")
    return f"{start:%Y%m%dT%H%M%S}.{start.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:8]}"


def plan(
    project_hash: str,
    config: MirrorConfig,
    deps: MirrorDeps,
    *,
    full: bool = False,
    now: datetime | None = None,
) -> PlanResult:
    started = require_utc(now if now is not None else deps.clock(), "now")
    run_id = new_run_id(started)
    state = deps.state
    left = state.get_lease(project_hash)
    if not state.acquire_lease(project_hash, run_id, started, config.lease_ttl_seconds):
        return PlanResult(project_hash, run_id, "lease_held", lease=state.get_lease(project_hash))
    try:
        # A lease left behind is a run that died (a finished run releases it). If it was reconciling, this
        # run reconciles too: the removals and moves it did not get to are seen on reconciling runs only.
        dead = state.get_run(project_hash, left.owner) if left is not None and left.owner != run_id else None
        full = full or (dead is not None and dead.full)
        return _plan_run(project_hash, run_id, started, config, deps, full)
    except BaseException as exc:
        # Nothing was sent, or the run is recorded and its chunks will finish it; either way a crash here
        # must not keep the project locked until the lease expires.
        state.release_lease(project_hash, run_id)
        state.set_failure(project_hash, RunFailure(project_hash, run_id, started, failure_reason(exc)))
        raise


def failure_reason(exc: BaseException) -> str:
    """How a sync that stopped says why (a KeyboardInterrupt is the user's Ctrl-C, or SIGTERM)."""
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted ({exc or 'SIGINT'})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class RowDiff:
    """What a listing means for the lake, given the row index (see `diff_rows`)."""

    sync: tuple[RowMeta, ...] = ()  # not in the lake, or another version of it (or every row: resend)
    move: tuple[RowMeta, ...] = ()  # the lake holds this version, in another partition or task status
    remove: tuple[str, ...] = ()  # label hashes to take out of the current view, sorted
    resolved_gaps: tuple[str, ...] = ()  # gaps that need no work: the lake already agrees with Encord
    skipped: int = 0  # listed rows whose version the lake already holds
    deselected: int = 0  # of `remove`: rows the filters take out (not deleted in Encord)

    @property
    def work(self) -> list[RowMeta]:
        """The rows the workers load, in the order they are chunked."""
        return sorted((*self.sync, *self.move), key=lambda m: (m.branch, m.label_hash or ""))


def diff_rows(
    rows: Mapping[str, RowMeta],
    index: Mapping[str, IndexEntry],
    gaps: Collection[str],
    selects: Callable[[RowMeta], bool],
    *,
    complete: bool,
    resend: bool = False,
    mirrors_branch: Callable[[str], bool] = lambda _branch: True,
) -> RowDiff:
    """The pure heart of a plan: listed rows (latest version per label hash) against the row index.

    `index` holds the entries of at least the listed rows; `complete` says the listing covered the whole
    project, so an indexed row it did not return was deleted in Encord. `gaps` are the label hashes of
    open gaps (a gap the listing no longer returns was deleted: its removal resolves it). `selects` is the
    stage and task-status filter: a row it refuses leaves the lake. `resend`: the feature filters (or the
    row format) changed, so every selected row is sent again. `mirrors_branch`: the branch selection; an
    indexed row of a branch it leaves out is not listed, and is counted as deselected, not deleted.
    """
    sync: list[RowMeta] = []
    move: list[RowMeta] = []
    removals: list[str] = []
    resolved: list[str] = []
    deselected: set[str] = set()
    skipped = 0
    for label_hash, meta in rows.items():
        entry = index.get(label_hash)
        if not selects(meta):
            if entry is not None:
                removals.append(label_hash)
                deselected.add(label_hash)
            elif label_hash in gaps:
                resolved.append(label_hash)
        elif entry is None or resend or entry.last_edited_at != meta.last_edited_at:
            sync.append(meta)
        elif entry.key != _key_of(meta) or entry.task_status != meta.task_status:
            # A task-status change alone moves neither the edit time nor the key.
            move.append(meta)
        else:
            skipped += 1
            if label_hash in gaps:
                resolved.append(label_hash)
    if complete:
        unlisted = [h for h in index if h not in rows]
        removals.extend(unlisted)
        deselected.update(h for h in unlisted if not mirrors_branch(index[h].branch))
    removals.extend(h for h in gaps if h not in rows)
    remove = tuple(sorted(set(removals)))
    return RowDiff(tuple(sync), tuple(move), remove, tuple(resolved), skipped, len(deselected))


def _signpost(started: datetime, deps: MirrorDeps) -> tuple[datetime, timedelta | None, str | None]:
    """(signpost, Encord's clock minus ours, None) from Encord's clock; (our start, None, why) when
    Encord's clock cannot be read. Clocks that agree to within the `Date` header's resolution keep our
    start, the finer reading of the same time: Encord's `Date` not after our clock (skew up to half a
    second, the rounding), so no edit Encord stamped (whole seconds) before its answer is after our start,
    or Encord behind by up to a second (our start is then later than its clock; the overlap covers it)."""
    reading = deps.source.server_time()
    if reading.date is None:
        return started, None, reading.problem or "its answer carried no time"
    skew = clock_skew(reading.date, deps.clock())
    if -DATE_RESOLUTION <= skew <= DATE_RESOLUTION / 2:
        return started, skew, None
    return encord_signpost(reading.date), skew, None


def _plan_run(
    project_hash: str, run_id: str, started: datetime, config: MirrorConfig, deps: MirrorDeps, full: bool
) -> PlanResult:
    state = deps.state
    _check_names(project_hash, config, deps)
    run_number = state.next_run_number(project_hash)
    watermark = state.get_watermark(project_hash)
    # Other filters than the lake was synced with: another selection (branches, stages, task statuses)
    # needs a reconciling run to add and remove rows; other feature filters change what every row holds,
    # so every selected row is sent again (and rewritten only where its content changed).
    synced_with = state.get_filters(project_hash)
    if synced_with is None and watermark is None:
        synced_with = _lake_filters(project_hash, deps)  # a new state over a lake synced before
    reselect, refilter = config.filters_changed(synced_with)
    signpost, skew, clock_problem = _signpost(started, deps)
    # Encord's `Date` has whole seconds: the window reaches back one more, for an edit saved in the
    # signpost's second after the last listing.
    overlap = timedelta(seconds=config.overlap_seconds)
    if clock_problem is None:
        overlap += DATE_RESOLUTION
    # A mark after Encord's now (by more than the `Date` resolution explains) was set by a clock ahead
    # of Encord's, before signposts were Encord's time: the edits between Encord's time then and the mark
    # lie before any window, so the run reconciles, and its finalizer brings the mark back.
    future_mark = watermark is not None and watermark > signpost + 2 * DATE_RESOLUTION
    full = (
        full
        or reselect
        or refilter
        or future_mark
        or watermark is None
        or run_number % config.reconcile_every == 0
    )
    gaps = {g.label_hash for g in state.list_gaps(project_hash)}

    listed = _list(project_hash, signpost, watermark, gaps, overlap, config, deps, full)
    rows, unlabelled = _latest_versions(listed)
    index = _index_for(project_hash, rows, deps, full)
    lake = _check_lake(project_hash, rows, index, config, deps) if full else LakeCheck(index)
    diff = diff_rows(
        rows,
        lake.index,
        gaps,
        config.selects,
        complete=full,
        resend=refilter,
        mirrors_branch=config.branches.includes,
    )
    # Rows leaving the selection as their stage or status changes in Encord are the mirror's job; rows
    # the selection itself drops (reselect: a full run, so `index` is the whole current view) may be a typo.
    deselected = diff.deselected if reselect else 0
    config.check_shrink(project_hash, deselected, len(lake.index))
    if diff.resolved_gaps:
        state.clear_gaps(project_hash, diff.resolved_gaps)

    work = diff.work
    chunks = _chunks(project_hash, run_id, [m for m in work if m.label_hash], diff.remove, config)
    chunks += _stray_chunks(project_hash, run_id, lake.strays, len(chunks))
    state.create_run(
        RunRecord(
            project_hash=project_hash,
            run_id=run_id,
            signpost=signpost,
            previous_watermark=watermark,
            full=full,
            chunk_ids=tuple(c.chunk_id for c in chunks),
            unlabelled=tuple(sorted(unlabelled)),
            started_at=started,
            filters=config.filters_fingerprint(),
        )
    )
    # After the run is recorded: a planner that dies from here on leaves a reconciling run behind, so the
    # next run reconciles (and checks the lake) again.
    for label_hash in lake.dropped:
        state.delete_index(project_hash, label_hash)
    for entry in lake.adopted:
        state.put_index(entry)
    send_failed = _send(chunks, {m.label_hash: m for m in work if m.label_hash}, deps)
    if not chunks:
        deps.queue.request_finalize(project_hash, run_id)
    return PlanResult(
        project_hash=project_hash,
        run_id=run_id,
        status="planned",
        full=full,
        refilter=refilter,
        deselected=deselected,
        lake_rows=len(lake.index) if reselect else 0,
        signpost=signpost,
        previous_watermark=watermark,
        listed=len(listed),
        to_sync=len(work),
        removals=len(diff.remove),
        skipped=diff.skipped,
        unlabelled=len(unlabelled),
        chunks=len(chunks),
        send_failed=send_failed,
        damaged=lake.damaged,
        adopted=len(lake.adopted),
        strays=len(lake.strays),
        clock_skew=skew,
        clock_problem=clock_problem,
    )


def _check_names(project_hash: str, config: MirrorConfig, deps: MirrorDeps) -> None:
    """Refuse filters that name what the project lacks (ConfigError): each would silently select or
    keep nothing."""
    source = deps.source
    if config.object_feature_hashes or config.classification_feature_hashes:
        config.check_features(project_hash, source.project_info(project_hash).ontology)
    if config.stage_include or config.stage_exclude:
        config.check_stages(project_hash, source.project_info(project_hash).stages)
    if config.branches.branch_name is not None:
        config.check_branch(project_hash, source.list_branches(project_hash))


def _list(
    project_hash: str,
    signpost: datetime,
    watermark: datetime | None,
    gaps: Collection[str],
    overlap: timedelta,
    config: MirrorConfig,
    deps: MirrorDeps,
    full: bool,
) -> list[RowMeta]:
    """Everything (a reconciling run), or the rows edited in the listing window plus the open gaps."""
    source, branches = deps.source, config.branches
    if full:
        return source.list_rows(project_hash, RowQuery(branches=branches))
    after, before = listing_window(watermark, signpost, overlap)
    listed = source.list_rows(
        project_hash, RowQuery(branches=branches, edited_after=after, edited_before=before)
    )
    if gaps:
        listed += source.list_rows(
            project_hash, RowQuery(branches=branches, label_hashes=tuple(sorted(gaps)))
        )
    return listed


def _index_for(
    project_hash: str, rows: Mapping[str, RowMeta], deps: MirrorDeps, full: bool
) -> dict[str, IndexEntry]:
    """The whole row index for a reconciling run, else the listed rows' entries. One scan beats thousands
    of point reads (DynamoDB: a GetItem each) once a listing is large."""
    state = deps.state
    if full or len(rows) > _POINT_READS_MAX:
        return {e.label_hash: e for e in state.scan_index(project_hash)}
    return {h: e for h in rows if (e := state.get_index(project_hash, h)) is not None}


def _check_lake(
    project_hash: str,
    rows: Mapping[str, RowMeta],
    index: Mapping[str, IndexEntry],
    config: MirrorConfig,
    deps: MirrorDeps,
) -> LakeCheck:
    expected = {h: _key_of(m) for h, m in rows.items() if config.selects(m)}
    listed = deps.lake.list_etags(labels_prefix(project_hash))
    return check_lake(project_hash, index, listed, expected, deps.lake.get)


def _lake_filters(project_hash: str, deps: MirrorDeps) -> str | None:
    """The filters the lake's last run manifest says it was synced with (None: no manifest, or an older
    one without the field). A state that is lost or new then sends the rows again only if they differ."""
    key = max(deps.lake.list_keys(run_manifest_key(project_hash, "")[: -len(".json")]), default=None)
    stored = deps.lake.get(key) if key is not None else None
    try:
        filters = orjson.loads(stored.body).get("filters") if stored is not None else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return filters if isinstance(filters, str) else None


def _stray_chunks(project_hash: str, run_id: str, strays: Sequence[str], start: int) -> list[ChunkMessage]:
    """Chunks of their own for the stray copies, numbered after the others."""
    return [
        ChunkMessage(
            project_hash=project_hash,
            run_id=run_id,
            chunk_id=f"{run_id}-{start + i:05d}",
            label_hashes=(),
            strays=tuple(strays[at : at + _STRAYS_PER_CHUNK]),
        )
        for i, at in enumerate(range(0, len(strays), _STRAYS_PER_CHUNK))
    ]


def _latest_versions(listed: list[RowMeta]) -> tuple[dict[str, RowMeta], set[str]]:
    """Dedupe on (label_hash, branch, last_edited_at), keeping each label row's latest listed version;
    and the data hashes listed without a label row (never initialised: that would create one)."""
    seen: set[tuple[str, str, str]] = set()
    rows: dict[str, RowMeta] = {}
    unlabelled: set[str] = set()
    for meta in listed:
        if meta.label_hash is None:
            unlabelled.add(meta.data_hash)
            continue
        key = dedupe_key(meta.label_hash, meta.branch, meta.last_edited_at)
        if key in seen:
            continue
        seen.add(key)
        current = rows.get(meta.label_hash)
        if current is None or is_newer(meta.last_edited_at, current.last_edited_at):
            rows[meta.label_hash] = meta
    return rows, unlabelled


def _key_of(meta: RowMeta) -> str:
    assert meta.label_hash is not None
    return label_key(
        meta.project_hash, meta.branch, stage_value(meta.stage_uuid, meta.stage_title), meta.label_hash
    )


def _chunks(
    project_hash: str,
    run_id: str,
    work: list[RowMeta],
    removals: Sequence[str],
    config: MirrorConfig,
) -> list[ChunkMessage]:
    size = config.bundle_size
    loads = [tuple(work[i : i + size]) for i in range(0, len(work), size)]
    removes = [tuple(removals[i : i + size]) for i in range(0, len(removals), size)]
    # Removals ride along with loads first (fewer messages), then take chunks of their own.
    count = max(len(loads), len(removes))
    return [
        ChunkMessage(
            project_hash=project_hash,
            run_id=run_id,
            chunk_id=f"{run_id}-{i:05d}",
            label_hashes=tuple(m.label_hash for m in loads[i] if m.label_hash) if i < len(loads) else (),
            removals=removes[i] if i < len(removes) else (),
            rows=loads[i] if i < len(loads) else (),
        )
        for i in range(count)
    ]


def _send(chunks: list[ChunkMessage], metas: dict[str, RowMeta], deps: MirrorDeps) -> int:
    """Send every chunk (the queue splits them to its service's limits); a chunk the queue refuses twice
    is recorded as a failed final chunk, so the run still completes, its rows become gaps and the
    watermark holds."""
    pending = chunks
    reasons: dict[str, str] = {}
    for _ in range(_SEND_TRIES):
        if not pending:
            break
        reasons = deps.queue.send_chunks(pending).failed
        pending = [c for c in pending if c.chunk_id in reasons]
    for chunk in pending:
        _record_refused(chunk, reasons.get(chunk.chunk_id, "send failed"), metas, deps)
    return len(pending)


def _record_refused(chunk: ChunkMessage, reason: str, metas: dict[str, RowMeta], deps: MirrorDeps) -> None:
    why = f"work queue refused the chunk: {reason}"
    hashes = chunk.label_hashes + chunk.removals
    deps.state.add_gaps(
        [
            Gap(chunk.project_hash, h, metas[h].last_edited_at if h in metas else None, chunk.run_id, why)
            for h in hashes
        ]
    )
    result = ChunkResult(
        run_id=chunk.run_id,
        chunk_id=chunk.chunk_id,
        outcomes=tuple(RowOutcome(h, "failed", reason=why) for h in hashes),
        final=True,
    )
    if deps.state.record_chunk(chunk.project_hash, result).complete:
        deps.queue.request_finalize(chunk.project_hash, chunk.run_id)
