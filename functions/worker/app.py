"""Worker: one chunk per SQS record, partial batch responses. A chunk with failed rows is reported
failed, so SQS redelivers it; its attempt number is the record's ApproximateReceiveCount and its last
attempt is the queue's maxReceiveCount (MAX_ATTEMPTS), after which its rows are gaps and it goes to
the DLQ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from encord_mirror.aws_lambda import wiring
from encord_mirror.aws_lambda.models import ChunkRecord
from encord_mirror.aws_lambda.observability import logger, metrics
from encord_mirror.aws_lambda.results import chunk_summary
from encord_mirror.domain.worker import process_chunk

processor = BatchProcessor(event_type=EventType.SQS, model=ChunkRecord)


def _chunk(record: ChunkRecord, runtime: wiring.Runtime) -> dict[str, Any]:
    message = record.body.message()
    attempt = int(record.attributes.ApproximateReceiveCount)
    logger.append_keys(project_hash=message.project_hash, run_id=message.run_id, chunk_id=message.chunk_id)
    result = process_chunk(
        message, runtime.config, runtime.deps, attempt=attempt, max_attempts=runtime.config.max_attempts
    )
    summary = chunk_summary(result, attempt=attempt)
    logger.info("chunk synced", extra=summary)
    return summary


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(
    event: dict[str, Any], context: LambdaContext, runtime: wiring.Runtime | None = None
) -> Mapping[str, Any]:
    runtime = runtime or wiring.runtime()
    return process_partial_response(
        event=event,
        record_handler=lambda record: _chunk(record, runtime),
        processor=processor,
        context=context,
    )
