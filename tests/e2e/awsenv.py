"""The AWS emulator for the e2e tests (moto's server mode on loopback) and the resources that
template.yaml creates, made per test under unique names. conftest.py wraps these in fixtures."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

REGION = "us-east-1"


def boto_environment(endpoint: str) -> dict[str, str]:
    """boto3's usual environment, pointed at the AWS emulator with dummy credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


TEST_VISIBILITY_TIMEOUT_S = 1


class _Linearized:
    """Serialises requests into moto. DynamoDB and S3 evaluate a condition and write atomically; moto
    checks and writes in separate Python steps, so two threads can both pass one condition. One
    request at a time restores the service's semantics (and the tests then prove ours)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with self._lock:
            return list(self._app(environ, start_response))


class LinearizedMotoServer(ThreadedMotoServer):  # type: ignore[misc]
    def _server_entry(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns failures
        app = _Linearized(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@dataclass(frozen=True)
class AwsResources:
    """One test's own set of resources, created like template.yaml creates them."""

    endpoint: str
    bucket: str
    table: str
    work_queue_url: str
    work_dlq_url: str
    finalize_queue_url: str
    finalize_dlq_url: str
    sync_queue_url: str
    bus: str
    max_receive_count: int


def _queue_with_dlq(sqs: Any, name: str, max_receive_count: int) -> tuple[str, str]:
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(TEST_VISIBILITY_TIMEOUT_S),
            "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receive_count}"}}',
        },
    )["QueueUrl"]
    return url, dlq_url


def create_state_table(dynamodb: Any, name: str) -> None:
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )


def create_resources(
    endpoint: str, client: Callable[[str], Any], *, max_receive_count: int = 3
) -> AwsResources:
    suffix = uuid.uuid4().hex[:10]
    s3 = client("s3")
    bucket = f"lake-{suffix}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    table = f"state-{suffix}"
    create_state_table(client("dynamodb"), table)
    sqs = client("sqs")
    work, work_dlq = _queue_with_dlq(sqs, f"work-{suffix}", max_receive_count)
    finalize, finalize_dlq = _queue_with_dlq(sqs, f"finalize-{suffix}", max_receive_count)
    sync, _ = _queue_with_dlq(sqs, f"sync-{suffix}", max_receive_count)
    bus = f"bus-{suffix}"
    client("events").create_event_bus(Name=bus)
    return AwsResources(
        endpoint=endpoint,
        bucket=bucket,
        table=table,
        work_queue_url=work,
        work_dlq_url=work_dlq,
        finalize_queue_url=finalize,
        finalize_dlq_url=finalize_dlq,
        sync_queue_url=sync,
        bus=bus,
        max_receive_count=max_receive_count,
    )
