"""In-memory fakes of the ports, type-checked against the Protocols (the `_: Port = Fake()` lines), so
they cannot drift. `FakeSource` is a tiny Encord: rows with branches, stages, edits stamped by its own
(possibly skewed) clock, deletions, unlabelled data units, and the failure modes a bundle can show.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from encord_mirror.domain.models import (
    ChunkMessage,
    LoadedRow,
    LoadResult,
    Partition,
    PartitionChanges,
    ProjectInfo,
    RowMeta,
    RowQuery,
    SendReceipt,
    SnapshotEvent,
    SourceClock,
    Stage,
)
from encord_mirror.domain.ports import EventSink, LabelSource, SnapshotBuilder, WorkQueue

PROJECT = "proj-0001"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ANNOTATE = Stage("5a5a0001-0000-0000-0000-000000000001", "Annotate", "ANNOTATION")
REVIEW = Stage("5a5a0002-0000-0000-0000-000000000002", "Review", "REVIEW")
COMPLETE = Stage("5a5a0003-0000-0000-0000-000000000003", "Complete", "DONE")
CAR, PERSON, WEATHER = "feat-car", "feat-person", "feat-weather"
# The features the fake rows use, as `OntologyStructure.to_dict()` lists them (only the hashes matter here).
ONTOLOGY = {
    "objects": [{"featureNodeHash": CAR}, {"featureNodeHash": PERSON}],
    "classifications": [{"featureNodeHash": WEATHER}],
}


class Clock:
    """A settable UTC clock shared by the mirror and the fake Encord."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def labels_dict(
    label_hash: str, data_hash: str, branch: str, edited: datetime, version: int
) -> dict[str, Any]:
    """A `to_encord_dict()`-shaped image row: one car, one person, one weather classification."""
    return {
        "label_hash": label_hash,
        "branch_name": branch,
        "created_at": "Sun, 01 Nov 2026 12:00:00 UTC",
        "last_edited_at": edited.strftime("%a, %d %b %Y %H:%M:%S UTC"),
        "data_hash": data_hash,
        "dataset_hash": "ds-1",
        "dataset_title": "Fake dataset",
        "data_title": f"{data_hash}.jpg",
        "data_type": "image",
        "annotation_task_status": None,
        "is_shadow_data": False,
        "object_answers": {
            f"obj-car-{label_hash}": {"objectHash": f"obj-car-{label_hash}", "classifications": []},
            f"obj-person-{label_hash}": {"objectHash": f"obj-person-{label_hash}", "classifications": []},
        },
        "classification_answers": {
            f"cls-{label_hash}": {
                "classificationHash": f"cls-{label_hash}",
                "featureHash": WEATHER,
                "classifications": [],
                "range": [[0, 0]],
            }
        },
        "object_actions": {},
        "label_status": "LABELLED",
        "data_units": {
            data_hash: {
                "data_hash": data_hash,
                "data_title": f"{data_hash}.jpg",
                "data_type": "image/jpeg",
                "data_sequence": 0,
                "labels": {
                    "objects": [
                        {
                            "objectHash": f"obj-car-{label_hash}",
                            "featureHash": CAR,
                            "shape": "bounding_box",
                            "boundingBox": {"x": 0.1, "y": 0.1, "w": 0.01 * version, "h": 0.2},
                        },
                        {
                            "objectHash": f"obj-person-{label_hash}",
                            "featureHash": PERSON,
                            "shape": "bounding_box",
                            "boundingBox": {"x": 0.5, "y": 0.5, "w": 0.1, "h": 0.1},
                        },
                    ],
                    "classifications": [],
                },
            }
        },
        "spaces": {},
    }


@dataclass
class FakeRow:
    data_hash: str
    branch: str
    label_hash: str | None
    last_edited_at: datetime | None
    stage: Stage | None
    task_status: str | None = "ASSIGNED"
    version: int = 1

    def meta(self, project_hash: str) -> RowMeta:
        return RowMeta(
            project_hash=project_hash,
            data_hash=self.data_hash,
            branch=self.branch,
            label_hash=self.label_hash,
            last_edited_at=self.last_edited_at,
            stage_uuid=self.stage.uuid if self.stage else None,
            stage_title=self.stage.title if self.stage else None,
            task_status=self.task_status,
            data_title=f"{self.data_hash}.jpg",
            data_type="IMAGE",
        )


