"""Finalizer: one run per SQS record (`{"project_hash": ..., "run_id": ...}`); the state store's
claim lets one finalizer at a time close the run, and a closed run is not closed again however often it is
asked. A record whose run another finalizer holds fails, so SQS redelivers it later (a finalizer that died
is then redone). Reports the watermark lag metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from encord_mirror.aws_lambda import wiring
from encord_mirror.aws_lambda.models import FinalizeRecord
from encord_mirror.aws_lambda.observability import logger, metrics, report_watermark_lag
from encord_mirror.aws_lambda.results import finalize_summary
from encord_mirror.coco import snapshot as _coco_snapshot  # noqa: F401  (loaded at init, not on the first run)
from encord_mirror.domain.finalizer import finalize

processor = BatchProcessor(event_type=EventType.SQS, model=FinalizeRecord)


def _finalize(record: FinalizeRecord, runtime: wiring.Runtime) -> dict[str, Any]:
    request = record.body
    logger.append_keys(project_hash=request.project_hash, run_id=request.run_id)
    summary = finalize_summary(finalize(request.project_hash, request.run_id, runtime.config, runtime.deps))
    if summary["status"] == "incomplete":
        logger.warning(
            "finalize requested before every chunk was done: left for the last chunk", extra=summary
        )
    else:
        logger.info(
            "run finalized" if summary["status"] == "finalized" else "nothing to finalize", extra=summary
        )
    return summary


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, runtime: wiring.Runtime | None = None
) -> Mapping[str, Any]:
    runtime = runtime or wiring.runtime(snapshots=True)
    response = process_partial_response(
        event=event,
        record_handler=lambda record: _finalize(record, runtime),
        processor=processor,
        context=context,
    )
    report_watermark_lag(runtime.deps.state, runtime.config.projects, runtime.deps.clock())
    return response
