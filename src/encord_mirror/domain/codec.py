"""JSON shapes shared by the adapters, so a run record, a chunk's outcomes or a snapshot event reads
the same whichever store or sink holds it (times are ISO 8601 UTC: `watermark.iso_utc` writes them,
`watermark.parse_time` reads them). The `encode_*` / `decode_*` pairs are the bytes the state stores
keep; `ChunkBody` and `FinalizeBody` are the queues' messages. Adapters hold no shapes of their own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from encord_mirror.domain.limits import MAX_BUNDLE_SIZE
from encord_mirror.domain.models import (
    ChunkMessage,
    JsonDict,
    Media,
    RowMeta,
    RowOutcome,
    RunRecord,
    SnapshotEvent,
)
from encord_mirror.domain.watermark import iso_utc, parse_time

EVENT_SOURCE = "encord-mirror"
SNAPSHOT_DETAIL_TYPE = "encord-mirror.snapshot.committed"
# The event detail's format (README, "Events"; schemas/event.schema.json). 1: no `format_version`, and
# `event_id` was what `event_key` is now; 2: `format_version`, the short `event_id`, `event_key`,
# `stage_uuid` and `stage_title`.
EVENT_FORMAT_VERSION = 2


def snapshot_event_detail(event: SnapshotEvent) -> JsonDict:
    """The `detail` of a "snapshot committed" event: the builder's detail, then the event's identity
    (`event_id`, the key a consumer dedupes on: a finalizer that dies between publishing an event and
    recording it sent publishes it again on its retry). An event recorded before its builder named the
    stage's uuid and title (an outbox entry of an older release) has them null."""
    return {
        "format_version": EVENT_FORMAT_VERSION,
        "stage_uuid": None,
        "stage_title": None,
        **event.detail,
        "event_id": event.event_id,
        "event_key": event.event_key,
        "snapshot_id": event.snapshot_id,
        "project_hash": event.project_hash,
        "branch": event.branch,
        "stage": event.stage,
    }


def event_to_json(event: SnapshotEvent) -> JsonDict:
    """A snapshot event as the state store's outbox keeps it until it is sent."""
    return {
        "snapshot_id": event.snapshot_id,
        "project_hash": event.project_hash,
        "branch": event.branch,
        "stage": event.stage,
        "detail": event.detail,
    }


def event_from_json(data: JsonDict) -> SnapshotEvent:
    return SnapshotEvent(
        snapshot_id=data["snapshot_id"],
        project_hash=data["project_hash"],
        branch=data["branch"],
        stage=data["stage"],
        detail=data["detail"],
    )


def run_to_json(run: RunRecord) -> JsonDict:
    return {
        "project_hash": run.project_hash,
        "run_id": run.run_id,
        "signpost": iso_utc(run.signpost),
        "previous_watermark": iso_utc(run.previous_watermark),
        "full": run.full,
        "chunk_ids": list(run.chunk_ids),
        "unlabelled": list(run.unlabelled),
        "started_at": iso_utc(run.started_at),
        "filters": run.filters,
    }


def run_from_json(data: JsonDict) -> RunRecord:
    signpost = parse_time(data["signpost"])
    assert signpost is not None, "a run record always has its signpost"
    return RunRecord(
        project_hash=data["project_hash"],
        run_id=data["run_id"],
        signpost=signpost,
        previous_watermark=parse_time(data["previous_watermark"]),
        full=bool(data["full"]),
        chunk_ids=tuple(data["chunk_ids"]),
        unlabelled=tuple(data["unlabelled"]),
        started_at=parse_time(data["started_at"]),
        filters=data.get("filters"),
    )


def outcomes_to_json(outcomes: Sequence[RowOutcome]) -> list[list[Any]]:
    """Positional rows, not objects: a 1000-row chunk stays small."""
    return [
        [o.label_hash, o.status, o.key, o.old_key, iso_utc(o.last_edited_at), o.sha256, o.reason]
        for o in outcomes
    ]


def outcomes_from_json(rows: Sequence[Sequence[Any]]) -> tuple[RowOutcome, ...]:
    return tuple(
        RowOutcome(
            label_hash=label_hash,
            status=status,
            key=key,
            old_key=old_key,
            last_edited_at=parse_time(edited),
            sha256=sha,
            reason=reason,
        )
        for label_hash, status, key, old_key, edited, sha, reason in rows
    )


