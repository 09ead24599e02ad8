"""Helpers to run the Lambda handlers in `functions/` inside tests: load each `app.py` under its own
module name (three files share the name `app`), a LambdaContext, and the sample events in `events/`."""

from __future__ import annotations

import copy
import importlib.util
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from encord_mirror.aws_lambda.observability import metrics

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"
TEST_NAMESPACE = "EncordMirrorTest"

if metrics.namespace is None:  # Lambda sets POWERTOOLS_METRICS_NAMESPACE; a test process may not
    metrics.namespace = TEST_NAMESPACE


def load_handler(name: str) -> ModuleType:
    """`functions/<name>/app.py` as module `handler_<name>` (imported once per process)."""
    module_name = f"handler_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "functions" / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class FakeLambdaContext:
    function_name: str = "encord-mirror-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:encord-mirror-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/encord-mirror-test"
    log_stream_name: str = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads((EVENTS / f"{name}.json").read_bytes())
    return event


def with_bodies(
    event: dict[str, Any], bodies: list[dict[str, Any]], *, receive_count: int = 1
) -> dict[str, Any]:
    """A copy of an SQS sample event carrying these bodies (one record each, unique message ids)."""
    template = event["Records"][0]
    records = []
    for body in bodies:
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid4())
        record["body"] = orjson.dumps(body).decode()
        record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
        records.append(record)
    return {"Records": records}
