"""The events the handlers take, as pydantic models (SQS bodies are `Json[...]`, parsed by the
Powertools BatchProcessor). The work and finalize queues' bodies are the codec's `ChunkBody` and
`FinalizeBody`, which `adapters.aws.sqs` encodes."""

from __future__ import annotations

from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from pydantic import BaseModel, ConfigDict, Field, Json

from encord_mirror.domain.codec import ChunkBody, FinalizeBody


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
