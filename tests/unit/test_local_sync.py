"""The issue's behaviours end to end on one machine: run_local_sync with the fake Encord, the real local
lake, SQLite state and the thread-pool queue. After each scenario the lake's current view is compared
with the fake Encord: every live row exactly once, in the right partition, with the latest content."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import orjson
import pytest
from conftest import Mirror
from fakes import CAR, COMPLETE, PERSON, PROJECT, REVIEW, FakeSource, RecordingEvents, RecordingSnapshots

from encord_mirror.adapters.local import LocalLake, LocalQueueError, SqliteStateStore
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.lake import label_key, run_manifest_key, stage_value
from encord_mirror.domain.models import (
    BranchSelection,
    LoadResult,
    ProjectInfo,
    RowMeta,
    RowQuery,
    SourceClock,
)
from encord_mirror.domain.ports import LabelSource
from encord_mirror.local_sync import SyncInterruptedError, describe_lease, run_local_sync


def assert_lake_matches(mirror: Mirror, source: FakeSource, *, branches: Sequence[str] = ("main",)) -> None:
    """Every live row of the fake Encord exactly once, at its partition key, at its latest version."""
    expected = {}
    for row in source.rows.values():
        if row.label_hash is None or row.branch not in branches:
            continue
        stage = stage_value(row.stage.uuid if row.stage else None, row.stage.title if row.stage else None)
        expected[label_key(PROJECT, row.branch, stage, row.label_hash)] = row
    assert mirror.label_keys() == sorted(expected)
    for key, row in expected.items():
        stored = mirror.lake.get(key)
        assert stored is not None
        document = orjson.loads(stored.body)
        assert document["mirror"]["last_edited_at"] == row.last_edited_at.isoformat()  # type: ignore[union-attr]
        box = document["data_units"][row.data_hash]["labels"]["objects"][0]["boundingBox"]
        assert box["w"] == pytest.approx(0.01 * row.version), f"{key} holds an old version"


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "inclusive"])
def test_rows_sharing_the_signposts_timestamp_are_synced_whichever_way_encord_compares(
    mirror: Mirror, source: FakeSource, strict: bool
) -> None:
    # Given Encord comparing dates strictly or inclusively, and a first sync
    source.strict = strict
    source.add(3)
    mirror.sync()
    # When three rows are saved in the very second the next sync starts (they share its signpost)
    mirror.clock.advance(60)
    for h in ("label-0000", "label-0001", "label-0002"):
        source.edit(h)
    mirror.sync()
    # And one more sync runs later
    mirror.clock.advance(60)
    last = mirror.sync().projects[0]
    # Then every edit is in the lake; once synced, re-listing them initialises nothing
    assert_lake_matches(mirror, source)
    assert last.requested == (3 if strict else 0)


def test_a_sync_started_after_an_edit_includes_it(mirror: Mirror, source: FakeSource) -> None:
    # Given a synced project
    source.add(3)
    mirror.sync()
    mirror.clock.advance(60)
    # When a row is saved and a sync starts one second later
    source.edit("label-0001")
    mirror.clock.advance(1)
    summary = mirror.sync().projects[0]
    # Then that sync, not a later one, writes it
    assert summary.written == 1 and summary.requested == 1
    assert_lake_matches(mirror, source)


def test_an_edit_made_while_a_sync_is_in_flight_is_picked_up_by_the_next(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given 3 rows synced, then row 0 edited (so the next run has work)
    source.add(3)
    mirror.sync()
    mirror.clock.advance(60)
    source.edit("label-0000")
    mirror.clock.advance(1)

    # When, while that run's bundle loads, 5 minutes pass and row 2 is saved (after the signpost)
    def meanwhile() -> None:
        if source.row("label-0002").version == 1:
            mirror.clock.advance(300)
            source.edit("label-0002")

    source.on_load = meanwhile
    mirror.sync()
    source.on_load = None
    # Then the next run lists and syncs it
    mirror.clock.advance(10)
    summary = mirror.sync().projects[0]
    assert summary.written == 1
    assert_lake_matches(mirror, source)


def test_a_stage_move_is_mirrored_while_encords_clock_is_minutes_behind_ours(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given Encord's clock 5 minutes behind ours (signposts are Encord's time), and a synced project
    source.tells_time, source.skew = True, timedelta(minutes=5)
    source.add(3)
    mirror.sync()
    # When, 2 minutes later, a row moves to another stage and a reconciling run syncs
    mirror.clock.advance(120)
    source.move("label-0001", COMPLETE)
    summary = mirror.sync(full=True).projects[0]
    # Then the row moves: its sync time (our clock) is compared with the run's start on our clock, not
    # with the signpost, so the earlier sync does not pass for one of this run
    assert summary.moved == 1
    assert_lake_matches(mirror, source)


def test_a_watermark_set_by_a_clock_ahead_of_encords_is_reconciled_then_brought_back(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a project synced while the signpost was our clock, 5 minutes ahead of Encord's
    source.skew = timedelta(minutes=5)
    source.add(3)
    mirror.sync()
    ahead = mirror.state.get_watermark(PROJECT)
    # When Encord tells its time from then on, and rows are edited before and after the next run
    source.tells_time = True
    mirror.clock.advance(60)
    source.edit("label-0000")
    first = mirror.sync().projects[0]
    mirror.clock.advance(60)
    source.edit("label-0001")
    mirror.clock.advance(600)
    second = mirror.sync().projects[0]
    # Then the first run reconciles (its window would start in Encord's future) and brings the mark back
    # to Encord's time, so the next incremental run lists the edit made in between
    assert first.full and first.written == 1
    assert ahead is not None and first.watermark_after is not None and first.watermark_after < ahead
    assert not second.full and second.written == 1
    assert_lake_matches(mirror, source)


@pytest.mark.parametrize("overlap", [120, 0], ids=["with-overlap", "no-overlap"])
def test_clock_skew_within_the_overlap_is_caught_by_the_next_run(
    mirror: Mirror, source: FakeSource, overlap: int
) -> None:
    # Given Encord's clock 5 s behind ours, and a synced project
    config = MirrorConfig(projects=(PROJECT,), overlap_seconds=overlap)
    source.skew = timedelta(seconds=5)
    source.add(3)
    mirror.sync(config)
    mirror.clock.advance(60)
    source.edit("label-0000")
    mirror.clock.advance(1)

    # When, just after the next run has listed, a row is saved and stamped before that run's signpost
    def meanwhile() -> None:
        if source.row("label-0001").version == 1:
            mirror.clock.advance(2)
            source.edit("label-0001")

    source.on_load = meanwhile
    mirror.sync(config)
    source.on_load = None
    mirror.clock.advance(10)
    mirror.sync(config)
    # Then the overlap re-lists it and the lake catches up; without an overlap the edit is lost
    if overlap:
        assert_lake_matches(mirror, source)
    else:
        with pytest.raises(AssertionError):
            assert_lake_matches(mirror, source)


def test_reconciliation_moves_deletes_and_records_unlabelled_rows(mirror: Mirror, source: FakeSource) -> None:
    # Given a synced project
    source.add(5)
    mirror.sync()
    mirror.clock.advance(3600)
    # When a row moves stage, another is deleted, a data unit without labels appears, and a full sync runs
    source.move("label-0001", REVIEW)
    source.delete("label-0002")
    source.add_unlabelled("data-0099")
    summary = mirror.sync(full=True).projects[0]
    # Then the old copy went in the same run, the deleted row left the current view, the unlabelled
    # row was recorded and never initialised
    assert (summary.moved, summary.removed, summary.unlabelled, summary.requested) == (1, 1, 1, 1)
    assert_lake_matches(mirror, source)
    assert all("data-0099" not in str(call) for call in source.load_calls)
    manifest = orjson.loads(mirror.lake.get(run_manifest_key(PROJECT, summary.run_id)).body)  # type: ignore[union-attr]
    assert manifest["unlabelled"] == ["data-0099"]
    # and history keeps the deleted row: the manifest says where it was
    removed = [r for r in manifest["rows"] if r["status"] == "removed"]
    assert [(r["label_hash"], r["old_key"]) for r in removed] == [
        ("label-0002", "labels/project=proj-0001/branch=main/stage=annotate-5a5a0001/label-0002.json")
    ]


def test_a_task_status_change_alone_is_synced_by_the_next_reconciling_run(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a synced project
    source.add(4)
    mirror.sync()
    mirror.clock.advance(3600)
    # When one row's task status changes (no edit, no stage move) and a reconciling sync runs
    source.row("label-0002").task_status = "COMPLETED"
    source.load_calls.clear()
    summary = mirror.sync(full=True).projects[0]
    # Then only that row is initialised and rewritten, and its lake object and index carry the new status
    assert (summary.requested, summary.written) == (1, 1)
    assert source.load_calls == [("label-0002",)]
    entry = mirror.state.get_index(PROJECT, "label-0002")
    assert entry is not None and entry.task_status == "COMPLETED"
    stored = mirror.lake.get(entry.key)
    assert stored is not None and orjson.loads(stored.body)["mirror"]["task_status"] == "COMPLETED"
    # and the run after it has nothing to do
    mirror.clock.advance(60)
    assert mirror.sync(full=True).projects[0].requested == 0


def test_an_index_entry_from_before_task_statuses_is_completed_once_without_a_rewrite(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a lake synced by a version whose row index did not keep task statuses
    source.add(2)
    mirror.sync()
    for entry in list(mirror.state.scan_index(PROJECT)):
        mirror.state.put_index(replace(entry, task_status=None, stage_uuid=None))
    before = mirror.snapshot()
    mirror.clock.advance(3600)
    # When two reconciling syncs run
    first = mirror.sync(full=True).projects[0]
    mirror.clock.advance(60)
    second = mirror.sync(full=True).projects[0]
    # Then the first re-reads the rows once and rewrites nothing; the second has nothing to do
    assert (first.requested, first.written, first.unchanged) == (2, 0, 2)
    assert mirror.snapshot() == before
    assert second.requested == 0


def test_a_new_consensus_branch_gets_its_own_partition(mirror: Mirror, source: FakeSource) -> None:
    config = MirrorConfig(projects=(PROJECT,), branches=BranchSelection("all"))
    source.add(3)
    mirror.sync(config)
    mirror.clock.advance(3600)
    source.add(2, branch="consensus-a")
    summary = mirror.sync(config, full=True).projects[0]
    assert summary.written == 2
    assert_lake_matches(mirror, source, branches=("main", "consensus-a"))


def test_a_failing_row_holds_the_watermark_and_is_retried_next_run(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a synced project, then two edits, one of which Encord cannot serve
    source.add(3)
    first = mirror.sync().projects[0]
    mirror.clock.advance(60)
    source.edit("label-0000")
    source.edit("label-0001")
    source.failing["label-0001"] = "left uninitialised"
    mirror.clock.advance(1)
    # When a sync runs
    held = mirror.sync().projects[0]
    # Then the good row is synced, the bad one is a gap, and the watermark stays where it was
    # (the failed row's version is unknown, so the mark cannot safely pass any of it)
    assert (held.written, held.failed, held.gaps_open) == (1, 1, 1)
    assert held.watermark_after == first.watermark_after
    # When Encord serves the row again, 20 minutes later (outside the overlap of the last good mark)
    del source.failing["label-0001"]
    mirror.clock.advance(1200)
    retried = mirror.sync().projects[0]
    # Then the gap is retried and closed, and the watermark moves to the new signpost
    assert (retried.written, retried.gaps_open) == (1, 0)
    assert retried.watermark_after == mirror.clock()
    assert_lake_matches(mirror, source)


def test_a_poison_row_fails_alone_and_holds_the_watermark_at_its_version(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a synced project, then edits to 10 rows, one of which is corrupt
    source.add(10)
    mirror.sync()
    mirror.clock.advance(60)
    for i in range(10):
        source.edit(f"label-{i:04d}")
    poisoned_at = source.row("label-0004").last_edited_at
    source.poison.add("label-0004")
    mirror.clock.advance(60)
    # When a sync runs
    summary = mirror.sync()
    # Then the nine others are written, the poison row is a gap, the sync is not ok,
    # and the watermark stops at the poison row's version
    project = summary.projects[0]
    assert (project.written, project.failed, project.gaps_open) == (9, 1, 1)
    assert not summary.ok
    assert project.watermark_after == poisoned_at < mirror.clock()  # type: ignore[operator]


def test_a_chunk_that_fails_once_is_redelivered_and_succeeds(mirror: Mirror, source: FakeSource) -> None:
    # Given the first bundle request hits a 429 storm
    source.add(4)
    calls = []

    def first_call_fails() -> None:
        calls.append(1)
        source.load_error = RuntimeError("429") if len(calls) == 1 else None

    source.on_load = first_call_fails
    # When the project syncs
    summary = mirror.sync()
    # Then the queue redelivered the chunk, and nothing is left open
    assert len(calls) == 2 and summary.ok and summary.projects[0].written == 4
    assert_lake_matches(mirror, source)


def test_a_second_sync_with_nothing_changed_initialises_no_row(mirror: Mirror, source: FakeSource) -> None:
    source.add(250)
    mirror.sync()
    before = mirror.snapshot()
    mirror.clock.advance(30)
    loads = source.rows_initialised
    summary = mirror.sync()
    assert summary.ok and summary.projects[0].requested == 0
    assert source.rows_initialised == loads
    assert mirror.snapshot() == before


def test_the_summary_reports_counts_watermarks_and_progress(mirror: Mirror, source: FakeSource) -> None:
    source.add(150)
    messages: list[str] = []
    summary = run_local_sync(
        MirrorConfig(projects=(PROJECT,)),
        source,
        mirror.lake,
        mirror.state,
        workers=2,
        full=False,
        snapshots=None,
        progress=messages.append,
        clock=mirror.clock,
    )
    (project,) = summary.projects
    assert (project.status, project.full, project.listed, project.chunks, project.written) == (
        "synced",
        True,
        150,
        2,
        150,
    )
    assert project.watermark_before is None and project.watermark_after == mirror.clock()
    assert project.manifest_key == run_manifest_key(PROJECT, project.run_id) and project.seconds > 0
    assert sum("chunk" in m and "done" in m for m in messages) == 2
    assert "150 written" in messages[-1]


class TwoProjects:
    """Two fake Encord projects behind one LabelSource."""

    def __init__(self, *sources: FakeSource) -> None:
        self.by_project = {s.project_hash: s for s in sources}

    def project_info(self, project_hash: str) -> ProjectInfo:
        return self.by_project[project_hash].project_info(project_hash)

    def list_branches(self, project_hash: str) -> tuple[str, ...]:
        return self.by_project[project_hash].list_branches(project_hash)

    def list_rows(self, project_hash: str, query: RowQuery) -> list[RowMeta]:
        return self.by_project[project_hash].list_rows(project_hash, query)

    def server_time(self) -> SourceClock:
        return next(iter(self.by_project.values())).server_time()

    def load_rows(self, project_hash: str, label_hashes: Sequence[str], *, bundle_size: int) -> LoadResult:
        return self.by_project[project_hash].load_rows(project_hash, label_hashes, bundle_size=bundle_size)

    def load_listed(self, project_hash: str, rows: Sequence[RowMeta], *, bundle_size: int) -> LoadResult:
        return self.by_project[project_hash].load_listed(project_hash, rows, bundle_size=bundle_size)


def test_several_projects_sync_into_their_own_partitions(
    source: FakeSource, lake: LocalLake, state: SqliteStateStore
) -> None:
    other = FakeSource(clock=source.clock, project_hash="proj-0002")
    source.add(2)
    other.add(3)
    two: LabelSource = TwoProjects(source, other)
    summary = run_local_sync(
        MirrorConfig(projects=(PROJECT, "proj-0002")), two, lake, state, clock=source.clock
    )
    assert [p.written for p in summary.projects] == [2, 3]
    assert len(list(lake.list_keys("labels/project=proj-0002/"))) == 3


def test_a_project_whose_lease_is_held_is_skipped(mirror: Mirror, source: FakeSource) -> None:
    source.add(1)
    mirror.state.acquire_lease(PROJECT, "someone-else", mirror.clock(), 900)
    summary = mirror.sync()
    assert summary.projects[0].status == "lease_held" and not summary.ok
    assert mirror.label_keys() == []


def test_a_held_lease_is_reported_with_its_run_since_when_and_expiry(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a project whose lease another run took ten minutes ago
    source.add(1)
    taken = mirror.clock()
    mirror.state.acquire_lease(PROJECT, "20261101T120000.000Z-0badc0de", taken, 900)
    mirror.clock.advance(600)
    messages: list[str] = []
    # When a sync runs
    summary = run_local_sync(
        MirrorConfig(projects=(PROJECT,)),
        source,
        mirror.lake,
        mirror.state,
        progress=messages.append,
        clock=mirror.clock,
    )
    # Then the skip names the holder, since when it holds the project and when the lease expires
    (project,) = summary.projects
    assert project.lease is not None and project.lease.owner == "20261101T120000.000Z-0badc0de"
    expected = (
        "run 20261101T120000.000Z-0badc0de holds the project's lease since 2026-11-01T12:00:00+00:00; "
        "it expires at 2026-11-01T12:15:00+00:00"
    )
    assert any(expected in m for m in messages), messages
    assert expected in describe_lease(project.lease)


def test_an_interrupted_sync_stops_releases_the_lease_and_leaves_the_watermark(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a synced project with new edits, and a user who presses Ctrl-C once the next run is planned
    source.add(6)
    mirror.sync()
    mark = mirror.state.get_watermark(PROJECT)
    mirror.clock.advance(60)
    for h in ("label-0001", "label-0002"):
        source.edit(h)
    mirror.clock.advance(60)

    def ctrl_c_once_planned(message: str) -> None:
        if " run " in message:
            raise KeyboardInterrupt

    source.on_load = lambda: time.sleep(0.2)  # the chunks are still loading when Ctrl-C comes

    # When the sync runs and is interrupted
    with pytest.raises(SyncInterruptedError) as interrupted:
        run_local_sync(
            MirrorConfig(projects=(PROJECT,), bundle_size=1),
            source,
            mirror.lake,
            mirror.state,
            progress=ctrl_c_once_planned,
            clock=mirror.clock,
        )
    # Then it says which run stopped, the lease is free, the watermark is where it was and no manifest exists
    error = interrupted.value
    assert error.project_hash == PROJECT and error.run_id is not None and error.watermark == mark
    assert mirror.state.get_lease(PROJECT) is None
    assert mirror.state.get_watermark(PROJECT) == mark
    assert mirror.lake.get(run_manifest_key(PROJECT, error.run_id)) is None
    # and the next sync runs at once and completes the work
    assert mirror.sync().projects[0].status == "synced"
    assert_lake_matches(mirror, source)


def test_a_sync_whose_finalize_fails_raises_and_frees_the_project(mirror: Mirror, source: FakeSource) -> None:
    # Given an event sink that breaks while the first run finalizes
    source.add(2)
    with pytest.raises(LocalQueueError, match="event bus down"):
        run_local_sync(
            MirrorConfig(projects=(PROJECT,)),
            source,
            mirror.lake,
            mirror.state,
            snapshots=RecordingSnapshots(),
            events=RecordingEvents(fail=True),
            clock=mirror.clock,
        )
    # Then the next sync is not locked out, and brings the lake in step
    mirror.clock.advance(10)
    summary = mirror.sync()
    assert summary.ok
    assert_lake_matches(mirror, source)


def test_configured_filters_shape_what_lands_in_the_lake(mirror: Mirror, source: FakeSource) -> None:
    # Given rows in Annotate and Review, one of them completed, and a config that keeps completed
    # Review rows only, with cars only
    source.add(2)
    source.add(2, stage=REVIEW, start=2)
    source.row("label-0003").task_status = "COMPLETED"
    config = MirrorConfig(
        projects=(PROJECT,),
        stage_include=("Review",),
        task_statuses=("COMPLETED",),
        object_feature_hashes=(CAR,),
        classification_feature_hashes=(),
    )
    # When the project syncs
    summary = mirror.sync(config).projects[0]
    # Then only that row is initialised and written, with its cars and no classification
    assert (summary.requested, summary.written) == (1, 1)
    (key,) = mirror.label_keys()
    document = orjson.loads(mirror.lake.get(key).body)  # type: ignore[union-attr]
    assert key.endswith("stage=review-5a5a0002/label-0003.json")
    assert [o["featureHash"] for o in document["data_units"]["data-0003"]["labels"]["objects"]] == [CAR]
    assert document["classification_answers"] == {}


def _objects(mirror: Mirror) -> dict[str, list[str]]:
    """The feature hashes of each label object's objects, by label hash."""
    out = {}
    for key in mirror.label_keys():
        document = orjson.loads(mirror.lake.get(key).body)  # type: ignore[union-attr]
        [unit] = document["data_units"].values()
        out[document["label_hash"]] = [o["featureHash"] for o in unit["labels"]["objects"]]
    return out


