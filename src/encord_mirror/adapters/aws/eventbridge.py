"""The event sink on EventBridge: one `encord-mirror.snapshot.committed` event per new snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

from encord_mirror.domain.codec import EVENT_SOURCE, SNAPSHOT_DETAIL_TYPE, encode_event_detail
from encord_mirror.domain.models import SendReceipt, SnapshotEvent

PUT_EVENTS_MAX = 10


class EventBridgeSink:
    """EventSink port. Receipts are keyed by event id."""

    def __init__(self, bus_name: str, client: Any) -> None:
        self.bus_name = bus_name
        self._client = client

    def publish(self, events: Sequence[SnapshotEvent]) -> SendReceipt:
        sent: list[str] = []
        failed: dict[str, str] = {}
        for start in range(0, len(events), PUT_EVENTS_MAX):
            batch = list(events[start : start + PUT_EVENTS_MAX])
            entries = [
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": SNAPSHOT_DETAIL_TYPE,
                    "Detail": encode_event_detail(event),
                    "EventBusName": self.bus_name,
                    "Resources": [],
                }
                for event in batch
            ]
            try:
                response = self._client.put_events(Entries=entries)
            except ClientError as error:
                failed.update(
                    {
                        e.event_id: f"{error.response.get('Error', {}).get('Code', '?')}: {error}"
                        for e in batch
                    }
                )
                continue
            # PutEvents answers one entry per input, in order; a failed one carries ErrorCode.
            for event, result in zip(batch, response.get("Entries", []), strict=False):
                if result.get("ErrorCode"):
                    failed[event.event_id] = f"{result['ErrorCode']}: {result.get('ErrorMessage', '')}"
                else:
                    sent.append(event.event_id)
            for event in batch[len(response.get("Entries", [])) :]:
                failed[event.event_id] = "no entry in the PutEvents response"
        return SendReceipt(sent=tuple(sent), failed=failed)
