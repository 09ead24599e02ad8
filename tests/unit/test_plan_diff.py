"""The planner's diff, pure: a listing against the row index -> what to sync, move, remove, skip."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from fakes import ANNOTATE, PROJECT, REVIEW, T0, FakeRow

from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.lake import label_key, stage_value
from encord_mirror.domain.models import IndexEntry, RowMeta, Stage
from encord_mirror.domain.planner import diff_rows

EDIT = T0 + timedelta(minutes=5)
EVERY_ROW = MirrorConfig(projects=(PROJECT,))
ONLY_ANNOTATE = MirrorConfig(projects=(PROJECT,), stage_include=(ANNOTATE.title,))


def _meta(
    label_hash: str, *, edited: datetime | None = T0, stage: Stage = ANNOTATE, status: str = "ASSIGNED"
) -> RowMeta:
    return FakeRow(f"data-{label_hash}", "main", label_hash, edited, stage, status).meta(PROJECT)


def _entry(
    label_hash: str,
    *,
    edited: datetime | None = T0,
    stage: Stage = ANNOTATE,
    status: str = "ASSIGNED",
    branch: str = "main",
) -> IndexEntry:
    part = stage_value(stage.uuid, stage.title)
    return IndexEntry(
        project_hash=PROJECT,
        label_hash=label_hash,
        data_hash=f"data-{label_hash}",
        branch=branch,
        key=label_key(PROJECT, branch, part, label_hash),
        partition_stage=part,
        last_edited_at=edited,
        sha256="0" * 64,
        etag="e",
        synced_at=T0,
        task_status=status,
        stage_uuid=stage.uuid,
    )


@dataclass(frozen=True)
class Case:
    listed: list[RowMeta]
    index: list[IndexEntry]
    sync: list[str] = field(default_factory=list)
    move: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    skipped: int = 0
    gaps: tuple[str, ...] = ()
    complete: bool = False
    resend: bool = False
    config: MirrorConfig = EVERY_ROW
    deselected: int = 0  # of `remove`: rows the filters take out, not deleted in Encord


CASES = {
    "a new row is synced": Case([_meta("a")], [], sync=["a"]),
    "a row the lake holds at this version is skipped": Case([_meta("a")], [_entry("a")], skipped=1),
    "an edited row is synced": Case([_meta("a", edited=EDIT)], [_entry("a")], sync=["a"]),
    "an older listed version than the index is still sent (the worker calls it stale)": Case(
        [_meta("a")], [_entry("a", edited=EDIT)], sync=["a"]
    ),
    "a stage move of the same version is a move": Case([_meta("a", stage=REVIEW)], [_entry("a")], move=["a"]),
    "a task-status change alone is a move (same key, other status)": Case(
        [_meta("a", status="COMPLETED")], [_entry("a")], move=["a"]
    ),
    "resend sends every selected row, even unchanged ones": Case(
        [_meta("a"), _meta("b", stage=REVIEW)], [_entry("a"), _entry("b")], sync=["a", "b"], resend=True
    ),
    "a complete listing removes indexed rows it no longer returns": Case(
        [_meta("a")], [_entry("a"), _entry("gone")], remove=["gone"], skipped=1, complete=True
    ),
    "an incremental listing never removes an unlisted indexed row": Case(
        [_meta("a")], [_entry("a"), _entry("quiet")], skipped=1
    ),
    "a row the filter refuses leaves the lake, deselected": Case(
        [_meta("a", stage=REVIEW)],
        [_entry("a", stage=REVIEW)],
        remove=["a"],
        config=ONLY_ANNOTATE,
        deselected=1,
    ),
    "an indexed row of a branch the selection leaves out is deselected, not deleted": Case(
        [_meta("a")],
        [_entry("a"), _entry("c", branch="consensus-1"), _entry("gone")],
        remove=["c", "gone"],
        skipped=1,
        complete=True,
        deselected=1,
    ),
    "a refused row that is not in the lake resolves its gap": Case(
        [_meta("a", stage=REVIEW)], [], resolved=["a"], gaps=("a",), config=ONLY_ANNOTATE
    ),
    "a refused row outside the lake and without a gap is ignored": Case(
        [_meta("a", stage=REVIEW)], [], config=ONLY_ANNOTATE
    ),
    "a gap the lake already holds is resolved without work": Case(
        [_meta("a")], [_entry("a")], resolved=["a"], skipped=1, gaps=("a",)
    ),
    "a gap the listing no longer returns was deleted: it is removed": Case(
        [], [], remove=["deleted"], gaps=("deleted",)
    ),
    "a removal named twice (index and gap) is sent once, sorted": Case(
        [], [_entry("z"), _entry("y")], remove=["y", "z"], gaps=("z",), complete=True
    ),
    "an edited gap is synced, not resolved": Case(
        [_meta("a", edited=EDIT)], [_entry("a")], sync=["a"], gaps=("a",)
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_diff_of_a_listing_against_the_row_index(case: Case) -> None:
    # Given a listing (latest version per label hash), the index entries and the open gaps
    rows = {m.label_hash: m for m in case.listed if m.label_hash}
    index = {e.label_hash: e for e in case.index}
    # When they are diffed
    diff = diff_rows(
        rows,
        index,
        set(case.gaps),
        case.config.selects,
        complete=case.complete,
        resend=case.resend,
        mirrors_branch=case.config.branches.includes,
    )
    # Then each row lands in the expected bucket
    assert [m.label_hash for m in diff.sync] == case.sync
    assert [m.label_hash for m in diff.move] == case.move
    assert list(diff.remove) == case.remove
    assert list(diff.resolved_gaps) == case.resolved
    assert diff.skipped == case.skipped
    assert diff.deselected == case.deselected


def test_the_work_is_synced_and_moved_rows_ordered_by_branch_then_label_hash() -> None:
    # Given rows to sync and to move on two branches
    other = FakeRow("data-c", "consensus-1", "c", T0, ANNOTATE).meta(PROJECT)
    rows = {"b": _meta("b"), "a": _meta("a", stage=REVIEW), "c": other}
    # When diffed against an index holding only "a" (in another stage)
    diff = diff_rows(rows, {"a": _entry("a")}, set(), lambda _: True, complete=False)
    # Then the workers get them in a stable order, whatever the listing's
    assert [(m.branch, m.label_hash) for m in diff.work] == [
        ("consensus-1", "c"),
        ("main", "a"),
        ("main", "b"),
    ]
