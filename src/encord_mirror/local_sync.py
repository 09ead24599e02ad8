"""One sync on one machine: the domain wired to the in-process queue, for the CLI, the demo and tests.

Any LabelSource, ObjectStore and StateStore will do (the SDK + S3 + SQLite, or all local). Projects are
synced one after the other, each run planned, drained and finalized before the next starts.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from encord_mirror.adapters.local.events import JsonlEventSink
from encord_mirror.adapters.local.queue import LocalWorkQueue
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.finalizer import COUNTED, FinalizeResult, finalize
from encord_mirror.domain.models import ChunkMessage, ChunkResult, Lease, RunFailure
from encord_mirror.domain.planner import PlanResult, failure_reason, plan
from encord_mirror.domain.ports import EventSink, LabelSource, ObjectStore, SnapshotBuilder, StateStore
from encord_mirror.domain.watermark import utc_now
from encord_mirror.domain.worker import process_chunk
from encord_mirror.tables import lake_recorders


class SyncInterruptedError(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a sync. The project being synced (`project_hash`, run `run_id`; None
    when no run had started) was left cleanly: its workers stopped, its lease released, its watermark at
    `watermark` (where it was, unless the run's finalizer had already completed it). `finished` holds the
    projects synced before the interruption. A KeyboardInterrupt, so callers that only know that still
    stop."""

    def __init__(
        self,
        project_hash: str,
        run_id: str | None,
        watermark: datetime | None,
        finished: tuple[ProjectSummary, ...],
        signal_name: str,
    ) -> None:
        run = f"run {run_id} of project {project_hash}" if run_id else f"project {project_hash} (not started)"
        super().__init__(f"{signal_name}: sync interrupted during {run}")
        self.project_hash = project_hash
        self.run_id = run_id
        self.watermark = watermark
        self.finished = finished
        self.signal_name = signal_name


@dataclass(frozen=True, slots=True)
class ProjectSummary:
    """One project's run. `status`: "synced"; "lease_held" when another sync owns the project;
    "unfinished" when a chunk could not even record its result (see `errors`): the watermark stays."""

    project_hash: str
    run_id: str
    status: Literal["synced", "lease_held", "unfinished"]
    full: bool = False
    listed: int = 0
    requested: int = 0  # label rows sent to workers: each one initialised (0 when nothing changed)
    chunks: int = 0
    written: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    stale: int = 0
    unlabelled: int = 0
    gaps_open: int = 0
    snapshots_owed: int = 0  # partitions whose COCO snapshot failed: stale until a later run rebuilds them
    dead_letters: int = 0
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    manifest_key: str | None = None
    seconds: float = 0.0
    errors: tuple[str, ...] = ()
    lease: Lease | None = None  # status "lease_held": who holds the project, since when, until when


@dataclass(frozen=True, slots=True)
class SyncSummary:
    projects: tuple[ProjectSummary, ...] = field(default_factory=tuple)

    @property
    def gaps_open(self) -> int:
        return sum(p.gaps_open for p in self.projects)

    @property
    def snapshots_owed(self) -> int:
        return sum(p.snapshots_owed for p in self.projects)

    @property
    def ok(self) -> bool:
        """Every project synced, no gap remains and no snapshot is owed (the CLI exits 0 only then)."""
        return all(
            p.status == "synced" and p.gaps_open == 0 and p.snapshots_owed == 0 and p.dead_letters == 0
            for p in self.projects
        )

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.projects)


def run_local_sync(
    config: MirrorConfig,
    source: LabelSource,
    lake: ObjectStore,
    state: StateStore,
    *,
    workers: int = 4,
    full: bool = False,
    snapshots: SnapshotBuilder | None = None,
    progress: Callable[[str], None] | None = None,
    events: EventSink | None = None,
    clock: Callable[[], datetime] | None = None,
) -> SyncSummary:
    """Sync every project of `config` once; returns per-project counts. `events` defaults to
    `events/events.jsonl` in the lake; `clock` (aware UTC) to the system clock."""
    say = progress or (lambda _msg: None)
    now = clock or utc_now
    sink = events if events is not None else JsonlEventSink(lake, clock=now)
    summaries = []
    for project_hash in config.projects:
        queue = LocalWorkQueue(workers=workers, max_attempts=config.max_attempts)
        deps = MirrorDeps(
            source=source,
            lake=lake,
            state=state,
            queue=queue,
            events=sink,
            snapshots=snapshots,
            clock=now,
            recorders=lake_recorders(lake, config),
        )
        run: list[str] = []  # the run id, once planned
        try:
            summaries.append(_sync_project(project_hash, config, deps, queue, full, say, run))
        except KeyboardInterrupt as interrupt:
            # The workers have stopped and the lease is released (see _sync_project): say where things are.
            raise SyncInterruptedError(
                project_hash,
                run[0] if run else None,
                state.get_watermark(project_hash),
                tuple(summaries),
                str(interrupt) or "SIGINT",
            ) from interrupt
        finally:
            queue.close(cancel=True)  # after a drain nothing is pending; after an error, drop what is
    return SyncSummary(tuple(summaries))


def _record_failure(
    deps: MirrorDeps, project_hash: str, run_id: str, why: BaseException | str | None
) -> None:
    reason = why if isinstance(why, str) else failure_reason(why) if why is not None else "stopped"
    deps.state.set_failure(
        project_hash, RunFailure(project_hash, run_id, deps.clock(), f"unfinished: {reason}")
    )


