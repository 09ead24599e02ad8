"""Value objects shared by the domain and its adapters."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

JsonDict = dict[str, Any]
MAIN_BRANCH = "main"  # Encord's main label branch: it always exists
# An event id is usable as a Step Functions execution name (and an EventBridge, SQS or S3 key part).
EVENT_ID_MAX = 80
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class BranchSelection:
    """Which consensus branches to mirror: `main` only (default), one named branch, or all of them."""

    mode: Literal["main", "named", "all"] = "main"
    name: str | None = None

    @property
    def branch_name(self) -> str | None:
        """The SDK's `branch_name` argument (None for `main` and for all branches)."""
        return self.name if self.mode == "named" else None

    @property
    def all_branches(self) -> bool:
        return self.mode == "all"

    def includes(self, branch: str) -> bool:
        """Whether rows of `branch` belong in the lake under this selection."""
        return self.mode == "all" or branch == (self.name if self.mode == "named" else MAIN_BRANCH)


@dataclass(frozen=True, slots=True)
class Stage:
    uuid: str
    title: str
    stage_type: str


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    project_hash: str
    title: str
    ontology_hash: str
    ontology: JsonDict  # OntologyStructure.to_dict()
    stages: tuple[Stage, ...]


@dataclass(frozen=True, slots=True)
class RowMeta:
    """One item of `list_label_rows_v2`: a (data unit, branch) and where it stands in the workflow.

    `label_hash` is None for a data unit that has no label row on that branch: such a row is
    recorded, never initialised (initialising it would create a label row in Encord).
    All datetimes are timezone-aware UTC.
    """

    project_hash: str
    data_hash: str
    branch: str
    label_hash: str | None
    last_edited_at: datetime | None
    stage_uuid: str | None
    stage_title: str | None
    task_status: str | None
    data_title: str
    data_type: str
    # What the source needs to initialise the row from this listing alone (None: list it again first).
    media: Media | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """The listing's media fields a label row's content depends on (the initialise response lacks them):
    `to_encord_dict()` writes `data_fps` and `data_duration` from them, and `is_shadow_data`."""

    number_of_frames: int
    frames_per_second: float | None = None
    duration: float | None = None
    is_shadow_data: bool = False


@dataclass(frozen=True, slots=True)
class RowQuery:
    """A label-row listing, filtered on the server. Datetimes must be timezone-aware UTC."""

    branches: BranchSelection = field(default_factory=BranchSelection)
    edited_after: datetime | None = None
    edited_before: datetime | None = None
    label_hashes: tuple[str, ...] | None = None
    data_hashes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class LoadedRow:
    meta: RowMeta
    labels: JsonDict  # LabelRowV2.to_encord_dict(), unchanged


