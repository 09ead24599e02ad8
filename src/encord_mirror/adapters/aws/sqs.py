"""The work queue on SQS: one message per chunk (hashes and their listing), sent in batches of 10.

The message bodies are a contract between the planner, the worker and the finalizer, spelled once:
`domain.codec.ChunkBody` and `FinalizeBody` (the Lambda handlers parse them as `Json[...]` of these).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from encord_mirror.domain.codec import encode_chunk, encode_finalize
from encord_mirror.domain.models import ChunkMessage, SendReceipt

SQS_BATCH_MAX = 10
# SendMessageBatch caps the sum of the bodies (256 KiB on older queues, 1 MiB now): stay under the
# older limit, so a batch of ten 1000-hash chunks splits instead of failing as a whole.
SQS_BATCH_BYTES = 250_000


def _batches(bodies: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    batches: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    size = 0
    for chunk_id, body in bodies:
        length = len(body.encode())
        if current and (len(current) == SQS_BATCH_MAX or size + length > SQS_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append((chunk_id, body))
        size += length
    if current:
        batches.append(current)
    return batches


class SqsWorkQueue:
    """WorkQueue port: chunk messages on the work queue, run ids on the finalize queue (standard queues:
    duplicates are harmless because chunks are idempotent and a run is finalized once)."""

    def __init__(self, work_queue_url: str, finalize_queue_url: str, client: Any) -> None:
        self.work_queue_url = work_queue_url
        self.finalize_queue_url = finalize_queue_url
        self._client = client
        self.batch_calls = 0  # how many SendMessageBatch calls went out (the fan-out tests read it)

    def send_chunks(self, chunks: Sequence[ChunkMessage]) -> SendReceipt:
        sent: list[str] = []
        failed: dict[str, str] = {}
        for batch in _batches([(c.chunk_id, encode_chunk(c)) for c in chunks]):
            # Entry ids must be short and [A-Za-z0-9_-]: the position, mapped back to the chunk id.
            entries = [{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(batch)]
            self.batch_calls += 1
            try:
                response = self._client.send_message_batch(QueueUrl=self.work_queue_url, Entries=entries)
            except ClientError as error:
                reason = f"{error.response.get('Error', {}).get('Code', 'ClientError')}: {error}"
                failed.update({chunk_id: reason for chunk_id, _ in batch})
                continue
            sent.extend(batch[int(ok["Id"])][0] for ok in response.get("Successful", []))
            for bad in response.get("Failed", []):
                failed[batch[int(bad["Id"])][0]] = f"{bad.get('Code', '?')}: {bad.get('Message', '')}"
        return SendReceipt(sent=tuple(sent), failed=failed)

    def request_finalize(self, project_hash: str, run_id: str) -> None:
        # Raises on failure: the worker then reports its record as failed, the chunk is redelivered,
        # finds itself already final and the run complete, and asks again.
        self._client.send_message(
            QueueUrl=self.finalize_queue_url, MessageBody=encode_finalize(project_hash, run_id)
        )
