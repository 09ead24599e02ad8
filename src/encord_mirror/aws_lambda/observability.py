"""The one Logger (orjson serializer) and the one Metrics of every handler. No Tracer: it needs
aws-xray-sdk in the layer and an X-Ray write permission on Resource "*", for little gain here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from encord_mirror.domain.ports import StateStore

WATERMARK_LAG_METRIC = "WatermarkLagSeconds"
SNAPSHOTS_OWED_METRIC = "SnapshotsOwed"  # per finalized run: partitions whose COCO snapshot is stale
CLOCK_SKEW_METRIC = "ClockSkewSeconds"  # per planned run: Encord's clock minus the function's


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


logger = Logger(json_serializer=_dumps)
metrics = Metrics()


def report_watermark_lag(state: StateStore, projects: tuple[str, ...], now: datetime) -> float | None:
    """Emit the oldest watermark's age among `projects` (the alarm's metric) and return it. A project
    without a watermark yet counts as lagging since forever only after its first run: skipped here."""
    lags = [
        (now - watermark).total_seconds()
        for project in projects
        if (watermark := state.get_watermark(project)) is not None
    ]
    if not lags:
        return None
    worst = max(lags)
    metrics.add_metric(name=WATERMARK_LAG_METRIC, unit=MetricUnit.Seconds, value=worst)
    return worst
