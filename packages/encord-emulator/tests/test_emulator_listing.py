"""The emulator's `labelrowmetadata` listing through the SDK's `list_label_rows_v2` (server-side filters).

Fixture (encord_emulator.testing.build_fixture): on main img1.jpg (edited 2025-09-01 10:00 UTC,
Annotate 1, QUEUED), img2.jpg (09-02, Review 1, IN_REVIEW), vid1.mp4 (09-03, Complete, COMPLETED); img1.jpg
also on the consensus branch (09-04); img3.jpg has no label row (Annotate 1, QUEUED).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from encord.constants.enums import DataType
from encord.exceptions import InvalidArgumentsError
from encord.orm.label_row import AnnotationTaskStatus

from encord_emulator.testing import CONSENSUS_BRANCH, EmulatorEnv, emulator_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[EmulatorEnv]:
    with emulator_env(tmp_path) as env:
        yield env


@pytest.fixture
def project(env: EmulatorEnv) -> Any:
    return env.project()


def titles(rows: list[Any]) -> list[str]:
    return sorted(row.data_title for row in rows)


def test_default_listing_is_main_with_uninitialised_data_units_and_upper_case_metadata(
    env: EmulatorEnv, project: Any
) -> None:
    # Given the fixture project
    # When every row is listed without filters
    rows = project.list_label_rows_v2()

    # Then there is one item per data unit on main, img3 uninitialised, with stage, task status and types
    by_title = {row.data_title: row for row in rows}
    assert sorted(by_title) == ["img1.jpg", "img2.jpg", "img3.jpg", "vid1.mp4"]
    assert {row.branch_name for row in rows} == {"main"}
    assert by_title["img3.jpg"].label_hash is None
    assert by_title["img1.jpg"].label_hash == env.fixture.by_title("img1.jpg").label_hash
    assert by_title["vid1.mp4"].data_type == DataType.VIDEO
    assert by_title["img2.jpg"].data_type == DataType.IMAGE
    assert by_title["img2.jpg"].workflow_graph_node.title == "Review 1"
    assert str(by_title["img2.jpg"].workflow_graph_node.uuid) == env.fixture.stages[1]["uuid"]
    # The SDK hides annotation_task_status behind a workflow-project guard; the parsed metadata has it.
    vid1_task = by_title["vid1.mp4"]._label_row_read_only_data.annotation_task_status
    assert vid1_task == AnnotationTaskStatus.COMPLETED
    assert by_title["img1.jpg"].last_edited_at == datetime(2025, 9, 1, 10, 0, tzinfo=UTC)
    assert by_title["vid1.mp4"].number_of_frames == 5


def test_edited_after_is_strict_by_default_with_a_naive_datetime_read_as_utc(project: Any) -> None:
    # Given img2 edited at exactly 2025-09-02 10:00 UTC
    # When listing with a naive edited_after at that instant
    rows = project.list_label_rows_v2(edited_after=datetime(2025, 9, 2, 10, 0))

    # Then only later rows come back, and the uninitialised img3 is dropped because a date filter is set
    assert titles(rows) == ["vid1.mp4"]


def test_edited_after_in_inclusive_mode_includes_the_boundary_row(env: EmulatorEnv, project: Any) -> None:
    # Given the emulator switched to inclusive date comparison
    env.emu.set_date_mode("inclusive")

    # When listing with edited_after at img2's edit time
    rows = project.list_label_rows_v2(edited_after=datetime(2025, 9, 2, 10, 0))

    # Then img2 is included too
    assert titles(rows) == ["img2.jpg", "vid1.mp4"]


def test_edited_before_with_an_aware_datetime_in_another_zone(env: EmulatorEnv, project: Any) -> None:
    # Given 12:00 at +02:00, the same instant as img2's edit (10:00 UTC)
    boundary = datetime(2025, 9, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))

    # When listing before it, strictly and then inclusively
    strict = project.list_label_rows_v2(edited_before=boundary)
    env.emu.set_date_mode("inclusive")
    inclusive = project.list_label_rows_v2(edited_before=boundary)

    # Then the offset is honoured and the mode decides the boundary row
    assert titles(strict) == ["img1.jpg"]
    assert titles(inclusive) == ["img1.jpg", "img2.jpg"]


def test_edited_window_with_both_bounds(project: Any) -> None:
    # Given a window strictly around img2 only
    # When listing inside it
    rows = project.list_label_rows_v2(
        edited_after=datetime(2025, 9, 1, 10, 0, tzinfo=UTC),
        edited_before=datetime(2025, 9, 3, 10, 0, tzinfo=UTC),
    )

    # Then only img2 is inside
    assert titles(rows) == ["img2.jpg"]


def test_label_statuses_filter_on_the_annotation_task_status(project: Any) -> None:
    # Given rows whose tasks are QUEUED, IN_REVIEW and COMPLETED
    # When filtering on IN_REVIEW and COMPLETED
    rows = project.list_label_rows_v2(
        label_statuses=[AnnotationTaskStatus.IN_REVIEW, AnnotationTaskStatus.COMPLETED]
    )

    # Then the QUEUED data units (img1 and the uninitialised img3) are left out
    assert titles(rows) == ["img2.jpg", "vid1.mp4"]


def test_workflow_stage_title_eq_is_case_sensitive_and_like_is_not(project: Any) -> None:
    # Given stages "Annotate 1", "Review 1", "Complete"
    # When filtering on the stage title
    exact = project.list_label_rows_v2(workflow_graph_node_title_eq="Annotate 1")
    wrong_case = project.list_label_rows_v2(workflow_graph_node_title_eq="annotate 1")
    like = project.list_label_rows_v2(workflow_graph_node_title_like="review%")

    # Then eq matches exactly (uninitialised img3 included), like matches SQL-style ignoring case
    assert titles(exact) == ["img1.jpg", "img3.jpg"]
    assert wrong_case == []
    assert titles(like) == ["img2.jpg"]


def test_data_title_eq_and_like_with_sql_wildcards(project: Any) -> None:
    # Given data titles img1.jpg, img2.jpg, img3.jpg, vid1.mp4
    # When filtering by title
    exact = project.list_label_rows_v2(data_title_eq="vid1.mp4")
    one_char = project.list_label_rows_v2(data_title_like="img_.jpg")
    any_run = project.list_label_rows_v2(data_title_like="IMG%")
    literal_dot = project.list_label_rows_v2(data_title_like="vid1_mp4")

    # Then `_` is one character, `%` any run, and like ignores case
    assert titles(exact) == ["vid1.mp4"]
    assert titles(one_char) == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert titles(any_run) == ["img1.jpg", "img2.jpg", "img3.jpg"]
    assert titles(literal_dot) == ["vid1.mp4"]


def test_data_hashes_and_label_hashes_select_rows(env: EmulatorEnv, project: Any) -> None:
    # Given the fixture's hashes
    img2 = env.fixture.by_title("img2.jpg")
    img1 = env.fixture.by_title("img1.jpg")
    vid1 = env.fixture.by_title("vid1.mp4")
    img3_hash = env.fixture.unlabelled[0]["data_hash"]

    # When listing by data hash and by label hash
    by_data = project.list_label_rows_v2(data_hashes=[img2.data_hash, img3_hash])
    by_label = project.list_label_rows_v2(label_hashes=[img1.label_hash, vid1.label_hash])

    # Then exactly those come back (an uninitialised unit by data hash, never by label hash)
    assert titles(by_data) == ["img2.jpg", "img3.jpg"]
    assert sorted(row.label_hash for row in by_label) == sorted([img1.label_hash, vid1.label_hash])


def test_branch_name_lists_that_branch_with_uninitialised_items_elsewhere(
    env: EmulatorEnv, project: Any
) -> None:
    # Given img1 labelled on the consensus branch only
    consensus = env.fixture.by_title("img1.jpg", CONSENSUS_BRANCH)

    # When listing that branch
    rows = project.list_label_rows_v2(branch_name=CONSENSUS_BRANCH)

    # Then each data unit appears once on that branch, labelled only where the branch has a row
    assert {row.branch_name for row in rows} == {CONSENSUS_BRANCH}
    labelled = {row.data_title: row.label_hash for row in rows if row.label_hash is not None}
    assert labelled == {"img1.jpg": consensus.label_hash}
    assert len(rows) == 4


def test_include_all_label_branches_gives_one_item_per_data_unit_and_branch(
    env: EmulatorEnv, project: Any
) -> None:
    # Given img1 on main and on the consensus branch
    # When listing all branches
    rows = project.list_label_rows_v2(include_all_label_branches=True)

    # Then img1 appears twice with different branches and label hashes, stage repeated on both
    pairs = sorted((row.data_title, row.branch_name) for row in rows)
    assert pairs == [
        ("img1.jpg", CONSENSUS_BRANCH),
        ("img1.jpg", "main"),
        ("img2.jpg", "main"),
        ("img3.jpg", "main"),
        ("vid1.mp4", "main"),
    ]
    img1_rows = [row for row in rows if row.data_title == "img1.jpg"]
    assert len({row.label_hash for row in img1_rows}) == 2
    assert {row.workflow_graph_node.title for row in img1_rows} == {"Annotate 1"}


def test_include_all_label_branches_with_branch_name_is_invalid_arguments(project: Any) -> None:
    # Given both branch selectors at once
    # When listing
    # Then the server refuses with INVALID_ARGUMENTS_ERROR, which the SDK raises
    with pytest.raises(InvalidArgumentsError):
        project.list_label_rows_v2(include_all_label_branches=True, branch_name=CONSENSUS_BRANCH)


def test_filters_combine_and_the_listing_is_one_logged_read(env: EmulatorEnv, project: Any) -> None:
    # Given a cleared request log
    env.emu.clear_log()

    # When combining a stage filter with a date filter
    rows = project.list_label_rows_v2(
        workflow_graph_node_title_like="%1", edited_after=datetime(2025, 8, 1, tzinfo=UTC)
    )

    # Then both apply (img3 dropped for the date filter) in one unpaged legacy read
    assert titles(rows) == ["img1.jpg", "img2.jpg"]
    log = env.emu.request_log()
    assert [(e["query_type"], e["query_method"], e["write"]) for e in log] == [
        ("labelrowmetadata", "GET", False)
    ]
