"""How the handlers map domain results to Lambda answers: JSON-able summaries, metrics, and the
errors that make the Powertools BatchProcessor report a record as failed (so SQS redelivers it)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from encord_mirror.aws_lambda.observability import CLOCK_SKEW_METRIC, SNAPSHOTS_OWED_METRIC, logger, metrics
from encord_mirror.aws_lambda.settings import variable_of
from encord_mirror.domain.config import ConfigError, FilterShrinkError
from encord_mirror.domain.finalizer import FinalizeResult
from encord_mirror.domain.models import ChunkResult
from encord_mirror.domain.planner import PlanResult


class ChunkIncompleteError(Exception):
    """Some rows of a chunk failed: the record is reported failed so the queue redelivers it (or, after
    the last attempt, moves it to the DLQ; its rows are gaps by then)."""

    def __init__(self, chunk_id: str, failed: dict[str, str], *, attempt: int, final: bool) -> None:
        sample = "; ".join(f"{h}: {why}" for h, why in list(failed.items())[:3])
        then = "gaps recorded, to the DLQ" if final else "will be redelivered"
        super().__init__(
            f"chunk {chunk_id}: {len(failed)} row(s) failed on attempt {attempt} ({then}): {sample}"
        )
        self.chunk_id = chunk_id
        self.failed = failed
        self.attempt = attempt
        self.final = final


class PlanningFailedError(Exception):
    """The schedule's run failed for some projects (the others were planned); `errors` per project."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("planning failed for " + "; ".join(f"{p}: {why}" for p, why in errors.items()))
        self.errors = errors


class FinalizeBusyError(Exception):
    """Another finalizer holds the run's claim: the record is reported failed so SQS asks again after the
    visibility timeout, by when that finalizer has finished (or died and its claim expired)."""

    def __init__(self, project_hash: str, run_id: str) -> None:
        super().__init__(f"run {run_id} of project {project_hash} is being finalized by another invocation")
        self.project_hash = project_hash
        self.run_id = run_id


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class UnconfiguredProjectError(Exception):
    """A sync request names a project that is not in PROJECTS: it would be mirrored without its watermark
    lag reported or its schedule, so it is refused (and dropped: asking again cannot succeed)."""

    def __init__(self, project_hash: str, configured: tuple[str, ...]) -> None:
        super().__init__(
            f"sync request for project {project_hash}, which is not configured (PROJECTS: "
            f"{', '.join(configured)}); add it to the stack's Projects parameter to mirror it"
        )
        self.project_hash = project_hash
        self.configured = configured


def config_refusal(exc: ConfigError) -> dict[str, Any]:
    """The log keys of a run the planner refused for its configuration: the variable to change, and
    for a filter change that would shrink the lake, the counts."""
    variable = "BRANCH_NAME" if exc.setting == "branches" else variable_of(exc.setting)
    keys: dict[str, Any] = {"variable": variable, "reason": str(exc)}
    if isinstance(exc, FilterShrinkError):
        keys.update(removing=exc.removing, lake_rows=exc.lake_rows, limit_percent=exc.limit)
    return keys


def plan_summary(result: PlanResult) -> dict[str, Any]:
    if result.deselected:
        logger.warning(
            "filter change takes rows out of the current view",
            extra={
                "project_hash": result.project_hash,
                "run_id": result.run_id,
                "removing": result.deselected,
                "lake_rows": result.lake_rows,
            },
        )
    metrics.add_metric(name="RowsToSync", unit=MetricUnit.Count, value=result.to_sync)
    metrics.add_metric(name="ChunksSent", unit=MetricUnit.Count, value=result.chunks - result.send_failed)
    if result.status == "lease_held":
        metrics.add_metric(name="LeaseHeld", unit=MetricUnit.Count, value=1)
    if result.clock_skew is not None:
        metrics.add_metric(
            name=CLOCK_SKEW_METRIC, unit=MetricUnit.Seconds, value=result.clock_skew.total_seconds()
        )
    if result.clock_warning is not None:
        logger.warning("clock", extra={"project_hash": result.project_hash, "reason": result.clock_warning})
    return {
        "project_hash": result.project_hash,
        "run_id": result.run_id,
        "status": result.status,
        "full": result.full,
        "refilter": result.refilter,
        "deselected": result.deselected,
        "signpost": _iso(result.signpost),
        "to_sync": result.to_sync,
        "removals": result.removals,
        "skipped": result.skipped,
        "unlabelled": result.unlabelled,
        "chunks": result.chunks,
        "send_failed": result.send_failed,
        "clock_skew_s": None if result.clock_skew is None else result.clock_skew.total_seconds(),
    }


def chunk_summary(result: ChunkResult, *, attempt: int) -> dict[str, Any]:
    """The chunk's counts; raises ChunkIncompleteError when a row failed."""
    counts = Counter(o.status for o in result.outcomes)
    for status, count in counts.items():
        metrics.add_metric(name=f"Rows{status.capitalize()}", unit=MetricUnit.Count, value=count)
    failed = {o.label_hash: o.reason or "failed" for o in result.outcomes if o.status == "failed"}
    if failed:
        raise ChunkIncompleteError(result.chunk_id, failed, attempt=attempt, final=result.final)
    return {"run_id": result.run_id, "chunk_id": result.chunk_id, "counts": dict(counts)}


def finalize_summary(result: FinalizeResult) -> dict[str, Any]:
    """The run's summary; raises FinalizeBusyError when another finalizer holds the run. An "incomplete"
    run is not an error: the request is dropped, and the worker that records the last chunk asks again."""
    if result.status == "busy":
        raise FinalizeBusyError(result.project_hash, result.run_id)
    if result.status == "incomplete":
        metrics.add_metric(name="EarlyFinalizeRequests", unit=MetricUnit.Count, value=1)
    if result.status == "finalized":
        metrics.add_metric(name="RunsFinalized", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="GapsOpen", unit=MetricUnit.Count, value=result.gaps_open)
        metrics.add_metric(name=SNAPSHOTS_OWED_METRIC, unit=MetricUnit.Count, value=result.snapshots_owed)
    return {
        "project_hash": result.project_hash,
        "run_id": result.run_id,
        "status": result.status,
        "watermark_before": _iso(result.watermark_before),
        "watermark_after": _iso(result.watermark_after),
        "counts": result.counts,
        "gaps_open": result.gaps_open,
        "manifest_key": result.manifest_key,
        "snapshots": [s.snapshot_id for s in result.snapshots],
        "snapshots_owed": result.snapshots_owed,
        "errors": list(result.errors),
        "chunks_pending": result.chunks_pending,
    }
