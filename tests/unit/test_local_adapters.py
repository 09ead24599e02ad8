"""The local adapters' own semantics: LocalLake, SqliteStateStore, LocalWorkQueue, JsonlEventSink."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

from encord_mirror.adapters.local import (
    EVENTS_KEY,
    JsonlEventSink,
    LocalLake,
    LocalQueueError,
    LocalWorkQueue,
    SqliteStateStore,
    UnsafeKeyError,
)
from encord_mirror.domain.models import (
    ChunkMessage,
    ChunkResult,
    Gap,
    IndexEntry,
    RowOutcome,
    RunFailure,
    RunProgress,
    RunRecord,
    SnapshotEvent,
)
from encord_mirror.domain.ports import EventSink, ObjectStore, PreconditionFailedError, StateStore, WorkQueue

T = datetime(2026, 11, 23, 18, 0, 0, 123456, tzinfo=UTC)
P = "proj"


def _parallel(n: int, fn: Callable[[int], object]) -> list[object]:
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- LocalLake --


def test_the_local_lake_fits_the_port(lake: LocalLake) -> None:
    _: ObjectStore = lake


def test_conditional_writes(lake: LocalLake) -> None:
    # Given an object
    etag = lake.put("a/b.json", b"one", if_none_match=True)
    # Then create-only loses to it, if_match wins only over its etag, and a missing object fails if_match
    with pytest.raises(PreconditionFailedError):
        lake.put("a/b.json", b"two", if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        lake.put("a/b.json", b"two", if_match="not-the-etag")
    with pytest.raises(PreconditionFailedError):
        lake.put("a/missing.json", b"two", if_match=etag)
    new = lake.put("a/b.json", b"two", if_match=etag)
    stored = lake.get("a/b.json")
    assert stored is not None and stored.body == b"two" and stored.etag == new != etag


def test_only_one_of_many_concurrent_create_only_writes_wins(lake: LocalLake) -> None:
    def create(i: int) -> bool:
        try:
            lake.put("runs/manifest.json", f"{i}".encode(), if_none_match=True)
        except PreconditionFailedError:
            return False
        return True

    assert sum(bool(r) for r in _parallel(8, create)) == 1


def test_concurrent_compare_and_swap_increments_lose_nothing(lake: LocalLake) -> None:
    lake.put("counter", b"0")

    def increment(_: int) -> None:
        while True:
            current = lake.get("counter")
            assert current is not None
            try:
                lake.put("counter", str(int(current.body) + 1).encode(), if_match=current.etag)
                return
            except PreconditionFailedError:
                continue

    _parallel(8, increment)
    assert lake.get("counter").body == b"8"  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "", "a\\b", "a/"])
def test_keys_that_could_escape_the_root_are_refused(lake: LocalLake, key: str) -> None:
    with pytest.raises(UnsafeKeyError):
        lake.put(key, b"x")


def test_listing_is_relative_sorted_prefixed_and_hides_dotfiles(lake: LocalLake) -> None:
    for key in ("labels/p=1/b.json", "labels/p=1/a.json", "labels/p=2/c.json", "runs/r.json", ".state.db"):
        lake.put(key, b"x")
    assert list(lake.list_keys("labels/p=1/")) == ["labels/p=1/a.json", "labels/p=1/b.json"]
    assert list(lake.list_keys("labels/p=")) == [
        "labels/p=1/a.json",
        "labels/p=1/b.json",
        "labels/p=2/c.json",
    ]
    assert list(lake.list_keys("")) == [
        "labels/p=1/a.json",
        "labels/p=1/b.json",
        "labels/p=2/c.json",
        "runs/r.json",
    ]


def test_delete_is_idempotent_and_prunes_empty_partitions(lake: LocalLake) -> None:
    lake.put("labels/stage=a/x.json", b"x")
    lake.put("labels/stage=b/y.json", b"y")
    lake.delete("labels/stage=a/x.json")
    lake.delete("labels/stage=a/x.json")
    assert not (lake.root / "labels" / "stage=a").exists()
    assert (lake.root / "labels" / "stage=b" / "y.json").exists()


def test_writes_leave_no_temporary_files(lake: LocalLake) -> None:
    for i in range(5):
        lake.put("a/x.json", f"{i}".encode())
    assert [p.name for p in (lake.root / "a").iterdir()] == ["x.json"]
    assert lake.uri("a/x.json") == str(lake.root / "a" / "x.json")


# -- SqliteStateStore --


def _entry(label_hash: str, edited: datetime | None, key: str = "k1", etag: str = "e1") -> IndexEntry:
    return IndexEntry(P, label_hash, "d", "main", key, "s", edited, "sha", etag, T)


def test_the_sqlite_state_fits_the_port(state: SqliteStateStore) -> None:
    _: StateStore = state


def test_a_state_file_from_before_task_statuses_opens_and_keeps_its_index(tmp_path: Path) -> None:
    # Given a state file whose row index has no task_status / stage_uuid columns
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE row_index (project TEXT NOT NULL, label_hash TEXT NOT NULL,"
            " data_hash TEXT NOT NULL, branch TEXT NOT NULL, key TEXT NOT NULL,"
            " partition_stage TEXT NOT NULL, last_edited_at TEXT,"
            " sha256 TEXT NOT NULL, etag TEXT NOT NULL, synced_at TEXT NOT NULL,"
            " PRIMARY KEY (project, label_hash))"
        )
        db.execute(
            "INSERT INTO row_index VALUES ('proj', 'l', 'd', 'main', 'k1', 's', NULL, 'sha', 'e1',"
            " '2026-11-23T18:00:00.123456Z')"
        )
    db.close()
    # When this version opens it
    store = SqliteStateStore(path)
    # Then the old entry reads back without a status, and new entries keep theirs
    assert store.get_index(P, "l") == _entry("l", None)
    assert store.put_index(replace(_entry("m", T), task_status="COMPLETED"))
    assert store.get_index(P, "m") == replace(_entry("m", T), task_status="COMPLETED")
    store.close()


def test_index_is_newer_wins(state: SqliteStateStore) -> None:
    # Given an entry at T
    assert state.put_index(_entry("l", T))
    # Then an older version loses, the same or a newer version wins (a stage move keeps its time)
    assert not state.put_index(_entry("l", T - timedelta(microseconds=1), key="old"))
    assert not state.put_index(_entry("l", None, key="unknown"))
    assert state.put_index(_entry("l", T, key="moved"))
    assert state.put_index(_entry("l", T + timedelta(seconds=1), key="newer"))
    assert state.get_index(P, "l") == _entry("l", T + timedelta(seconds=1), key="newer")


def test_an_entry_of_unknown_version_is_replaced_by_any_version(state: SqliteStateStore) -> None:
    assert state.put_index(_entry("l", None))
    assert state.put_index(_entry("l", T))


def test_index_scan_and_delete(state: SqliteStateStore) -> None:
    state.put_index(_entry("b", T))
    state.put_index(_entry("a", T))
    assert [e.label_hash for e in state.scan_index(P)] == ["a", "b"]
    state.delete_index(P, "a")
    assert [e.label_hash for e in state.scan_index(P)] == ["b"]
    assert list(state.scan_index("other")) == []


def test_lease_excludes_others_until_it_expires_and_only_its_owner_releases_it(
    state: SqliteStateStore,
) -> None:
    assert state.acquire_lease(P, "run-1", T, 60)
    assert state.acquire_lease(P, "run-1", T, 60)  # re-entrant for its owner
    assert not state.acquire_lease(P, "run-2", T + timedelta(seconds=59), 60)
    state.release_lease(P, "run-2")
    assert not state.acquire_lease(P, "run-2", T + timedelta(seconds=59), 60)
    assert state.acquire_lease(P, "run-2", T + timedelta(seconds=60), 60)  # expired
    state.release_lease(P, "run-2")
    assert state.acquire_lease(P, "run-3", T, 60)


def test_lease_goes_to_exactly_one_of_concurrent_planners(state: SqliteStateStore) -> None:
    results = _parallel(8, lambda i: state.acquire_lease(P, f"run-{i}", T, 60))
    assert sum(bool(r) for r in results) == 1


def test_watermark_only_moves_forward_and_keeps_microseconds(state: SqliteStateStore) -> None:
    assert state.get_watermark(P) is None
    state.set_watermark(P, T)
    state.set_watermark(P, T - timedelta(hours=1))
    assert state.get_watermark(P) == T
    state.set_watermark(P, T + timedelta(microseconds=1))
    assert state.get_watermark(P) == T + timedelta(microseconds=1)


def test_run_numbers_count_up_without_duplicates_under_threads(state: SqliteStateStore) -> None:
    numbers = _parallel(8, lambda _: state.next_run_number(P))
    assert sorted(numbers) == list(range(1, 9))  # type: ignore[type-var]


def _run(chunks: int = 2) -> RunRecord:
    return RunRecord(P, "run-1", T, None, True, tuple(f"c{i}" for i in range(chunks)), ("d9",), T)


def _result(chunk_id: str, final: bool, status: str = "written") -> ChunkResult:
    outcome = RowOutcome(f"l-{chunk_id}", status, key="k", last_edited_at=T, sha256="s")  # type: ignore[arg-type]
    return ChunkResult("run-1", chunk_id, (outcome,), final)


def test_create_run_is_idempotent_and_round_trips(state: SqliteStateStore) -> None:
    state.create_run(_run())
    state.create_run(RunRecord(P, "run-1", T + timedelta(days=1), T, False, ()))
    assert state.get_run(P, "run-1") == _run()
    assert state.get_run(P, "nope") is None


def test_record_chunk_counts_each_chunk_once(state: SqliteStateStore) -> None:
    state.create_run(_run(2))
    assert state.record_chunk(P, _result("c0", final=False)) == RunProgress(done=0, total=2)
    assert state.record_chunk(P, _result("c0", final=True)).done == 1
    assert state.record_chunk(P, _result("c0", final=True)).done == 1  # a duplicate
    progress = state.record_chunk(P, _result("c1", final=True))
    assert progress.complete and (progress.done, progress.total) == (2, 2)


def test_a_final_chunk_record_is_kept_over_later_deliveries(state: SqliteStateStore) -> None:
    state.create_run(_run(1))
    state.record_chunk(P, _result("c0", final=True, status="written"))
    state.record_chunk(P, _result("c0", final=False, status="failed"))
    state.record_chunk(P, _result("c0", final=True, status="unchanged"))
    assert state.chunk_results(P, "run-1") == [_result("c0", final=True, status="written")]


def test_concurrent_final_records_of_one_chunk_count_once(state: SqliteStateStore) -> None:
    state.create_run(_run(2))
    results = _parallel(8, lambda _: state.record_chunk(P, _result("c0", final=True)))
    assert {r.done for r in results} == {1}  # type: ignore[attr-defined]


def test_begin_finalize_claims_for_exactly_one_caller_at_a_time(state: SqliteStateStore) -> None:
    # Given eight finalizers claiming one run at once
    results = _parallel(8, lambda i: state.begin_finalize(P, "run-1", f"t{i}", T, 900))
    # Then one holds it, the others are told it is busy; another run is free
    assert sorted(results) == ["busy"] * 7 + ["claimed"]  # type: ignore[type-var]
    assert state.begin_finalize(P, "run-2", "t0", T, 900) == "claimed"


def test_a_dropped_or_expired_finalize_claim_can_be_taken_and_a_finished_run_stays_finished(
    state: SqliteStateStore,
) -> None:
    # Given a claim that was dropped (its finalizer raised) and one that expired (its finalizer vanished)
    state.begin_finalize(P, "run-1", "a", T, 900)
    state.end_finalize(P, "run-1", "a", finished=False)
    state.begin_finalize(P, "run-2", "a", T, 900)
    # When others claim them / Then they get them; a stranger cannot drop a claim it does not hold
    assert state.begin_finalize(P, "run-1", "b", T, 900) == "claimed"
    assert state.begin_finalize(P, "run-2", "b", T + timedelta(seconds=899), 900) == "busy"
    assert state.begin_finalize(P, "run-2", "b", T + timedelta(seconds=900), 900) == "claimed"
    state.end_finalize(P, "run-2", "a", finished=False)
    assert state.begin_finalize(P, "run-2", "c", T + timedelta(seconds=901), 900) == "busy"
    # And once a finalizer finishes the run, nobody claims it again
    state.end_finalize(P, "run-1", "b", finished=True)
    assert state.begin_finalize(P, "run-1", "c", T + timedelta(days=1), 900) == "finished"


def test_gaps_are_listed_until_cleared(state: SqliteStateStore) -> None:
    state.add_gaps([Gap(P, "b", T, "run-1", "429"), Gap(P, "a", None, "run-1", "corrupt")])
    state.add_gaps([Gap(P, "b", T + timedelta(seconds=1), "run-2", "429 again")])
    assert state.list_gaps(P) == [
        Gap(P, "a", None, "run-1", "corrupt"),
        Gap(P, "b", T + timedelta(seconds=1), "run-2", "429 again"),
    ]
    state.clear_gaps(P, ["a", "zzz"])
    assert [g.label_hash for g in state.list_gaps(P)] == ["b"]


def test_state_survives_reopening_the_file(tmp_path: Path) -> None:
    first = SqliteStateStore(tmp_path / "s.db")
    first.set_watermark(P, T)
    first.put_index(_entry("l", T))
    first.close()
    second = SqliteStateStore(tmp_path / "s.db")
    assert second.get_watermark(P) == T and second.get_index(P, "l") == _entry("l", T)
    second.close()


# -- LocalWorkQueue --


def _msg(i: int) -> ChunkMessage:
    return ChunkMessage(P, "run-1", f"run-1-{i:05d}", (f"l{i}",))


def test_the_local_queue_fits_the_port() -> None:
    queue = LocalWorkQueue()
    _: WorkQueue = queue
    queue.close()


def test_a_chunk_with_failures_is_redelivered_until_its_last_attempt() -> None:
    # Given a processor whose chunk 0 always fails, and 3 attempts
    attempts: list[tuple[str, int]] = []
    lock = threading.Lock()

    def process(msg: ChunkMessage, attempt: int) -> ChunkResult:
        with lock:
            attempts.append((msg.chunk_id, attempt))
        failed = msg.chunk_id.endswith("0") and attempt < 3
        outcome = RowOutcome(msg.label_hashes[0], "failed" if msg.chunk_id.endswith("0") else "written")
        return ChunkResult(msg.run_id, msg.chunk_id, (outcome,), final=not failed)

    queue = LocalWorkQueue(workers=3, max_attempts=3)
    queue.bind(process, lambda p, r: None)
    # When two chunks are sent and drained
    receipt = queue.send_chunks([_msg(0), _msg(1)])
    queue.drain()
    queue.close()
    # Then chunk 0 was delivered three times, chunk 1 once
    assert receipt.sent == ("run-1-00000", "run-1-00001") and receipt.failed == {}
    assert sorted(attempts) == [
        ("run-1-00000", 1),
        ("run-1-00000", 2),
        ("run-1-00000", 3),
        ("run-1-00001", 1),
    ]
    assert queue.deliveries == 4 and queue.dead_letters == []


def test_a_chunk_that_keeps_raising_ends_in_dead_letters() -> None:
    def process(msg: ChunkMessage, attempt: int) -> ChunkResult:
        raise OSError("disk full")

    queue = LocalWorkQueue(workers=2, max_attempts=2)
    queue.bind(process, lambda p, r: None)
    queue.send_chunks([_msg(0)])
    queue.drain()
    queue.close()
    assert [(d.message.chunk_id, d.attempts) for d in queue.dead_letters] == [("run-1-00000", 2)]
    assert "disk full" in queue.dead_letters[0].error


def test_drain_waits_for_the_finalize_a_chunk_requests() -> None:
    finalized: list[str] = []
    queue = LocalWorkQueue(workers=2)

    def process(msg: ChunkMessage, attempt: int) -> ChunkResult:
        queue.request_finalize(msg.project_hash, msg.run_id)
        return ChunkResult(msg.run_id, msg.chunk_id, (), final=True)

    def slow_finalize(project: str, run_id: str) -> None:
        time.sleep(0.05)
        finalized.append(run_id)

    queue.bind(process, slow_finalize)
    queue.send_chunks([_msg(0)])
    queue.drain()
    queue.close()
    assert finalized == ["run-1"]


def test_a_finalize_that_raises_surfaces_from_drain() -> None:
    def broken(project: str, run_id: str) -> None:
        raise RuntimeError("bug")

    queue = LocalWorkQueue()
    queue.bind(lambda m, a: ChunkResult(m.run_id, m.chunk_id, (), True), broken)
    queue.request_finalize(P, "run-1")
    with pytest.raises(LocalQueueError, match="bug"):
        queue.drain()
    queue.close()


def test_an_unbound_queue_refuses_work() -> None:
    queue = LocalWorkQueue()
    with pytest.raises(RuntimeError, match="bind"):
        queue.send_chunks([_msg(0)])
    queue.close()


# -- JsonlEventSink --


def _event(i: int) -> SnapshotEvent:
    return SnapshotEvent(f"snap-{i}", P, "main", "review-1234abcd", {"images": i})


def test_events_are_json_lines_as_eventbridge_delivers_them(lake: LocalLake) -> None:
    # Given the local sink
    sink = JsonlEventSink(lake, clock=lambda: T)
    _: EventSink = sink
    # When it publishes two events
    receipt = sink.publish([_event(1), _event(2)])
    # Then the receipt is keyed by their ids, and each is one line with EventBridge's envelope
    assert receipt.sent == (_event(1).event_id, _event(2).event_id) and receipt.failed == {}
    stored = lake.get(EVENTS_KEY)
    assert stored is not None
    lines = [orjson.loads(line) for line in stored.body.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert {k: v for k, v in first.items() if k != "id"} == {
        "version": "0",
        "detail-type": "encord-mirror.snapshot.committed",
        "source": "encord-mirror",
        "account": "000000000000",
        "time": T.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "local",
        "resources": [],
        "detail": {
            "format_version": 2,
            "stage_uuid": None,
            "stage_title": None,
            "images": 1,
            "event_id": _event(1).event_id,
            "event_key": f"{P}/main/review-1234abcd/snap-1",
            "snapshot_id": "snap-1",
            "project_hash": P,
            "branch": "main",
            "stage": "review-1234abcd",
        },
    }
    assert uuid.UUID(first["id"]).version == 4 and first["id"] != lines[1]["id"]
    # and Powertools' model of an EventBridge event (what a Lambda target parses) reads every line
    parsed = [EventBridgeModel.model_validate(line) for line in lines]
    assert [e.detail["snapshot_id"] for e in parsed] == ["snap-1", "snap-2"]  # type: ignore[index]
    assert parsed[0].time == T.replace(microsecond=0)


def test_an_event_the_file_holds_under_its_older_id_is_not_appended_again(lake: LocalLake) -> None:
    # Given an events file where an older release wrote event 1 (its id was the event key) and then died
    # before recording it as sent
    older = {"source": "encord-mirror", "detail": {"event_id": _event(1).event_key, "snapshot_id": "snap-1"}}
    lake.put(EVENTS_KEY, orjson.dumps(older) + b"\n")
    # When this release publishes it again, with event 2
    receipt = JsonlEventSink(lake, clock=lambda: T).publish([_event(1), _event(2)])
    # Then both are sent, and the file holds event 1 once
    assert receipt.sent == (_event(1).event_id, _event(2).event_id)
    stored = lake.get(EVENTS_KEY)
    assert stored is not None
    assert [orjson.loads(x)["detail"]["snapshot_id"] for x in stored.body.splitlines()] == [
        "snap-1",
        "snap-2",
    ]


def test_event_ids_are_step_functions_execution_names_unique_per_event() -> None:
    # Given events of one run in partitions whose keys are long (a long branch, a long stage value)
    branch, stage = "consensus/" + "b" * 200, "a-stage-title-cut-at-forty-characters-x-1234abcd"
    events = [
        SnapshotEvent("20261123T182200.123Z-1a2b3c4d", project, b, st, {})
        for project in ("p1", "p2")
        for b in ("main", branch, branch + "2")
        for st in (stage, stage.replace("1234", "9999"), "none")
    ]
    # Then every id is at most 80 characters of [A-Za-z0-9_-], starts with the snapshot id, and is unique
    ids = [e.event_id for e in events]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,80}", i) for i in ids), ids
    assert all(i.startswith("20261123T182200-123Z-1a2b3c4d_") for i in ids)
    assert len(set(ids)) == len(ids)
    # and an event's id is its partition's and snapshot's, whatever its detail (a retried finalizer's dedupes)
    assert (
        SnapshotEvent("s", "p", "main", "none", {}).event_id
        == SnapshotEvent("s", "p", "main", "none", {"x": 1}).event_id
    )
    assert events[0].event_id.startswith("20261123T182200-123Z-1a2b3c4d_a-stage-title-cut-at-forty-c")


def test_concurrent_publishers_lose_no_line(tmp_path: Path) -> None:
    sink = JsonlEventSink(tmp_path / "lake")
    _parallel(8, lambda i: sink.publish([_event(i)]))
    stored = sink.lake.get(EVENTS_KEY)
    assert stored is not None
    assert sorted(orjson.loads(x)["detail"]["snapshot_id"] for x in stored.body.splitlines()) == [
        f"snap-{i}" for i in range(8)
    ]


def test_a_read_only_state_reads_what_was_written_and_writes_nothing_beside_it(tmp_path: Path) -> None:
    # Given a state with a watermark and a recorded failure, closed by its writer
    path = tmp_path / "state.sqlite"
    writer = SqliteStateStore(path)
    mark = datetime(2026, 11, 1, tzinfo=UTC)
    writer.set_watermark("p", mark)
    writer.set_failure("p", RunFailure("p", "run-1", mark, "EncordApiError: down"))
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    # When it is opened read-only and read
    reader = SqliteStateStore(path, read_only=True)
    assert reader.get_watermark("p") == mark
    assert reader.get_failure("p") == RunFailure("p", "run-1", mark, "EncordApiError: down")
    # Then a write is refused, and after closing no -wal / -shm file was left
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.set_watermark("p", mark + timedelta(days=1))
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == files == ["state.sqlite"]
    # and a missing file is not created
    with pytest.raises(FileNotFoundError):
        SqliteStateStore(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()
