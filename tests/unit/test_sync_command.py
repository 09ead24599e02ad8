"""`encord-mirror sync` wiring that needs no server: flags to config, lake and state paths, the summary."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.cli.args import FLAG_OF_SETTING
from encord_mirror.cli.errors import CliError
from encord_mirror.cli.main import build_parser, main
from encord_mirror.cli.sync import config_from_args, format_summary
from encord_mirror.cli.target import LakeTarget, default_state_path, is_s3, open_target, parse_s3_uri
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.models import BranchSelection, Gap
from encord_mirror.local_sync import ProjectSummary, SyncSummary


def _args(*flags: str, **overrides: object) -> argparse.Namespace:
    """`encord-mirror sync --project p1 ... FLAGS` as the real parser reads it, then `overrides`."""
    argv = ["sync", "--project", "p1", "--lake", "lake", "--ssh-key", "key", *flags]
    args = build_parser().parse_args(argv)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def test_branch_flags_select_main_a_named_branch_or_all() -> None:
    # When / Then
    assert config_from_args(_args()).branches == BranchSelection()
    assert config_from_args(_args(branch="consensus-1")).branches == BranchSelection("named", "consensus-1")
    assert config_from_args(_args(all_branches=True)).branches == BranchSelection("all")


def test_a_bundle_size_above_the_cap_is_a_usage_error_naming_setting_and_flag() -> None:
    # When / Then
    with pytest.raises(CliError, match=r"bundle_size.*--bundle-size"):
        config_from_args(_args(bundle_size=1001))


def test_reconcile_every_maps_to_the_config_and_a_bad_value_names_the_flag() -> None:
    # When / Then: unset keeps the config's default, a value sets it, zero is refused naming the flag
    assert config_from_args(_args()).reconcile_every == MirrorConfig(projects=("p1",)).reconcile_every
    assert config_from_args(_args(reconcile_every=1)).reconcile_every == 1
    with pytest.raises(CliError, match=r"reconcile_every.*--reconcile-every"):
        config_from_args(_args(reconcile_every=0))


def test_filter_flags_map_to_the_config_and_a_bad_value_names_the_flag() -> None:
    # When no filter flag is given / Then everything is mirrored, every feature kept
    plain = config_from_args(_args())
    assert (plain.stage_include, plain.stage_exclude, plain.task_statuses) == ((), (), ())
    assert plain.object_feature_hashes is None and plain.classification_feature_hashes is None
    # When each is given (repeatable) / Then the config holds them
    config = config_from_args(
        _args(
            "--stage", "Review", "--stage", "QA", "--exclude-stage", "Archive", "--task-status", "COMPLETED",
            "--object-feature", "f1", "--object-feature", "f2", "--classification-feature", "c1",
        )
    )  # fmt: skip
    assert config.stage_include == ("Review", "QA") and config.stage_exclude == ("Archive",)
    assert config.task_statuses == ("COMPLETED",)
    assert config.object_feature_hashes == ("f1", "f2") and config.classification_feature_hashes == ("c1",)
    # and they change the filters' fingerprint, which the bundle size does not
    assert config.filters_fingerprint() != plain.filters_fingerprint()
    assert config_from_args(_args(bundle_size=7)).filters_fingerprint() == plain.filters_fingerprint()
    # When a status is unknown / Then the error names the setting and the flag
    with pytest.raises(CliError, match=r"task_statuses.*DONE.*--task-status"):
        config_from_args(_args("--task-status", "DONE"))


def test_sync_help_says_stage_moves_and_deletions_are_seen_on_reconciling_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # When `sync --help` is asked for
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    # Then --reconcile-every is there, with what it means for stage moves and deletions
    text = " ".join(capsys.readouterr().out.split())
    assert "--reconcile-every N" in text
    assert "Stage moves, task-status changes and deletions" in text and "reconciling runs only" in text


def test_a_project_named_twice_is_a_usage_error_naming_the_flag() -> None:
    with pytest.raises(CliError, match=r"projects.*--project"):
        config_from_args(_args(projects=["p1", "p1"]))


def test_state_defaults_beside_a_directory_lake_and_in_the_user_cache_for_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cache directory
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    # When the default state paths are derived
    local = default_state_path(str(tmp_path / "lake"))
    s3_a = default_state_path("s3://bucket/prefix/a")
    s3_b = default_state_path("s3://bucket/prefix/b")

    # Then a directory lake keeps its state inside (a dot name: never listed as a lake object) and each S3
    # prefix gets its own file in the cache
    assert local == tmp_path / "lake" / ".mirror-state.sqlite"
    assert s3_a.parent == tmp_path / "cache" / "encord-mirror" and s3_a.name.startswith("bucket-")
    assert s3_a != s3_b


def test_s3_uris_need_a_bucket() -> None:
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(CliError, match="--lake"):
        parse_s3_uri("s3:///prefix")


def test_a_lake_path_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    # Given a file where the lake directory should be
    (tmp_path / "file").write_text("x")

    # When / Then
    with pytest.raises(CliError, match="not a directory"):
        open_target(str(tmp_path / "file"), None)


def test_the_summary_names_each_gap_with_its_reason_and_says_what_to_do(tmp_path: Path) -> None:
    # Given a run that left one gap
    lake = LocalLake(tmp_path / "lake")
    state = SqliteStateStore(tmp_path / "state.sqlite")
    state.add_gaps([Gap("p1", "row-1", None, "run-1", "corrupt label row: KeyError: 'data_units'")])
    mark = datetime(2026, 1, 1, tzinfo=UTC)
    summary = SyncSummary(
        (
            ProjectSummary(
                "p1", "run-1", "synced", listed=3, written=2, failed=1, gaps_open=1, watermark_after=mark
            ),
        )
    )
    target = LakeTarget(lake, str(lake.root), tmp_path / "state.sqlite")

    # When the summary is formatted
    text = format_summary(summary, target, state)

    # Then the table, the gap and the advice are there, and it does not claim to be in step
    assert "p1" in text and "written" in text
    assert "gap: row-1: corrupt label row" in text
    assert "NOT IN STEP" in text and "OK:" not in text
    assert "2026-01-01T00:00:00+00:00" in text


def test_an_owed_snapshot_makes_the_sync_not_ok_and_the_summary_says_so(tmp_path: Path) -> None:
    # Given a run whose rows all synced but one partition's snapshot failed
    lake = LocalLake(tmp_path / "lake")
    error = "snapshot main/review-1234abcd: OSError: disk full (owed: the next run rebuilds it)"
    project = ProjectSummary("p1", "run-1", "synced", written=2, snapshots_owed=1, errors=(error,))
    summary = SyncSummary((project,))
    target = LakeTarget(lake, str(lake.root), tmp_path / "state.sqlite")
    # When the summary is formatted / Then the sync is not OK (the CLI exits 1), and the summary says why
    text = format_summary(summary, target)
    assert not summary.ok
    assert f"error: {error}" in text
    assert "NOT IN STEP: 1 COCO snapshot(s) failed and stay stale" in text and "row(s)" not in text
    # and once nothing is owed it is OK again
    assert SyncSummary((ProjectSummary("p1", "run-2", "synced"),)).ok


def test_an_empty_lake_is_a_usage_error_and_nothing_is_written_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a working directory that is empty
    monkeypatch.chdir(tmp_path)
    # When sync and status are given --lake ""
    sync = main(["sync", "--project", "p1", "--lake", "", "--ssh-key", "key"])
    status = main(["status", "--project", "p1", "--lake", ""])
    # Then both exit 2 naming the flag, and the directory stays empty (no state file, no lake)
    assert (sync, status) == (2, 2)
    assert capsys.readouterr().err.count("--lake is empty") == 2
    assert list(tmp_path.iterdir()) == []


def test_an_upper_case_s3_scheme_is_an_s3_lake_and_other_schemes_are_refused(tmp_path: Path) -> None:
    # When / Then: S3:// is S3 (as the AWS CLI takes it), with its state in the cache like s3://
    assert is_s3("S3://bucket/prefix") and parse_s3_uri("S3://bucket/prefix/") == ("bucket", "prefix")
    assert default_state_path("S3://bucket/prefix") == default_state_path("s3://bucket/prefix")
    assert not is_s3(str(tmp_path / "lake"))
    # and gs:// or https:// is neither S3 nor a directory: refused, naming the flag and what is accepted
    for dest in ("gs://bucket/prefix", "https://example.com/lake"):
        with pytest.raises(CliError, match=r"--lake .*not supported; use a directory or s3://"):
            open_target(dest, None)
    assert not (tmp_path / "gs:").exists()


def test_an_encord_domain_that_is_not_a_url_exits_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a readable key file (the domain is checked before any request)
    key = tmp_path / "key"
    key.write_text("not checked first")
    # When sync is given a domain that is not a URL
    code = main(
        [
            "sync",
            "--project",
            "p1",
            "--lake",
            str(tmp_path / "lake"),
            "--ssh-key",
            str(key),
            "--encord-domain",
            "not a url",
        ]
    )
    # Then it exits 2, naming the flag, the value and what a domain looks like; no lake was made
    err = capsys.readouterr().err
    assert code == 2
    assert "--encord-domain 'not a url': not an http(s) URL" in err and "https://api.encord.com" in err
    assert not (tmp_path / "lake").exists()


def test_sync_help_lists_every_flag_that_sets_a_mirror_config_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the flags declared with cli.args.config_flag (FLAG_OF_SETTING is filled as the parser is built)
    build_parser()
    declared = dict(FLAG_OF_SETTING)
    # Then each sets a MirrorConfig field, and `sync --help` lists it
    assert set(declared) <= set(MirrorConfig.model_fields)
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    text = capsys.readouterr().out
    assert {flag for flag in declared.values() if flag not in text} == set()
    assert {"--allow-shrink", "--snapshots-keep", "--history-keep-runs"} <= set(declared.values())


def test_each_config_flag_reaches_its_mirror_config_field() -> None:
    # Given every flag that sets a MirrorConfig field, each with a value other than the default
    flags = {
        "projects": (["--project", "p2"], ("p1", "p2")),
        "branches": (["--branch", "consensus-1"], BranchSelection("named", "consensus-1")),
        "reconcile_every": (["--reconcile-every", "3"], 3),
        "bundle_size": (["--bundle-size", "7"], 7),
        "stage_include": (["--stage", "Review"], ("Review",)),
        "stage_exclude": (["--exclude-stage", "Archive"], ("Archive",)),
        "task_statuses": (["--task-status", "COMPLETED"], ("COMPLETED",)),
        "object_feature_hashes": (["--object-feature", "o1"], ("o1",)),
        "classification_feature_hashes": (["--classification-feature", "c1"], ("c1",)),
        "filter_shrink_limit": (["--allow-shrink"], 100),
        "history_keep_runs": (["--history-keep-runs", "4"], 4),
        "snapshots_keep": (["--snapshots-keep", "2"], 2),
        "snapshots_keep_days": (["--snapshots-keep-days", "30"], 30),
    }
    build_parser()
    assert set(flags) == set(FLAG_OF_SETTING)  # a new config flag gets a case here
    for setting, (argv, expected) in flags.items():
        # When only that flag is given / Then only its field differs from MirrorConfig's default
        config = config_from_args(_args(*argv))
        assert getattr(config, setting) == expected, setting
        assert getattr(MirrorConfig(projects=("p1",)), setting) != expected, setting