@dataclass
class FakeSource:
    """Encord for one project. `strict`: whether `edited_after/before` compare strictly (> / <) or
    inclusively; `skew`: how far Encord's clock is behind ours when it stamps an edit."""

    clock: Clock = field(default_factory=Clock)
    project_hash: str = PROJECT
    strict: bool = True
    skew: timedelta = timedelta(0)
    rows: dict[tuple[str, str], FakeRow] = field(default_factory=dict)  # (data_hash, branch) -> row
    poison: set[str] = field(default_factory=set)  # rows whose labels cannot be serialised
    dropped: set[str] = field(default_factory=set)  # rows the bundle response leaves out
    failing: dict[str, str] = field(default_factory=dict)  # rows the source reports as failed
    load_error: Exception | None = None  # every load raises this (a 429 storm)
    list_error: Exception | None = None  # every listing raises this (an outage)
    on_load: Callable[[], None] | None = None  # runs as a bundle starts: "meanwhile, in Encord..."
    list_calls: list[RowQuery] = field(default_factory=list)
    load_calls: list[tuple[str, ...]] = field(default_factory=list)
    hidden_until: dict[str, datetime] = field(default_factory=dict)  # commits not yet visible to listings
    tells_time: bool = False  # server_time() answers with Encord's clock (`stamp()`), as a Date header would
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- editing Encord (what annotators do) --
    def add(
        self, n: int, *, stage: Stage | None = ANNOTATE, branch: str = "main", start: int = 0
    ) -> list[str]:
        hashes = []
        for i in range(start, start + n):
            data_hash = f"data-{i:04d}"
            label_hash = f"label-{i:04d}" if branch == "main" else f"label-{i:04d}-{branch}"
            self.rows[(data_hash, branch)] = FakeRow(data_hash, branch, label_hash, self.stamp(), stage)
            hashes.append(label_hash)
        return hashes

    def add_unlabelled(self, data_hash: str, *, branch: str = "main") -> None:
        self.rows[(data_hash, branch)] = FakeRow(
            data_hash, branch, None, None, ANNOTATE, task_status="QUEUED"
        )

    def stamp(self) -> datetime:
        return self.clock() - self.skew

    def row(self, label_hash: str) -> FakeRow:
        return next(r for r in self.rows.values() if r.label_hash == label_hash)

    def edit(self, label_hash: str, *, at: datetime | None = None) -> FakeRow:
        row = self.row(label_hash)
        row.version += 1
        row.last_edited_at = at if at is not None else self.stamp()
        return row

    def move(self, label_hash: str, stage: Stage) -> None:
        self.row(label_hash).stage = stage  # a stage move does not touch last_edited_at

    def delete(self, label_hash: str) -> None:
        key = next(k for k, r in self.rows.items() if r.label_hash == label_hash)
        del self.rows[key]

    # -- the LabelSource port --
    def server_time(self) -> SourceClock:
        if not self.tells_time:
            return SourceClock(None, "the fake Encord does not tell the time")
        return SourceClock(self.stamp().replace(microsecond=0))

    def project_info(self, project_hash: str) -> ProjectInfo:
        return ProjectInfo(project_hash, "Fake project", "onto-1", ONTOLOGY, (ANNOTATE, REVIEW, COMPLETE))

    def list_branches(self, project_hash: str) -> tuple[str, ...]:
        return tuple(sorted({"main", *(r.branch for r in self.rows.values() if r.label_hash)}))

    def list_rows(self, project_hash: str, query: RowQuery) -> list[RowMeta]:
        with self._lock:
            self.list_calls.append(query)
        if self.list_error is not None:
            raise self.list_error
        assert project_hash == self.project_hash
        for value in (query.edited_after, query.edited_before):
            assert value is None or value.tzinfo is not None, "naive datetime sent to Encord"
        out = []
        for row in sorted(self.rows.values(), key=lambda r: (r.data_hash, r.branch)):
            if not self._branch_selected(row.branch, query):
                continue
            if query.label_hashes is not None and row.label_hash not in query.label_hashes:
                continue
            if query.data_hashes is not None and row.data_hash not in query.data_hashes:
                continue
            dated = query.edited_after is not None or query.edited_before is not None
            if dated and (row.last_edited_at is None or not self._in_window(row, query)):
                continue
            if row.label_hash in self.hidden_until and self.clock() < self.hidden_until[row.label_hash]:
                continue
            out.append(row.meta(project_hash))
        return out

    def _branch_selected(self, branch: str, query: RowQuery) -> bool:
        if query.branches.all_branches:
            return True
        return branch == (query.branches.branch_name or "main")

    def _in_window(self, row: FakeRow, query: RowQuery) -> bool:
        t = row.last_edited_at
        assert t is not None
        if query.edited_after is not None and (
            t <= query.edited_after if self.strict else t < query.edited_after
        ):
            return False
        return not (
            query.edited_before is not None
            and (t >= query.edited_before if self.strict else t > query.edited_before)
        )

    def load_rows(self, project_hash: str, label_hashes: Sequence[str], *, bundle_size: int) -> LoadResult:
        assert len(label_hashes) <= bundle_size
        with self._lock:
            self.load_calls.append(tuple(label_hashes))
        if self.on_load is not None:
            self.on_load()
        if self.load_error is not None:
            raise self.load_error
        live = {r.label_hash: r for r in self.rows.values() if r.label_hash}
        loaded, failed, gone = [], {}, []
        for h in label_hashes:
            row = live.get(h)
            if row is None:
                gone.append(h)
            elif h in self.failing:
                failed[h] = self.failing[h]
            elif h in self.dropped:
                continue
            else:
                assert row.last_edited_at is not None
                labels = labels_dict(h, row.data_hash, row.branch, row.last_edited_at, row.version)
                if h in self.poison:
                    labels["object_answers"] = {"bad": object()}  # not JSON: a corrupt row
                loaded.append(LoadedRow(replace(row).meta(project_hash), labels))
        return LoadResult(loaded=tuple(loaded), failed=failed, gone=tuple(gone))

    def load_listed(self, project_hash: str, rows: Sequence[RowMeta], *, bundle_size: int) -> LoadResult:
        """Like Encord: the content (and its edit time) is the current one; the stage and task status
        are the planner's listing, and a row deleted since is gone."""
        planned = {m.label_hash: m for m in rows if m.label_hash}
        result = self.load_rows(project_hash, list(planned), bundle_size=bundle_size)
        loaded = tuple(
            LoadedRow(
                replace(
                    r.meta,
                    stage_uuid=planned[h].stage_uuid,
                    stage_title=planned[h].stage_title,
                    task_status=planned[h].task_status,
                ),
                r.labels,
            )
            for r in result.loaded
            if (h := r.meta.label_hash) is not None
        )
        return replace(result, loaded=loaded)

    @property
    def rows_initialised(self) -> int:
        return sum(len(c) for c in self.load_calls)


