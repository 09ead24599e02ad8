"""Builds what a handler needs from the settings: the AWS adapters over cached boto3 clients (one
per container) and the Encord label source from the key in Secrets Manager.

The key is read through Powertools `parameters.get_secret(..., max_age=...)` once per invocation,
outside the per-record loop: a warm container sees a rotated key within `SECRET_MAX_AGE_SECONDS`, and
the SDK client is rebuilt only when the key text changed. The key is never logged.

Only the finalizer builds COCO snapshots, so only it imports the COCO stack (the converter, pycocotools):
`runtime(snapshots=True)`. The planner's and the worker's cold starts (and an idle scheduled run) skip it.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import boto3
import orjson
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config

from encord_mirror.adapters.aws import DynamoStateStore, EventBridgeSink, S3ObjectStore, SqsWorkQueue
from encord_mirror.adapters.encord_source import EncordLabelSource
from encord_mirror.aws_lambda.settings import Settings, load_settings
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.ports import SnapshotBuilder
from encord_mirror.domain.watermark import utc_now
from encord_mirror.tables import lake_recorders

_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a handler passes into the domain: the configuration and the adapters."""

    config: MirrorConfig
    deps: MirrorDeps


@functools.cache
def aws_client(service: str) -> Any:
    """One boto3 client per service and container (the endpoint follows AWS_ENDPOINT_URL if set)."""
    return boto3.client(service, config=_BOTO_CONFIG)


def _private_key(secret: str) -> str:
    """The secret is the key's text, or a JSON object holding it under `private_key`."""
    if secret.lstrip().startswith("{"):
        try:
            value = orjson.loads(secret)
        except orjson.JSONDecodeError:
            return secret
        if isinstance(value, dict) and isinstance(value.get("private_key"), str):
            return str(value["private_key"])
    return secret


class _SourceCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digest: str | None = None
        self._source: EncordLabelSource | None = None

    def get(self, settings: Settings) -> EncordLabelSource:
        secret = parameters.get_secret(
            settings.ENCORD_KEY_SECRET_ARN, max_age=settings.SECRET_MAX_AGE_SECONDS
        )
        key = _private_key(secret if isinstance(secret, str) else bytes(secret).decode())
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self._lock:
            if self._source is None or digest != self._digest:
                self._source = EncordLabelSource.from_private_key(
                    key,
                    domain=settings.ENCORD_DOMAIN,
                    key_origin=f"the secret {settings.ENCORD_KEY_SECRET_ARN}",
                )
                self._digest = digest
            return self._source

    def clear(self) -> None:
        with self._lock:
            self._digest, self._source = None, None


_sources = _SourceCache()


@dataclass(frozen=True, slots=True)
class _Adapters:
    lake: S3ObjectStore
    state: DynamoStateStore
    queue: SqsWorkQueue
    events: EventBridgeSink


@functools.cache
def _aws_adapters(settings: Settings) -> _Adapters:
    return _Adapters(
        lake=S3ObjectStore(settings.LAKE_BUCKET, settings.LAKE_PREFIX, aws_client("s3")),
        state=DynamoStateStore(settings.STATE_TABLE, aws_client("dynamodb")),
        queue=SqsWorkQueue(settings.WORK_QUEUE_URL, settings.FINALIZE_QUEUE_URL, aws_client("sqs")),
        events=EventBridgeSink(settings.EVENT_BUS_NAME, aws_client("events")),
    )


@functools.cache
def _snapshot_builder(settings: Settings) -> SnapshotBuilder | None:
    from encord_mirror.coco.snapshot import snapshot_builder

    return snapshot_builder(
        _aws_adapters(settings).lake,
        settings.COCO_MODE,
        announce_min_annotations=settings.ANNOUNCE_MIN_ANNOTATIONS,
    )


def runtime(settings: Settings | None = None, *, snapshots: bool = False) -> Runtime:
    """The runtime for this invocation: cached adapters, the current Encord key, and (for the
    finalizer, `snapshots=True`) the COCO snapshot builder of the deployment's COCO mode."""
    settings = settings or load_settings()
    adapters = _aws_adapters(settings)
    config = settings.mirror_config()
    deps = MirrorDeps(
        source=_sources.get(settings),
        lake=adapters.lake,
        state=adapters.state,
        queue=adapters.queue,
        events=adapters.events,
        snapshots=_snapshot_builder(settings) if snapshots else None,
        clock=utc_now,
        recorders=lake_recorders(adapters.lake, config),
    )
    return Runtime(config=config, deps=deps)


def reset_caches() -> None:
    """Forget settings, clients, adapters and the cached secret (tests; a new environment)."""
    load_settings.cache_clear()
    aws_client.cache_clear()
    _aws_adapters.cache_clear()
    _snapshot_builder.cache_clear()
    _sources.clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
