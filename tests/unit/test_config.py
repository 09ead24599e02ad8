"""MirrorConfig: defaults, and bad values failing at start with a message that names the setting."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import ANNOTATE, CAR, ONTOLOGY, PERSON, PROJECT, REVIEW, FakeRow

from encord_mirror.domain.config import ConfigError, FilterShrinkError, MirrorConfig
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


STAGES = (ANNOTATE, REVIEW)


@pytest.mark.parametrize(
    ("settings", "setting", "value", "hint"),
    [
        ({"stage_include": ("Reviw",)}, "stage_include", "Reviw", "Review"),
        ({"stage_include": ("review",)}, "stage_include", "review", "Review"),
        ({"stage_exclude": (REVIEW.uuid.upper(),)}, "stage_exclude", REVIEW.uuid.upper(), REVIEW.uuid),
        ({"stage_include": ("Archive",)}, "stage_include", "Archive", None),
    ],
    ids=["typo", "other-case", "uuid-in-capitals", "no-near-name"],
)
def test_a_stage_the_workflow_lacks_is_refused_naming_setting_value_hint_and_every_stage(
    settings: dict[str, Any], setting: str, value: str, hint: str | None
) -> None:
    # When a stage filter names no stage of the workflow exactly / Then it is refused, with the known ones
    with pytest.raises(ConfigError) as caught:
        MirrorConfig(projects=(PROJECT,), **settings).check_stages(PROJECT, STAGES)
    message = str(caught.value)
    assert caught.value.setting == setting and PROJECT in message and f"no stage {value!r}" in message
    assert "exact title or uuid, case included" in message
    assert (f"did you mean {hint!r}?" in message) if hint else ("did you mean" not in message), message
    assert all(f"'{s.title}' ({s.uuid})" in message for s in STAGES), message


def test_stages_named_by_exact_title_or_uuid_pass_and_a_project_without_workflow_has_none() -> None:
    MirrorConfig(projects=(PROJECT,), stage_include=("Review", ANNOTATE.uuid)).check_stages(PROJECT, STAGES)
    MirrorConfig(projects=(PROJECT,)).check_stages(PROJECT, ())
    with pytest.raises(ConfigError, match=r"no stage 'Review'.*it has no workflow"):
        MirrorConfig(projects=(PROJECT,), stage_include=("Review",)).check_stages(PROJECT, ())


def test_a_branch_the_project_lacks_is_refused_and_main_always_exists() -> None:
    # Given a project whose listing names one consensus branch
    branches = ("consensus-1",)
    # When a named branch is a typo / Then it is refused, with a hint and every branch, main first
    with pytest.raises(ConfigError) as caught:
        MirrorConfig(projects=(PROJECT,), branches=BranchSelection("named", "mian")).check_branch(
            PROJECT, branches
        )
    assert caught.value.setting == "branches"
    assert "'mian'; did you mean 'main'?; its branches: main, consensus-1" in str(caught.value)
    # And main, a listed branch, and the main or all modes pass (main even if the listing omits it)
    for selection in (BranchSelection("named", "main"), BranchSelection("named", "consensus-1")):
        MirrorConfig(projects=(PROJECT,), branches=selection).check_branch(PROJECT, branches)
    MirrorConfig(projects=(PROJECT,), branches=BranchSelection("all")).check_branch(PROJECT, ())


@pytest.mark.parametrize(
    ("limit", "removing", "lake_rows", "refused"),
    [
        (50, 50, 100, False),  # exactly the limit is allowed
        (50, 51, 100, True),
        (50, 0, 0, False),  # an empty lake cannot shrink
        (0, 1, 1000, True),
        (100, 1000, 1000, False),  # --allow-shrink
    ],
)
def test_a_filter_change_may_remove_up_to_the_limit_of_the_current_view(
    limit: int, removing: int, lake_rows: int, refused: bool
) -> None:
    config = MirrorConfig(projects=(PROJECT,), filter_shrink_limit=limit)
    assert config.shrink_refused(removing, lake_rows) is refused
    if not refused:
        config.check_shrink(PROJECT, removing, lake_rows)
        return
    with pytest.raises(FilterShrinkError) as caught:
        config.check_shrink(PROJECT, removing, lake_rows)
    error = caught.value
    assert (error.setting, error.removing, error.lake_rows, error.limit) == (
        "filter_shrink_limit",
        removing,
        lake_rows,
        limit,
    )
    assert f"{removing} of the {lake_rows} rows" in str(error) and f"{limit}%" in str(error)


def test_the_shrink_limit_is_a_percentage() -> None:
    assert MirrorConfig(projects=(PROJECT,)).filter_shrink_limit == 50
    with pytest.raises(ConfigError, match="filter_shrink_limit"):
        MirrorConfig(projects=(PROJECT,), filter_shrink_limit=101)
