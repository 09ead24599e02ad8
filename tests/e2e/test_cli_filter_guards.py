"""`encord-mirror sync` with filters that would empty the lake: a stage or branch Encord does not have is
refused at start, and a filter change that takes most of the lake out of its current view needs
`--allow-shrink`. The CLI, the real SDK and the emulator on loopback, as in test_cli_sync (whose `Mirror`
these tests reuse).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_sync import Mirror, _first_sync, serve_mirror

from encord_emulator.testing import CONSENSUS_BRANCH

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAIN_ROWS = 7  # img1, img2, vid1 and four bulk images on main


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    with serve_mirror(tmp_path, extra_images=4) as served:
        yield served


def _lake_files(mirror: Mirror) -> dict[str, bytes]:
    """Every file of the lake but the state (which records the refused run's failure for `status`)."""
    root = Path(mirror.dest)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".mirror-state")
    }


def _synced_with(mirror: Mirror) -> tuple[object, object]:
    state = mirror.state()
    try:
        return state.get_watermark(mirror.project), state.get_filters(mirror.project)
    finally:
        state.close()


@pytest.mark.parametrize(
    ("flags", "named", "hint"),
    [
        (("--stage", "Reviw 1"), ("stage_include", "--stage", "'Reviw 1'"), "did you mean 'Review 1'?"),
        (("--stage", "review 1"), ("stage_include", "--stage", "'review 1'"), "did you mean 'Review 1'?"),
        (("--exclude-stage", "Complet"), ("stage_exclude", "--exclude-stage"), "did you mean 'Complete'?"),
        (("--branch", "mian"), ("branches", "--branch", "'mian'"), "did you mean 'main'?"),
    ],
    ids=["stage-typo", "stage-case", "exclude-stage-typo", "branch-typo"],
)
def test_a_stage_or_branch_encord_lacks_is_refused_at_start_naming_the_setting_and_the_known_values(
    mirror: Mirror, flags: tuple[str, ...], named: tuple[str, ...], hint: str
) -> None:
    # Given a lake in step
    _first_sync(mirror)
    files, synced = _lake_files(mirror), _synced_with(mirror)
    # When a sync names a stage or a branch the project does not have (a typo, another case)
    run = mirror.sync(*flags)
    # Then it exits 2 naming the setting, its flag, the value, the nearest known name and every known one
    assert run.code == 2, run.out + run.err
    for word in (*named, hint):
        assert word in run.err, run.err
    stages = ("'Annotate 1'", "'Review 1'", "'Complete'")
    known = stages if "stage" in flags[0] else ("main", CONSENSUS_BRANCH)
    assert all(name in run.err for name in known), run.err
    # And nothing was listed, initialised or written; the watermark and the filters are as they were
    assert mirror.initialised() == 0
    assert not any(e["query_type"] == "labelrowmetadata" for e in mirror.emu.request_log())
    assert _lake_files(mirror) == files and _synced_with(mirror) == synced
    # And status says why the lake was not synced
    status = mirror.status()
    assert status.code == 1 and "last sync FAILED" in status.out, status.out + status.err
    mirror.assert_in_step()


@pytest.mark.parametrize(
    "flags",
    [("--stage", "Complete", "--task-status", "QUEUED"), ("--branch", CONSENSUS_BRANCH)],
    ids=["stage-and-status-that-select-nothing", "another-branch"],
)
def test_a_filter_change_that_empties_the_lake_needs_allow_shrink_and_is_logged_both_times(
    mirror: Mirror, flags: tuple[str, ...]
) -> None:
    # Given a lake in step with every main row
    _first_sync(mirror)
    files, synced = _lake_files(mirror), _synced_with(mirror)
    # When a sync changes the filters to names that exist but take every row of the lake out
    refused = mirror.sync(*flags)
    # Then it exits 2 with the counts and the flag that allows it, and nothing changed
    assert refused.code == 2, refused.out + refused.err
    assert f"would take {MAIN_ROWS} of the {MAIN_ROWS} rows" in refused.err
    assert "more than the 50%" in refused.err and "--allow-shrink" in refused.err
    assert _lake_files(mirror) == files and _synced_with(mirror) == synced
    assert mirror.initialised() == 0
    mirror.assert_in_step()

    # When it is run again with --allow-shrink
    allowed = mirror.sync(*flags, "--allow-shrink")
    # Then the lake follows the new filters, and stderr says how much the change took out
    assert allowed.code == 0, allowed.out + allowed.err
    assert f"take {MAIN_ROWS} of the {MAIN_ROWS} rows out of the current view (100%" in allowed.err
    assert not any("branch=main/" in k for k in mirror.lake.list_keys("labels/"))
    # When the next sync keeps those filters / Then it needs no flag: the lake follows them already
    assert mirror.sync(*flags).code == 0


def test_rows_deleted_in_encord_still_leave_the_lake_without_allow_shrink(mirror: Mirror) -> None:
    # Given a lake in step, then most of its rows deleted in Encord
    _first_sync(mirror)
    gone = [r for r in mirror.fixture.main_rows() if r.row["data_title"].startswith("bulk-")] + [
        mirror.fixture.by_title("img2.jpg")
    ]
    for row in gone:
        mirror.emu.delete_row(mirror.project, row.label_hash)
    # When a reconciling sync runs with the filters unchanged
    run = mirror.sync("--full")
    # Then the deletions are mirrored: only a filter change is held to the limit
    assert run.code == 0, run.out + run.err
    assert mirror.manifest(run)["counts"]["removed"] == len(gone) > MAIN_ROWS / 2
    mirror.assert_in_step()


def test_a_filter_change_under_the_limit_is_applied_and_logged(mirror: Mirror) -> None:
    # Given a lake in step
    _first_sync(mirror)
    # When the next sync excludes one stage (1 of 7 rows)
    run = mirror.sync("--exclude-stage", "Complete")
    # Then it is applied without the flag, and stderr says what it took out
    assert run.code == 0, run.out + run.err
    assert f"take 1 of the {MAIN_ROWS} rows out of the current view (14%" in run.err
    assert not any("complete" in k for k in mirror.lake.list_keys("labels/"))
