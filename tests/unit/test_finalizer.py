"""The finalizer: one at a time per run, redone until the run's manifest is written; watermark held by
gaps; snapshots for touched partitions; the run manifest written last and create-only."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from conftest import Mirror
from fakes import PROJECT, REVIEW, Clock, FakeSource, RecordingEvents, RecordingSnapshots

from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.adapters.local.events import EVENTS_KEY, JsonlEventSink
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.finalizer import finalize
from encord_mirror.domain.lake import partition_of, run_manifest_key
from encord_mirror.domain.models import (
    ChunkResult,
    Gap,
    IndexEntry,
    Partition,
    PartitionChanges,
    ProjectInfo,
    RowOutcome,
    RunRecord,
    SendReceipt,
    SnapshotEvent,
)
from encord_mirror.local_sync import run_local_sync

CONFIG = MirrorConfig(projects=(PROJECT,))
OLD = "labels/project=proj-0001/branch=main/stage=annotate-5a5a0001/l2.json"
NEW = "labels/project=proj-0001/branch=main/stage=review-5a5a0002/l2.json"
BRANCH = "labels/project=proj-0001/branch=consensus%2F1/stage=annotate-5a5a0001/l3.json"


def _ran(
    state: SqliteStateStore,
    clock: Clock,
    *outcomes: RowOutcome,
    prev: datetime | None = None,
    run_id: str = "run-1",
) -> RunRecord:
    """A run of one chunk, recorded as finished with these outcomes."""
    chunk = f"{run_id}-00000"
    run = RunRecord(PROJECT, run_id, clock(), prev, False, (chunk,), ("data-unlabelled",), clock())
    state.create_run(run)
    state.record_chunk(PROJECT, ChunkResult(run_id, chunk, outcomes, final=True))
    return run


def _manifest(lake: LocalLake) -> dict[str, object]:
    stored = lake.get(run_manifest_key(PROJECT, "run-1"))
    assert stored is not None
    parsed: dict[str, object] = orjson.loads(stored.body)
    return parsed


def test_a_finalized_run_is_not_closed_again(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock, snapshots: RecordingSnapshots
) -> None:
    # Given a finished run
    _ran(state, clock, RowOutcome("l1", "written", key=NEW, last_edited_at=clock(), sha256="s1"))
    # When the finalizer is called twice (a redelivered finalize request)
    first = finalize(PROJECT, "run-1", CONFIG, deps)
    clock.advance(60)
    second = finalize(PROJECT, "run-1", CONFIG, deps)
    # Then only the first does anything
    assert first.status == "finalized" and second.status == "already_finalized"
    assert len(snapshots.calls) == 1
    assert list(lake.list_keys("runs/")) == [run_manifest_key(PROJECT, "run-1")]
    assert state.get_watermark(PROJECT) == first.watermark_after


def test_a_clean_run_commits_its_signpost_and_releases_the_lease(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    state.acquire_lease(PROJECT, "run-1", clock(), 900)
    run = _ran(state, clock, prev=clock() - timedelta(hours=1))
    clock.advance(30)
    result = finalize(PROJECT, "run-1", CONFIG, deps)
    assert result.watermark_after == run.signpost == state.get_watermark(PROJECT)
    assert state.acquire_lease(PROJECT, "run-2", clock(), 900)


def test_an_open_gap_holds_the_watermark(deps: MirrorDeps, state: SqliteStateStore, clock: Clock) -> None:
    # Given a previous mark, and a row that failed for good with a version edited after it
    previous = clock() - timedelta(hours=1)
    state.set_watermark(PROJECT, previous)
    failed_at = clock() - timedelta(minutes=10)
    state.add_gaps([Gap(PROJECT, "l9", failed_at, "run-1", "429")])
    _ran(state, clock, RowOutcome("l9", "failed", last_edited_at=failed_at, reason="429"), prev=previous)
    # When the run finalizes
    result = finalize(PROJECT, "run-1", CONFIG, deps)
    # Then the mark stops at the gap, not at the signpost
    assert result.watermark_after == failed_at == state.get_watermark(PROJECT)
    assert result.gaps_open == 1


def test_a_gap_of_unknown_version_keeps_the_previous_watermark(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    previous = clock() - timedelta(hours=1)
    state.set_watermark(PROJECT, previous)
    state.add_gaps([Gap(PROJECT, "l9", None, "run-1", "load failed")])
    _ran(state, clock, prev=previous)
    assert finalize(PROJECT, "run-1", CONFIG, deps).watermark_after == previous
    assert state.get_watermark(PROJECT) == previous


def test_touched_partitions_go_to_the_snapshot_step_and_their_events_are_published(
    deps: MirrorDeps,
    state: SqliteStateStore,
    clock: Clock,
    snapshots: RecordingSnapshots,
    events: RecordingEvents,
) -> None:
    # Given a run that wrote l1, moved l2 from Annotate to Review, removed l3 from a branch partition
    _ran(
        state,
        clock,
        RowOutcome("l1", "written", key=NEW.replace("l2", "l1")),
        RowOutcome("l2", "moved", key=NEW, old_key=OLD),
        RowOutcome("l3", "removed", old_key=BRANCH),
        RowOutcome("l4", "unchanged", key=NEW.replace("l2", "l4")),
    )
    # When it finalizes
    result = finalize(PROJECT, "run-1", CONFIG, deps)
    # Then each touched partition is refreshed once with what went in and out of it
    changes = {c.partition: (c.upserted, c.removed) for c, _ in snapshots.calls}
    assert changes == {
        Partition(PROJECT, "main", "review-5a5a0002"): (("l1", "l2"), ()),
        Partition(PROJECT, "main", "annotate-5a5a0001"): ((), ("l2",)),
        Partition(PROJECT, "consensus/1", "annotate-5a5a0001"): ((), ("l3",)),
    }
    # and the snapshots' events are published
    assert [e.snapshot_id for e in events.published] == [e.snapshot_id for e in result.snapshots]
    assert len(result.snapshots) == 3


def test_snapshot_retention_runs_after_the_snapshots_only_when_set(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock, snapshots: RecordingSnapshots
) -> None:
    # Given two runs, finalized without and then with a retention setting
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))
    finalize(PROJECT, "run-1", CONFIG, deps)
    _ran(state, clock, RowOutcome("l1", "written", key=NEW), run_id="run-2")
    keeping = CONFIG.model_copy(update={"snapshots_keep": 3, "snapshots_keep_days": 30})
    finalize(PROJECT, "run-2", keeping, deps)
    # Then only the second asked the snapshot step to prune, after refreshing, with the setting
    assert snapshots.prunes == [(PROJECT, 3, 30)]
    assert len(snapshots.calls) == 2


def test_a_failing_snapshot_is_recorded_and_does_not_hold_the_run(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock
) -> None:
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))
    result = finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=RecordingSnapshots(fail=True)))
    assert result.status == "finalized" and state.get_watermark(PROJECT) == result.watermark_after
    assert "snapshot store unavailable" in result.errors[0]
    assert _manifest(lake)["errors"] == list(result.errors)
    assert result.snapshots_owed == 1 and _manifest(lake)["snapshots_owed"] == 1


def test_a_failed_snapshot_is_owed_until_a_later_finalizer_rebuilds_it(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given run 1 wrote l2 into Review and moved it out of Annotate, and both snapshots failed
    _ran(state, clock, RowOutcome("l2", "moved", key=NEW, old_key=OLD))
    first = finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=RecordingSnapshots(fail=True)))
    review = partition_of(NEW)
    annotate = partition_of(OLD)
    assert first.snapshots_owed == 2
    assert {(d.partition, d.run_id) for d in state.owed_snapshots(PROJECT)} == {
        (review, "run-1"),
        (annotate, "run-1"),
    }
    # When run 2 touched only the branch partition and its finalizer's snapshot step works again (the
    # owed snapshots lack l2 in Review and still hold it in Annotate)
    clock.advance(60)
    _ran(state, clock, RowOutcome("l3", "removed", old_key=BRANCH), run_id="run-2")
    state.put_index(IndexEntry(PROJECT, "l2", "d2", "main", NEW, review.stage, clock(), "s2", "e2", clock()))
    stale = [PartitionChanges(review, ("l2",), ()), PartitionChanges(annotate, (), ("l2",))]
    snapshots = RecordingSnapshots(drifted=stale)
    second = finalize(PROJECT, "run-2", CONFIG, replace(deps, snapshots=snapshots))
    # Then each owed partition is checked against the row index and rebuilt with what differs, checking
    # all its rows (rescan), the branch one with what the run did, and nothing is owed any more
    assert sorted(snapshots.checked) == [(annotate, {}, True), (review, {"l2": "s2"}, True)]
    calls = {c.partition: c for c, _ in snapshots.calls}
    assert calls == {
        review: replace(stale[0], rescan=True),
        annotate: replace(stale[1], rescan=True),
        partition_of(BRANCH): PartitionChanges(partition_of(BRANCH), (), ("l3",)),
    }
    assert second.snapshots_owed == 0 and second.errors == ()
    assert state.owed_snapshots(PROJECT) == []
    assert len(second.snapshots) == 3


def test_a_snapshot_that_fails_again_stays_owed_by_the_latest_run(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))
    finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=RecordingSnapshots(fail=True)))
    clock.advance(60)
    _ran(state, clock, run_id="run-2")  # a run that changed nothing
    stale = PartitionChanges(partition_of(NEW), ("l1",), ())
    failing = RecordingSnapshots(fail=True, drifted=[stale])
    second = finalize(PROJECT, "run-2", CONFIG, replace(deps, snapshots=failing))
    assert [c for c, _ in failing.calls] == [replace(stale, rescan=True)]
    assert second.snapshots_owed == 1
    assert [(d.partition, d.run_id) for d in state.owed_snapshots(PROJECT)] == [(partition_of(NEW), "run-2")]


def test_a_partition_whose_snapshot_is_of_an_older_format_is_rebuilt_by_the_next_run(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a run that changed nothing, and a snapshot step that finds Annotate's snapshot of an older format
    _ran(state, clock)
    snapshots = RecordingSnapshots(outdated=[partition_of(OLD)])
    # When it finalizes
    result = finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=snapshots))
    # Then that partition is rebuilt (rescanned) though none of its rows changed
    assert [(c.partition, c.rescan) for c, _ in snapshots.calls] == [(partition_of(OLD), True)]
    assert len(result.snapshots) == 1 and result.snapshots_owed == 0


def test_the_manifest_has_counts_rows_and_unlabelled(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock
) -> None:
    _ran(
        state,
        clock,
        RowOutcome("l1", "written", key=NEW.replace("l2", "l1"), last_edited_at=clock(), sha256="abc"),
        RowOutcome("l2", "moved", key=NEW, old_key=OLD, last_edited_at=clock(), sha256="def"),
        RowOutcome("l9", "failed", reason="corrupt"),
    )
    finalize(PROJECT, "run-1", CONFIG, deps)
    manifest = _manifest(lake)
    assert manifest["counts"] == {
        "written": 1,
        "moved": 1,
        "failed": 1,
        "unchanged": 0,
        "removed": 0,
        "stale": 0,
    }
    assert manifest["unlabelled"] == ["data-unlabelled"]
    assert manifest["mode"] == "incremental" and manifest["signpost"] == clock().isoformat()
    rows = manifest["rows"]
    assert isinstance(rows, list)
    assert rows[0] == {
        "label_hash": "l1",
        "status": "written",
        "key": NEW.replace("l2", "l1"),
        "old_key": None,
        "last_edited_at": clock().isoformat(),
        "sha256": "abc",
        "reason": None,
    }


def test_the_manifest_is_written_last(state: SqliteStateStore, clock: Clock, tmp_path: Path) -> None:
    # Given adapters that log every effect in order
    log: list[str] = []
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))

    class LoggingLake(LocalLake):
        def put(self, key: str, body: bytes, **kw: object) -> str:
            log.append(f"put {key.split('/')[0]} {kw}")
            return super().put(key, body, **kw)  # type: ignore[arg-type]

    class LoggingState(SqliteStateStore):
        def set_watermark(self, project_hash: str, value: datetime) -> None:
            log.append("watermark")
            super().set_watermark(project_hash, value)

    class LoggingSnapshots(RecordingSnapshots):
        def refresh(
            self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
        ) -> SnapshotEvent | None:
            log.append("snapshot")
            return super().refresh(project, changes, run_id=run_id, now=now)

    class LoggingEvents(RecordingEvents):
        def publish(self, events: Sequence[SnapshotEvent]) -> SendReceipt:
            log.append("events")
            return super().publish(events)

    logging_state = LoggingState(state.path)
    deps = MirrorDeps(
        FakeSource(clock=clock),
        LoggingLake(tmp_path / "lake"),
        logging_state,
        None,  # type: ignore[arg-type]  # the finalizer never sends work
        LoggingEvents(),
        LoggingSnapshots(),
        clock,
    )
    # When the run finalizes
    finalize(PROJECT, "run-1", CONFIG, deps)
    logging_state.close()
    # Then the manifest is the last effect, and create-only
    assert log == ["watermark", "snapshot", "events", "put runs {'if_none_match': True}"]


def test_an_existing_manifest_is_never_overwritten(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock
) -> None:
    # Given an object already at the run's manifest key
    _ran(state, clock)
    lake.put(run_manifest_key(PROJECT, "run-1"), b'{"first": true}')
    # When the finalizer runs
    finalize(PROJECT, "run-1", CONFIG, deps)
    # Then the first manifest stays as it was
    assert _manifest(lake) == {"first": True}


def test_an_unknown_run_is_reported_not_claimed(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    assert finalize(PROJECT, "nope", CONFIG, deps).status == "unknown_run"
    assert state.begin_finalize(PROJECT, "nope", "someone", clock(), 900) == "claimed"


@pytest.mark.parametrize(
    ("key", "partition"),
    [
        (NEW, Partition(PROJECT, "main", "review-5a5a0002")),
        (BRANCH, Partition(PROJECT, "consensus/1", "annotate-5a5a0001")),
        (
            "coco/project=proj-0001/branch=consensus%2F1/stage=annotate-5a5a0001/latest.json",
            Partition(PROJECT, "consensus/1", "annotate-5a5a0001"),
        ),
    ],
)
def test_partition_of_a_label_key_or_a_latest_json(key: str, partition: Partition) -> None:
    assert partition_of(key) == partition


def test_partition_of_refuses_other_keys() -> None:
    with pytest.raises(ValueError, match="not a label key"):
        partition_of("runs/project=proj-0001/run-1.json")
    with pytest.raises(ValueError, match="not a label key"):
        partition_of("coco/project=p/branch=main/stage=s/snapshots/id/coco.json")


def test_a_sync_hands_its_changes_to_the_snapshot_step(
    mirror: Mirror, source: FakeSource, clock: Clock, lake: LocalLake
) -> None:
    # Given a synced project, and a snapshot step
    source.add(3)
    snapshots = RecordingSnapshots()
    run_local_sync(CONFIG, source, lake, mirror.state, snapshots=snapshots, clock=clock)
    clock.advance(60)
    # When one row moves to Review and a full sync runs
    source.move("label-0001", REVIEW)
    summary = run_local_sync(CONFIG, source, lake, mirror.state, snapshots=snapshots, full=True, clock=clock)
    # Then the second run refreshed the two partitions it touched, and their events are in the lake
    second = [c for c, run_id in snapshots.calls if run_id == summary.projects[0].run_id]
    assert {c.partition.stage: (c.upserted, c.removed) for c in second} == {
        "review-5a5a0002": (("label-0001",), ()),
        "annotate-5a5a0001": ((), ("label-0001",)),
    }
    events = lake.get("events/events.jsonl")
    assert events is not None and len(events.body.splitlines()) == 3  # 1 from the first sync, 2 now


def test_snapshots_are_skipped_with_a_reason_when_project_info_fails(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock, source: FakeSource
) -> None:
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))

    def encord_down(project_hash: str) -> ProjectInfo:
        raise TimeoutError("encord down")

    source.project_info = encord_down  # type: ignore[method-assign]
    result = finalize(PROJECT, "run-1", CONFIG, deps)
    assert result.status == "finalized" and "encord down" in result.errors[0]
    assert _manifest(lake)["errors"] == list(result.errors)
    # and the partition is owed its snapshot, for the next finalizer
    assert [d.partition for d in state.owed_snapshots(PROJECT)] == [partition_of(NEW)]


def test_a_finalizer_that_fails_still_frees_the_project(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a run holding the lease, and an event sink that breaks
    state.acquire_lease(PROJECT, "run-1", clock(), 900)
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))
    # When the finalizer fails
    with pytest.raises(ConnectionError):
        finalize(PROJECT, "run-1", CONFIG, replace(deps, events=RecordingEvents(fail=True)))
    # Then the next run can start at once
    assert state.acquire_lease(PROJECT, "run-2", clock(), 900)


def test_a_finalizer_that_died_after_claiming_is_redone_by_its_retry(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock
) -> None:
    # Given a finished run holding the lease, whose first finalizer dies after claiming it (the event bus
    # breaks before the manifest is written)
    state.acquire_lease(PROJECT, "run-1", clock(), 900)
    run = _ran(state, clock, RowOutcome("l1", "written", key=NEW, last_edited_at=clock()))
    with pytest.raises(ConnectionError):
        finalize(PROJECT, "run-1", CONFIG, replace(deps, events=RecordingEvents(fail=True)))
    assert lake.get(run_manifest_key(PROJECT, "run-1")) is None
    # When the finalize request is retried
    clock.advance(5)
    retry = finalize(PROJECT, "run-1", CONFIG, deps)
    # Then the retry completes the run: manifest, watermark, lease; and only now is it "already finalized"
    assert retry.status == "finalized"
    assert _manifest(lake)["run_id"] == "run-1"
    assert state.get_watermark(PROJECT) == run.signpost
    assert state.acquire_lease(PROJECT, "run-2", clock(), 900)
    assert finalize(PROJECT, "run-1", CONFIG, deps).status == "already_finalized"


def test_a_finalizer_killed_without_a_word_is_redone_once_its_claim_expires(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock
) -> None:
    # Given a finished run whose finalizer claimed it and then vanished (a Lambda timeout, kill -9)
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))
    assert state.begin_finalize(PROJECT, "run-1", "vanished", clock(), CONFIG.lease_ttl_seconds) == "claimed"
    # When the finalize request is retried before and after the claim expires
    early = finalize(PROJECT, "run-1", CONFIG, deps)
    clock.advance(CONFIG.lease_ttl_seconds + 1)
    late = finalize(PROJECT, "run-1", CONFIG, deps)
    # Then the early one leaves the run alone ("busy": asked again later), the late one closes it
    assert early.status == "busy" and late.status == "finalized"
    assert _manifest(lake)["run_id"] == "run-1"


def test_concurrent_finalizers_close_a_run_once(
    deps: MirrorDeps, state: SqliteStateStore, lake: LocalLake, clock: Clock, events: RecordingEvents
) -> None:
    # Given a finished run whose snapshot step is slow enough for finalizers to overlap
    _ran(state, clock, RowOutcome("l1", "written", key=NEW), RowOutcome("l2", "moved", key=NEW, old_key=OLD))

    class SlowSnapshots(RecordingSnapshots):
        def refresh(
            self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
        ) -> SnapshotEvent | None:
            time.sleep(0.05)
            return super().refresh(project, changes, run_id=run_id, now=now)

    slow = SlowSnapshots()
    statuses: list[str] = []
    start = threading.Barrier(6)

    def one() -> None:
        start.wait()
        statuses.append(finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=slow)).status)

    # When six finalizers run at once
    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then one closed the run, each partition was refreshed and announced once, and one manifest exists
    assert statuses.count("finalized") == 1
    assert set(statuses) <= {"finalized", "busy", "already_finalized"}
    assert len(slow.calls) == 2 and len(events.published) == 2
    assert list(lake.list_keys("runs/")) == [run_manifest_key(PROJECT, "run-1")]


class _ManifestFailsOnce(LocalLake):
    """A lake whose first run-manifest write fails: the finalizer dies after publishing its events."""

    failed = False

    def put(self, key: str, body: bytes, **kw: object) -> str:
        if key.startswith("runs/") and not self.failed:
            self.failed = True
            raise OSError("disk full")
        return super().put(key, body, **kw)  # type: ignore[arg-type]


def _event_lines(lake: LocalLake) -> list[dict[str, object]]:
    stored = lake.get(EVENTS_KEY)
    return [] if stored is None else [orjson.loads(line) for line in stored.body.splitlines()]


def test_a_finalizer_that_died_after_publishing_does_not_announce_again_on_its_retry(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock, tmp_path: Path
) -> None:
    # Given a finished run that touched two partitions, and a finalizer that publishes its two events
    # to the lake's events file and dies before writing the manifest
    _ran(state, clock, RowOutcome("l2", "moved", key=NEW, old_key=OLD))
    lake = _ManifestFailsOnce(tmp_path / "lake2")
    dying = replace(deps, lake=lake, events=JsonlEventSink(lake, clock=clock))
    with pytest.raises(OSError, match="disk full"):
        finalize(PROJECT, "run-1", CONFIG, dying)
    assert len(_event_lines(lake)) == 2
    # When the finalizer is retried
    retry = finalize(PROJECT, "run-1", CONFIG, dying)
    # Then the run closes and each snapshot is still announced exactly once, with its event id
    assert retry.status == "finalized" and lake.get(run_manifest_key(PROJECT, "run-1")) is not None
    details = [line["detail"] for line in _event_lines(lake)]
    assert sorted(d["event_id"] for d in details) == sorted(s.event_id for s in retry.snapshots)  # type: ignore[index]
    assert state.pending_events(PROJECT) == []


def test_a_finalizer_that_died_before_publishing_announces_on_its_retry(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock, events: RecordingEvents
) -> None:
    # Given a finished run whose finalizer committed a snapshot, then died as it published the event
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))
    with pytest.raises(ConnectionError):
        finalize(PROJECT, "run-1", CONFIG, replace(deps, events=RecordingEvents(fail=True)))
    # When the finalizer is retried, and asked once more after it closed the run
    retry = finalize(PROJECT, "run-1", CONFIG, deps)
    finalize(PROJECT, "run-1", CONFIG, deps)
    # Then the snapshot was announced once
    assert [e.event_id for e in events.published] == [s.event_id for s in retry.snapshots]
    assert len(events.published) == 1


def test_an_event_the_sink_refused_is_sent_by_the_projects_next_finalizer(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock, events: RecordingEvents
) -> None:
    # Given a run whose event the sink refused (the run closed, the refusal in its manifest)
    _ran(state, clock, RowOutcome("l1", "written", key=NEW))

    class Refusing(RecordingEvents):
        def publish(self, events: Sequence[SnapshotEvent]) -> SendReceipt:
            return SendReceipt(sent=(), failed={e.event_id: "ThrottlingException" for e in events})

    first = finalize(PROJECT, "run-1", CONFIG, replace(deps, events=Refusing()))
    assert first.status == "finalized" and "ThrottlingException" in first.errors[0]
    # When the project's next run finalizes
    clock.advance(60)
    state.create_run(RunRecord(PROJECT, "run-2", clock(), None, False, ("run-2-00000",)))
    state.record_chunk(
        PROJECT, ChunkResult("run-2", "run-2-00000", (RowOutcome("l5", "written", key=OLD),), True)
    )
    second = finalize(PROJECT, "run-2", CONFIG, deps)
    # Then it sends the refused event first, then its own, and nothing is left pending
    assert [e.event_id for e in events.published] == [
        *(s.event_id for s in first.snapshots),
        *(s.event_id for s in second.snapshots),
    ]
    assert state.pending_events(PROJECT) == []
