"""The five ports the domain talks to. Each has an AWS adapter and a local one.

Adapters return typed receipts that carry failures instead of logging and carrying on; a
conditional write that loses raises `PreconditionFailedError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import BinaryIO, Literal, Protocol

from encord_mirror.domain.models import (
    ChunkMessage,
    ChunkResult,
    Gap,
    IndexEntry,
    Lease,
    LoadResult,
    Partition,
    PartitionChanges,
    ProjectInfo,
    RowMeta,
    RowOutcome,
    RowQuery,
    RunFailure,
    RunProgress,
    RunRecord,
    SendReceipt,
    SnapshotDebt,
    SnapshotEvent,
    SourceClock,
    StoredObject,
)

FinalizeClaim = Literal["claimed", "busy", "finished"]


class PreconditionFailedError(Exception):
    """A conditional write lost: the object or item changed (or exists) since it was read."""

    def __init__(self, key: str) -> None:
        super().__init__(f"precondition failed for {key!r}")
        self.key = key


class LabelSource(Protocol):
    """Encord, read-only. Implementations must never create or save a label row."""

    def project_info(self, project_hash: str) -> ProjectInfo: ...

    def list_branches(self, project_hash: str) -> tuple[str, ...]:
        """The project's label branch names (`main` and the consensus branches that have label rows)."""
        ...

    def list_rows(self, project_hash: str, query: RowQuery) -> list[RowMeta]: ...

    def server_time(self) -> SourceClock:
        """Encord's clock now, from a cheap request's answer: the planner's signpost is Encord's time, so a
        host clock that disagrees with Encord's cannot make a listing window miss an edit."""
        ...

    def load_rows(self, project_hash: str, label_hashes: Sequence[str], *, bundle_size: int) -> LoadResult:
        """List fresh metadata for these label hashes (every branch) and initialise them in one bundle."""
        ...

    def load_listed(self, project_hash: str, rows: Sequence[RowMeta], *, bundle_size: int) -> LoadResult:
        """Initialise rows from their listing (the planner's) in one bundle, without listing them again.

        Only rows the response lacks, or that cannot be initialised from the listing (`media` None), are
        listed again by label hash: `gone` when Encord no longer has them. Each loaded row's edit time,
        data hash and title are the initialised content's; its stage and task status are the listing's.
        """
        ...


class ObjectStore(Protocol):
    """The lake. Keys are relative to the lake root (`labels/project=.../x.json`)."""

    def get(self, key: str) -> StoredObject | None: ...

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        """Write and return the new etag. `if_match`: only over that etag; `if_none_match`: create-only."""
        ...

    def open(self, key: str) -> BinaryIO | None:
        """The object as a stream to `read(n)` from and close, for an object too large to hold whole;
        None when it does not exist."""
        ...

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        """Write an object of any size from `chunks`, holding about one part at a time (S3: a multipart
        upload, completed only after the last part, so readers never see a partial object); return its
        etag. `if_none_match`: create-only. A failure leaves no object behind."""
        ...

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing key is not an error."""
        ...

    def list_keys(self, prefix: str) -> Iterator[str]: ...

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, etag) of each object under `prefix`, the etag `get` and `put` give (S3: from the listing
        itself, no GET; a local lake hashes each file)."""
        ...

    def uri(self, key: str) -> str:
        """Where a user finds the object (`s3://bucket/prefix/key` or a file path)."""
        ...


