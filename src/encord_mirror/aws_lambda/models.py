"""The events the handlers take, as pydantic models (SQS bodies are `Json[...]`, parsed by the
Powertools BatchProcessor). The bodies mirror what `adapters.aws.sqs` sends."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import BaseModel, ConfigDict, Field, Json

from encord_mirror.domain.codec import chunk_rows_from_json
from encord_mirror.domain.models import ChunkMessage


class ChunkBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    project_hash: str = Field(min_length=1)
    run_id: str = Field(min_length=1)
    chunk_id: str = Field(min_length=1)
    label_hashes: tuple[str, ...] = Field(max_length=1000)
    removals: tuple[str, ...] = ()
    # The planner's listing of `label_hashes` (codec.chunk_rows_to_json); absent in a message of a
    # version that did not carry it: the worker lists those rows again.
    rows: dict[str, Any] | None = None
    strays: tuple[str, ...] = ()

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
            strays=self.strays,
        )


class FinalizeBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    project_hash: str = Field(min_length=1)
    run_id: str = Field(min_length=1)


class SyncRequestBody(BaseModel):
    """What a user sends to the sync-request queue: `{"project_hash": "...", "full": true}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_hash: str = Field(min_length=1)
    full: bool = False


class ChunkRecord(SqsRecordModel):
    body: Json[ChunkBody]


class FinalizeRecord(SqsRecordModel):
    body: Json[FinalizeBody]


class SyncRequestRecord(SqsRecordModel):
    body: Json[SyncRequestBody]


class ScheduleEvent(BaseModel):
    """The EventBridge schedule's event: only its shape is checked; it carries no parameters."""

    source: str = Field(pattern=r"^aws\.(events|scheduler)$")
    detail_type: str = Field(alias="detail-type")
    time: str
