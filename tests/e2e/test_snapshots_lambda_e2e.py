"""The COCO snapshot contract through the Lambda handlers: real boto3 against moto's server (S3,
DynamoDB, SQS, EventBridge, Secrets Manager), the real encord SDK against the Encord emulator. The
EventBridge bus routes "encord-mirror" events to an SQS queue, as a retraining pipeline would subscribe,
so the test counts what a consumer receives: exactly one event per committed snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from awsenv import REGION, AwsResources, boto_environment
from lambda_support import FakeLambdaContext, load_event, load_handler
from snapshot_checks import committed_snapshots, one_event_per_snapshot_differences

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import without_objects
from encord_mirror.adapters.aws import S3ObjectStore
from encord_mirror.aws_lambda import wiring
from encord_mirror.domain.codec import EVENT_SOURCE, SNAPSHOT_DETAIL_TYPE
from encord_mirror.verify import assert_lake_matches, assert_snapshots_match

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LAKE_PREFIX = "mirror"
COCO_MODE = (
    "encord-compatible"  # the CLI suite covers both modes; here the deployment setting reaches the Lambda
)


@dataclass
class Stack:
    aws: AwsResources
    client: Callable[[str], Any]
    emu: Emulator
    project: str
    ontology: dict[str, Any]
    events_queue_url: str

    @property
    def lake(self) -> S3ObjectStore:
        return S3ObjectStore(self.aws.bucket, LAKE_PREFIX, self.client("s3"))

    def _invoke(self, handler: str, queue_url: str, batch_size: int) -> int:
        """One receive + invoke + delete cycle of Lambda's SQS event source mapping (partial batch
        failures honoured: a failed record stays and comes back after the visibility timeout)."""
        sqs = self.client("sqs")
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=batch_size, AttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return 0
        records = [_record(m, queue_url) for m in messages]
        response = load_handler(handler).lambda_handler({"Records": records}, FakeLambdaContext())
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        for message in messages:
            if message["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def drain(self, timeout_s: float = 60.0) -> None:
        sqs = self.client("sqs")
        queues = (
            ("planner", self.aws.sync_queue_url, 1),
            ("worker", self.aws.work_queue_url, 10),
            ("finalizer", self.aws.finalize_queue_url, 1),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(self._invoke(handler, url, size) for handler, url, size in queues):
                continue
            if all(_depth(sqs, url) == 0 for _handler, url, _size in queues):
                return
            time.sleep(0.25)
        raise AssertionError("queues did not drain in time")

    def received_events(self) -> list[dict[str, Any]]:
        """Every event the bus delivered to the subscribed queue so far (received and deleted)."""
        sqs = self.client("sqs")
        out: list[dict[str, Any]] = []
        while True:
            messages = sqs.receive_message(
                QueueUrl=self.events_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                return out
            for message in messages:
                out.append(orjson.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.events_queue_url, ReceiptHandle=message["ReceiptHandle"])


def _record(message: dict[str, Any], queue_url: str) -> dict[str, Any]:
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attributes.get("SentTimestamp", "0"),
            "SenderId": attributes.get("SenderId", "AIDAEXAMPLE"),
            "ApproximateFirstReceiveTimestamp": attributes.get("ApproximateFirstReceiveTimestamp", "0"),
        },
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{queue_url.rsplit('/', 1)[1]}",
        "awsRegion": REGION,
    }


def _depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _subscribe(client: Callable[[str], Any], aws: AwsResources) -> str:
    """An SQS queue subscribed to the bus's encord-mirror events (a rule with the queue as target)."""
    sqs = client("sqs")
    url: str = sqs.create_queue(QueueName=f"events-{aws.bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = client("events")
    events.put_rule(
        Name=f"snapshots-{aws.bucket}",
        EventBusName=aws.bus,
        EventPattern=orjson.dumps({"source": [EVENT_SOURCE]}).decode(),
    )
    events.put_targets(
        Rule=f"snapshots-{aws.bucket}", EventBusName=aws.bus, Targets=[{"Id": "q", "Arn": arn}]
    )
    return url


@pytest.fixture()
def stack(
    tmp_path: Path, aws: AwsResources, aws_client: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    [project] = generate(tmp_path / "fixture", 24, seed=5)
    spec = orjson.loads((tmp_path / "fixture" / project / "project.json").read_bytes())
    key_path, public_line = generate_keypair(tmp_path / "keys")
    secret_arn = aws_client("secretsmanager").create_secret(
        Name=f"encord-key-{aws.bucket}", SecretString=key_path.read_text()
    )["ARN"]
    events_queue_url = _subscribe(aws_client, aws)
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        # The environment template.yaml gives the functions, pointed at the emulators.
        environment = {
            **boto_environment(aws.endpoint),
            "AWS_REGION": REGION,
            "LAKE_BUCKET": aws.bucket,
            "LAKE_PREFIX": LAKE_PREFIX,
            "STATE_TABLE": aws.table,
            "WORK_QUEUE_URL": aws.work_queue_url,
            "FINALIZE_QUEUE_URL": aws.finalize_queue_url,
            "EVENT_BUS_NAME": aws.bus,
            "ENCORD_KEY_SECRET_ARN": secret_arn,
            "ENCORD_DOMAIN": emu.url,
            "SECRET_MAX_AGE_SECONDS": "300",
            "PROJECTS": project,
            "BRANCH_MODE": "main",
            "BRANCH_NAME": "",
            "BUNDLE_SIZE": "8",
            "OVERLAP_SECONDS": "120",
            "RECONCILE_EVERY": "100",
            "STAGE_INCLUDE": "",
            "STAGE_EXCLUDE": "",
            "TASK_STATUSES": "",
            "OBJECT_FEATURE_HASHES": "",
            "CLASSIFICATION_FEATURE_HASHES": "",
            "MAX_ATTEMPTS": str(aws.max_receive_count),
            "LEASE_TTL_SECONDS": "900",
            "HISTORY_KEEP_RUNS": "0",
            "FILTER_SHRINK_LIMIT": "50",
            "SNAPSHOTS_KEEP": "0",
            "SNAPSHOTS_KEEP_DAYS": "0",
            "COCO_MODE": COCO_MODE,
            "ANNOUNCE_MIN_ANNOTATIONS": "0",
            "POWERTOOLS_SERVICE_NAME": "encord-mirror",
            "POWERTOOLS_METRICS_NAMESPACE": "EncordMirrorTest",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        wiring.reset_caches()
        yield Stack(aws, aws_client, emu, project, spec["ontology"], events_queue_url)
    wiring.reset_caches()


def test_lambda_snapshots_equal_fresh_conversions_and_the_bus_delivers_one_event_each(stack: Stack) -> None:
    received: list[dict[str, Any]] = []

    def assert_contract() -> None:
        assert_lake_matches(stack.lake, stack.emu.state(stack.project), stack.project)
        compatible = COCO_MODE == "encord-compatible"
        assert_snapshots_match(stack.lake, stack.project, stack.ontology, encord_compatible=compatible)
        received.extend(stack.received_events())
        assert {(e["source"], e["detail-type"]) for e in received} == {(EVENT_SOURCE, SNAPSHOT_DETAIL_TYPE)}
        details = [e["detail"] for e in received]
        assert one_event_per_snapshot_differences(details, stack.lake, stack.project) == []
        assert stack.emu.writes() == []

    # Given a generated project (every data type and shape, four stages)
    # When the schedule fires and the queues drain
    load_handler("planner").lambda_handler(load_event("schedule"), FakeLambdaContext())
    stack.drain()
    # Then each stage's snapshot equals a fresh conversion, and the bus delivered one event per snapshot
    assert_contract()
    first = len(received)
    assert first == 4

    # When a data unit moves to another stage and a row is edited, and a full sync is requested
    truth = [r for r in stack.emu.state(stack.project) if r["branch_name"] == "main"]
    moving = next(r for r in truth if r["stage"] == "Annotate")
    edited = next(r for r in truth if r["stage"] == "Complete" and r["row"]["data_type"] == "image")
    stack.emu.move_stage(stack.project, moving["data_hash"], "Review")
    stack.emu.edit_row(stack.project, edited["label_hash"], without_objects(edited["row"]))
    stack.emu.clear_log()  # the edit was the test's write, not the mirror's
    body = orjson.dumps({"project_hash": stack.project, "full": True}).decode()
    stack.client("sqs").send_message(QueueUrl=stack.aws.sync_queue_url, MessageBody=body)
    stack.drain()

    # Then the three touched partitions have new snapshots equal to fresh conversions, each announced once
    assert_contract()
    assert len(received) == first + 3 == len(committed_snapshots(stack.lake, stack.project))
