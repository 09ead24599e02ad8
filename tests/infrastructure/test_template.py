"""template.yaml tested as code: the properties the mirror's correctness and safety rest on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from encord_mirror.aws_lambda.settings import Settings, variable_of
from encord_mirror.build_layer import LAMBDA_PYTHON
from encord_mirror.coco.modes import COCO_MODES, DEFAULT_COCO_MODE
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.limits import DEFAULT_BUNDLE_SIZE, MAX_BUNDLE_SIZE

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"

# Wildcards the template may hold, and why: a Deny on every S3 action for non-TLS requests is the
# point of that statement (it grants nothing).
ALLOWED_WILDCARDS = {("LakeBucketPolicy", "DenyInsecureTransport")}


class _CfnLoader(yaml.SafeLoader):
    """PyYAML that reads CloudFormation's short tags (!Ref, !GetAtt, !Sub, ...) as {"Fn::X": value}."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _function_timeout(template: dict[str, Any], name: str) -> int:
    props = template["Resources"][name]["Properties"]
    return int(props.get("Timeout", template["Globals"]["Function"].get("Timeout", 3)))


def _sqs_events(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (fn, event["Properties"])
        for fn, resource in _resources(template, "AWS::Serverless::Function").items()
        for event in resource["Properties"].get("Events", {}).values()
        if event["Type"] == "SQS"
    ]


def test_every_sqs_event_source_reports_batch_item_failures(template: dict[str, Any]) -> None:
    # Given the functions' SQS event sources / Then each reports partial batch failures
    events = _sqs_events(template)
    assert len(events) == 3
    for function, props in events:
        assert props.get("FunctionResponseTypes") == ["ReportBatchItemFailures"], function


def test_every_consumed_queue_has_a_dead_letter_queue(template: dict[str, Any]) -> None:
    # Given the queues the functions consume / Then each redrives to a DLQ defined in the template
    queues = _resources(template, "AWS::SQS::Queue")
    for _, props in _sqs_events(template):
        queue = props["Queue"]["Fn::GetAtt"][0]
        redrive = queues[queue]["Properties"].get("RedrivePolicy")
        assert redrive is not None, queue
        assert redrive["deadLetterTargetArn"]["Fn::GetAtt"][0] in queues
        assert redrive["maxReceiveCount"]


def test_visibility_timeout_is_at_least_six_times_the_consumer_timeout(template: dict[str, Any]) -> None:
    queues = _resources(template, "AWS::SQS::Queue")
    for function, resource in _resources(template, "AWS::Serverless::Function").items():
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            queue = event["Properties"]["Queue"]["Fn::GetAtt"][0]
            visibility = int(queues[queue]["Properties"]["VisibilityTimeout"])
            assert visibility >= 6 * _function_timeout(template, function), (queue, function)


def test_every_queue_is_encrypted(template: dict[str, Any]) -> None:
    for name, queue in _resources(template, "AWS::SQS::Queue").items():
        assert queue["Properties"].get("SqsManagedSseEnabled") is True, name


def test_worker_attempts_equal_the_work_queue_receive_count(template: dict[str, Any]) -> None:
    # The worker records gaps on its last attempt: that must be the delivery after which SQS dead-letters.
    receive_count = template["Resources"]["WorkQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"]
    assert template["Globals"]["Function"]["Environment"]["Variables"]["MAX_ATTEMPTS"] == receive_count


