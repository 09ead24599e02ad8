"""Contract suite: the AWS adapters (real boto3 against moto's server) and the local ones obey the same
port semantics. Each test names the behaviour a domain step relies on."""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from awsenv import AwsResources
from fakes import Clock, FakeSource, RecordingQueue, RecordingSnapshots

from encord_mirror.adapters.aws import DynamoStateStore, EventBridgeSink, S3ObjectStore, SqsWorkQueue
from encord_mirror.adapters.local.events import event_line
from encord_mirror.adapters.local.state import this_process
from encord_mirror.domain.codec import encode_event, encode_outcomes, encode_run
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.finalizer import finalize
from encord_mirror.domain.lake import run_manifest_key
from encord_mirror.domain.models import (
    ChunkMessage,
    ChunkResult,
    Gap,
    IndexEntry,
    Lease,
    Partition,
    RowOutcome,
    RunFailure,
    RunRecord,
    SnapshotDebt,
    SnapshotEvent,
)
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError, StateStore

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROJECT = "proj-0001"


def _local(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        pytest.skip(f"{module}.{name} is not there yet")


@pytest.fixture(params=["s3", "local"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "s3":
        aws: AwsResources = request.getfixturevalue("aws")
        client = request.getfixturevalue("aws_client")("s3")
        return S3ObjectStore(aws.bucket, "mirror/v1", client)
    local_lake: ObjectStore = _local("encord_mirror.adapters.local", "LocalLake")(tmp_path / "lake")
    return local_lake


@pytest.fixture(params=["dynamodb", "sqlite"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "dynamodb":
        aws: AwsResources = request.getfixturevalue("aws")
        return DynamoStateStore(aws.table, request.getfixturevalue("aws_client")("dynamodb"))
    local_state: StateStore = _local("encord_mirror.adapters.local", "SqliteStateStore")(
        tmp_path / "state.db"
    )
    return local_state


def _entry(
    label_hash: str, edited: datetime | None, *, stage: str = "annotate-1234abcd", etag: str = "e1"
) -> IndexEntry:
    return IndexEntry(
        project_hash=PROJECT,
        label_hash=label_hash,
        data_hash=f"d-{label_hash}",
        branch="main",
        key=f"labels/project={PROJECT}/branch=main/stage={stage}/{label_hash}.json",
        partition_stage=stage,
        last_edited_at=edited,
        sha256="0" * 64,
        etag=etag,
        synced_at=T0,
    )


def _run(run_id: str, chunks: int, *, unlabelled: tuple[str, ...] = ()) -> RunRecord:
    return RunRecord(
        project_hash=PROJECT,
        run_id=run_id,
        signpost=T0,
        previous_watermark=T0 - timedelta(hours=1),
        full=False,
        chunk_ids=tuple(f"{run_id}-{i:05d}" for i in range(chunks)),
        unlabelled=unlabelled,
        started_at=T0,
        filters="0123456789abcdef.fedcba9876543210",
    )


def _result(run_id: str, index: int, *, final: bool, status: str = "written", rows: int = 3) -> ChunkResult:
    outcomes = tuple(
        RowOutcome(
            label_hash=f"l{index}-{n}",
            status=status,  # type: ignore[arg-type]
            key=f"labels/project={PROJECT}/branch=main/stage=s/l{index}-{n}.json",
            last_edited_at=T0,
            sha256="a" * 64,
            reason=None if status != "failed" else "uninitialised by the SDK",
        )
        for n in range(rows)
    )
    return ChunkResult(run_id=run_id, chunk_id=f"{run_id}-{index:05d}", outcomes=outcomes, final=final)


def _in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- object store -------------------------------------------------------------------------------------


def test_create_only_put_loses_to_an_existing_object(lake: ObjectStore) -> None:
    # Given an object written create-only
    lake.put("runs/project=p/r1.json", b'{"a":1}', if_none_match=True)
    # When a second create-only write targets the same key
    # Then it loses and the first body stays
    with pytest.raises(PreconditionFailedError):
        lake.put("runs/project=p/r1.json", b'{"a":2}', if_none_match=True)
    stored = lake.get("runs/project=p/r1.json")
    assert stored is not None and stored.body == b'{"a":1}'


MIB = 1024 * 1024


def _pieces(total: int, piece: int = 300_000) -> list[bytes]:
    """`total` bytes in uneven chunks (not aligned with any part size), each chunk's bytes distinct."""
    return [bytes([i % 251]) * min(piece, total - start) for i, start in enumerate(range(0, total, piece))]


@pytest.mark.parametrize("size", [0, 1000, 11 * MIB], ids=["empty", "one-part", "three-parts"])
def test_a_streamed_write_is_read_back_whole_and_streamed(lake: ObjectStore, size: int) -> None:
    # Given chunks adding up to `size` bytes (S3: 11 MiB is a multipart upload of three 5 MiB+ parts)
    if isinstance(lake, S3ObjectStore):
        lake = S3ObjectStore(lake.bucket, lake.prefix, lake._client, part_size=5 * MIB)
    chunks = _pieces(size)
    # When they are written as one object, create-only
    etag = lake.put_stream("coco/big/coco.json", iter(chunks), if_none_match=True)
    # Then get() returns every byte with the same etag, and open() streams the same bytes
    stored = lake.get("coco/big/coco.json")
    assert stored is not None and stored.body == b"".join(chunks) and stored.etag == etag
    stream = lake.open("coco/big/coco.json")
    assert stream is not None
    try:
        read = b"".join(iter(lambda: stream.read(1 * MIB), b""))
    finally:
        stream.close()
    assert read == stored.body
    assert lake.open("coco/none.json") is None


def test_a_create_only_streamed_write_loses_to_an_existing_object_and_leaves_nothing(
    lake: ObjectStore,
) -> None:
    # Given an object at the key
    lake.put("coco/big/coco.json", b"first")
    if isinstance(lake, S3ObjectStore):
        lake = S3ObjectStore(lake.bucket, lake.prefix, lake._client, part_size=5 * MIB)
    # When a create-only streamed write of a multipart-sized body targets it
    with pytest.raises(PreconditionFailedError):
        lake.put_stream("coco/big/coco.json", iter(_pieces(11 * MIB)), if_none_match=True)
    # Then the first object stays, and no upload or temporary file is left behind
    stored = lake.get("coco/big/coco.json")
    assert stored is not None and stored.body == b"first"
    if isinstance(lake, S3ObjectStore):
        uploads = lake._client.list_multipart_uploads(Bucket=lake.bucket).get("Uploads", [])
        assert uploads == []
    else:
        assert not [p for p in Path(lake.uri("coco/big/coco.json")).parent.iterdir() if p.name != "coco.json"]


def test_a_streamed_write_that_fails_midway_leaves_no_object(lake: ObjectStore) -> None:
    # Given chunks whose producer fails after 6 MiB (a crash while building a snapshot)
    if isinstance(lake, S3ObjectStore):
        lake = S3ObjectStore(lake.bucket, lake.prefix, lake._client, part_size=5 * MIB)

    def failing() -> Any:
        yield from _pieces(6 * MIB)
        raise RuntimeError("the converter failed")

    # When it is written / Then the error comes through and there is no object, partial or whole
    with pytest.raises(RuntimeError, match="converter failed"):
        lake.put_stream("coco/big/coco.json", failing(), if_none_match=True)
    assert lake.get("coco/big/coco.json") is None
    assert list(lake.list_keys("coco/")) == []
    if isinstance(lake, S3ObjectStore):
        assert lake._client.list_multipart_uploads(Bucket=lake.bucket).get("Uploads", []) == []
    else:
        assert not list(Path(lake.uri("coco")).rglob("*.*"))


def test_if_match_write_wins_only_over_the_etag_it_read(lake: ObjectStore) -> None:
    # Given an object and its etag
    first = lake.put("labels/x.json", b"v1")
    second = lake.put("labels/x.json", b"v2", if_match=first)
    # When a writer holding the old etag writes
    # Then it loses, and the body is the one written over the current etag
    with pytest.raises(PreconditionFailedError):
        lake.put("labels/x.json", b"v3", if_match=first)
    stored = lake.get("labels/x.json")
    assert stored is not None and stored.body == b"v2" and stored.etag == second
    assert second != first


def test_if_match_write_on_a_missing_object_loses(lake: ObjectStore) -> None:
    # Given no object at the key (someone removed it since we read its etag)
    # When we write over the etag we remember / Then the write loses instead of recreating it
    with pytest.raises(PreconditionFailedError):
        lake.put("labels/gone.json", b"v", if_match="0123456789abcdef0123456789abcdef")
    assert lake.get("labels/gone.json") is None


def test_delete_is_idempotent_and_list_keys_is_relative_to_the_lake_root(lake: ObjectStore) -> None:
    # Given two objects under one partition and one elsewhere
    lake.put("labels/project=p/branch=main/stage=a/1.json", b"1")
    lake.put("labels/project=p/branch=main/stage=a/2.json", b"2")
    lake.put("runs/project=p/r.json", b"r")
    # When one is deleted twice and the partition is listed
    lake.delete("labels/project=p/branch=main/stage=a/1.json")
    lake.delete("labels/project=p/branch=main/stage=a/1.json")
    keys = sorted(lake.list_keys("labels/project=p/"))
    # Then the listing holds the survivor only, by its lake-relative key
    assert keys == ["labels/project=p/branch=main/stage=a/2.json"]
    assert lake.get("labels/project=p/branch=main/stage=a/1.json") is None


def test_s3_uri_names_bucket_prefix_and_key(aws: AwsResources, aws_client: Callable[[str], Any]) -> None:
    # Given a lake under a prefix / When asked where a key lives / Then the URI has all three parts
    lake = S3ObjectStore(aws.bucket, "/mirror/", aws_client("s3"))
    assert lake.uri("runs/project=p/r.json") == f"s3://{aws.bucket}/mirror/runs/project=p/r.json"


def test_s3_listing_follows_every_page(aws: AwsResources, aws_client: Callable[[str], Any]) -> None:
    # Given more objects than one ListObjectsV2 page holds (pages of 10 here; S3's are 1000)
    client = aws_client("s3")
    lake = S3ObjectStore(aws.bucket, "p", client, page_size=10)
    for i in range(25):
        client.put_object(Bucket=aws.bucket, Key=f"p/labels/{i:05d}.json", Body=b"x")
    # When the lake lists them / Then every key comes back, once
    keys = list(lake.list_keys("labels/"))
    assert sorted(keys) == [f"labels/{i:05d}.json" for i in range(25)]


# -- state store: index, lease, watermark, counter ------------------------------------------------------


def test_index_is_newer_wins(state: StateStore) -> None:
    # Given an index entry edited at T0
    assert state.put_index(_entry("l1", T0, etag="first"))
    # When an older edit and then an equally old one (a stage move keeps last_edited_at) are stored
    older_stored = state.put_index(_entry("l1", T0 - timedelta(seconds=1), etag="older"))
    equal_stored = state.put_index(_entry("l1", T0, stage="review-99999999", etag="moved"))
    # Then the older loses, the equal one replaces, and a newer one replaces again
    assert not older_stored and equal_stored
    current = state.get_index(PROJECT, "l1")
    assert current is not None and current.etag == "moved" and current.partition_stage == "review-99999999"
    assert state.put_index(_entry("l1", T0 + timedelta(microseconds=1), etag="newer"))
    current = state.get_index(PROJECT, "l1")
    assert (
        current is not None
        and current.etag == "newer"
        and current.last_edited_at == T0 + timedelta(microseconds=1)
    )


def test_index_scan_and_delete(state: StateStore) -> None:
    # Given three index entries, one with an unknown edit time
    for label_hash in ("a", "b"):
        state.put_index(_entry(label_hash, T0))
    state.put_index(_entry("c", None))
    # When one is deleted
    state.delete_index(PROJECT, "b")
    # Then the scan returns the other two, round-tripped exactly
    entries = {e.label_hash: e for e in state.scan_index(PROJECT)}
    assert set(entries) == {"a", "c"}
    assert entries["a"] == _entry("a", T0)
    assert entries["c"].last_edited_at is None
    assert state.get_index(PROJECT, "b") is None


def test_index_entries_keep_the_task_status_and_stage_uuid(state: StateStore) -> None:
    # Given an entry with a task status and stage uuid, and one without (written before they were kept)
    state.put_index(replace(_entry("a", T0), task_status="IN_REVIEW", stage_uuid="5a5a0002-0000"))
    state.put_index(_entry("b", T0))
    # When read back, one by one and by a scan
    # Then both round-trip exactly
    assert state.get_index(PROJECT, "a") == replace(
        _entry("a", T0), task_status="IN_REVIEW", stage_uuid="5a5a0002-0000"
    )
    assert {e.label_hash: e.task_status for e in state.scan_index(PROJECT)} == {"a": "IN_REVIEW", "b": None}


def test_lease_excludes_a_second_owner_until_it_expires(state: StateStore) -> None:
    # Given a lease held by run-a for 60 s
    assert state.acquire_lease(PROJECT, "run-a", T0, 60)
    # When run-b asks while it is held, and again after it expired
    held = state.acquire_lease(PROJECT, "run-b", T0 + timedelta(seconds=30), 60)
    after_expiry = state.acquire_lease(PROJECT, "run-b", T0 + timedelta(seconds=61), 60)
    # Then it is refused, then granted
    assert not held and after_expiry


def test_the_lease_says_who_holds_it_since_when_and_until_when(state: StateStore) -> None:
    # Given no lease, then run-a's lease for 60 s, then run-b's after it expired
    assert state.get_lease(PROJECT) is None
    state.acquire_lease(PROJECT, "run-a", T0, 60)
    held = state.get_lease(PROJECT)
    state.acquire_lease(PROJECT, "run-b", T0 + timedelta(seconds=61), 60)
    taken_over = state.get_lease(PROJECT)
    # Then each read names the holder, when it took the lease and when it expires (and, where the store
    # records it, the process that took it); released, none
    assert held is not None and taken_over is not None
    assert held.holder in (None, this_process()) and taken_over.holder in (None, this_process())
    assert replace(held, holder=None) == Lease(PROJECT, "run-a", T0, T0 + timedelta(seconds=60))
    assert replace(taken_over, holder=None) == Lease(
        PROJECT, "run-b", T0 + timedelta(seconds=61), T0 + timedelta(seconds=121)
    )
    state.release_lease(PROJECT, "run-b")
    assert state.get_lease(PROJECT) is None


def test_lease_release_only_by_its_owner(state: StateStore) -> None:
    # Given a lease held by run-a
    assert state.acquire_lease(PROJECT, "run-a", T0, 600)
    # When run-b releases it (it does not own it), and then run-a does
    state.release_lease(PROJECT, "run-b")
    still_held = not state.acquire_lease(PROJECT, "run-c", T0, 600)
    state.release_lease(PROJECT, "run-a")
    # Then only the owner's release frees it
    assert still_held
    assert state.acquire_lease(PROJECT, "run-c", T0, 600)


def test_lease_goes_to_exactly_one_of_concurrent_planners(state: StateStore) -> None:
    # Given eight planners starting at once / When they all ask for the lease
    won = _in_threads(8, lambda i: state.acquire_lease(PROJECT, f"run-{i}", T0, 600))
    # Then exactly one holds it
    assert sum(won) == 1


def test_watermark_only_moves_forward(state: StateStore) -> None:
    # Given no watermark, then one at T0
    assert state.get_watermark(PROJECT) is None
    state.set_watermark(PROJECT, T0)
    # When a stale finalizer tries to move it back
    state.set_watermark(PROJECT, T0 - timedelta(minutes=5))
    # Then it stays, and a later value moves it
    assert state.get_watermark(PROJECT) == T0
    state.set_watermark(PROJECT, T0 + timedelta(seconds=1))
    assert state.get_watermark(PROJECT) == T0 + timedelta(seconds=1)


def test_watermark_moves_back_only_from_the_mark_it_names(state: StateStore) -> None:
    # Given a mark at T0 (in Encord's future, say)
    state.set_watermark(PROJECT, T0)
    # When a finalizer moves it back naming another mark, then naming T0
    state.set_watermark(PROJECT, T0 - timedelta(minutes=5), rewind_from=T0 - timedelta(seconds=1))
    kept = state.get_watermark(PROJECT)
    state.set_watermark(PROJECT, T0 - timedelta(minutes=5), rewind_from=T0)
    # Then only the second, which names the mark as it stands, moves it
    assert kept == T0
    assert state.get_watermark(PROJECT) == T0 - timedelta(minutes=5)


def test_the_filters_fingerprint_is_kept_per_project(state: StateStore) -> None:
    assert state.get_filters(PROJECT) is None
    state.set_filters(PROJECT, "aaaa.bbbb")
    state.set_filters(PROJECT, "aaaa.cccc")
    state.set_filters("proj-other", "dddd.eeee")
    assert state.get_filters(PROJECT) == "aaaa.cccc"
    assert state.get_filters("proj-other") == "dddd.eeee"


def test_a_failed_sync_is_recorded_per_project_until_it_is_cleared(state: StateStore) -> None:
    # Given no failure / When one is recorded, then replaced by a later one, with and without a run id
    assert state.get_failure(PROJECT) is None
    state.set_failure(PROJECT, RunFailure(PROJECT, "run-1", T0, "EncordApiError: 503"))
    state.set_failure(PROJECT, RunFailure(PROJECT, None, T0 + timedelta(seconds=1), "interrupted (SIGINT)"))
    state.set_failure("proj-other", RunFailure("proj-other", "run-9", T0, "boom"))
    # Then the project holds the latest, the other project its own, and clearing drops only the project's
    assert state.get_failure(PROJECT) == RunFailure(
        PROJECT, None, T0 + timedelta(seconds=1), "interrupted (SIGINT)"
    )
    state.set_failure(PROJECT, None)
    assert state.get_failure(PROJECT) is None
    assert state.get_failure("proj-other") == RunFailure("proj-other", "run-9", T0, "boom")


def test_run_numbers_count_up_from_one_without_duplicates(state: StateStore) -> None:
    # Given a fresh project / When six planners draw numbers at once
    numbers = _in_threads(6, lambda i: state.next_run_number(PROJECT))
    # Then they get 1..6, each once
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]


# -- state store: run ledger ---------------------------------------------------------------------------


def test_create_run_is_idempotent_and_keeps_the_first(state: StateStore) -> None:
    # Given a run created once
    state.create_run(_run("r1", 2))
    # When it is created again with other chunks (a retried planner)
    state.create_run(_run("r1", 5))
    # Then the ledger keeps the first
    run = state.get_run(PROJECT, "r1")
    assert run == _run("r1", 2)
    assert state.get_run(PROJECT, "missing") is None


def test_redelivered_chunk_counts_once(state: StateStore) -> None:
    # Given a run of two chunks
    state.create_run(_run("r1", 2))
    # When chunk 0 is recorded final three times (redelivery) and chunk 1 not yet
    progress = [state.record_chunk(PROJECT, _result("r1", 0, final=True)) for _ in range(3)]
    # Then the run counts one chunk done, and completes only with chunk 1
    assert [(p.done, p.total) for p in progress] == [(1, 2)] * 3
    assert not progress[-1].complete
    assert state.record_chunk(PROJECT, _result("r1", 1, final=True)).complete


def test_concurrent_redeliveries_count_a_chunk_once(state: StateStore) -> None:
    # Given a run of three chunks
    state.create_run(_run("r1", 3))
    # When eight deliveries of chunk 0 record it final at the same moment
    _in_threads(8, lambda i: state.record_chunk(PROJECT, _result("r1", 0, final=True)))
    # Then it still counts once
    progress = state.record_chunk(PROJECT, _result("r1", 1, final=True))
    assert (progress.done, progress.total) == (2, 3)


def test_a_retried_chunk_counts_when_it_turns_final(state: StateStore) -> None:
    # Given a run of one chunk whose first attempt failed (not final)
    state.create_run(_run("r1", 1))
    first = state.record_chunk(PROJECT, _result("r1", 0, final=False, status="failed"))
    # When the retry succeeds
    second = state.record_chunk(PROJECT, _result("r1", 0, final=True))
    # Then the run completes and the ledger holds the retry's outcomes only
    assert not first.complete and second.complete
    [stored] = state.chunk_results(PROJECT, "r1")
    assert stored.final and {o.status for o in stored.outcomes} == {"written"}


def test_a_late_non_final_delivery_does_not_reopen_a_final_chunk(state: StateStore) -> None:
    # Given a chunk recorded final
    state.create_run(_run("r1", 1))
    state.record_chunk(PROJECT, _result("r1", 0, final=True))
    # When an older, failed delivery records late
    progress = state.record_chunk(PROJECT, _result("r1", 0, final=False, status="failed"))
    # Then the chunk stays final and the run complete
    assert progress.complete
    [stored] = state.chunk_results(PROJECT, "r1")
    assert stored.final


def test_chunk_results_round_trip_every_outcome(state: StateStore) -> None:
    # Given a chunk with every kind of outcome
    state.create_run(_run("r1", 1))
    outcomes = (
        RowOutcome("a", "written", key="k/a.json", last_edited_at=T0, sha256="1" * 64),
        RowOutcome("b", "moved", key="k2/b.json", old_key="k1/b.json", last_edited_at=T0, sha256="2" * 64),
        RowOutcome("c", "removed", old_key="k/c.json"),
        RowOutcome("d", "failed", reason="HTTP 429 after 5 retries"),
        RowOutcome("e", "unchanged", key="k/e.json", last_edited_at=None, sha256="3" * 64),
        RowOutcome("f", "stale", key="k/f.json", last_edited_at=T0 - timedelta(days=1)),
    )
    result = ChunkResult(run_id="r1", chunk_id="r1-00000", outcomes=outcomes, final=True)
    # When recorded and read back / Then it is the same result
    state.record_chunk(PROJECT, result)
    assert state.chunk_results(PROJECT, "r1") == [result]


def test_finalize_is_claimed_by_one_finalizer_at_a_time_under_threads(state: StateStore) -> None:
    # Given a complete run
    state.create_run(_run("r1", 1))
    state.record_chunk(PROJECT, _result("r1", 0, final=True))
    # When eight finalizers claim it at once
    claims = _in_threads(8, lambda i: state.begin_finalize(PROJECT, "r1", f"t{i}", T0, 900))
    # Then exactly one holds it and the others are told it is busy
    assert sorted(claims) == ["busy"] * 7 + ["claimed"]


def test_a_finalize_claim_is_retaken_when_dropped_or_expired_and_never_after_finishing(
    state: StateStore,
) -> None:
    # Given two complete runs: one whose finalizer raised (and dropped its claim), one whose finalizer
    # vanished holding its claim
    for run_id in ("r1", "r2"):
        state.create_run(_run(run_id, 1))
        state.record_chunk(PROJECT, _result(run_id, 0, final=True))
        assert state.begin_finalize(PROJECT, run_id, "first", T0, 900) == "claimed"
    state.end_finalize(PROJECT, "r1", "first", finished=False)
    # When retries claim them / Then the dropped claim is free at once, the vanished one once expired
    assert state.begin_finalize(PROJECT, "r1", "retry", T0, 900) == "claimed"
    assert state.begin_finalize(PROJECT, "r2", "retry", T0 + timedelta(seconds=899), 900) == "busy"
    assert state.begin_finalize(PROJECT, "r2", "retry", T0 + timedelta(seconds=900), 900) == "claimed"
    # And a run marked finished is never claimed again
    state.end_finalize(PROJECT, "r1", "retry", finished=True)
    assert state.begin_finalize(PROJECT, "r1", "late", T0 + timedelta(days=1), 900) == "finished"


def _snap(run_id: str, stage: str, branch: str = "main") -> SnapshotEvent:
    return SnapshotEvent(run_id, PROJECT, branch, stage, {"run_id": run_id, "counts": {"rows": 3}})


def test_outbox_keeps_events_pending_until_sent_and_never_reopens_a_sent_one(state: StateStore) -> None:
    # Given the events of two runs' snapshots (one run touched two partitions, one on a branch with a slash)
    older = sorted(
        [_snap("r1", "review-5678abcd", branch="consensus/1"), _snap("r1", "annotate-1234abcd")],
        key=lambda e: e.event_id,
    )
    newer = [_snap("r2", "annotate-1234abcd")]
    # When they are recorded (the newer first, the older twice: a retried finalizer)
    state.stage_events(PROJECT, newer)
    state.stage_events(PROJECT, older)
    state.stage_events(PROJECT, older)
    # Then each is pending once, oldest snapshot first (then by event id), and round-trips whole
    assert state.pending_events(PROJECT) == [*older, *newer]
    # When one is sent and all are recorded again / Then the sent one stays sent
    state.mark_events_sent(PROJECT, [older[1].event_id])
    state.stage_events(PROJECT, [*older, *newer])
    assert state.pending_events(PROJECT) == [older[0], *newer]
    state.mark_events_sent(PROJECT, [older[0].event_id, newer[0].event_id, newer[0].event_id])
    assert state.pending_events(PROJECT) == []


def _recorded_by_an_older_release(
    state: StateStore, pending: list[SnapshotEvent], sent: list[SnapshotEvent]
) -> StateStore:
    """The store as a release before event format 2 left it: events keyed by their `event_key` (SQLite:
    a version-1 file, reopened as this release opens it)."""
    if isinstance(state, DynamoStateStore):
        client = state._client
        for event in pending:
            item = {"pk": {"S": f"P#{PROJECT}"}, "sk": {"S": f"OUTBOX#{event.event_key}"}}
            item.update(snapshot_id={"S": event.snapshot_id}, event={"S": encode_event(event).decode()})
            client.put_item(TableName=state.table_name, Item=item)
        for event in sent:
            item = {"pk": {"S": f"P#{PROJECT}"}, "sk": {"S": f"SENT#{event.event_key}"}}
            client.put_item(TableName=state.table_name, Item=item)
        return state
    path = state.path  # type: ignore[attr-defined]
    state.close()  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        rows = [(e, "pending") for e in pending] + [(e, "sent") for e in sent]
        db.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
            [(PROJECT, e.event_key, e.snapshot_id, status, encode_event(e)) for e, status in rows],
        )
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    reopened: StateStore = type(state)(path)
    return reopened


def test_events_an_older_release_recorded_under_their_key_are_published_once(state: StateStore) -> None:
    # Given an older release's outbox: one event pending (its finalizer died before sending it), one sent
    # (it died before its manifest), one pending that a retry of this release recorded again by its id
    waiting, sent, twice = (_snap(f"r{i}", "annotate-1234abcd") for i in (1, 2, 3))
    state.stage_events(PROJECT, [twice])
    state = _recorded_by_an_older_release(state, pending=[waiting, twice], sent=[sent])
    # When this release's finalizer records the retried events and reads the outbox
    state.stage_events(PROJECT, [sent, twice])
    pending = state.pending_events(PROJECT)
    # Then the two pending events are pending once each, under today's ids, and the sent one is not
    assert pending == [waiting, twice]
    # and once marked sent (by today's ids, as the sinks' receipts have them) nothing is pending again
    state.mark_events_sent(PROJECT, [e.event_id for e in pending])
    assert state.pending_events(PROJECT) == []
    state.stage_events(PROJECT, [waiting, sent, twice])
    assert state.pending_events(PROJECT) == []


def test_snapshot_debts_are_one_per_partition_and_settle_only_the_version_read(state: StateStore) -> None:
    review = Partition(PROJECT, "consensus/1#a", "review-5678abcd")
    annotate = Partition(PROJECT, "main", "annotate-1234abcd")
    other = Partition("proj-other", "main", "annotate-1234abcd")
    # Given two partitions owed by run r1, one owed again by r2, and a debt of another project
    state.owe_snapshots([SnapshotDebt(review, "r1", "S3 down"), SnapshotDebt(annotate, "r1", "S3 down")])
    state.owe_snapshots([SnapshotDebt(review, "r2", "timeout"), SnapshotDebt(other, "r2", "x")])
    # Then each partition is owed once, by its latest failure, sorted by partition
    owed = state.owed_snapshots(PROJECT)
    assert owed == [SnapshotDebt(review, "r2", "timeout"), SnapshotDebt(annotate, "r1", "S3 down")]
    # When a finalizer that read r1's debts settles them / Then r2's debt stays
    state.settle_snapshots([SnapshotDebt(review, "r1", "S3 down"), SnapshotDebt(annotate, "r1", "S3 down")])
    assert state.owed_snapshots(PROJECT) == [SnapshotDebt(review, "r2", "timeout")]
    state.settle_snapshots(state.owed_snapshots(PROJECT))
    state.settle_snapshots([SnapshotDebt(review, "r2", "timeout")])  # idempotent
    assert state.owed_snapshots(PROJECT) == []
    assert [d.partition for d in state.owed_snapshots("proj-other")] == [other]


def test_both_state_stores_keep_the_codecs_bytes(
    aws: AwsResources, aws_client: Callable[[str], Any], tmp_path: Path
) -> None:
    # Given a run record, a chunk's outcomes and a snapshot event
    run = _run("r1", 1, unlabelled=("d1",))
    result = _result("r1", 0, final=True)
    event = _snap("r1", "annotate-1234abcd")
    dynamo = DynamoStateStore(aws.table, aws_client("dynamodb"))
    sqlite = _local("encord_mirror.adapters.local", "SqliteStateStore")(tmp_path / "state.db")
    # When both stores record them
    for store in (dynamo, sqlite):
        store.create_run(run)
        store.record_chunk(PROJECT, result)
        store.stage_events(PROJECT, [event])
    # Then what each holds is domain.codec's encoding, byte for byte
    client = aws_client("dynamodb")

    def item(sk: str) -> dict[str, Any]:
        key = {"pk": {"S": f"P#{PROJECT}"}, "sk": {"S": sk}}
        found: dict[str, Any] = client.get_item(TableName=aws.table, Key=key)["Item"]
        return found

    assert zlib.decompress(item("RUN#r1")["blob"]["B"]) == encode_run(run)
    assert zlib.decompress(item("RUN#r1#CHUNK#r1-00000")["blob"]["B"]) == encode_outcomes(result.outcomes)
    assert item(f"OUTBOX#{event.event_id}")["event"]["S"].encode() == encode_event(event)
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        assert db.execute("SELECT record FROM runs").fetchone()[0] == encode_run(run)
        assert db.execute("SELECT event FROM outbox").fetchone()[0] == encode_event(event)


def test_finalizer_retry_on_aws_announces_each_snapshot_once(
    aws: AwsResources, aws_client: Callable[[str], Any], bus_inbox: str
) -> None:
    # Given a finished run on DynamoDB, whose finalizer publishes to EventBridge and then dies before
    # writing its manifest to S3
    class ManifestFailsOnce(S3ObjectStore):
        failed = False

        def put(self, key: str, body: bytes, **kw: Any) -> str:
            if key.startswith("runs/") and not self.failed:
                self.failed = True
                raise ConnectionError("S3 went away")
            return super().put(key, body, **kw)

    state = DynamoStateStore(aws.table, aws_client("dynamodb"))
    state.create_run(_run("r1", 1))
    state.record_chunk(PROJECT, _result("r1", 0, final=True))
    lake = ManifestFailsOnce(aws.bucket, "", aws_client("s3"))
    clock = Clock(T0)
    deps = MirrorDeps(
        FakeSource(clock=clock, project_hash=PROJECT),
        lake,
        state,
        RecordingQueue(),
        EventBridgeSink(aws.bus, aws_client("events")),
        RecordingSnapshots(),
        clock,
    )
    config = MirrorConfig(projects=(PROJECT,))
    with pytest.raises(ConnectionError):
        finalize(PROJECT, "r1", config, deps)
    # When the finalize request is redelivered
    retry = finalize(PROJECT, "r1", config, deps)
    # Then the run closes, and the bus carried the snapshot's event once, with its event id
    assert retry.status == "finalized" and lake.get(run_manifest_key(PROJECT, "r1")) is not None
    delivered = _drain(aws_client("sqs"), bus_inbox)
    assert [d["detail"]["event_id"] for d in delivered] == [s.event_id for s in retry.snapshots]
    assert len(delivered) == 1 and state.pending_events(PROJECT) == []


def test_gaps_are_listed_until_cleared(state: StateStore) -> None:
    # Given two gaps, one re-added by a later run
    state.add_gaps(
        [
            Gap(PROJECT, "a", T0, "r1", "uninitialised"),
            Gap(PROJECT, "b", None, "r1", "corrupt row"),
        ]
    )
    state.add_gaps([Gap(PROJECT, "a", T0 + timedelta(seconds=5), "r2", "429")])
    # When b is synced
    state.clear_gaps(PROJECT, ["b", "never-a-gap"])
    # Then a stays, once, as the later run recorded it
    assert state.list_gaps(PROJECT) == [Gap(PROJECT, "a", T0 + timedelta(seconds=5), "r2", "429")]


# -- DynamoDB specifics: the 400 KB item limit ---------------------------------------------------------


def test_dynamo_run_with_100k_unlabelled_rows_outgrows_one_item(
    aws: AwsResources, aws_client: Callable[[str], Any]
) -> None:
    # Given a full run over a project with 100k never-labelled data units and 1000 chunks
    state = DynamoStateStore(aws.table, aws_client("dynamodb"))
    unlabelled = tuple(f"{i:08x}-aaaa-bbbb-cccc-{i * 7919:012x}" for i in range(100_000))
    run = _run("big", 1000, unlabelled=unlabelled)
    # When it is stored and read back / Then nothing is lost
    state.create_run(run)
    assert state.get_run(PROJECT, "big") == run


def test_dynamo_chunk_of_1000_failed_rows_with_long_reasons_fits(
    aws: AwsResources, aws_client: Callable[[str], Any]
) -> None:
    # Given a 1000-row chunk where every row failed with a long, distinct reason
    state = DynamoStateStore(aws.table, aws_client("dynamodb"))
    state.create_run(_run("r1", 1))
    outcomes = tuple(
        RowOutcome(
            f"{i:032x}", "failed", reason=f"row {i}: " + orjson.dumps(list(range(i, i + 120))).decode()
        )
        for i in range(1000)
    )
    result = ChunkResult(run_id="r1", chunk_id="r1-00000", outcomes=outcomes, final=True)
    # When recorded / Then it round-trips and counts
    assert state.record_chunk(PROJECT, result).complete
    assert state.chunk_results(PROJECT, "r1") == [result]


# -- SQS and EventBridge ---------------------------------------------------------------------------------


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(orjson.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_25_chunks_go_out_in_3_batches_and_all_arrive(
    aws: AwsResources, aws_client: Callable[[str], Any]
) -> None:
    # Given 25 chunk messages
    sqs = aws_client("sqs")
    queue = SqsWorkQueue(aws.work_queue_url, aws.finalize_queue_url, sqs)
    chunks = [
        ChunkMessage(PROJECT, "r1", f"r1-{i:05d}", (f"l{i}a", f"l{i}b"), ("gone",) if i == 0 else ())
        for i in range(25)
    ]
    # When sent
    receipt = queue.send_chunks(chunks)
    # Then three SendMessageBatch calls carried them, and each arrives once, hashes intact
    assert queue.batch_calls == 3
    assert sorted(receipt.sent) == sorted(c.chunk_id for c in chunks) and receipt.failed == {}
    bodies = {b["chunk_id"]: b for b in _drain(sqs, aws.work_queue_url)}
    assert set(bodies) == {c.chunk_id for c in chunks}
    assert bodies["r1-00000"] == {
        "project_hash": PROJECT,
        "run_id": "r1",
        "chunk_id": "r1-00000",
        "label_hashes": ["l0a", "l0b"],
        "removals": ["gone"],
    }


def test_large_chunks_split_batches_under_the_sqs_payload_limit(
    aws: AwsResources, aws_client: Callable[[str], Any]
) -> None:
    # Given ten chunks of 1000 label hashes each (~40 KB a message, ~400 KB together)
    sqs = aws_client("sqs")
    queue = SqsWorkQueue(aws.work_queue_url, aws.finalize_queue_url, sqs)
    chunks = [
        ChunkMessage(PROJECT, "r1", f"r1-{i:05d}", tuple(f"{i:04d}{n:032x}" for n in range(1000)))
        for i in range(10)
    ]
    # When sent / Then they travel in more than one batch and all arrive
    receipt = queue.send_chunks(chunks)
    assert receipt.failed == {} and len(receipt.sent) == 10 and queue.batch_calls >= 2
    assert len(_drain(sqs, aws.work_queue_url)) == 10


def test_send_failures_come_back_in_the_receipt(aws: AwsResources, aws_client: Callable[[str], Any]) -> None:
    # Given a queue URL that does not exist
    queue = SqsWorkQueue(aws.work_queue_url + "-missing", aws.finalize_queue_url, aws_client("sqs"))
    # When chunks are sent / Then every chunk is reported failed, none sent
    receipt = queue.send_chunks([ChunkMessage(PROJECT, "r1", "r1-00000", ("a",))])
    assert receipt.sent == () and set(receipt.failed) == {"r1-00000"}


def test_request_finalize_puts_the_run_on_the_finalize_queue(
    aws: AwsResources, aws_client: Callable[[str], Any]
) -> None:
    # Given the work queue adapter / When the last chunk asks for its run's finalizer (twice: at least once)
    sqs = aws_client("sqs")
    queue = SqsWorkQueue(aws.work_queue_url, aws.finalize_queue_url, sqs)
    queue.request_finalize(PROJECT, "r1")
    queue.request_finalize(PROJECT, "r1")
    # Then the finalize queue holds the small run messages
    assert _drain(sqs, aws.finalize_queue_url) == [{"project_hash": PROJECT, "run_id": "r1"}] * 2


@pytest.fixture()
def bus_inbox(aws: AwsResources, aws_client: Callable[[str], Any]) -> Iterator[str]:
    """A queue subscribed to every encord-mirror event on the test's bus."""
    sqs, events = aws_client("sqs"), aws_client("events")
    url = sqs.create_queue(QueueName=f"inbox-{aws.bus}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="all", EventBusName=aws.bus, EventPattern='{"source": ["encord-mirror"]}')
    events.put_targets(Rule="all", EventBusName=aws.bus, Targets=[{"Id": "inbox", "Arn": arn}])
    yield url


def test_events_publish_in_batches_of_10_with_receipts(
    aws: AwsResources, aws_client: Callable[[str], Any], bus_inbox: str
) -> None:
    # Given twelve committed snapshots
    sink = EventBridgeSink(aws.bus, aws_client("events"))
    events = [
        SnapshotEvent(f"snap-{i}", PROJECT, "main", "annotate-1234abcd", {"rows": i}) for i in range(12)
    ]
    # When published
    receipt = sink.publish(events)
    # Then all are sent, and each reached the bus with our source, detail-type and detail
    assert sorted(receipt.sent) == sorted(e.event_id for e in events) and receipt.failed == {}
    delivered = _drain(aws_client("sqs"), bus_inbox)
    assert len(delivered) == 12
    assert {(d["source"], d["detail-type"]) for d in delivered} == {
        ("encord-mirror", "encord-mirror.snapshot.committed")
    }
    details = {d["detail"]["snapshot_id"]: d["detail"] for d in delivered}
    assert details["snap-3"] == {
        "format_version": 2,
        "stage_uuid": None,
        "stage_title": None,
        "rows": 3,
        "event_id": events[3].event_id,
        "event_key": f"{PROJECT}/main/annotate-1234abcd/snap-3",
        "snapshot_id": "snap-3",
        "project_hash": PROJECT,
        "branch": "main",
        "stage": "annotate-1234abcd",
    }
    # and a local lake's events file has the envelope of an event EventBridge delivers to a target (AWS's
    # documented fields; moto's SQS target leaves out `account` and adds its `ingestion-time`)
    local = orjson.loads(event_line(events[3], T0))
    envelope = {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}
    assert set(delivered[0]) - {"ingestion-time"} <= set(local) == envelope
    assert local["detail"] == details["snap-3"]


def test_events_to_a_missing_bus_fail_in_the_receipt(
    aws: AwsResources, aws_client: Callable[[str], Any]
) -> None:
    # Given a bus that does not exist / When publishing / Then the receipt names the failed event
    sink = EventBridgeSink(aws.bus + "-missing", aws_client("events"))
    receipt = sink.publish([SnapshotEvent("snap-1", PROJECT, "main", "s", {})])
    assert receipt.sent == () and set(receipt.failed) == {
        SnapshotEvent("snap-1", PROJECT, "main", "s", {}).event_id
    }
