"""Unit-test fixtures: the fake Encord, a settable clock, and the real local adapters on tmp_path."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import PROJECT, Clock, FakeSource, RecordingEvents, RecordingQueue, RecordingSnapshots

from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.local_sync import SyncSummary, run_local_sync


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not open a socket."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unit tests must not open sockets")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source(clock: Clock) -> FakeSource:
    return FakeSource(clock=clock)


@pytest.fixture
def lake(tmp_path: Path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore(tmp_path / "state.db")
    yield store
    store.close()


@pytest.fixture
def config() -> MirrorConfig:
    return MirrorConfig(projects=(PROJECT,))


class Mirror:
    """Run syncs the way the CLI does (run_local_sync), against the fake Encord and a local lake."""

    def __init__(self, source: FakeSource, lake: LocalLake, state: SqliteStateStore, clock: Clock) -> None:
        self.source, self.lake, self.state, self.clock = source, lake, state, clock

    def sync(
        self, config: MirrorConfig | None = None, *, full: bool = False, workers: int = 2
    ) -> SyncSummary:
        cfg = config or MirrorConfig(projects=(PROJECT,))
        return run_local_sync(
            cfg, self.source, self.lake, self.state, workers=workers, full=full, clock=self.clock
        )

    def label_keys(self) -> list[str]:
        return list(self.lake.list_keys("labels/"))

    def snapshot(self) -> dict[str, bytes]:
        """Every label object's bytes, by key."""
        out = {}
        for key in self.label_keys():
            stored = self.lake.get(key)
            assert stored is not None
            out[key] = stored.body
        return out


@pytest.fixture
def mirror(source: FakeSource, lake: LocalLake, state: SqliteStateStore, clock: Clock) -> Mirror:
    return Mirror(source, lake, state, clock)


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def snapshots() -> RecordingSnapshots:
    return RecordingSnapshots()


@pytest.fixture
def events() -> RecordingEvents:
    return RecordingEvents()


@pytest.fixture
def deps(
    source: FakeSource,
    lake: LocalLake,
    state: SqliteStateStore,
    queue: RecordingQueue,
    events: RecordingEvents,
    snapshots: RecordingSnapshots,
    clock: Clock,
) -> MirrorDeps:
    """The domain's dependencies with a queue that only records (tests drive the worker by hand)."""
    return MirrorDeps(
        source=source, lake=lake, state=state, queue=queue, events=events, snapshots=snapshots, clock=clock
    )