@dataclass(frozen=True, slots=True)
class SourceClock:
    """Encord's clock as one of its answers gave it: `date` is that answer's `Date` header (whole seconds,
    truncated), None when it could not be read (`problem` says why)."""

    date: datetime | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one bundled initialisation gave back.

    `failed` maps label_hash -> reason for rows the SDK left uninitialised or could not serialise;
    `gone` lists requested label hashes that the listing no longer returns (deleted in Encord).
    """

    loaded: tuple[LoadedRow, ...]
    failed: dict[str, str]
    gone: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoredObject:
    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class LakeBinding:
    """The lake a state belongs to: its id (from the lake's `_lake.json`), where it was last seen, and the
    projects synced with this state."""

    lake_id: str
    location: str
    projects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a project: the run id that owns the lease, since when, and when it lapses on its own.
    `holder`: the process that took it (`pid N on HOST`), where the state store records one (SQLite)."""

    project_hash: str
    owner: str
    acquired_at: datetime | None  # None for a lease taken by a version that did not record it
    expires_at: datetime
    holder: str | None = None


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """The row index: where the lake holds a (label_hash, branch) now, and which version.

    `etag` is the lake object's etag after our write: the next write of this row is conditional on it.
    `sha256` covers the object's content (labels and workflow metadata, not the sync time), so unchanged
    content is skipped. `task_status` and `stage_uuid` are what the lake object says: a task-status change
    moves neither `last_edited_at` nor the key, so a reconciling run compares the status to see it.
    """

    project_hash: str
    label_hash: str
    data_hash: str
    branch: str
    key: str
    partition_stage: str
    last_edited_at: datetime | None
    sha256: str
    etag: str
    synced_at: datetime
    task_status: str | None = None
    stage_uuid: str | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A row that failed for good in some run: it holds the watermark back until it is synced."""

    project_hash: str
    label_hash: str
    last_edited_at: datetime | None
    run_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunFailure:
    """A sync of the project that ended without finalizing its run (Encord failed mid-listing, a step
    crashed, it was interrupted): kept until a later run of the project is finalized, so `status` can say
    the lake is not in step although the watermark looks recent. `run_id` is None when no run began."""

    project_hash: str
    run_id: str | None
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    """One unit of fan-out work: hashes and the planner's listing of them, never label payloads (SQS
    caps a message at 256 KB: `codec.chunk_rows_to_json` keeps 1000 rows well under it).

    `rows`, when given, is the listing of `label_hashes` in the same order: the worker initialises them
    from it without listing them again."""

    project_hash: str
    run_id: str
    chunk_id: str  # stable across planner re-sends: the idempotency key
    label_hashes: tuple[str, ...]
    removals: tuple[str, ...] = ()  # label hashes no longer live in Encord: remove from the current view
    rows: tuple[RowMeta, ...] = ()
    # Keys of row objects that must not be in the lake (a reconciling run's `lakecheck`): delete them.
    strays: tuple[str, ...] = ()


# The reason of a "removed" outcome that deleted a stray copy (`ChunkMessage.strays`), not a row: the row,
# if Encord still has it, lives at its own key.
STRAY_COPY = "a copy outside the row's partition, or of a row not mirrored"


@dataclass(frozen=True, slots=True)
class RowOutcome:
    label_hash: str
    status: Literal["written", "unchanged", "moved", "removed", "failed", "stale"]
    key: str | None = None
    old_key: str | None = None
    last_edited_at: datetime | None = None
    sha256: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkResult:
    run_id: str
    chunk_id: str
    outcomes: tuple[RowOutcome, ...]
    final: bool  # True once no further delivery will retry this chunk (success or last attempt)


@dataclass(frozen=True, slots=True)
class RunRecord:
    project_hash: str
    run_id: str
    signpost: datetime
    previous_watermark: datetime | None
    full: bool
    chunk_ids: tuple[str, ...]
    unlabelled: tuple[str, ...] = ()  # data hashes with no label row on a mirrored branch
    started_at: datetime | None = None
    filters: str | None = None  # MirrorConfig.filters_fingerprint() the run was planned with


@dataclass(frozen=True, slots=True)
class RunProgress:
    done: int
    total: int

    @property
    def complete(self) -> bool:
        return self.done >= self.total


@dataclass(frozen=True, slots=True)
class SnapshotEvent:
    """A committed COCO snapshot, announced once (detail-type `encord-mirror.snapshot.committed`)."""

    snapshot_id: str
    project_hash: str
    branch: str
    stage: str
    detail: JsonDict

    @property
    def event_key(self) -> str:
        """`<project>/<branch, percent-encoded>/<stage>/<snapshot_id>`: the event in full (unique per event:
        the snapshots a run commits in several partitions share their snapshot id). It was the event id
        before event format 2; the state stores still know it, to migrate what they recorded under it."""
        return f"{self.project_hash}/{quote(self.branch, safe='')}/{self.stage}/{self.snapshot_id}"

    @property
    def event_id(self) -> str:
        """`<snapshot_id>_<stage>_<16 hex of sha256(event_key)>`, at most 80 characters of
        `[A-Za-z0-9_-]` (the snapshot id's `.` is a `-`; a long stage value is cut, the hash keeps the id
        unique): a Step Functions execution name. Deterministic per committed snapshot, so an event sent
        again has the same id. The outbox key, the sinks' receipt key, and what a consumer dedupes on."""
        digest = hashlib.sha256(self.event_key.encode()).hexdigest()[:16]
        snapshot = _NOT_ID.sub("-", self.snapshot_id)[:32]
        room = EVENT_ID_MAX - len(snapshot) - len(digest) - 2
        stage = _NOT_ID.sub("-", self.stage)[:room].rstrip("-")
        return f"{snapshot}_{stage}_{digest}"


@dataclass(frozen=True, slots=True)
class SendReceipt:
    sent: tuple[str, ...]
    failed: dict[str, str]  # id -> reason


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    """A (project, branch, stage) partition of the lake; `stage` is the encoded partition value."""

    project_hash: str
    branch: str
    stage: str


@dataclass(frozen=True, slots=True)
class PartitionChanges:
    """What a run changed in one partition: label hashes now live there (written, moved in, or
    rewritten) and label hashes that left it (moved out or removed)."""

    partition: Partition
    upserted: tuple[str, ...]
    removed: tuple[str, ...]
    # Check every row of the partition, not only these: an earlier snapshot of it failed (see SnapshotDebt).
    rescan: bool = False


@dataclass(frozen=True, slots=True)
class SnapshotDebt:
    """A partition whose snapshot refresh failed after its rows were synced: its latest snapshot is stale
    until a finalizer rebuilds it (every later finalizer of the project tries, with `rescan`). `run_id`
    is the run whose refresh failed last, and versions the debt: settling a debt that failed again since
    it was read keeps it."""

    partition: Partition
    run_id: str
    reason: str

    @classmethod
    def writing(cls, partition: Partition, run_id: str) -> SnapshotDebt:
        """Recorded by a worker before it changes the partition's rows: if its run dies before its finalizer
        refreshed the partition, the debt stays, and the next finalizer rebuilds what differs."""
        return cls(partition, run_id, WRITING_REASON)

    @property
    def writing_only(self) -> bool:
        """Recorded by `writing` (no snapshot of the partition has failed since)."""
        return self.reason == WRITING_REASON


WRITING_REASON = "its rows changed in a run that has not refreshed the snapshot (yet)"
