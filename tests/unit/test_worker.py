"""The worker: one chunk into the lake, newer-wins, idempotent under duplicated, reordered and
redelivered delivery; failures reported per row and turned into gaps on the last attempt."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import orjson
import pytest
from fakes import PROJECT, REVIEW, Clock, FakeSource, RecordingEvents, RecordingQueue, labels_dict

from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.models import ChunkMessage, ChunkResult, Gap, RunRecord
from encord_mirror.domain.rowdoc import build_document, encode_document
from encord_mirror.domain.worker import process_chunk

CONFIG = MirrorConfig(projects=(PROJECT,), max_attempts=3)
ANNOTATE_KEY = "labels/project=proj-0001/branch=main/stage=annotate-5a5a0001/{}.json"
REVIEW_KEY = "labels/project=proj-0001/branch=main/stage=review-5a5a0002/{}.json"


def _run(state: SqliteStateStore, clock: Clock, run_id: str = "run-1", chunks: int = 1) -> RunRecord:
    run = RunRecord(PROJECT, run_id, clock(), None, False, tuple(f"{run_id}-{i:05d}" for i in range(chunks)))
    state.create_run(run)
    return run


def _chunk(
    hashes: Sequence[str], removals: Sequence[str] = (), run_id: str = "run-1", i: int = 0
) -> ChunkMessage:
    return ChunkMessage(PROJECT, run_id, f"{run_id}-{i:05d}", tuple(hashes), tuple(removals))


def _process(deps: MirrorDeps, msg: ChunkMessage, attempt: int = 1) -> ChunkResult:
    return process_chunk(msg, CONFIG, deps, attempt=attempt, max_attempts=CONFIG.max_attempts)


def _status(result: ChunkResult) -> dict[str, str]:
    return {o.label_hash: o.status for o in result.outcomes}


def _lake_bytes(lake: LocalLake) -> dict[str, bytes]:
    return {k: lake.get(k).body for k in lake.list_keys("labels/")}  # type: ignore[union-attr]


def test_a_row_is_written_to_its_partition_with_encord_keys_and_mirror_metadata(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a row in the Annotate stage
    (h,) = source.add(1)
    _run(state, clock)
    # When its chunk is processed
    result = _process(deps, _chunk([h]))
    # Then the lake holds to_encord_dict() unchanged plus `mirror`, at the stage partition key
    assert _status(result) == {h: "written"}
    stored = lake.get(ANNOTATE_KEY.format(h))
    assert stored is not None
    document = orjson.loads(stored.body)
    assert {k: v for k, v in document.items() if k != "mirror"} == labels_dict(
        h, "data-0000", "main", clock(), 1
    )
    assert document["mirror"]["stage_title"] == "Annotate" and document["mirror"]["task_status"] == "ASSIGNED"
    # and the index points at it with the object's etag
    entry = state.get_index(PROJECT, h)
    assert entry is not None and entry.key == ANNOTATE_KEY.format(h) and entry.etag == stored.etag


def test_a_duplicated_chunk_leaves_the_lake_byte_identical(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a chunk already processed once
    hashes = source.add(5)
    _run(state, clock)
    _process(deps, _chunk(hashes))
    before = _lake_bytes(lake)
    # When the same chunk is delivered again, later
    clock.advance(600)
    again = _process(deps, _chunk(hashes))
    # Then nothing is rewritten, not even the sync time
    assert _lake_bytes(lake) == before
    # and the duplicate reports what the chunk did (once), so a ledger that keeps the last record of a
    # chunk still counts the rows as written in the run's manifest
    assert set(_status(again).values()) == {"written"}


def test_unchanged_content_is_not_rewritten(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a synced row
    (h,) = source.add(1)
    _run(state, clock)
    _process(deps, _chunk([h]))
    path = lake.root / ANNOTATE_KEY.format(h)
    inode = path.stat().st_ino
    # When a later run syncs the same version again
    clock.advance(60)
    _run(state, clock, "run-2")
    result = _process(deps, _chunk([h], run_id="run-2"))
    # Then the file is the very same one (no write, no rename)
    assert _status(result) == {h: "unchanged"} and path.stat().st_ino == inode


def test_an_older_version_arriving_after_a_newer_one_is_ignored(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given version 1 of a row, then version 2 synced by a later run
    (h,) = source.add(1)
    _run(state, clock, "run-1")
    v1 = source.row(h)
    v1_labels = labels_dict(h, v1.data_hash, "main", v1.last_edited_at, 1)  # type: ignore[arg-type]
    v1_edited = v1.last_edited_at
    clock.advance(60)
    source.edit(h)
    _run(state, clock, "run-2")
    _process(deps, _chunk([h], run_id="run-2"))
    newer = _lake_bytes(lake)
    # When run 1's chunk is delivered late and the source still served version 1 (a reordered delivery)
    source.edit(h, at=v1_edited)
    source.row(h).version = 1
    late = _process(deps, _chunk([h], run_id="run-1"))
    # Then the older version loses: the lake still holds version 2
    assert _status(late) == {h: "stale"}
    assert _lake_bytes(lake) == newer
    assert orjson.loads(newer[ANNOTATE_KEY.format(h)])["data_units"] != v1_labels["data_units"]


def test_a_stage_move_removes_the_old_copy_in_the_same_chunk(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a row synced in Annotate
    (h,) = source.add(1)
    _run(state, clock)
    _process(deps, _chunk([h]))
    # When it moves to Review (its edit time unchanged) and is synced again
    source.move(h, REVIEW)
    _run(state, clock, "run-2")
    result = _process(deps, _chunk([h], run_id="run-2"))
    # Then exactly one copy remains, in the Review partition
    (outcome,) = result.outcomes
    assert outcome.status == "moved" and outcome.old_key == ANNOTATE_KEY.format(h)
    assert list(lake.list_keys("labels/")) == [REVIEW_KEY.format(h)]
    assert state.get_index(PROJECT, h).key == REVIEW_KEY.format(h)  # type: ignore[union-attr]


def test_a_poison_row_fails_alone(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a chunk whose second row is corrupt, and whose fourth the bundle response leaves out
    hashes = source.add(5)
    source.poison.add(hashes[1])
    source.dropped.add(hashes[3])
    _run(state, clock)
    # When it is processed
    result = _process(deps, _chunk(hashes))
    # Then those two fail with their reason and the other three are written
    statuses = _status(result)
    assert [statuses[h] for h in hashes] == ["written", "failed", "written", "failed", "written"]
    reasons = {o.label_hash: o.reason for o in result.outcomes}
    assert "not serialisable" in (reasons[hashes[1]] or "")
    assert "uninitialised" in (reasons[hashes[3]] or "")
    assert len(list(lake.list_keys("labels/"))) == 3


def test_failures_are_retried_then_become_gaps_on_the_last_attempt(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock, queue: RecordingQueue
) -> None:
    # Given a 429 storm: every load fails
    hashes = source.add(2)
    source.load_error = RuntimeError("429 Too Many Requests")
    _run(state, clock)
    # When the chunk is delivered for the first time
    first = _process(deps, _chunk(hashes), attempt=1)
    # Then it is not final (the queue will redeliver), and no gap or finalize yet
    assert not first.final and state.list_gaps(PROJECT) == [] and queue.finalize_requests == []
    # When the last attempt fails too
    last = _process(deps, _chunk(hashes), attempt=3)
    # Then it is final, its rows are gaps, and the run (all chunks final) asks for its finalize
    assert last.final
    assert [g.label_hash for g in state.list_gaps(PROJECT)] == hashes
    assert "429" in state.list_gaps(PROJECT)[0].reason
    assert queue.finalize_requests == [(PROJECT, "run-1")]


def test_a_row_that_syncs_clears_its_gap(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    (h,) = source.add(1)
    state.add_gaps([Gap(PROJECT, h, None, "run-0", "429")])
    _run(state, clock)
    _process(deps, _chunk([h]))
    assert state.list_gaps(PROJECT) == []


def test_a_row_deleted_in_encord_is_removed_from_the_current_view(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given two synced rows
    a, b = source.add(2)
    _run(state, clock)
    _process(deps, _chunk([a, b]))
    # When one is deleted in Encord and a chunk asks for it (load says gone) and one is an explicit removal
    source.delete(a)
    _run(state, clock, "run-2")
    result = _process(deps, _chunk([a], removals=[b], run_id="run-2"))
    # Then both are gone from the lake and the index
    assert _status(result) == {a: "removed", b: "removed"}
    assert list(lake.list_keys("labels/")) == []
    assert state.get_index(PROJECT, a) is None and state.get_index(PROJECT, b) is None


def test_a_late_removal_never_deletes_a_version_synced_after_its_run(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given run 1 planned a removal, but before it was delivered the row was edited and synced by run 2
    (h,) = source.add(1)
    _run(state, clock, "run-1")
    clock.advance(60)
    source.edit(h)
    _run(state, clock, "run-2")
    _process(deps, _chunk([h], run_id="run-2"))
    # When run 1's removal arrives late
    result = _process(deps, _chunk([], removals=[h], run_id="run-1"))
    # Then the newer version stays
    assert _status(result) == {h: "stale"}
    assert list(lake.list_keys("labels/")) == [ANNOTATE_KEY.format(h)]


def test_a_row_written_by_a_concurrent_duplicate_is_adopted_not_overwritten(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given another delivery already put this very version in the lake but has not updated the index yet
    (h,) = source.add(1)
    row = source.load_rows(PROJECT, [h], bundle_size=1).loaded[0]
    document, _ = build_document(row, row.labels, synced_at=clock() - timedelta(seconds=5))
    body = encode_document(document)
    etag = lake.put(ANNOTATE_KEY.format(h), body, if_none_match=True)
    _run(state, clock)
    # When this delivery gets there
    result = _process(deps, _chunk([h]))
    # Then its create-only write loses, it sees the same content and keeps the object as it is, reported
    # written (the index held no such version, so neither did the partition's snapshot)
    assert _status(result) == {h: "written"}
    assert lake.get(ANNOTATE_KEY.format(h)).body == body  # type: ignore[union-attr]
    assert state.get_index(PROJECT, h).etag == etag  # type: ignore[union-attr]


def test_concurrent_deliveries_of_one_chunk_leave_one_consistent_copy(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a chunk delivered four times at once (SQS at-least-once)
    hashes = source.add(20)
    _run(state, clock)
    results: list[ChunkResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(_process(deps, _chunk(hashes)))) for _ in range(4)
    ]
    # When all deliveries run concurrently
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then no row failed, and each row has exactly one object, whose etag the index holds
    assert all(o.status in ("written", "unchanged") for r in results for o in r.outcomes)
    keys = list(lake.list_keys("labels/"))
    assert keys == sorted(ANNOTATE_KEY.format(h) for h in hashes)
    for h in hashes:
        entry = state.get_index(PROJECT, h)
        assert entry is not None and entry.etag == lake.get(entry.key).etag  # type: ignore[union-attr]


def test_reordered_chunks_of_one_run_give_the_same_lake(
    source: FakeSource, lake: LocalLake, clock: Clock
) -> None:
    # Given two runs: one processes chunks in order, the other in reverse, twice each
    hashes = source.add(6)
    lakes = []
    for order in ([0, 1, 2], [2, 1, 0, 2, 0]):
        other_lake = LocalLake(lake.root.parent / f"lake-{len(order)}")
        other_state = SqliteStateStore(lake.root.parent / f"state-{len(order)}.db")
        d = MirrorDeps(source, other_lake, other_state, RecordingQueue(), RecordingEvents(), None, clock)
        _run(other_state, clock, chunks=3)
        for i in order:
            process_chunk(
                _chunk(hashes[2 * i : 2 * i + 2], i=i), CONFIG, d, attempt=1, max_attempts=CONFIG.max_attempts
            )
        lakes.append(_lake_bytes(other_lake))
        other_state.close()
    # Then both lakes are byte-identical
    assert lakes[0] == lakes[1] and len(lakes[0]) == 6


def test_the_last_final_chunk_asks_for_the_runs_finalize_once_per_delivery(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock, queue: RecordingQueue
) -> None:
    hashes = source.add(4)
    _run(state, clock, chunks=2)
    _process(deps, _chunk(hashes[:2], i=0))
    assert queue.finalize_requests == []
    _process(deps, _chunk(hashes[2:], i=1))
    assert queue.finalize_requests == [(PROJECT, "run-1")]


def test_a_redelivery_reports_what_the_earlier_attempt_wrote(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a chunk whose first attempt wrote two rows and failed one
    hashes = source.add(3)
    source.failing[hashes[2]] = "left uninitialised"
    _run(state, clock)
    _process(deps, _chunk(hashes), attempt=1)
    # When the redelivery finds the two rows already there and the third now loads
    del source.failing[hashes[2]]
    again = _process(deps, _chunk(hashes), attempt=2)
    # Then the run's record still says the chunk wrote all three (not "unchanged")
    assert _status(again) == dict.fromkeys(hashes, "written")
    (recorded,) = state.chunk_results(PROJECT, "run-1")
    assert recorded.final and {o.status for o in recorded.outcomes} == {"written"}


class Killed(BaseException):
    """The worker process dies here (a Lambda timeout, a SIGKILL): nothing after it runs."""


class FailsOnce:
    """Wraps a method so that its first call raises `error` (Killed: the worker dies there)."""

    def __init__(self, target: object, name: str, error: BaseException) -> None:
        self.original = getattr(target, name)
        self.error = error
        self.calls = 0
        setattr(target, name, self)

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.original(*args, **kwargs)


@pytest.mark.parametrize(
    ("target", "method"),
    [("lake", "delete"), ("state", "put_index")],
    ids=["after-writing-the-new-copy", "after-removing-the-old-copy"],
)
def test_a_worker_killed_mid_move_leaves_one_copy_after_redelivery(
    source: FakeSource,
    deps: MirrorDeps,
    lake: LocalLake,
    state: SqliteStateStore,
    clock: Clock,
    target: str,
    method: str,
) -> None:
    # Given a row synced in Annotate that then moves to Review
    (h,) = source.add(1)
    _run(state, clock)
    _process(deps, _chunk([h]))
    source.move(h, REVIEW)
    _run(state, clock, "run-2")
    # When the worker dies in the middle of the move
    FailsOnce(lake if target == "lake" else state, method, Killed())
    with pytest.raises(Killed):
        _process(deps, _chunk([h], run_id="run-2"))
    # And the queue redelivers the chunk
    result = _process(deps, _chunk([h], run_id="run-2"), attempt=2)
    # Then the move completes: one copy, in Review, and the index points at it
    assert _status(result) == {h: "moved"}
    assert list(lake.list_keys("labels/")) == [REVIEW_KEY.format(h)]
    assert state.get_index(PROJECT, h).key == REVIEW_KEY.format(h)  # type: ignore[union-attr]


def test_a_row_whose_removal_fails_fails_alone(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given two synced rows, one since deleted in Encord, and a lake that cannot delete right now
    a, b = source.add(2)
    _run(state, clock)
    _process(deps, _chunk([a, b]))
    source.delete(a)
    source.edit(b)
    FailsOnce(lake, "delete", PermissionError("lake is read-only"))
    _run(state, clock, "run-2")
    # When a chunk holds both
    result = _process(deps, _chunk([a, b], run_id="run-2"))
    # Then the removal fails on its own and the edit is written
    assert _status(result) == {a: "failed", b: "written"}
    assert "PermissionError" in (result.outcomes[0].reason or "")


def test_a_duplicate_of_a_move_still_reports_the_move(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a row moved by run 2's chunk
    (h,) = source.add(1)
    _run(state, clock)
    _process(deps, _chunk([h]))
    clock.advance(60)
    source.move(h, REVIEW)
    _run(state, clock, "run-2")
    _process(deps, _chunk([h], run_id="run-2"))
    # When the same chunk is delivered again (an SQS duplicate: same attempt number)
    again = _process(deps, _chunk([h], run_id="run-2"))
    # Then it reports the move with its old key, so the old partition's snapshot still learns of it
    (outcome,) = again.outcomes
    assert (outcome.status, outcome.old_key) == ("moved", ANNOTATE_KEY.format(h))


def test_a_row_synced_by_an_earlier_run_is_reported_unchanged(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    (h,) = source.add(1)
    _run(state, clock)
    _process(deps, _chunk([h]))
    clock.advance(60)
    _run(state, clock, "run-2")
    assert _status(_process(deps, _chunk([h], run_id="run-2"))) == {h: "unchanged"}


def _planned(source: FakeSource, hashes: Sequence[str], run_id: str) -> ChunkMessage:
    """A chunk as the planner sends it: the rows' listing rides along."""
    rows = tuple(source.row(h).meta(PROJECT) for h in hashes)
    return ChunkMessage(PROJECT, run_id, f"{run_id}-00000", tuple(hashes), rows=rows)