class RecordingQueue:
    """A WorkQueue that only records what the planner sends (no processing)."""

    def __init__(self, *, refuse_all: bool = False) -> None:
        self.batches: list[list[ChunkMessage]] = []
        self.finalize_requests: list[tuple[str, str]] = []
        self.refuse_all = refuse_all

    @property
    def chunks(self) -> list[ChunkMessage]:
        return [c for batch in self.batches for c in batch]

    def send_chunks(self, chunks: Sequence[ChunkMessage]) -> SendReceipt:
        self.batches.append(list(chunks))
        refused = {c.chunk_id: "throttled" for c in chunks if self.refuse_all}
        return SendReceipt(
            sent=tuple(c.chunk_id for c in chunks if c.chunk_id not in refused), failed=refused
        )

    def request_finalize(self, project_hash: str, run_id: str) -> None:
        self.finalize_requests.append((project_hash, run_id))


class RecordingSnapshots:
    """A SnapshotBuilder that records each partition it was asked to refresh or check. `drifted`: what
    `drift` reports a partition's latest snapshot lacks (the others are exact)."""

    def __init__(
        self, fail: bool = False, drifted: Sequence[PartitionChanges] = (), outdated: Sequence[Partition] = ()
    ) -> None:
        self.calls: list[tuple[PartitionChanges, str]] = []
        self.checked: list[tuple[Partition, dict[str, str], bool]] = []
        self.fail = fail
        self.drifted = {c.partition: c for c in drifted}
        self.latest: set[Partition] = set()  # the partitions it made a snapshot of
        self.stale = list(outdated)  # partitions of an older snapshot format, reported once
        self.prunes: list[tuple[str, int | None, int | None]] = []  # (project, keep, keep_days) asked

    def outdated(self, project_hash: str) -> list[Partition]:
        found = [p for p in self.stale if p.project_hash == project_hash]
        self.stale = [p for p in self.stale if p.project_hash != project_hash]
        return found

    def refresh(
        self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
    ) -> SnapshotEvent | None:
        self.calls.append((changes, run_id))
        if self.fail:
            raise RuntimeError("snapshot store unavailable")
        p = changes.partition
        self.latest.add(p)
        return SnapshotEvent(
            f"{run_id}-{p.stage}", p.project_hash, p.branch, p.stage, {"rows": len(changes.upserted)}
        )

    def drift(
        self, partition: Partition, rows: Mapping[str, str], *, recover: bool
    ) -> tuple[PartitionChanges, SnapshotEvent | None]:
        self.checked.append((partition, dict(rows), recover))
        return self.drifted.get(partition, PartitionChanges(partition, (), ())), None

    def prune(
        self, project_hash: str, *, keep: int | None, keep_days: int | None, now: datetime
    ) -> list[tuple[Partition, str]]:
        self.prunes.append((project_hash, keep, keep_days))
        return []

    def partitions(self, project_hash: str) -> set[Partition]:
        return {p for p in self.latest if p.project_hash == project_hash}


class RecordingEvents:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[SnapshotEvent] = []
        self.fail = fail

    def publish(self, events: Sequence[SnapshotEvent]) -> SendReceipt:
        if self.fail:
            raise ConnectionError("event bus down")
        self.published.extend(events)
        return SendReceipt(sent=tuple(e.event_id for e in events), failed={})


_source: LabelSource = FakeSource()
_queue: WorkQueue = RecordingQueue()
_snapshots: SnapshotBuilder = RecordingSnapshots()
_events: EventSink = RecordingEvents()
