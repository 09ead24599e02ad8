"""MirrorConfig: defaults, and bad values failing at start with a message that names the setting."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import ANNOTATE, PROJECT, REVIEW, FakeRow

from encord_mirror.domain.config import ConfigError, MirrorConfig
from encord_mirror.domain.models import BranchSelection, RowMeta, Stage


def test_defaults_follow_the_design() -> None:
    config = MirrorConfig(projects=(PROJECT,))
    assert config.bundle_size == 100
    assert config.overlap_seconds == 120
    assert config.branches == BranchSelection("main")
    assert config.object_feature_hashes is None and config.classification_feature_hashes is None


def test_several_projects_per_deployment() -> None:
    assert MirrorConfig(projects=("p1", "p2", "p3")).projects == ("p1", "p2", "p3")


@pytest.mark.parametrize(
    ("settings", "setting", "words"),
    [
        ({"bundle_size": 1001}, "bundle_size", "1000"),
        ({"bundle_size": 0}, "bundle_size", "greater than or equal to 1"),
        ({"overlap_seconds": -1}, "overlap_seconds", "greater than or equal to 0"),
        ({"reconcile_every": 0}, "reconcile_every", "greater than or equal to 1"),
        ({"max_attempts": 0}, "max_attempts", "greater than or equal to 1"),
        ({"lease_ttl_seconds": 5}, "lease_ttl_seconds", "30"),
        ({"task_statuses": ("DONE",)}, "task_statuses", "unknown task status"),
        ({"branches": BranchSelection("named")}, "branches", "needs a branch name"),
        ({"branches": {"mode": "some"}}, "branches", "'main', 'named' or 'all'"),
        ({"stage_include": ("",)}, "stage_include", "empty"),
        ({"object_feature_hashes": ("ok", " ")}, "object_feature_hashes", "empty"),
        ({"bundel_size": 10}, "bundel_size", "Extra inputs"),
    ],
)
def test_bad_configuration_fails_naming_the_setting(
    settings: dict[str, Any], setting: str, words: str
) -> None:
    # Given a configuration with one bad setting
    # When it is built
    with pytest.raises(ConfigError) as caught:
        MirrorConfig(projects=(PROJECT,), **settings)
    # Then the error names that setting and says what is wrong
    assert caught.value.setting == setting
    assert setting in str(caught.value) and words in str(caught.value)


@pytest.mark.parametrize(
    ("projects", "words"), [((), "at least 1"), (("p", "p"), "listed twice"), (("",), "empty")]
)
def test_bad_project_lists_fail_naming_projects(projects: tuple[str, ...], words: str) -> None:
    with pytest.raises(ConfigError, match=f"projects: .*{words}"):
        MirrorConfig(projects=projects)


def test_missing_projects_fail_naming_projects() -> None:
    with pytest.raises(ConfigError, match="projects"):
        MirrorConfig.model_validate({})


def _meta(stage: Stage | None, status: str | None = "ASSIGNED") -> RowMeta:
    return FakeRow("d1", "main", "l1", None, stage, task_status=status).meta(PROJECT)


def test_stage_include_matches_by_title_or_uuid_and_exclude_wins() -> None:
    by_title = MirrorConfig(projects=(PROJECT,), stage_include=("Review",))
    by_uuid = MirrorConfig(projects=(PROJECT,), stage_include=(REVIEW.uuid,))
    both = MirrorConfig(projects=(PROJECT,), stage_include=("Review",), stage_exclude=(REVIEW.uuid,))
    assert by_title.selects(_meta(REVIEW)) and not by_title.selects(_meta(ANNOTATE))
    assert by_uuid.selects(_meta(REVIEW)) and not by_uuid.selects(_meta(None))
    assert not both.selects(_meta(REVIEW))


def test_task_status_filter() -> None:
    config = MirrorConfig(projects=(PROJECT,), task_statuses=("COMPLETED",))
    assert config.selects(_meta(ANNOTATE, "COMPLETED"))
    assert not config.selects(_meta(ANNOTATE, "ASSIGNED"))
    assert MirrorConfig(projects=(PROJECT,)).selects(_meta(ANNOTATE, None))
