"""Events as JSON lines in the lake, at `events/events.jsonl`, one EventBridge-shaped entry a line:

```
{"source": "encord-mirror", "detail-type": "encord-mirror.snapshot.committed", "time": "<ISO 8601 UTC>",
 "detail": {...the builder's detail, "event_id", "snapshot_id", "project_hash", "branch", "stage"}}
```
Lines are appended by compare-and-swap on the object, so concurrent publishers never lose a line; an event
whose id the file already holds (published by a finalizer that died before recording it as sent) is not
appended again, so each event is in the file once. Receipts are keyed by event id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import orjson

from encord_mirror.adapters.local.lake import LocalLake
from encord_mirror.domain.codec import EVENT_SOURCE, SNAPSHOT_DETAIL_TYPE, snapshot_event_detail
from encord_mirror.domain.models import SendReceipt, SnapshotEvent
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError
from encord_mirror.domain.watermark import iso_utc, utc_now

EVENTS_KEY = "events/events.jsonl"
_CAS_TRIES = 20


def event_line(event: SnapshotEvent, now: datetime) -> bytes:
    entry = {
        "source": EVENT_SOURCE,
        "detail-type": SNAPSHOT_DETAIL_TYPE,
        "time": iso_utc(now),
        "detail": snapshot_event_detail(event),
    }
    return orjson.dumps(entry) + b"\n"


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
            # orjson writes `"event_id":"<id>"` without spaces, and ids hold no quote or backslash.
            lines = b"".join(
                event_line(e, now) for e in events if b'"event_id":"%s"' % e.event_id.encode() not in held
            )
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