def test_worker_concurrency_is_capped_by_a_parameter(template: dict[str, Any]) -> None:
    [(_, props)] = [(f, p) for f, p in _sqs_events(template) if f == "WorkerFunction"]
    assert props["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "WorkerMaxConcurrency"}
    assert "WorkerMaxConcurrency" in template["Parameters"]


def _statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        for policy in props.get("Policies", []):
            if isinstance(policy, dict) and "Statement" in policy:
                found.extend((name, s) for s in policy["Statement"])
        document = props.get("PolicyDocument")
        if document:
            found.extend((name, s) for s in document["Statement"])
    return found


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return []


def test_iam_has_no_wildcard_actions_or_resources(template: dict[str, Any]) -> None:
    statements = _statements(template)
    assert len(statements) >= 10
    for owner, statement in statements:
        if (owner, statement.get("Sid")) in ALLOWED_WILDCARDS:
            assert statement["Effect"] == "Deny"
            continue
        actions = _strings(statement["Action"])
        assert all("*" not in a for a in actions), (owner, statement)
        resources = _strings(statement["Resource"])
        assert resources and all(r != "*" and not r.endswith(":*") for r in resources), (owner, statement)


def test_functions_use_no_managed_policies_or_policy_templates(template: dict[str, Any]) -> None:
    # Only explicit statements, so the test above sees every permission the template grants.
    for name, resource in _resources(template, "AWS::Serverless::Function").items():
        for policy in resource["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and set(policy) == {"Statement"}, name


def test_encord_key_is_readable_only_from_its_secret(template: dict[str, Any]) -> None:
    grants = [s for _, s in _statements(template) if "secretsmanager:GetSecretValue" in _strings(s["Action"])]
    assert len(grants) == 3
    assert all(s["Resource"] == {"Ref": "EncordKeySecretArn"} for s in grants)


def test_lake_bucket_is_versioned_encrypted_private_and_owner_enforced(template: dict[str, Any]) -> None:
    props = template["Resources"]["LakeBucket"]["Properties"]
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms", "aws:kms:dsse"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]


def test_pruned_snapshots_expire_under_coco_only_and_only_while_retention_is_set(
    template: dict[str, Any],
) -> None:
    # The finalizer deletes pruned snapshots; in the versioned bucket their bytes stay as noncurrent
    # versions until this rule expires them. Rows keep their versions: they are the rows' history.
    rules = template["Resources"]["LakeBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [conditional] = [r["Fn::If"] for r in rules if "Fn::If" in r]
    condition, rule, otherwise = conditional
    assert condition == "PruneSnapshots" and otherwise == {"Ref": "AWS::NoValue"}
    assert rule["Prefix"] == {"Fn::If": ["HasLakePrefix", {"Fn::Sub": "${LakePrefix}/coco/"}, "coco/"]}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": {"Ref": "PrunedSnapshotsExpireDays"}}
    assert rule["ExpiredObjectDeleteMarker"] is True
    uses = template["Conditions"]["PruneSnapshots"]["Fn::Or"]
    assert {"Ref": "SnapshotsKeep"} in uses[0]["Fn::Not"][0]["Fn::Equals"]
    assert {"Ref": "SnapshotsKeepDays"} in uses[1]["Fn::Not"][0]["Fn::Equals"]
    assert template["Parameters"]["SnapshotsKeep"]["Default"] == 0  # keep every snapshot by default
    assert template["Parameters"]["SnapshotsKeepDays"]["Default"] == 0


def test_lake_bucket_denies_requests_without_tls(template: dict[str, Any]) -> None:
    policy = template["Resources"]["LakeBucketPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "LakeBucket"}
    deny = [
        s
        for s in policy["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(deny) == 1
    resources = deny[0]["Resource"]
    assert {"Fn::GetAtt": ["LakeBucket", "Arn"]} in resources
    assert {"Fn::Sub": "${LakeBucket.Arn}/*"} in resources


def test_state_table_is_on_demand_encrypted_recoverable_with_ttl(template: dict[str, Any]) -> None:
    props = template["Resources"]["StateTable"]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}


def test_every_dead_letter_queue_has_a_depth_alarm(template: dict[str, Any]) -> None:
    dlqs = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in _resources(template, "AWS::SQS::Queue").values()
        if "RedrivePolicy" in q["Properties"]
    }
    alarmed = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in _resources(template, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["Namespace"] == "AWS/SQS"
        and a["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and a["Properties"]["Threshold"] == 0
        and a["Properties"]["ComparisonOperator"] == "GreaterThanThreshold"
    }
    assert dlqs and dlqs == alarmed


@pytest.mark.parametrize(
    ("alarm_name", "metric", "threshold"),
    [
        ("WatermarkLagAlarm", "WATERMARK_LAG_METRIC", {"Ref": "WatermarkLagAlarmSeconds"}),
        ("SnapshotsOwedAlarm", "SNAPSHOTS_OWED_METRIC", 0),
    ],
)
def test_metric_alarms_watch_the_metrics_the_handlers_emit(
    template: dict[str, Any], alarm_name: str, metric: str, threshold: object
) -> None:
    from encord_mirror.aws_lambda import observability

    alarm = template["Resources"][alarm_name]["Properties"]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert alarm["MetricName"] == getattr(observability, metric)
    assert alarm["Namespace"] == variables["POWERTOOLS_METRICS_NAMESPACE"]
    # Powertools adds the service as the metric's one default dimension.
    assert alarm["Dimensions"] == [{"Name": "service", "Value": variables["POWERTOOLS_SERVICE_NAME"]}]
    assert alarm["Threshold"] == threshold
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_environment_variables_equal_the_settings_fields(template: dict[str, Any]) -> None:
    variables = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for name, resource in _resources(template, "AWS::Serverless::Function").items():
        variables |= set(resource["Properties"].get("Environment", {}).get("Variables", {}))
        assert resource["Properties"]["Handler"] == "app.lambda_handler", name
    assert variables == set(Settings.model_fields)


def test_every_mirror_config_setting_is_a_parameter_with_its_default_and_bounds(
    template: dict[str, Any],
) -> None:
    # Given MirrorConfig's fields, each read from the variable variable_of names (branches: BRANCH_MODE)
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for setting, field in MirrorConfig.model_fields.items():
        # Then template.yaml sets that variable from a parameter
        parameter = template["Parameters"][variables[variable_of(setting)]["Ref"]]
        if setting in ("projects", "branches"):
            continue  # no default (Projects), or two variables (BRANCH_MODE, BRANCH_NAME)
        bounds = {type(m).__name__: m for m in field.metadata}
        if field.annotation in (int, int | None):
            # a number: None is 0 in the variable; the bounds are MirrorConfig's
            assert parameter["Type"] == "Number", setting
            assert parameter.get("MinValue") == (0 if field.default is None else bounds["Ge"].ge), setting
            assert parameter.get("MaxValue") == (bounds["Le"].le if "Le" in bounds else None), setting
            if setting != "max_attempts":  # WorkQueueMaxReceiveCount: the queue's, deliberately higher
                assert parameter["Default"] == (field.default or 0), setting
        else:
            # a comma-separated list, empty by default
            assert (parameter["Type"], parameter["Default"]) == ("String", ""), setting


def test_the_coco_mode_parameter_offers_the_modes_the_mirror_knows(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["CocoMode"]
    assert tuple(parameter["AllowedValues"]) == COCO_MODES
    assert parameter["Default"] == DEFAULT_COCO_MODE


def test_the_bundle_size_parameter_has_the_mirrors_default_and_ceiling(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["BundleSize"]
    assert (parameter["Default"], parameter["MaxValue"]) == (DEFAULT_BUNDLE_SIZE, MAX_BUNDLE_SIZE)


def test_runtime_matches_the_platform_the_layer_is_built_for(template: dict[str, Any]) -> None:
    function = template["Globals"]["Function"]
    assert function["Runtime"] == f"python{LAMBDA_PYTHON}"
    assert function["Architectures"] == ["x86_64"]
    layer = template["Resources"]["DepsLayer"]["Properties"]
    assert layer["CompatibleRuntimes"] == [function["Runtime"]]
    assert function["Layers"] == [{"Ref": "DepsLayer"}]


def test_handlers_and_sample_events_exist_for_every_function(template: dict[str, Any]) -> None:
    root = TEMPLATE.parent
    for resource in _resources(template, "AWS::Serverless::Function").values():
        assert (root / resource["Properties"]["CodeUri"] / "app.py").is_file()
    for event in ("schedule", "sync_request", "worker_sqs", "finalize"):
        assert (root / "events" / f"{event}.json").is_file()


def test_a_plain_sam_build_builds_the_layer_with_the_makefile_that_make_layer_uses(
    template: dict[str, Any],
) -> None:
    # Given the layer resource and the Makefile SAM runs for it
    layer = template["Resources"]["DepsLayer"]
    makefile = (TEMPLATE.parent / layer["Properties"]["ContentUri"] / "Makefile").read_text()
    # Then SAM's makefile build method is declared, its target exists, and it calls the root `layer`
    # target into SAM's artifacts folder (so `sam build` alone and `make build` give the same layer)
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "x86_64"}
    assert "build-DepsLayer:" in makefile
    assert "layer LAYER_DIR=$(ARTIFACTS_DIR)/python" in makefile
    root_makefile = (TEMPLATE.parent / "Makefile").read_text()
    assert "python -m encord_mirror.build_layer --out" in root_makefile


def test_functions_use_snapstart_through_a_published_alias_but_the_finalizer_gets_disk(
    template: dict[str, Any],
) -> None:
    # SnapStart applies to published versions only; event sources must follow the alias to use them.
    function = template["Globals"]["Function"]
    assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert function["AutoPublishAlias"] == "live"
    # SnapStart allows at most 512 MB of /tmp: the finalizer, which streams snapshots through /tmp,
    # opts out and gets the disk (a parameter, 4 GB by default)
    finalizer = template["Resources"]["FinalizerFunction"]["Properties"]
    assert finalizer["SnapStart"] == {"ApplyOn": "None"}
    assert finalizer["EphemeralStorage"] == {"Size": {"Ref": "FinalizerTmpMB"}}
    assert template["Parameters"]["FinalizerTmpMB"]["Default"] > 512
    for name, resource in _resources(template, "AWS::Serverless::Function").items():
        if name != "FinalizerFunction":
            assert "EphemeralStorage" not in resource["Properties"], name


def test_glue_tables_use_partition_projection_over_the_lake_and_match_the_repos_ddl(
    template: dict[str, Any],
) -> None:
    # Given the template's Glue database and tables, and the DDL in sql/athena/ for users outside SAM
    from lake_sql import TABLE_FILES, columns

    tables = _resources(template, "AWS::Glue::Table")
    assert _resources(template, "AWS::Glue::Database")
    assert not _resources(template, "AWS::Glue::Crawler")  # no crawler: partitions are projected
    by_name = {t["Properties"]["TableInput"]["Name"]: t["Properties"] for t in tables.values()}
    assert set(by_name) == set(TABLE_FILES)
    lake_paths = {"labels": "labels", "annotations": "tables/annotations", "runs": "runs"}
    for name, props in by_name.items():
        table = props["TableInput"]
        params = table["Parameters"]
        # Then each projects its `project` partition from the deployed projects, under the lake's prefix
        assert params["projection.enabled"] == "true" and params["projection.project.type"] == "enum"
        assert params["projection.project.values"] == {"Ref": "Projects"}
        with_prefix, without = params["storage.location.template"]["Fn::If"][1:]
        assert (
            with_prefix["Fn::Sub"]
            == f"s3://${{LakeBucket}}/${{LakePrefix}}/{lake_paths[name]}/project=${{!project}}/"
        )
        assert without["Fn::Sub"] == f"s3://${{LakeBucket}}/{lake_paths[name]}/project=${{!project}}/"
        assert table["PartitionKeys"] == [{"Name": "project", "Type": "string"}]
        storage = table["StorageDescriptor"]
        assert storage["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
        # And its columns are the DDL's, name for name and type for type
        ddl = [(n, k.sql("hive").lower().replace(" ", "")) for n, k in columns(name)]
        assert [(c["Name"], c["Type"]) for c in storage["Columns"]] == ddl, name
