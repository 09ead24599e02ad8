"""The adapters one mirror run talks to, bundled so the planner, worker and finalizer take one argument."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from encord_mirror.domain.ports import (
    EventSink,
    LabelSource,
    ObjectStore,
    RunRecorder,
    SnapshotBuilder,
    StateStore,
    WorkQueue,
)


@dataclass(frozen=True, slots=True)
class MirrorDeps:
    source: LabelSource
    lake: ObjectStore
    state: StateStore
    queue: WorkQueue
    events: EventSink
    snapshots: SnapshotBuilder | None
    clock: Callable[[], datetime]  # aware UTC "now"
    # What every run also keeps in the lake (change log, annotations table): see `lake_recorders`.
    recorders: Sequence[RunRecorder] = ()