class StateStore(Protocol):
    """Watermark, lease, row index, run ledger and gaps. Every write is conditional or idempotent."""

    # lease: one planner per project at a time
    def acquire_lease(self, project_hash: str, owner: str, now: datetime, ttl_s: int) -> bool: ...

    def release_lease(self, project_hash: str, owner: str) -> None: ...

    def get_lease(self, project_hash: str) -> Lease | None:
        """The lease as stored (it may have expired: compare `expires_at` with now)."""
        ...

    # watermark: only ever moves forward, but for a mark found in Encord's future (see next_watermark)
    def get_watermark(self, project_hash: str) -> datetime | None: ...

    def set_watermark(
        self, project_hash: str, value: datetime, *, rewind_from: datetime | None = None
    ) -> None:
        """Move the mark to `value` unless it stands later; `rewind_from`: also back, from that exact mark."""
        ...

    # filters: the fingerprint of the filters the lake was last synced with (see MirrorConfig)
    def get_filters(self, project_hash: str) -> str | None: ...

    def set_filters(self, project_hash: str, fingerprint: str) -> None: ...

    # the last sync that failed before its run was finalized (cleared by the next finalized run)
    def get_failure(self, project_hash: str) -> RunFailure | None: ...

    def set_failure(self, project_hash: str, failure: RunFailure | None) -> None: ...

    def next_run_number(self, project_hash: str) -> int:
        """An atomic counter: 1 for the first run (reconciliation every Nth run keys off it)."""
        ...

    # row index
    def get_index(self, project_hash: str, label_hash: str) -> IndexEntry | None: ...

    def put_index(self, entry: IndexEntry) -> bool:
        """Newer-wins: stored only if no entry has a later `last_edited_at`. False when it lost."""
        ...

    def delete_index(self, project_hash: str, label_hash: str) -> None: ...

    def scan_index(self, project_hash: str) -> Iterator[IndexEntry]: ...

    # run ledger
    def create_run(self, run: RunRecord) -> None:
        """Idempotent: creating the same run twice keeps the first."""
        ...

    def get_run(self, project_hash: str, run_id: str) -> RunRecord | None: ...

    def record_chunk(self, project_hash: str, result: ChunkResult) -> RunProgress:
        """Store a chunk's result (a later record of the same chunk replaces it); count final chunks."""
        ...

    def chunk_results(self, project_hash: str, run_id: str) -> list[ChunkResult]: ...

    def begin_finalize(
        self, project_hash: str, run_id: str, token: str, now: datetime, ttl_s: int
    ) -> FinalizeClaim:
        """Claim the run's finalization for `token` until `now + ttl_s`, atomically.

        "finished": a finalizer completed the run (`end_finalize(finished=True)`); "busy": another token
        holds a claim that has not expired; "claimed": go ahead (also when an earlier claim expired or was
        dropped: its holder died or failed, and every finalize step is safe to redo).
        """
        ...

    def end_finalize(self, project_hash: str, run_id: str, token: str, *, finished: bool) -> None:
        """`finished`: mark the run finalized for good (its manifest is written). Otherwise drop
        `token`'s claim, if it still holds it, so a retry can claim the run at once."""
        ...

    # outbox: "snapshot committed" events, recorded before they are published
    def stage_events(self, project_hash: str, events: Sequence[SnapshotEvent]) -> None:
        """Record each event as pending, keyed by its `event_id`; an event already recorded (pending or
        sent) stays as it is, so a retried finalizer never re-opens a sent event."""
        ...

    def pending_events(self, project_hash: str) -> list[SnapshotEvent]:
        """The project's recorded events not yet marked sent, by snapshot id (oldest first), then event id."""
        ...

    def mark_events_sent(self, project_hash: str, event_ids: Sequence[str]) -> None:
        """Idempotent: a sent event is never pending again."""
        ...

    # snapshot debts: partitions whose snapshot refresh failed, rebuilt by a later finalizer
    def owe_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
        """Record each debt (one per partition: a newer one replaces it)."""
        ...

    def owed_snapshots(self, project_hash: str) -> list[SnapshotDebt]:
        """The project's debts, by partition."""
        ...

    def settle_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
        """Remove each debt unless its partition was owed again since (by another run id)."""
        ...

    # gaps
    def add_gaps(self, gaps: Sequence[Gap]) -> None: ...

    def clear_gaps(self, project_hash: str, label_hashes: Sequence[str]) -> None: ...

    def list_gaps(self, project_hash: str) -> list[Gap]: ...


class WorkQueue(Protocol):
    def send_chunks(self, chunks: Sequence[ChunkMessage]) -> SendReceipt:
        """Enqueue chunk messages (SQS: in batches of 10). Failures come back in the receipt."""
        ...

    def request_finalize(self, project_hash: str, run_id: str) -> None:
        """Ask for the run's finalizer (SQS: a message on the finalize queue; locally: run it next).
        May be called more than once per run: one finalizer at a time claims the run, and a run is
        closed once."""
        ...


class EventSink(Protocol):
    def publish(self, events: Sequence[SnapshotEvent]) -> SendReceipt:
        """Send the events; the receipt is keyed by `SnapshotEvent.event_id`."""
        ...


class SnapshotBuilder(Protocol):
    def refresh(
        self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
    ) -> SnapshotEvent | None:
        """Build the partition's next COCO snapshot from the previous one plus the changed rows (read
        from the lake), write it create-only, move `latest.json` by compare-and-swap, and return the
        event to announce (None when nothing changed or below the announce threshold). Idempotent for
        a (run_id, partition): a retried finalizer finds the snapshot already written and returns the
        same event."""
        ...

    def outdated(self, project_hash: str) -> list[Partition]:
        """The project's partitions whose latest snapshot is of another snapshot format (or COCO mode), or
        whose `latest.json` is missing or damaged (the builder names it in a warning): the finalizer
        rebuilds them from all their rows."""
        ...

    def drift(
        self, partition: Partition, rows: Mapping[str, str], *, recover: bool
    ) -> tuple[PartitionChanges, SnapshotEvent | None]:
        """What a refresh must change for the partition's latest snapshot to hold exactly `rows` (label hash
        -> the row object's sha256, as the row index has them): rows missing or with another sha256
        (upserted) and rows it holds that are not in `rows` (removed); none when it is exact.
        `recover`: a run may have died while refreshing this partition. A snapshot it wrote without moving
        `latest.json` is made the latest first, and the latest snapshot's event is returned, for the outbox
        to hold (it keeps one per snapshot) in case the dead run never recorded it."""
        ...

    def partitions(self, project_hash: str) -> set[Partition]:
        """The project's partitions that have a latest snapshot (or a whole one, if `latest.json` went)."""
        ...

    def prune(
        self, project_hash: str, *, keep: int | None, keep_days: int | None, now: datetime
    ) -> list[tuple[Partition, str]]:
        """Snapshot retention (`domain.retention`): delete the snapshots of the project's partitions that
        the policy lets go, never a partition's latest; the (partition, snapshot id) pairs deleted."""
        ...


class RunRecorder(Protocol):
    def record_run(self, run: RunRecord, outcomes: Sequence[RowOutcome], *, now: datetime) -> None:
        """Record what a run changed in the lake (the change log, the annotations table), before its
        manifest is written. Idempotent for a run: a retried finalizer calls it again. An error fails the
        finalizer, which is retried."""
        ...