def chunk_rows_to_json(rows: Sequence[RowMeta]) -> JsonDict:
    """A chunk's listing as its message carries it: positional items in the order of the chunk's label
    hashes (which the message holds once); what rows share (branch, stage, task status, data type) in a
    table of the few distinct combinations of a chunk. The data title is left out (the initialise
    response has it). About 110 bytes a row besides its label hash."""
    groups: dict[tuple[str, str | None, str | None, str | None, str], int] = {}
    items: list[list[Any]] = []
    for row in rows:
        shared = (row.branch, row.stage_uuid, row.stage_title, row.task_status, row.data_type)
        item: list[Any] = [row.data_hash, iso_utc(row.last_edited_at), groups.setdefault(shared, len(groups))]
        media = row.media
        if media is not None:
            item += [media.number_of_frames, media.frames_per_second, media.duration, media.is_shadow_data]
        items.append(item)
    return {"groups": [list(g) for g in groups], "items": items}


def chunk_rows_from_json(
    data: JsonDict, project_hash: str, label_hashes: Sequence[str]
) -> tuple[RowMeta, ...]:
    groups = [tuple(g) for g in data["groups"]]
    items = data["items"]
    if len(items) != len(label_hashes):
        raise ValueError(f"a chunk carries {len(items)} listed rows for {len(label_hashes)} label hashes")
    rows = []
    for label_hash, (data_hash, edited, group, *media) in zip(label_hashes, items, strict=True):
        branch, stage_uuid, stage_title, task_status, data_type = groups[group]
        rows.append(
            RowMeta(
                project_hash=project_hash,
                data_hash=data_hash,
                branch=branch,
                label_hash=label_hash,
                last_edited_at=parse_time(edited),
                stage_uuid=stage_uuid,
                stage_title=stage_title,
                task_status=task_status,
                data_title="",
                data_type=data_type,
                media=Media(*media) if media else None,
            )
        )
    return tuple(rows)


class ChunkBody(BaseModel):
    """A chunk message on the work queue (SQS: the message body, a contract between the planner and the
    worker): `encode_chunk` writes it, the worker's handler parses it (`aws_lambda.models.ChunkRecord`)
    and takes its `message()`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_hash: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    chunk_id: str = Field(min_length=1)
    label_hashes: tuple[str, ...] = Field(max_length=MAX_BUNDLE_SIZE)
    removals: tuple[str, ...] = ()
    # The planner's listing of `label_hashes` (chunk_rows_to_json); absent in a message of a version
    # that did not carry it: the worker lists those rows again.
    rows: dict[str, Any] | None = None
    # Stray copies to delete (ChunkMessage.strays); absent when there are none.
    strays: tuple[str, ...] | None = None

    def message(self) -> ChunkMessage:
        return ChunkMessage(
            project_hash=self.project_hash,
            run_id=self.run_id,
            chunk_id=self.chunk_id,
            label_hashes=self.label_hashes,
            removals=self.removals,
            rows=()
            if self.rows is None
            else chunk_rows_from_json(self.rows, self.project_hash, self.label_hashes),
            strays=self.strays or (),
        )


class FinalizeBody(BaseModel):
    """A finalize request on the finalize queue: `encode_finalize` writes it, the finalizer's handler
    parses it (`aws_lambda.models.FinalizeRecord`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_hash: str = Field(min_length=1)
    run_id: str = Field(min_length=1)


def encode_chunk(chunk: ChunkMessage) -> str:
    # Built unvalidated: the planner's chunks are within the limits, and sending never refused one.
    body = ChunkBody.model_construct(
        project_hash=chunk.project_hash,
        run_id=chunk.run_id,
        chunk_id=chunk.chunk_id,
        label_hashes=chunk.label_hashes,
        removals=chunk.removals,
        rows=chunk_rows_to_json(chunk.rows) if chunk.rows else None,
        strays=chunk.strays or None,
    )
    return orjson.dumps(body.model_dump(exclude_none=True)).decode()


def encode_finalize(project_hash: str, run_id: str) -> str:
    return orjson.dumps(
        FinalizeBody.model_construct(project_hash=project_hash, run_id=run_id).model_dump()
    ).decode()


def encode_run(run: RunRecord) -> bytes:
    return orjson.dumps(run_to_json(run))


def decode_run(raw: bytes) -> RunRecord:
    return run_from_json(orjson.loads(raw))


def encode_outcomes(outcomes: Sequence[RowOutcome]) -> bytes:
    return orjson.dumps(outcomes_to_json(outcomes))


def decode_outcomes(raw: bytes) -> tuple[RowOutcome, ...]:
    return outcomes_from_json(orjson.loads(raw))


def encode_event(event: SnapshotEvent) -> bytes:
    return orjson.dumps(event_to_json(event))


def decode_event(raw: bytes | str) -> SnapshotEvent:
    return event_from_json(orjson.loads(raw))


def encode_event_detail(event: SnapshotEvent) -> str:
    """The `detail` of a "snapshot committed" event as EventBridge's PutEvents takes it (a JSON string)."""
    return orjson.dumps(snapshot_event_detail(event)).decode()
