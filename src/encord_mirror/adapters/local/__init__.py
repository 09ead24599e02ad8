"""The local adapter set: a directory lake, SQLite state, an in-process queue and a JSON-lines event sink."""

from encord_mirror.adapters.local.events import EVENTS_KEY, JsonlEventSink
from encord_mirror.adapters.local.lake import LocalLake, UnsafeKeyError
from encord_mirror.adapters.local.queue import DeadLetter, LocalQueueError, LocalWorkQueue
from encord_mirror.adapters.local.state import SqliteStateStore

__all__ = [
    "EVENTS_KEY",
    "DeadLetter",
    "JsonlEventSink",
    "LocalLake",
    "LocalQueueError",
    "LocalWorkQueue",
    "SqliteStateStore",
    "UnsafeKeyError",
]
