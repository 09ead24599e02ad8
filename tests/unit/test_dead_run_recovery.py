"""What a run that died leaves, and how the next one finishes it: snapshot debts recorded before rows
change, checked against the row index by the next finalizer; a reconciling run that died is redone; an
event published twice is in the events file once. (The kill test itself: tests/e2e/test_crash_recovery.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest
from fakes import ANNOTATE, PROJECT, REVIEW, Clock, FakeSource, RecordingSnapshots

from encord_mirror.adapters.local import EVENTS_KEY, JsonlEventSink, LocalLake, SqliteStateStore
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.finalizer import finalize
from encord_mirror.domain.lake import partition_of, stage_value
from encord_mirror.domain.models import (
    ChunkMessage,
    ChunkResult,
    IndexEntry,
    Partition,
    PartitionChanges,
    RowOutcome,
    RunRecord,
    SnapshotDebt,
    SnapshotEvent,
)
from encord_mirror.domain.planner import plan
from encord_mirror.domain.worker import SYNCED_IN_THIS_RUN, process_chunk

CONFIG = MirrorConfig(projects=(PROJECT,))
A = Partition(PROJECT, "main", stage_value(ANNOTATE.uuid, ANNOTATE.title))
R = Partition(PROJECT, "main", stage_value(REVIEW.uuid, REVIEW.title))
KEY_A = f"labels/project={PROJECT}/branch=main/stage={A.stage}/l1.json"


def _ran(
    state: SqliteStateStore, clock: Clock, run_id: str, *outcomes: RowOutcome, full: bool = False
) -> None:
    chunk = f"{run_id}-00000"
    state.create_run(RunRecord(PROJECT, run_id, clock(), None, full, (chunk,), started_at=clock()))
    state.record_chunk(PROJECT, ChunkResult(run_id, chunk, outcomes, final=True))


def _indexed(state: SqliteStateStore, clock: Clock, label_hash: str, part: Partition, sha: str) -> None:
    key = f"labels/project={PROJECT}/branch={part.branch}/stage={part.stage}/{label_hash}.json"
    state.put_index(
        IndexEntry(PROJECT, label_hash, "d", part.branch, key, part.stage, clock(), sha, "e", clock())
    )


def test_a_partition_a_dead_run_was_writing_is_checked_against_the_index_and_rebuilt(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a run that died after changing a row in Annotate (its debt is still there), and a next run
    # that changed nothing
    state.owe_snapshots([SnapshotDebt.writing(A, "run-0")])
    _indexed(state, clock, "l1", A, "sha-1")
    _ran(state, clock, "run-1")
    stale = PartitionChanges(A, ("l1",), ())
    snapshots = RecordingSnapshots(drifted=[stale])
    # When the next run's finalizer runs
    result = finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=snapshots))
    # Then it compared Annotate's snapshot with the index, recovering, and rebuilt what differs
    assert snapshots.checked == [(A, {"l1": "sha-1"}, True)]
    assert [c for c, _ in snapshots.calls] == [stale]
    assert result.snapshots_owed == 0 and state.owed_snapshots(PROJECT) == []
    assert [e.stage for e in result.snapshots] == [A.stage]


def test_a_runs_own_partitions_are_checked_only_when_a_chunk_found_an_earlier_attempts_rows(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a run whose worker owed Annotate and wrote l1 there
    state.owe_snapshots([SnapshotDebt.writing(A, "run-1")])
    _ran(state, clock, "run-1", RowOutcome("l1", "written", key=KEY_A))
    snapshots = RecordingSnapshots()
    # When it is finalized / Then the outcomes say what changed: no check, and the debt is settled
    finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=snapshots))
    assert snapshots.checked == [] and [c for c, _ in snapshots.calls] == [PartitionChanges(A, ("l1",), ())]
    assert state.owed_snapshots(PROJECT) == []

    # Given a run whose chunk found l1 written by an earlier, killed attempt of its own
    clock.advance(60)
    state.owe_snapshots([SnapshotDebt.writing(A, "run-2")])
    _indexed(state, clock, "l1", A, "sha-2")
    _ran(state, clock, "run-2", RowOutcome("l1", "unchanged", key=KEY_A, reason=SYNCED_IN_THIS_RUN))
    snapshots = RecordingSnapshots(drifted=[PartitionChanges(A, ("l1",), ())])
    # When it is finalized / Then its partition is checked against the index, and rebuilt
    finalize(PROJECT, "run-2", CONFIG, replace(deps, snapshots=snapshots))
    assert snapshots.checked == [(A, {"l1": "sha-2"}, True)]
    assert [c for c, _ in snapshots.calls] == [PartitionChanges(A, ("l1",), ())]


def test_a_reconciling_run_checks_every_partition_of_the_index_and_of_the_snapshots(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given rows indexed in Annotate, and a snapshot of Review (whose rows all left)
    _indexed(state, clock, "l1", A, "sha-1")
    snapshots = RecordingSnapshots(drifted=[PartitionChanges(R, (), ("l9",))])
    snapshots.latest.add(R)
    _ran(state, clock, "run-1", full=True)
    # When the reconciling run is finalized
    finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=snapshots))
    # Then both are checked (without recovering: no run died), and Review is rebuilt without its row
    assert sorted(snapshots.checked) == [(A, {"l1": "sha-1"}, False), (R, {}, False)]
    assert [c for c, _ in snapshots.calls] == [PartitionChanges(R, (), ("l9",))]


def test_without_snapshots_no_partition_stays_owed(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    state.owe_snapshots([SnapshotDebt.writing(A, "run-1"), SnapshotDebt(R, "run-0", "disk full")])
    _ran(state, clock, "run-1", RowOutcome("l1", "written", key=KEY_A))
    result = finalize(PROJECT, "run-1", CONFIG, replace(deps, snapshots=None))
    assert result.snapshots_owed == 0 and state.owed_snapshots(PROJECT) == []


def test_events_are_recorded_before_any_debt_is_settled(
    deps: MirrorDeps, lake: LocalLake, clock: Clock
) -> None:
    # Given a state that logs when events are recorded and debts settled
    log: list[str] = []

    class LoggingState(SqliteStateStore):
        def stage_events(self, project_hash: str, events: Sequence[SnapshotEvent]) -> None:
            log.append(f"stage {len(events)}")
            super().stage_events(project_hash, events)

        def settle_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
            log.append(f"settle {len(debts)}")
            super().settle_snapshots(debts)

    state = LoggingState(lake.root.parent / "logging.db")
    state.owe_snapshots([SnapshotDebt.writing(A, "run-1")])
    _ran(state, clock, "run-1", RowOutcome("l1", "written", key=KEY_A))
    # When the run is finalized / Then its event is recorded first: a finalizer killed between the two
    # leaves the debt, and the next one recovers the event
    finalize(PROJECT, "run-1", CONFIG, replace(deps, state=state))
    assert log == ["stage 1", "settle 1"]
    state.close()


class Killed(BaseException):
    """The worker dies here (SIGKILL, a Lambda timeout): nothing after it runs."""


def test_a_chunk_owes_the_partitions_it_changes_before_it_changes_them_keeping_another_runs_debt(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a row synced in Annotate, since moved to Review, and Annotate owed by a run that died
    (h,) = source.add(1)
    state.create_run(RunRecord(PROJECT, "run-1", clock(), None, False, ("run-1-00000",)))
    process_chunk(
        ChunkMessage(PROJECT, "run-1", "run-1-00000", (h,)), CONFIG, deps, attempt=1, max_attempts=3
    )
    state.settle_snapshots(state.owed_snapshots(PROJECT))
    source.move(h, REVIEW)
    state.owe_snapshots([SnapshotDebt(A, "run-0", "disk full")])
    clock.advance(60)
    state.create_run(RunRecord(PROJECT, "run-2", clock(), None, False, ("run-2-00000",)))

    # When run 2's worker dies at its first write to the lake
    def die(*args: object, **kwargs: object) -> str:
        raise Killed

    msg = ChunkMessage(PROJECT, "run-2", "run-2-00000", (h,))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lake, "put", die)
        with pytest.raises(Killed):
            process_chunk(msg, CONFIG, deps, attempt=1, max_attempts=3)

    # Then Review is owed by run 2 already, and Annotate keeps the dead run's debt
    owed = {d.partition: (d.run_id, d.writing_only) for d in state.owed_snapshots(PROJECT)}
    assert owed == {A: ("run-0", False), R: ("run-2", True)}
    assert partition_of(KEY_A.replace("l1", h)) == A


@pytest.mark.parametrize("dead_full", [True, False], ids=["reconciling", "incremental"])
def test_a_run_after_a_run_that_died_reconciles_if_that_one_was_reconciling(
    deps: MirrorDeps, state: SqliteStateStore, clock: Clock, dead_full: bool
) -> None:
    # Given a lake synced once, then a run that died holding the lease (expired since)
    state.set_watermark(PROJECT, clock() - timedelta(hours=1))
    state.set_filters(PROJECT, CONFIG.filters_fingerprint())
    state.next_run_number(PROJECT)
    dead = RunRecord(PROJECT, "run-dead", clock(), clock(), dead_full, ())
    state.create_run(dead)
    assert state.acquire_lease(PROJECT, "run-dead", clock() - timedelta(hours=1), 60)
    # When the next run is planned / Then it reconciles exactly when the dead one did
    result = plan(PROJECT, CONFIG, deps)
    assert result.status == "planned" and result.full is dead_full


def test_an_event_already_in_the_events_file_is_not_appended_again(lake: LocalLake, clock: Clock) -> None:
    # Given an event published, by a finalizer that then died before recording it as sent
    sink = JsonlEventSink(lake, clock=clock)
    first = SnapshotEvent("20261123T120000.000Z-aa", PROJECT, "main", A.stage, {"counts": {}})
    second = replace(first, snapshot_id="20261123T121500.000Z-bb")
    assert sink.publish([first]).sent == (first.event_id,)
    # When the next finalizer publishes it again, with a new one
    receipt = sink.publish([first, second])
    # Then both are reported sent, and the file holds each once
    assert receipt.sent == (first.event_id, second.event_id)
    stored = lake.get(EVENTS_KEY)
    assert stored is not None
    assert [first.event_id.encode() in line for line in stored.body.splitlines()] == [True, False]
    assert len(stored.body.splitlines()) == 2
