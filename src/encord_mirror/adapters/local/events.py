"""Events as JSON lines in the lake, at `events/events.jsonl`, one line per event as EventBridge delivers
it to a target (its envelope fields; `account` and `region` say it stayed local):

```
{"version": "0", "id": "<uuid4>", "detail-type": "encord-mirror.snapshot.committed",
 "source": "encord-mirror", "account": "000000000000", "time": "2026-12-03T10:00:00Z", "region": "local",
 "resources": [], "detail": {...codec.snapshot_event_detail}}
```
Lines are appended by compare-and-swap on the object, so concurrent publishers never lose a line; an event
whose id the file already holds (published by a finalizer that died before recording it as sent; before
event format 2, under its `event_key`) is not appended again, so each event is in the file once. Receipts
are keyed by event id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import orjson

from encord_mirror.adapters.local.lake import LocalLake
from encord_mirror.domain.codec import EVENT_SOURCE, SNAPSHOT_DETAIL_TYPE, snapshot_event_detail
from encord_mirror.domain.models import SendReceipt, SnapshotEvent
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError
from encord_mirror.domain.watermark import require_utc, utc_now

EVENTS_KEY = "events/events.jsonl"
_CAS_TRIES = 20


LOCAL_ACCOUNT = "000000000000"
LOCAL_REGION = "local"


def event_line(event: SnapshotEvent, now: datetime) -> bytes:
    entry = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": SNAPSHOT_DETAIL_TYPE,
        "source": EVENT_SOURCE,
        "account": LOCAL_ACCOUNT,
        "time": require_utc(now, "now").strftime("%Y-%m-%dT%H:%M:%SZ"),  # EventBridge's: seconds, `Z`
        "region": LOCAL_REGION,
        "resources": [],
        "detail": snapshot_event_detail(event),
    }
    return orjson.dumps(entry) + b"\n"


def _held(event: SnapshotEvent, held: bytes) -> bool:
    # orjson writes `"event_id":"<id>"` without spaces, and ids and keys hold no quote or backslash.
    return any(b'"event_id":"%s"' % i.encode() in held for i in (event.event_id, event.event_key))


class JsonlEventSink:
    def __init__(self, lake: ObjectStore | Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self.lake: ObjectStore = LocalLake(lake) if isinstance(lake, Path) else lake
        self._clock = clock or utc_now

    def publish(self, events: Sequence[SnapshotEvent]) -> SendReceipt:
        if not events:
            return SendReceipt(sent=(), failed={})
        now = self._clock()
        ids = tuple(e.event_id for e in events)
        for _ in range(_CAS_TRIES):
            current = self.lake.get(EVENTS_KEY)
            held = current.body if current is not None else b""
            lines = b"".join(event_line(e, now) for e in events if not _held(e, held))
            if not lines:
                return SendReceipt(sent=ids, failed={})
            try:
                if current is None:
                    self.lake.put(EVENTS_KEY, lines, if_none_match=True, content_type="application/x-ndjson")
                else:
                    self.lake.put(
                        EVENTS_KEY,
                        current.body + lines,
                        if_match=current.etag,
                        content_type="application/x-ndjson",
                    )
            except PreconditionFailedError:
                continue
            return SendReceipt(sent=ids, failed={})
        return SendReceipt(sent=(), failed={i: "events file kept changing; not appended" for i in ids})