def test_a_feature_filter_change_rewrites_every_row_on_the_next_sync(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a project synced with every feature, and nothing edited since
    source.add(3)
    assert mirror.sync().ok
    assert set(map(tuple, _objects(mirror).values())) == {(CAR, PERSON)}
    mirror.clock.advance(60)
    cars = MirrorConfig(projects=(PROJECT,), object_feature_hashes=(CAR,))
    # When the next sync keeps cars only
    summary = mirror.sync(cars).projects[0]
    # Then it reconciled and sent every row again, and every row now holds cars only
    assert summary.full and (summary.requested, summary.written) == (3, 3)
    assert set(map(tuple, _objects(mirror).values())) == {(CAR,)}
    # When it runs again with the same filter / Then nothing is sent
    mirror.clock.advance(60)
    again = mirror.sync(cars).projects[0]
    assert not again.full and again.requested == 0
    # When the filter is dropped again / Then every row is whole again
    mirror.clock.advance(60)
    back = mirror.sync().projects[0]
    assert back.requested == 3 and back.written == 3
    assert_lake_matches(mirror, source)


def test_a_stage_filter_change_reconciles_on_the_next_sync_without_resending_held_rows(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given two Annotate rows and two Review rows, synced with Review only
    source.add(2)
    source.add(2, stage=REVIEW, start=2)
    review = MirrorConfig(projects=(PROJECT,), stage_include=("Review",))
    mirror.sync(review)
    assert [k.rsplit("/", 1)[1] for k in mirror.label_keys()] == ["label-0002.json", "label-0003.json"]
    mirror.clock.advance(60)
    # When the next (otherwise incremental) sync mirrors every stage
    summary = mirror.sync().projects[0]
    # Then it reconciles: the two Annotate rows are added, the Review rows are not sent again
    assert summary.full and summary.requested == 2 and summary.written == 2
    assert_lake_matches(mirror, source)
    # When it goes back to Review only / Then the Annotate rows leave the lake at once
    mirror.clock.advance(60)
    back = mirror.sync(review).projects[0]
    assert back.full and back.removed == 2 and back.requested == 0
    assert [k.rsplit("/", 1)[1] for k in mirror.label_keys()] == ["label-0002.json", "label-0003.json"]
