"""The finalizer: close a run, re-entrantly.

Order matters: claim the run (one finalizer at a time), commit the watermark (held by open gaps), refresh
the COCO snapshots of the touched partitions and announce them, then write the run manifest LAST and
create-only, so a manifest's presence means the run's effects are all in place; only then is the run
marked finalized. The lease is released at the end, however the finalizer ends.

A snapshot refresh that fails does not fail the run (its rows are synced and the watermark has moved):
the partition is recorded as owed a snapshot in the state store, and every later finalizer of the project
rebuilds it, checking all its rows, until one succeeds.

Every step is safe to redo, so a finalizer that died half-way (an exception, a Lambda timeout, a killed
process) is simply run again: the watermark only moves forward, a snapshot refresh returns the same event
for the same (run, partition), and the manifest is create-only. A finalizer that raised drops its claim, so
the retry goes at once; one that died without a word holds the claim until it expires
(`lease_ttl_seconds`), and meanwhile another finalizer of the run answers "busy" (the Lambda handler then
fails the record, so SQS asks again later). Two finalizers never work on one run at the same time, unless
one outlives its claim's expiry.

The run manifest, `runs/project=<p>/<run_id>.json` (times ISO 8601 UTC; one line, ending with a newline):
```
{"format_version": 3, "run_id", "project_hash", "mode": "full" | "incremental", "started_at", "finished_at",
 "signpost", "previous_watermark" (when planned), "watermark_before" (when finalized),
 "watermark" (committed),
 "filters" (the run's filters fingerprint, `MirrorConfig.filters_fingerprint`; a new state takes it up),
 "counts": {"written", "unchanged", "moved", "removed", "failed", "stale"}, "gaps_open", "chunks",
 "unlabelled": [data hashes], "rows": [{"label_hash", "status", "key", "old_key", "last_edited_at",
 "sha256", "reason"}], "snapshots": [{"snapshot_id", "branch", "stage"}], "snapshots_owed",
 "snapshots_pruned": [{"snapshot_id", "branch", "stage"}] (deleted by snapshot retention), "errors": [...]}
```
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

import orjson

from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.lake import partition_of, run_manifest_key
from encord_mirror.domain.models import (
    ChunkResult,
    JsonDict,
    Partition,
    PartitionChanges,
    RowOutcome,
    RunRecord,
    SnapshotDebt,
    SnapshotEvent,
)
from encord_mirror.domain.ports import PreconditionFailedError
from encord_mirror.domain.watermark import iso_utc, next_watermark, require_utc
from encord_mirror.domain.worker import MAYBE_EARLIER

COUNTED = ("written", "unchanged", "moved", "removed", "failed", "stale")
# The run manifest's format (README, "The lake"; schemas/run-manifest.schema.json). 1: manifests without
# the field (indented JSON at first, then one line); 2: `format_version` added; 3: `snapshots_pruned` added.
MANIFEST_FORMAT_VERSION = 3


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    project_hash: str
    run_id: str
    status: Literal["finalized", "already_finalized", "busy", "unknown_run", "incomplete"]
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    gaps_open: int = 0
    manifest_key: str | None = None
    snapshots: tuple[SnapshotEvent, ...] = ()
    snapshots_owed: int = 0  # partitions whose snapshot failed: stale until a later finalizer rebuilds them
    errors: tuple[str, ...] = ()  # snapshot or event failures: recorded in the manifest, never fatal
    chunks_pending: int = 0  # status "incomplete": chunks of the run the ledger does not show done yet


def finalize(project_hash: str, run_id: str, config: MirrorConfig, deps: MirrorDeps) -> FinalizeResult:
    """Close the run. "already_finalized": its manifest is written; "busy": another finalizer holds it;
    "incomplete": the ledger does not show every chunk of the run done (nothing is claimed or changed).

    Snapshot events: one per committed snapshot, with a single window for a duplicate. Each event the
    snapshot step returns is recorded as pending in the state store's outbox (keyed by
    `SnapshotEvent.event_id`) before anything is published; then every pending event of the project is
    published (this run's, and any an earlier finalizer could not send) and those the sink accepted are
    marked sent. Hence:
    - never lost: a finalizer that dies after committing a snapshot and before its event is marked sent
      leaves the event pending (or, dying before recording it, its retry gets the same event back from
      the snapshot step); the retry, or the project's next finalizer, publishes it. A sink that refuses
      an event leaves it pending likewise (the refusal is in the manifest's errors).
    - never twice, except in one window: a sent event is never published again, and one finalizer holds
      a run at a time. A finalizer that dies (or whose state store fails) after the sink accepted an
      event and before marking it sent publishes it again on the retry; so does a finalizer that outlives
      its claim's expiry while another runs. Consumers that must act once dedupe on `detail.event_id`
      (the same for every delivery of an event; see `SnapshotEvent.event_id`).
    - the events of one finalizer go out oldest snapshot first; a retried one may follow a newer one.
    """
    state = deps.state
    run = state.get_run(project_hash, run_id)
    if run is None:
        return FinalizeResult(project_hash, run_id, "unknown_run")
    results = state.chunk_results(project_hash, run_id)
    done = {r.chunk_id for r in results if r.final and r.run_id == run_id}
    pending = sum(1 for chunk_id in run.chunk_ids if chunk_id not in done)
    if pending:
        # An early request (a stray or hand-sent message): closing now would commit the watermark past
        # rows not yet written. The worker that records the last chunk asks again.
        return FinalizeResult(project_hash, run_id, "incomplete", chunks_pending=pending)
    token = uuid.uuid4().hex
    now = require_utc(deps.clock(), "clock")
    claim = state.begin_finalize(project_hash, run_id, token, now, config.lease_ttl_seconds)
    if claim == "finished":
        return FinalizeResult(project_hash, run_id, "already_finalized")
    if claim == "busy":
        return FinalizeResult(project_hash, run_id, "busy")

    finished = False
    try:
        result = _close_run(project_hash, run, results, config, deps)
        state.end_finalize(project_hash, run_id, token, finished=True)
        finished = True
        return result
    finally:
        try:
            if not finished:
                state.end_finalize(project_hash, run_id, token, finished=False)
        finally:
            # However the closing ends, the project is free for its next run: the watermark never passed
            # anything unsynced, so the next run is safe whether this one wrote its manifest or not.
            state.release_lease(project_hash, run_id)


def _close_run(
    project_hash: str, run: RunRecord, results: list[ChunkResult], config: MirrorConfig, deps: MirrorDeps
) -> FinalizeResult:
    state, run_id = deps.state, run.run_id
    now = require_utc(deps.clock(), "clock")
    outcomes = _latest_outcomes(results, run)
    gaps = state.list_gaps(project_hash)
    before = state.get_watermark(project_hash)
    after = next_watermark(before, run.signpost, gaps)
    if after is not None and before is not None and after < before:
        state.set_watermark(project_hash, after, rewind_from=before)  # back from Encord's future
    elif after is not None and after != before:
        state.set_watermark(project_hash, after)
    if run.filters is not None:
        # Every selected row was synced (or is a gap, retried with these filters): the lake follows them.
        state.set_filters(project_hash, run.filters)

    # Before the snapshots are announced, so that a consumer of the event finds the tables current too.
    for recorder in deps.recorders:
        recorder.record_run(run, outcomes, now=now)
    snapshots, errors, owed = _refresh_snapshots(project_hash, run, outcomes, deps, now)
    errors.extend(_announce(project_hash, deps))
    pruned = _prune_snapshots(project_hash, config, deps, now, errors)

    counts = Counter({status: 0 for status in COUNTED})
    counts.update(o.status for o in outcomes)
    manifest_key = run_manifest_key(project_hash, run_id)
    manifest = _manifest(run, outcomes, dict(counts), before, after, gaps_open=len(gaps), now=now)
    manifest["snapshots"] = [
        {"snapshot_id": s.snapshot_id, "branch": s.branch, "stage": s.stage} for s in snapshots
    ]
    manifest["snapshots_owed"] = owed
    manifest["snapshots_pruned"] = [
        {"snapshot_id": sid, "branch": part.branch, "stage": part.stage} for part, sid in pruned
    ]
    manifest["errors"] = errors
    # Create-only: manifests are immutable, and whatever already holds this (unique) run's key stays.
    with contextlib.suppress(PreconditionFailedError):
        deps.lake.put(manifest_key, orjson.dumps(manifest) + b"\n", if_none_match=True)
    state.set_failure(project_hash, None)  # a run of the project completed: an earlier failure is behind it
    return FinalizeResult(
        project_hash=project_hash,
        run_id=run_id,
        status="finalized",
        watermark_before=before,
        watermark_after=after,
        counts=dict(counts),
        gaps_open=len(gaps),
        manifest_key=manifest_key,
        snapshots=tuple(snapshots),
        snapshots_owed=owed,
        errors=tuple(errors),
    )


def _announce(project_hash: str, deps: MirrorDeps) -> list[str]:
    """Publish through the outbox (see `finalize`; `_refresh_snapshots` recorded this run's events):
    publish every pending event of the project, mark the accepted ones sent. Returns the sink's refusals."""
    state = deps.state
    pending = state.pending_events(project_hash)
    if not pending:
        return []
    receipt = deps.events.publish(pending)
    if receipt.sent:
        state.mark_events_sent(project_hash, receipt.sent)
    # A refused event stays pending: this run's retry, or the project's next finalizer, sends it.
    return [f"event {event_id}: {why}" for event_id, why in receipt.failed.items()]


def _latest_outcomes(results: list[ChunkResult], run: RunRecord) -> list[RowOutcome]:
    """The outcomes of the run's own chunks, in chunk order (a chunk recorded twice counts once)."""
    by_chunk = {r.chunk_id: r for r in results if r.run_id == run.run_id}
    return [o for cid in run.chunk_ids if cid in by_chunk for o in by_chunk[cid].outcomes]


def touched_partitions(outcomes: list[RowOutcome]) -> list[PartitionChanges]:
    upserted: dict[Partition, list[str]] = defaultdict(list)
    removed: dict[Partition, list[str]] = defaultdict(list)
    for o in outcomes:
        if o.status in ("written", "moved") and o.key:
            upserted[partition_of(o.key)].append(o.label_hash)
        if o.status in ("moved", "removed") and o.old_key:
            removed[partition_of(o.old_key)].append(o.label_hash)
    return [
        PartitionChanges(p, tuple(sorted(upserted.get(p, ()))), tuple(sorted(removed.get(p, ()))))
        for p in sorted(set(upserted) | set(removed))
    ]


def _refresh_snapshots(
    project_hash: str, run: RunRecord, outcomes: list[RowOutcome], deps: MirrorDeps, now: datetime
) -> tuple[list[SnapshotEvent], list[str], int]:
    """Refresh the partitions the run's outcomes touched, and bring back in step every partition whose
    changes the outcomes may not tell, by comparing its latest snapshot with the row index (`drift`):
    - one owed a snapshot by another run (its run died after changing rows there: workers owe a partition
      before they change it, see `worker`; or its refresh failed, and it is also rebuilt from all its
      rows), recovering what that run left;
    - this run's own, when a chunk found rows that an earlier, killed attempt of it had changed;
    - every partition, on a reconciling run.
    A refresh that fails is owed until one succeeds, so a stale snapshot is never forgotten. The events
    are recorded in the outbox before any debt is settled, so a finalizer killed at any point leaves
    either the debt (the next one recovers the event) or the event. Returns the events, the errors and
    how many partitions are still owed."""
    state, builder, run_id = deps.state, deps.snapshots, run.run_id
    owed = {d.partition: d for d in state.owed_snapshots(project_hash)}
    if builder is None:
        state.settle_snapshots(list(owed.values()))  # no snapshots are made, so none is owed
        return [], [], 0
    todo = {c.partition: c for c in touched_partitions(outcomes)}
    redelivered = any(o.status == "unchanged" and o.reason in MAYBE_EARLIER for o in outcomes)
    recover = {
        part for part, debt in owed.items() if redelivered or debt.run_id != run_id or not debt.writing_only
    }
    events: list[SnapshotEvent] = []
    errors: list[str] = []
    failed: list[SnapshotDebt] = []
    try:
        if recover or run.full:
            index: dict[Partition, dict[str, str]] = defaultdict(dict)
            for e in state.scan_index(project_hash):
                index[Partition(project_hash, e.branch, e.partition_stage)][e.label_hash] = e.sha256
            check = recover | (set(index) | builder.partitions(project_hash) if run.full else set())
            for part in sorted(check):
                drift, event = builder.drift(part, index.get(part, {}), recover=part in recover)
                if event is not None:
                    events.append(event)
                if drift.upserted or drift.removed:
                    todo[part] = _merged(todo.get(part), drift)
        # After a failed refresh, and for a snapshot of an older format (the README's contract change rule),
        # the partition is rebuilt checking all its rows.
        for part in [*(p for p, d in owed.items() if not d.writing_only), *builder.outdated(project_hash)]:
            todo[part] = replace(todo.get(part, PartitionChanges(part, (), ())), rescan=True)
        project = deps.source.project_info(project_hash) if todo else None
    except Exception as exc:
        reason = f"snapshot check: {type(exc).__name__}: {exc}"
        errors.append(f"snapshots skipped: {reason}")
        failed = [SnapshotDebt(part, run_id, reason) for part in sorted({*todo, *recover})]
    else:
        for part, change in sorted(todo.items()):
            assert project is not None
            try:
                event = builder.refresh(project, change, run_id=run_id, now=now)
            except Exception as exc:
                # The labels are synced and the watermark has moved: the partition is owed a snapshot,
                # which the next finalizer of the project rebuilds; the manifest says what went wrong.
                reason = f"{type(exc).__name__}: {exc}"
                errors.append(f"snapshot {part}: {reason} (owed: the next run rebuilds it)")
                failed.append(SnapshotDebt(part, run_id, reason))
                continue
            if event is not None:
                events.append(event)
    # Recorded before the manifest: a finalizer that cannot record them fails, and is retried.
    if events:
        state.stage_events(project_hash, events)
    failing = {d.partition for d in failed}
    state.settle_snapshots([d for part, d in owed.items() if part not in failing])
    state.owe_snapshots(failed)
    return events, errors, len(failed)


def _prune_snapshots(
    project_hash: str, config: MirrorConfig, deps: MirrorDeps, now: datetime, errors: list[str]
) -> list[tuple[Partition, str]]:
    """Snapshot retention, once this run's snapshots are the latest. A failure loses nothing (the next
    finalizer prunes again) and goes to the manifest's errors."""
    if deps.snapshots is None or (config.snapshots_keep is None and config.snapshots_keep_days is None):
        return []
    try:
        return deps.snapshots.prune(
            project_hash, keep=config.snapshots_keep, keep_days=config.snapshots_keep_days, now=now
        )
    except Exception as exc:  # the labels and snapshots are committed: retention must not fail the run
        errors.append(f"snapshot retention: {type(exc).__name__}: {exc} (the next run prunes again)")
        return []


def _merged(first: PartitionChanges | None, second: PartitionChanges) -> PartitionChanges:
    if first is None:
        return second
    upserted = tuple(sorted({*first.upserted, *second.upserted}))
    removed = tuple(sorted({*first.removed, *second.removed}))
    return PartitionChanges(first.partition, upserted, removed, rescan=first.rescan or second.rescan)


def _manifest(
    run: RunRecord,
    outcomes: list[RowOutcome],
    counts: dict[str, int],
    before: datetime | None,
    after: datetime | None,
    *,
    gaps_open: int,
    now: datetime,
) -> JsonDict:
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "run_id": run.run_id,
        "project_hash": run.project_hash,
        "mode": "full" if run.full else "incremental",
        "started_at": iso_utc(run.started_at),
        "finished_at": iso_utc(now),
        "signpost": iso_utc(run.signpost),
        "previous_watermark": iso_utc(run.previous_watermark),
        "watermark_before": iso_utc(before),
        "watermark": iso_utc(after),
        "filters": run.filters,
        "counts": counts,
        "gaps_open": gaps_open,
        "chunks": len(run.chunk_ids),
        "unlabelled": list(run.unlabelled),
        "rows": [
            {
                "label_hash": o.label_hash,
                "status": o.status,
                "key": o.key,
                "old_key": o.old_key,
                "last_edited_at": iso_utc(o.last_edited_at),
                "sha256": o.sha256,
                "reason": o.reason,
            }
            for o in outcomes
        ],
    }
