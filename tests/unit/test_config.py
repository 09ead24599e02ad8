"""MirrorConfig: defaults, and bad values failing at start with a message that names the setting."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import ANNOTATE, CAR, ONTOLOGY, PERSON, PROJECT, REVIEW, FakeRow

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


@pytest.mark.parametrize(
    ("settings", "setting", "named"),
    [
        ({"object_feature_hashes": ("feat-car", "feat-cra")}, "object_feature_hashes", "feat-cra"),
        ({"classification_feature_hashes": ("feat-car",)}, "classification_feature_hashes", "feat-car"),
    ],
)
def test_a_feature_hash_the_ontology_lacks_is_refused_naming_setting_project_and_hash(
    settings: dict[str, Any], setting: str, named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        MirrorConfig(projects=(PROJECT,), **settings).check_features(PROJECT, ONTOLOGY)
    assert caught.value.setting == setting
    assert named in str(caught.value) and PROJECT in str(caught.value)


def test_feature_hashes_of_the_ontology_and_empty_filters_pass() -> None:
    MirrorConfig(
        projects=(PROJECT,), object_feature_hashes=(CAR, PERSON), classification_feature_hashes=()
    ).check_features(PROJECT, ONTOLOGY)
    MirrorConfig(projects=(PROJECT,)).check_features(PROJECT, {})


def test_the_filters_fingerprint_separates_selection_from_content_and_ignores_order() -> None:
    base = MirrorConfig(projects=(PROJECT,))
    selection, content = base.filters_fingerprint().split(".")
    staged = MirrorConfig(projects=(PROJECT,), stage_include=("Review",)).filters_fingerprint().split(".")
    featured = (
        MirrorConfig(projects=(PROJECT,), object_feature_hashes=(CAR,)).filters_fingerprint().split(".")
    )
    assert staged[0] != selection and staged[1] == content
    assert featured[0] == selection and featured[1] != content
    # An empty feature filter (keep none) is not the absent one (keep all)
    assert MirrorConfig(projects=(PROJECT,), object_feature_hashes=()).filters_fingerprint() != (
        base.filters_fingerprint()
    )
    assert (
        MirrorConfig(projects=(PROJECT,), object_feature_hashes=(CAR, PERSON)).filters_fingerprint()
        == MirrorConfig(projects=(PROJECT,), object_feature_hashes=(PERSON, CAR)).filters_fingerprint()
    )


def test_filters_changed_tells_a_selection_change_from_a_content_change() -> None:
    base = MirrorConfig(projects=(PROJECT,))
    staged = MirrorConfig(projects=(PROJECT,), stage_include=("Review",))
    featured = MirrorConfig(projects=(PROJECT,), object_feature_hashes=(CAR,))
    assert base.filters_changed(base.filters_fingerprint()) == (False, False)
    assert staged.filters_changed(base.filters_fingerprint()) == (True, False)
    assert featured.filters_changed(base.filters_fingerprint()) == (False, True)
    # A state from before filters were recorded keeps its selection, but its rows may be in an older row
    # format: they are sent again
    assert featured.filters_changed(None) == (False, True)