def test_a_planned_chunk_is_initialised_from_its_listing_without_listing_again(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given a chunk that carries the planner's listing of its rows
    hashes = source.add(3)
    _run(state, clock)
    msg = _planned(source, hashes, "run-1")
    source.list_calls.clear()

    # When it is processed
    result = _process(deps, msg)

    # Then every row is written from that listing: no listing call, one load of the three rows
    assert _status(result) == dict.fromkeys(hashes, "written")
    assert source.list_calls == []
    assert source.load_calls == [tuple(hashes)]


def test_a_late_duplicate_of_a_planned_chunk_never_moves_a_row_back_to_its_planned_stage(
    source: FakeSource, deps: MirrorDeps, lake: LocalLake, state: SqliteStateStore, clock: Clock
) -> None:
    # Given run-1's chunk planned with the row in Annotate, then the row moved to Review and run-2
    # (planned later) synced it there
    (h,) = source.add(1)
    _run(state, clock, "run-1")
    stale = _planned(source, [h], "run-1")
    _process(deps, stale)
    source.move(h, REVIEW)
    clock.advance(5)
    _run(state, clock, "run-2")
    _process(deps, _planned(source, [h], "run-2"))
    assert lake.get(REVIEW_KEY.format(h)) is not None

    # When a duplicate of run-1's chunk arrives after all that
    again = _process(deps, stale)

    # Then the row stays in Review (one copy); the duplicate reports what run-1's first delivery did
    assert _status(again) == {h: "written"} and again.outcomes[0].key == ANNOTATE_KEY.format(h)
    assert [k for k in lake.list_keys("labels/")] == [REVIEW_KEY.format(h)]
    entry = state.get_index(PROJECT, h)
    assert entry is not None and entry.key == REVIEW_KEY.format(h)
