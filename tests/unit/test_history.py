"""The change log: every run's written and removed rows kept in the lake, so a row's versions can be
listed and any of them restored byte for byte; retention folds old runs without losing what was current."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import Mirror
from fakes import COMPLETE, PROJECT, FakeSource

from encord_mirror.adapters.local import LocalLake
from encord_mirror.cli.main import main
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.history import ChangeLog, HistoryError
from encord_mirror.domain.watermark import iso_utc


def row_bytes(lake: LocalLake, label_hash: str) -> bytes:
    key = next(k for k in lake.list_keys("labels/") if k.endswith(f"/{label_hash}.json"))
    stored = lake.get(key)
    assert stored is not None
    return stored.body


def run_ids(lake: LocalLake) -> list[str]:
    return sorted(
        k.rsplit("/", 1)[1].removesuffix(".json") for k in lake.list_keys(f"runs/project={PROJECT}/")
    )


def three_runs(mirror: Mirror, source: FakeSource) -> dict[str, bytes]:
    """Run 1 writes two rows, run 2 edits label-0000, run 3 moves it; returns its bytes after each run."""
    source.add(2)
    mirror.sync()
    seen = {"1": row_bytes(mirror.lake, "label-0000")}
    mirror.clock.advance(60)
    source.edit("label-0000")
    mirror.clock.advance(60)
    mirror.sync()
    seen["2"] = row_bytes(mirror.lake, "label-0000")
    mirror.clock.advance(60)
    source.move("label-0000", COMPLETE)
    mirror.sync(full=True)
    seen["3"] = row_bytes(mirror.lake, "label-0000")
    return seen


def test_history_lists_each_version_a_run_wrote_with_its_run_stage_and_sha(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a row written, edited, then moved to another stage, over three runs
    three_runs(mirror, source)
    runs = run_ids(mirror.lake)
    # When its history is asked
    versions = ChangeLog(mirror.lake).versions("label-0000")
    # Then there is one version per run, in order, with what each run did, and the last sha is the lake's
    assert [(v.run_id, v.status) for v in versions] == [
        (runs[0], "written"),
        (runs[1], "written"),
        (runs[2], "moved"),
    ]
    assert versions[2].stage.startswith("complete-") and versions[1].stage.startswith("annotate-")
    assert versions[2].sha256 == orjson.loads(row_bytes(mirror.lake, "label-0000"))["mirror"]["sha256"]
    assert len({v.sha256 for v in versions}) == 3  # the move changed the row's stage, hence its sha


def test_a_row_is_restored_exactly_as_it_was_after_any_run_or_at_any_time(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given three runs that changed a row, and its bytes after each
    seen = three_runs(mirror, source)
    runs = run_ids(mirror.lake)
    log = ChangeLog(mirror.lake)
    # When it is asked as of each run, then as of a time between run 1 and run 2
    # Then each answer is byte for byte what the lake held then
    for run_id, expected in zip(runs, (seen["1"], seen["2"], seen["3"]), strict=True):
        assert log.row_bytes(log.as_of("label-0000", run_id)) == expected
    first_time = log.runs(PROJECT)[0][1]
    assert log.row_bytes(log.as_of("label-0000", first_time)) == seen["1"]
    # And a row never changed after run 1 is found as of the last run too
    assert log.as_of("label-0001", runs[2]).run_id == runs[0]


def test_questions_without_a_whole_answer_name_what_was_asked(mirror: Mirror, source: FakeSource) -> None:
    # Given a lake after three runs, and a row deleted in a fourth
    three_runs(mirror, source)
    source.delete("label-0001")
    mirror.clock.advance(60)
    mirror.sync(full=True)
    log = ChangeLog(mirror.lake)
    first_time = log.runs(PROJECT)[0][1]
    # When asked about an unknown run, a time before the first run, an unknown row, a deleted row
    # Then each is an error naming it
    with pytest.raises(HistoryError, match=r"20200101T000000\.000Z-deadbeef: no such run"):
        log.as_of("label-0000", "20200101T000000.000Z-deadbeef")
    with pytest.raises(HistoryError, match="before the first logged run"):
        log.as_of("label-0000", "2020-01-01T00:00:00Z")
    with pytest.raises(HistoryError, match="label hash nope: no version"):
        log.versions("nope")
    with pytest.raises(HistoryError, match=r"not in the lake as of .*removed"):
        log.as_of("label-0001", iso_utc(mirror.clock()) or "")
    with pytest.raises(HistoryError, match="give a timezone"):
        log.as_of("label-0000", "2026-11-01T12:00:00")
    assert log.row_bytes(log.as_of("label-0001", first_time))  # it was there before


def test_a_lake_synced_before_the_change_log_gets_a_baseline_of_its_rows(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given a lake synced before the change log existed (simulated: history/ removed)
    source.add(3)
    mirror.sync()
    untouched = row_bytes(mirror.lake, "label-0002")
    for key in list(mirror.lake.list_keys("history/")):
        mirror.lake.delete(key)
    # When a run edits one row
    mirror.clock.advance(60)
    source.edit("label-0000")
    mirror.clock.advance(60)
    mirror.sync()
    # Then the rows it did not write are logged as a baseline, restorable as of that run
    log = ChangeLog(mirror.lake)
    assert [v.status for v in log.versions("label-0002")] == ["baseline"]
    assert [v.status for v in log.versions("label-0000")] == ["written"]
    assert log.row_bytes(log.as_of("label-0002", run_ids(mirror.lake)[-1])) == untouched


def test_retention_folds_old_runs_into_a_base_of_what_was_current(mirror: Mirror, source: FakeSource) -> None:
    # Given a change log that keeps two runs, and four runs that each edit label-0000
    config = MirrorConfig(projects=(PROJECT,), history_keep_runs=2)
    source.add(2)
    mirror.sync(config)
    untouched = row_bytes(mirror.lake, "label-0001")
    for _ in range(3):
        mirror.clock.advance(60)
        source.edit("label-0000")
        mirror.clock.advance(60)
        mirror.sync(config)
    runs = run_ids(mirror.lake)
    log = ChangeLog(mirror.lake)
    # Then two runs are kept after a base that folded the first two
    assert [(r, base) for r, _, base in log.runs(PROJECT)] == [
        (runs[1], True),
        (runs[2], False),
        (runs[3], False),
    ]
    assert not any(f"run={runs[0]}/" in k for k in mirror.lake.list_keys("history/"))
    # And the row untouched since run 1 is still restorable as of the last run, exactly
    assert log.row_bytes(log.as_of("label-0001", runs[3])) == untouched
    # And the edited row keeps the version current at the base, then the kept runs' versions
    assert [v.run_id for v in log.versions("label-0000")] == [runs[1], runs[2], runs[3]]
    # And a question about a folded run says it was folded
    with pytest.raises(HistoryError, match="folded by retention"):
        log.as_of("label-0000", runs[0])


def test_a_retried_finalizer_leaves_the_runs_log_as_it_was(mirror: Mirror, source: FakeSource) -> None:
    # Given a synced run and its change log
    source.add(2)
    mirror.sync()
    before = {k: mirror.lake.get(k).body for k in mirror.lake.list_keys("history/")}  # type: ignore[union-attr]
    run = mirror.state.get_run(PROJECT, run_ids(mirror.lake)[0])
    assert run is not None
    # When the run is recorded again (a retried finalizer)
    mirror.clock.advance(60)
    ChangeLog(mirror.lake).record_run(run, [], now=mirror.clock())
    # Then nothing changed
    assert {k: mirror.lake.get(k).body for k in mirror.lake.list_keys("history/")} == before  # type: ignore[union-attr]


def test_cli_history_and_show_restore_a_row_and_name_bad_input(
    mirror: Mirror, source: FakeSource, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given a lake after three runs
    seen = three_runs(mirror, source)
    runs = run_ids(mirror.lake)
    lake = str(mirror.lake.root)
    # When history and show are asked through the CLI
    assert main(["history", "--lake", lake, "--label-hash", "label-0000", "--json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [v["run_id"] for v in listed] == runs
    assert main(["show", "--lake", lake, "--label-hash", "label-0000", "--as-of", runs[0]]) == 0
    # Then show prints the row exactly as the first run left it
    assert capsys.readouterr().out.encode() == seen["1"] + b"\n"
    # And bad input exits 2 with a message naming what was asked
    assert (
        main(["show", "--lake", lake, "--label-hash", "label-0000", "--as-of", "2001-01-01T00:00:00Z"]) == 2
    )
    assert "--as-of 2001-01-01T00:00:00Z" in capsys.readouterr().err
    assert main(["history", "--lake", lake, "--label-hash", "label-9999"]) == 2
    assert "label-9999" in capsys.readouterr().err
