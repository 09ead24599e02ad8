"""The Lambda environment is checked once, at cold start, and a bad value names its variable."""

from __future__ import annotations

import pytest

from encord_mirror.aws_lambda.settings import Settings, SettingsError, variable_of
from encord_mirror.aws_lambda.wiring import _private_key
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.models import BranchSelection

GOOD = {
    "LAKE_BUCKET": "my-lake",
    "LAKE_PREFIX": "",
    "STATE_TABLE": "mirror-state",
    "WORK_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/work",
    "FINALIZE_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/finalize",
    "EVENT_BUS_NAME": "default",
    "ENCORD_KEY_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:encord-key-AbCdEf",
    "ENCORD_DOMAIN": "https://api.encord.com",
    "SECRET_MAX_AGE_SECONDS": "300",
    "PROJECTS": "p-1, p-2",
    "BRANCH_MODE": "main",
    "BRANCH_NAME": "",
    "BUNDLE_SIZE": "100",
    "OVERLAP_SECONDS": "120",
    "RECONCILE_EVERY": "12",
    "STAGE_INCLUDE": "",
    "STAGE_EXCLUDE": "Archive",
    "TASK_STATUSES": "",
    "OBJECT_FEATURE_HASHES": "",
    "CLASSIFICATION_FEATURE_HASHES": "c1,c2",
    "MAX_ATTEMPTS": "5",
    "LEASE_TTL_SECONDS": "900",
    "HISTORY_KEEP_RUNS": "0",
    "FILTER_SHRINK_LIMIT": "50",
    "SNAPSHOTS_KEEP": "0",
    "SNAPSHOTS_KEEP_DAYS": "0",
    "COCO_MODE": "corrected",
    "ANNOUNCE_MIN_ANNOTATIONS": "0",
    "POWERTOOLS_SERVICE_NAME": "encord-mirror",
    "POWERTOOLS_METRICS_NAMESPACE": "EncordMirror",
    "POWERTOOLS_LOG_LEVEL": "INFO",
    "AWS_REGION": "us-east-1",  # Lambda's own variables are ignored
}


def test_good_environment_becomes_the_mirror_config() -> None:
    # Given the environment template.yaml sets / When loaded
    config = Settings.from_environ(GOOD).mirror_config()
    # Then lists are split, empty feature lists mean "keep all", numbers are numbers
    assert config.projects == ("p-1", "p-2")
    assert config.stage_exclude == ("Archive",) and config.stage_include == ()
    assert config.object_feature_hashes is None and config.classification_feature_hashes == ("c1", "c2")
    assert config.max_attempts == 5 and config.bundle_size == 100
    assert config.branches == BranchSelection()


def test_named_branch_mode_takes_the_branch_name() -> None:
    env = {**GOOD, "BRANCH_MODE": "named", "BRANCH_NAME": "consensus-1"}
    assert Settings.from_environ(env).mirror_config().branches == BranchSelection("named", "consensus-1")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUNDLE_SIZE", "5000"),  # above Encord's bundle cap
        ("BUNDLE_SIZE", "many"),
        ("PROJECTS", " , "),
        ("TASK_STATUSES", "DONE"),
        ("BRANCH_MODE", "some"),
        ("ENCORD_KEY_SECRET_ARN", "encord-key"),
        ("WORK_QUEUE_URL", "work"),
        ("COCO_MODE", "fast"),
        ("ANNOUNCE_MIN_ANNOTATIONS", "-1"),
    ],
)
def test_bad_value_names_its_variable(variable: str, value: str) -> None:
    # Given one bad value / When the environment is loaded / Then the error names that variable
    with pytest.raises(SettingsError) as error:
        Settings.from_environ({**GOOD, variable: value})
    assert error.value.variable == variable
    assert variable in str(error.value)


def test_named_branch_without_a_name_blames_branch_name() -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_environ({**GOOD, "BRANCH_MODE": "named"})
    assert error.value.variable == "BRANCH_NAME"


def test_missing_variable_is_named() -> None:
    env = {k: v for k, v in GOOD.items() if k != "STATE_TABLE"}
    with pytest.raises(SettingsError, match="STATE_TABLE: Field required"):
        Settings.from_environ(env)


def test_secret_holds_the_key_as_text_or_under_private_key() -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    assert _private_key(key) == key
    assert _private_key('{"private_key": "' + key.replace("\n", "\\n") + '"}') == key


# Each MirrorConfig setting's variable, a value other than its default, and what MirrorConfig holds then.
_SETTING_VALUES = {
    "projects": ("PROJECTS", "p-9", ("p-9",)),
    "bundle_size": ("BUNDLE_SIZE", "7", 7),
    "overlap_seconds": ("OVERLAP_SECONDS", "30", 30),
    "reconcile_every": ("RECONCILE_EVERY", "3", 3),
    "stage_include": ("STAGE_INCLUDE", "Review, QA", ("Review", "QA")),
    "stage_exclude": ("STAGE_EXCLUDE", "", ()),
    "task_statuses": ("TASK_STATUSES", "COMPLETED", ("COMPLETED",)),
    "object_feature_hashes": ("OBJECT_FEATURE_HASHES", "o1,o2", ("o1", "o2")),
    "classification_feature_hashes": ("CLASSIFICATION_FEATURE_HASHES", "", None),
    "max_attempts": ("MAX_ATTEMPTS", "9", 9),
    "lease_ttl_seconds": ("LEASE_TTL_SECONDS", "60", 60),
    "history_keep_runs": ("HISTORY_KEEP_RUNS", "4", 4),
    "filter_shrink_limit": ("FILTER_SHRINK_LIMIT", "100", 100),
    "snapshots_keep": ("SNAPSHOTS_KEEP", "2", 2),
    "snapshots_keep_days": ("SNAPSHOTS_KEEP_DAYS", "30", 30),
}


def test_every_mirror_config_setting_has_a_case_here() -> None:
    # `branches` is BRANCH_MODE and BRANCH_NAME (tested above); every other field is one variable
    assert set(_SETTING_VALUES) == set(MirrorConfig.model_fields) - {"branches"}


@pytest.mark.parametrize("setting", sorted(_SETTING_VALUES))
def test_each_settings_variable_reaches_its_mirror_config_field(setting: str) -> None:
    # Given GOOD with that one variable changed
    variable, raw, expected = _SETTING_VALUES[setting]
    assert variable_of(setting) == variable
    before = Settings.from_environ(GOOD).mirror_config()
    # When loaded / Then that field holds the value, and no other field changed
    after = Settings.from_environ({**GOOD, variable: raw}).mirror_config()
    assert getattr(after, setting) == expected and getattr(before, setting) != expected
    assert after.model_copy(update={setting: getattr(before, setting)}) == before


@pytest.mark.parametrize("variable", ["BUNDLE_SIZE", "FILTER_SHRINK_LIMIT", "SNAPSHOTS_KEEP_DAYS"])
def test_a_missing_settings_variable_is_named(variable: str) -> None:
    env = {k: v for k, v in GOOD.items() if k != variable}
    with pytest.raises(SettingsError, match=f"{variable}: Field required"):
        Settings.from_environ(env)


def test_zero_keeps_every_run_and_snapshot_and_a_negative_count_is_refused() -> None:
    config = Settings.from_environ(GOOD).mirror_config()
    assert (config.history_keep_runs, config.snapshots_keep, config.snapshots_keep_days) == (None, None, None)
    with pytest.raises(SettingsError) as error:
        Settings.from_environ({**GOOD, "SNAPSHOTS_KEEP": "-1"})
    assert error.value.variable == "SNAPSHOTS_KEEP"