def describe_lease(lease: Lease | None) -> str:
    """Who holds a project's lease, since when and until when, for a message to a user."""
    if lease is None:
        return "another sync held the project's lease (released since)"
    since = f" since {lease.acquired_at.isoformat(timespec='seconds')}" if lease.acquired_at else ""
    return (
        f"run {lease.owner} holds the project's lease{since}; it expires at "
        f"{lease.expires_at.isoformat(timespec='seconds')} unless that run finishes first"
    )


def _why_free(lease: Lease, now: datetime) -> str:
    if lease.expires_at <= now:
        return f"it expired at {lease.expires_at.isoformat(timespec='seconds')} (its run died)"
    return f"its process ({lease.holder}) is gone"


def _sync_project(
    project_hash: str,
    config: MirrorConfig,
    deps: MirrorDeps,
    queue: LocalWorkQueue,
    full: bool,
    say: Callable[[str], None],
    run: list[str],
) -> ProjectSummary:
    started = time.perf_counter()
    finished: list[FinalizeResult] = []
    done = itertools.count(1)  # next() on a count is atomic: the hook runs on worker threads

    def on_chunk(msg: ChunkMessage, result: ChunkResult) -> None:
        if result.final:
            rows = f"{len(msg.label_hashes)} rows, {len(msg.removals)} removals"
            say(f"{project_hash}: chunk {next(done)} done ({rows})")

    queue.bind(
        process=lambda msg, attempt: process_chunk(
            msg, config, deps, attempt=attempt, max_attempts=config.max_attempts
        ),
        finalize=lambda p, run_id: finished.append(finalize(p, run_id, config, deps)),
        on_chunk=on_chunk,
    )
    left = deps.state.get_lease(project_hash)  # a lease still there before we plan: its run died
    try:
        result: PlanResult = plan(project_hash, config, deps, full=full)
    except BaseException:
        # Interrupted while planning: plan() released the lease; chunks already sent must stop too.
        queue.close(cancel=True)
        raise
    if result.status == "lease_held":
        say(f"{project_hash}: skipped: {describe_lease(result.lease)}")
        return ProjectSummary(
            project_hash,
            result.run_id,
            "lease_held",
            seconds=time.perf_counter() - started,
            lease=result.lease,
        )
    run.append(result.run_id)
    if left is not None and left.owner != result.run_id:
        say(f"{project_hash}: took over the lease of run {left.owner}: {_why_free(left, deps.clock())}")
    if result.clock_warning is not None:
        say(f"{project_hash}: warning: {result.clock_warning}")
    mode = "full" if result.full else "incremental"
    if result.damaged or result.adopted or result.strays:
        say(
            f"{project_hash}: the lake's row objects against the row index: {result.damaged} damaged or "
            f"missing (sent again), {result.adopted} taken into the index from the lake, "
            f"{result.strays} stray (removed)"
        )
    if result.refilter and result.previous_watermark is not None:
        say(
            f"{project_hash}: the feature filters or the row format changed since the last sync: "
            "every row is sent again"
        )
    if result.deselected:
        say(
            f"{project_hash}: the changed filters take {result.deselected} of the {result.lake_rows} rows "
            f"out of the current view ({result.deselected / result.lake_rows:.0%}; a filter change may "
            f"remove up to {config.filter_shrink_limit}%)"
        )
    try:
        say(
            f"{project_hash}: {mode} run {result.run_id}: listed {result.listed}, {result.to_sync} to sync, "
            f"{result.removals} to remove, {result.chunks} chunks"
        )
        queue.drain()
    except BaseException as exc:
        # Interrupted (Ctrl-C) or a finalizer failed: nothing in this process will finish the run. The
        # watermark did not move, so free the project and let the next sync repeat the work; the lease
        # goes even if a second Ctrl-C cuts the wait for the running chunks short.
        try:
            queue.close(cancel=True)
        finally:
            deps.state.release_lease(project_hash, result.run_id)
            _record_failure(deps, project_hash, result.run_id, exc)
        raise
    closing = next((f for f in finished if f.status == "finalized"), None)
    if closing is None:
        # Nothing in this process will finish the run: let the next sync start at once (from the old mark).
        deps.state.release_lease(project_hash, result.run_id)
        why = "; ".join(d.error for d in queue.dead_letters) or "its finalizer did not complete"
        _record_failure(deps, project_hash, result.run_id, why)
    seconds = time.perf_counter() - started
    counts = closing.counts if closing else {c: 0 for c in COUNTED}
    summary = ProjectSummary(
        project_hash=project_hash,
        run_id=result.run_id,
        status="synced" if closing else "unfinished",
        full=result.full,
        listed=result.listed,
        requested=result.to_sync,
        chunks=result.chunks,
        written=counts.get("written", 0),
        unchanged=counts.get("unchanged", 0),
        moved=counts.get("moved", 0),
        removed=counts.get("removed", 0),
        failed=counts.get("failed", 0),
        stale=counts.get("stale", 0),
        unlabelled=result.unlabelled,
        gaps_open=closing.gaps_open if closing else len(deps.state.list_gaps(project_hash)),
        snapshots_owed=closing.snapshots_owed if closing else 0,
        dead_letters=len(queue.dead_letters),
        watermark_before=result.previous_watermark,
        watermark_after=closing.watermark_after if closing else deps.state.get_watermark(project_hash),
        manifest_key=closing.manifest_key if closing else None,
        seconds=seconds,
        errors=closing.errors if closing else tuple(d.error for d in queue.dead_letters),
    )
    say(
        f"{project_hash}: {summary.written} written, {summary.moved} moved, {summary.removed} removed, "
        f"{summary.unchanged} unchanged, {summary.failed} failed, {summary.gaps_open} gaps open "
        f"in {seconds:.2f}s"
    )
    return summary
