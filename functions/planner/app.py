"""Planner: on the schedule, plan a run for every configured project; on a sync request
(`{"project_hash": ..., "full": bool}` on the sync-request queue), plan that one project."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from encord_mirror.aws_lambda import wiring
from encord_mirror.aws_lambda.models import ScheduleEvent, SyncRequestRecord
from encord_mirror.aws_lambda.observability import logger, metrics, report_watermark_lag
from encord_mirror.aws_lambda.results import (
    PlanningFailedError,
    UnconfiguredProjectError,
    config_refusal,
    plan_summary,
)
from encord_mirror.domain.config import ConfigError
from encord_mirror.domain.planner import plan

processor = BatchProcessor(event_type=EventType.SQS, model=SyncRequestRecord)


def _sync_request(record: SyncRequestRecord, runtime: wiring.Runtime) -> dict[str, Any]:
    request = record.body
    logger.append_keys(project_hash=request.project_hash)
    if request.project_hash not in runtime.config.projects:
        refused = UnconfiguredProjectError(request.project_hash, runtime.config.projects)
        logger.error("sync request refused", extra={"reason": str(refused)})
        metrics.add_metric(name="SyncRequestsRefused", unit=MetricUnit.Count, value=1)
        return {"project_hash": request.project_hash, "status": "refused", "reason": str(refused)}
    try:
        result = plan(request.project_hash, runtime.config, runtime.deps, full=request.full)
    except ConfigError as exc:
        # Asking again cannot succeed until the stack's parameters change: the request is dropped.
        logger.error("sync request refused", extra=config_refusal(exc))
        metrics.add_metric(name="SyncRequestsRefused", unit=MetricUnit.Count, value=1)
        return {"project_hash": request.project_hash, "status": "refused", "reason": str(exc)}
    summary = plan_summary(result)
    logger.info("planned", extra=summary)
    return summary


def _scheduled(runtime: wiring.Runtime) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for project_hash in runtime.config.projects:
        # One project's failure (bad access, outage) must not starve the others of their run.
        try:
            runs.append(plan_summary(plan(project_hash, runtime.config, runtime.deps)))
        except ConfigError as exc:
            logger.error("planning refused", extra={"project_hash": project_hash, **config_refusal(exc)})
            errors[project_hash] = str(exc)
        except Exception as exc:
            logger.exception("planning failed", extra={"project_hash": project_hash})
            errors[project_hash] = f"{type(exc).__name__}: {exc}"
    logger.info("scheduled run planned", extra={"runs": runs})
    # Every tick reports the lag, so the alarm sees data even while no run reaches its finalizer.
    report_watermark_lag(runtime.deps.state, runtime.config.projects, runtime.deps.clock())
    if errors:
        raise PlanningFailedError(errors)
    return {"runs": runs}


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, runtime: wiring.Runtime | None = None
) -> Mapping[str, Any]:
    runtime = runtime or wiring.runtime()
    if "Records" in event:
        return process_partial_response(
            event=event,
            record_handler=lambda record: _sync_request(record, runtime),
            processor=processor,
            context=context,
        )
    ScheduleEvent.model_validate(event)
    return _scheduled(runtime)
