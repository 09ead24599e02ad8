"""The planner: lease, signpost, listing window, reconciliation diff, dedupe, filters and fan-out."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
from conftest import Mirror
from fakes import ANNOTATE, PROJECT, REVIEW, T0, Clock, FakeSource, RecordingQueue

from encord_mirror.adapters.local import SqliteStateStore
from encord_mirror.coco.snapshot import snapshot_id_for
from encord_mirror.domain.config import ConfigError, FilterShrinkError, MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.lake import run_manifest_key
from encord_mirror.domain.models import BranchSelection, Gap, IndexEntry, RowQuery
from encord_mirror.domain.planner import new_run_id, plan

CONFIG = MirrorConfig(projects=(PROJECT,))


def test_first_run_is_a_full_listing_fanned_out_in_capped_chunks(
    source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, state: SqliteStateStore
) -> None:
    # Given 250 rows and no watermark yet
    source.add(250)
    # When the planner runs with bundles of 100
    result = plan(PROJECT, CONFIG, deps)
    # Then it lists everything once (no date filter) and sends 3 chunks of at most 100 label hashes
    assert result.full and result.status == "planned"
    assert source.list_calls == [RowQuery(branches=CONFIG.branches)]
    assert [len(c.label_hashes) for c in queue.chunks] == [100, 100, 50]
    assert sorted(h for c in queue.chunks for h in c.label_hashes) == [f"label-{i:04d}" for i in range(250)]
    # and the run, with its chunk ids, was recorded
    run = state.get_run(PROJECT, result.run_id)
    assert run is not None and run.chunk_ids == tuple(c.chunk_id for c in queue.chunks)
    assert run.signpost == source.clock() and run.previous_watermark is None


def test_run_ids_sort_by_time_and_chunk_ids_derive_from_them(
    source: FakeSource, deps: MirrorDeps, queue: RecordingQueue
) -> None:
    source.add(3)
    result = plan(PROJECT, MirrorConfig(projects=(PROJECT,), bundle_size=1), deps)
    assert re.fullmatch(r"20261101T120000\.000Z-[0-9a-f]{8}", result.run_id)
    assert [c.chunk_id for c in queue.chunks] == [f"{result.run_id}-{i:05d}" for i in range(3)]


def test_run_ids_of_one_second_sort_by_start_to_the_millisecond_and_stay_unique_and_key_safe() -> None:
    # Given twenty pairs of runs that start in the same second, 0.1 s and 0.9 s into it, and twenty
    # runs that start in the same millisecond
    starts = [T0 + timedelta(seconds=i, milliseconds=ms) for i in range(20) for ms in (100, 900)]
    # When each gets a run id
    ids = [new_run_id(start) for start in starts]
    same_ms = {new_run_id(T0 + timedelta(microseconds=1500)) for _ in range(20)}
    # Then text order is start order, ids of one millisecond differ, and an id is its own snapshot id
    # and a plain S3 key segment
    assert sorted(ids) == ids and ids[1].startswith("20261101T120000.900Z-")
    assert len(same_ms) == 20 and all(i.startswith("20261101T120000.001Z-") for i in same_ms)
    assert all(snapshot_id_for(i) == i and re.fullmatch(r"[0-9A-Za-z.-]+", i) for i in ids)
    assert run_manifest_key(PROJECT, ids[0]) == f"runs/project={PROJECT}/{ids[0]}.json"


def test_chunks_go_out_in_one_send_the_queue_splits_to_its_limits(
    source: FakeSource, deps: MirrorDeps, queue: RecordingQueue
) -> None:
    # Given 25 rows in chunks of one
    source.add(25)
    # When the planner runs
    plan(PROJECT, MirrorConfig(projects=(PROJECT,), bundle_size=1), deps)
    # Then it hands the queue all 25 at once (the SQS adapter sends them in batches of 10)
    assert [len(b) for b in queue.batches] == [25]


def test_bundle_size_caps_every_chunk(source: FakeSource, deps: MirrorDeps, queue: RecordingQueue) -> None:
    source.add(2500)
    plan(PROJECT, MirrorConfig(projects=(PROJECT,), bundle_size=1000), deps)
    assert [len(c.label_hashes) for c in queue.chunks] == [1000, 1000, 500]


def test_incremental_listing_runs_from_watermark_minus_overlap_to_the_signpost(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, clock: Clock
) -> None:
    # Given a first sync at T0
    source.add(3)
    mirror.sync()
    watermark = mirror.state.get_watermark(PROJECT)
    assert watermark == clock()
    # When the next run starts five minutes later
    clock.advance(300)
    source.list_calls.clear()
    result = plan(PROJECT, CONFIG, deps)
    # Then it lists (watermark - 120 s, signpost], with timezone-aware UTC bounds
    assert not result.full
    (query,) = source.list_calls
    assert query.edited_after == watermark - timedelta(seconds=120)
    assert query.edited_before == clock() == result.signpost
    assert query.edited_after is not None and query.edited_after.tzinfo is not None
    assert query.edited_before is not None and query.edited_before.utcoffset() == timedelta(0)


def test_relisting_the_overlap_is_free(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, clock: Clock
) -> None:
    # Given rows already in the lake, all inside the next run's overlap
    source.add(5)
    mirror.sync()
    clock.advance(30)
    # When the next run re-lists them unchanged
    result = plan(PROJECT, CONFIG, deps)
    # Then nothing is sent for initialisation
    assert result.listed == 5 and result.to_sync == 0 and result.skipped == 5 and result.chunks == 0


def test_every_nth_run_reconciles(mirror: Mirror, source: FakeSource, clock: Clock) -> None:
    # Given reconciliation every 3rd run
    source.add(2)
    config = MirrorConfig(projects=(PROJECT,), reconcile_every=3)
    modes = []
    for _ in range(6):
        clock.advance(60)
        modes.append(mirror.sync(config).projects[0].full)
    # Then runs 1 (no watermark), 3 and 6 list everything
    assert modes == [True, False, True, False, False, True]


def test_a_held_lease_skips_the_run_without_listing(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, queue: RecordingQueue, clock: Clock
) -> None:
    source.add(2)
    assert state.acquire_lease(PROJECT, "another-run", clock(), 900)
    result = plan(PROJECT, CONFIG, deps)
    assert result.status == "lease_held"
    assert source.list_calls == [] and queue.batches == []


def test_a_run_with_nothing_to_do_asks_for_its_finalize_at_once(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, clock: Clock
) -> None:
    source.add(2)
    mirror.sync()
    clock.advance(60)
    result = plan(PROJECT, CONFIG, deps)
    assert result.chunks == 0 and queue.batches == []
    assert queue.finalize_requests == [(PROJECT, result.run_id)]


def test_dedupe_sends_one_version_of_a_row_listed_twice(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, queue: RecordingQueue, clock: Clock
) -> None:
    # Given a watermark (of a lake synced with these filters), a row edited since, and an open gap on the
    # same row (so two listings return it)
    source.add(3)
    state.set_watermark(PROJECT, clock())
    state.set_filters(PROJECT, CONFIG.filters_fingerprint())
    clock.advance(10)
    source.edit("label-0001")
    state.add_gaps([Gap(PROJECT, "label-0001", None, "old-run", "boom")])
    clock.advance(10)
    # When the planner runs
    result = plan(PROJECT, CONFIG, deps)
    # Then the gap was listed by label hash, and the row goes out once
    assert RowQuery(branches=CONFIG.branches, label_hashes=("label-0001",)) in source.list_calls
    assert [h for c in queue.chunks for h in c.label_hashes].count("label-0001") == 1
    assert result.listed == 4


def test_open_gaps_are_retried_even_outside_the_listing_window(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, queue: RecordingQueue, clock: Clock
) -> None:
    # Given a gap on a row edited long before the watermark
    source.add(2)
    clock.advance(3600)
    state.set_watermark(PROJECT, clock())
    state.set_filters(PROJECT, CONFIG.filters_fingerprint())
    state.add_gaps([Gap(PROJECT, "label-0000", None, "old-run", "429")])
    clock.advance(60)
    # When an incremental run plans
    plan(PROJECT, CONFIG, deps)
    # Then the gap's row is sent again
    assert [h for c in queue.chunks for h in c.label_hashes] == ["label-0000"]


def test_a_gap_whose_row_was_deleted_becomes_a_removal(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, queue: RecordingQueue, clock: Clock
) -> None:
    source.add(1)
    state.set_watermark(PROJECT, clock())
    state.add_gaps([Gap(PROJECT, "label-gone", None, "old-run", "429")])
    clock.advance(60)
    plan(PROJECT, CONFIG, deps)
    assert [c.removals for c in queue.chunks] == [("label-gone",)]


def test_reconciliation_diffs_with_the_index(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, clock: Clock
) -> None:
    # Given a synced project
    source.add(6)
    mirror.sync()
    clock.advance(3600)
    # And then: a stage move (no edit time change), a deletion, a new branch row, an unlabelled data unit
    source.move("label-0001", REVIEW)
    source.delete("label-0002")
    source.add(1, branch="consensus-1", start=3)
    source.add_unlabelled("data-0100")
    # When a full run plans with every branch
    config = MirrorConfig(projects=(PROJECT,), branches=BranchSelection("all"))
    result = plan(PROJECT, config, deps, full=True)
    # Then the move and the new branch are work, the deletion a removal, the unlabelled row only recorded
    assert sorted(h for c in queue.chunks for h in c.label_hashes) == ["label-0001", "label-0003-consensus-1"]
    assert [h for c in queue.chunks for h in c.removals] == ["label-0002"]
    run = mirror.state.get_run(PROJECT, result.run_id)
    assert run is not None and run.unlabelled == ("data-0100",) and result.unlabelled == 1


def test_a_row_leaving_the_stage_filter_is_a_removal(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, clock: Clock
) -> None:
    # Given only the Annotate stage is mirrored, and two rows are in the lake
    config = MirrorConfig(projects=(PROJECT,), stage_include=(ANNOTATE.title,))
    source.add(2)
    mirror.sync(config)
    clock.advance(60)
    # When one row is edited and moves to Review
    source.edit("label-0000")
    source.move("label-0000", REVIEW)
    clock.advance(1)
    plan(PROJECT, config, deps)
    # Then it is removed, not synced
    assert [c.label_hashes for c in queue.chunks] == [()]
    assert [c.removals for c in queue.chunks] == [("label-0000",)]


def test_a_chunk_the_queue_refuses_becomes_gaps_and_still_finishes_the_run(
    source: FakeSource, state: SqliteStateStore, deps: MirrorDeps, clock: Clock
) -> None:
    # Given a queue that refuses every chunk
    source.add(2)
    refusing = RecordingQueue(refuse_all=True)
    # When the planner runs
    result = plan(PROJECT, CONFIG, replace(deps, queue=refusing))
    # Then it tried twice; the rows are open gaps, the chunk is recorded as failed and final,
    # and the run still asks for its finalize (which will hold the watermark)
    assert result.send_failed == 1 and len(refusing.batches) == 2
    assert sorted(g.label_hash for g in state.list_gaps(PROJECT)) == ["label-0000", "label-0001"]
    assert [o.status for r in state.chunk_results(PROJECT, result.run_id) for o in r.outcomes] == [
        "failed"
    ] * 2
    assert refusing.finalize_requests == [(PROJECT, result.run_id)]


def test_a_crash_while_planning_releases_the_lease(
    source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given Encord is down
    source.list_error = TimeoutError("encord down")
    # When a run fails while listing
    with pytest.raises(TimeoutError):
        plan(PROJECT, CONFIG, deps)
    # Then the next run can take the lease at once
    assert state.acquire_lease(PROJECT, "next-run", clock(), 900)


def test_a_large_incremental_listing_reads_the_index_in_one_scan_and_removes_nothing_unlisted(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, state: SqliteStateStore, clock: Clock
) -> None:
    # Given 1500 synced rows plus one more in the index that the incremental listing will not return
    source.add(1501)
    mirror.sync()
    source.edit("label-1500", at=clock() - timedelta(days=1))
    clock.advance(30)
    point_reads: list[str] = []
    original = state.get_index

    def counted(project_hash: str, label_hash: str) -> IndexEntry | None:
        point_reads.append(label_hash)
        return original(project_hash, label_hash)

    state.get_index = counted  # type: ignore[method-assign]
    # When an incremental run re-lists the 1500 rows of its overlap
    result = plan(PROJECT, CONFIG, deps)
    # Then it did not read them one by one, skipped them all, and did not treat the unlisted row as deleted
    assert point_reads == []
    assert (result.full, result.skipped, result.removals, result.chunks) == (False, 1500, 0, 0)


def _synced_state(state: SqliteStateStore) -> tuple[object, ...]:
    """What a refused run must leave as it was: watermark, filters, row index and gaps."""
    return (
        state.get_watermark(PROJECT),
        state.get_filters(PROJECT),
        sorted(e.label_hash for e in state.scan_index(PROJECT)),
        state.list_gaps(PROJECT),
    )


def test_a_filter_change_that_would_empty_the_lake_is_refused_until_the_limit_allows_it(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, clock: Clock
) -> None:
    # Given four Annotate rows in step
    source.add(4)
    assert mirror.sync().ok
    before = _synced_state(mirror.state)
    clock.advance(60)
    review = MirrorConfig(projects=(PROJECT,), stage_include=(REVIEW.title,))
    # When the planner runs with a stage filter that takes every row out of the lake
    with pytest.raises(FilterShrinkError) as caught:
        plan(PROJECT, review, deps)
    # Then it is refused with the counts, nothing is sent, the state is as it was, and the lease is free
    assert (caught.value.removing, caught.value.lake_rows, caught.value.limit) == (4, 4, 50)
    assert queue.chunks == [] and _synced_state(mirror.state) == before
    assert mirror.state.get_lease(PROJECT) is None
    # When the limit allows it / Then the run removes the four rows and says how many the change took
    result = plan(PROJECT, review.model_copy(update={"filter_shrink_limit": 100}), deps)
    assert (result.deselected, result.lake_rows, result.removals) == (4, 4, 4)
    assert sorted(h for c in queue.chunks for h in c.removals) == [f"label-{i:04d}" for i in range(4)]


def test_a_branch_change_counts_the_rows_of_the_branch_it_leaves(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, clock: Clock
) -> None:
    # Given three main rows in step, and a consensus branch of one of them
    source.add(3)
    source.add(1, branch="consensus-1")
    assert mirror.sync().ok
    clock.advance(60)
    # When the planner runs for the consensus branch alone
    consensus = MirrorConfig(projects=(PROJECT,), branches=BranchSelection("named", "consensus-1"))
    with pytest.raises(FilterShrinkError) as caught:
        plan(PROJECT, consensus, deps)
    # Then the unlisted main rows count as taken out by the change, not deleted in Encord
    assert (caught.value.removing, caught.value.lake_rows) == (3, 3)
    assert queue.chunks == []


def test_rows_deleted_in_encord_are_removed_whatever_the_share(
    mirror: Mirror, source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, clock: Clock
) -> None:
    # Given four rows in step, three of them then deleted in Encord
    source.add(4)
    assert mirror.sync().ok
    for label_hash in ("label-0000", "label-0001", "label-0002"):
        source.delete(label_hash)
    clock.advance(60)
    # When a reconciling run plans with the same filters / Then the deletions are removals
    result = plan(PROJECT, MirrorConfig(projects=(PROJECT,), filter_shrink_limit=0), deps, full=True)
    assert (result.removals, result.deselected) == (3, 0)


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        (MirrorConfig(projects=(PROJECT,), stage_include=("Reveiw",)), "stage_include"),
        (MirrorConfig(projects=(PROJECT,), stage_exclude=("complete",)), "stage_exclude"),
        (MirrorConfig(projects=(PROJECT,), branches=BranchSelection("named", "consensus-2")), "branches"),
    ],
)
def test_a_stage_or_branch_the_project_lacks_is_refused_before_any_listing(
    source: FakeSource, deps: MirrorDeps, queue: RecordingQueue, config: MirrorConfig, setting: str
) -> None:
    source.add(2)
    source.add(1, branch="consensus-1")
    with pytest.raises(ConfigError) as caught:
        plan(PROJECT, config, deps)
    assert caught.value.setting == setting
    assert source.list_calls == [] and queue.chunks == []
    # The refusal is recorded, so status says why the lake was not synced
    failure = deps.state.get_failure(PROJECT)
    assert failure is not None and setting in failure.reason
