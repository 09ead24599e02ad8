"""Read a lake from a notebook or training code, read-only: `open_lake("./lake")` or `open_lake("s3://b/p")`.

```python
from encord_mirror.reader import open_lake
lake = open_lake("s3://my-bucket/encord")
boxes = lake.annotations(project=P, stage="complete-6ae00674")   # pyarrow Table (records without pyarrow)
snap = lake.snapshot(P, stage="complete-6ae00674", as_of="2026-11-30T00:00:00Z")
row = lake.row_as_of("<label_hash>", snap.snapshot_id)           # the row exactly as that run left it
```
Every question that has no whole answer (an unknown partition, run or snapshot, a time before the first
run) raises `LakeReadError` naming what was asked, never a partial answer; a snapshot that snapshot
retention deleted raises `SnapshotPrunedError` (a `LakeReadError`), naming the oldest one kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import orjson

from encord_mirror.domain.history import ChangeLog, HistoryError, Version, parse_time
from encord_mirror.domain.lake import latest_key, partition_of, partition_prefix, pruned_key
from encord_mirror.domain.models import JsonDict, Partition, StoredObject
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.domain.retention import snapshot_time
from encord_mirror.tables.annotations import TABLE_FILE, read_table, table_partition

__all__ = ["Lake", "LakeReadError", "Snapshot", "SnapshotDiff", "SnapshotPrunedError", "open_lake"]


class LakeReadError(LookupError):
    """What was asked has no whole answer in this lake; the message names it and what the lake has."""


class SnapshotPrunedError(LakeReadError):
    """The snapshot asked for (by id or time) was deleted by snapshot retention."""


class ReadOnlyLakeError(PermissionError):
    """The reader never writes: a write through it is a bug in the caller."""


class _ReadOnly:
    """An ObjectStore that refuses writes, so a reader cannot change the lake by mistake."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def get(self, key: str) -> StoredObject | None:
        return self._store.get(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        return self._store.list_keys(prefix)

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        return self._store.list_etags(prefix)

    def uri(self, key: str) -> str:
        return self._store.uri(key)

    def open(self, key: str) -> BinaryIO | None:
        return self._store.open(key)

    def put(self, key: str, body: bytes, **_: Any) -> str:
        raise ReadOnlyLakeError(f"the reader is read-only (asked to write {key})")

    def put_stream(self, key: str, chunks: Iterable[bytes], **_: Any) -> str:
        raise ReadOnlyLakeError(f"the reader is read-only (asked to write {key})")

    def delete(self, key: str) -> None:
        raise ReadOnlyLakeError(f"the reader is read-only (asked to delete {key})")


@dataclass(frozen=True, slots=True)
class Snapshot:
    partition: Partition
    snapshot_id: str
    created_at: str
    manifest: JsonDict
    coco_key: str
    _lake: ObjectStore

    def coco(self) -> JsonDict:
        stored = self._lake.get(self.coco_key)
        if stored is None:
            raise LakeReadError(f"snapshot {self.snapshot_id}: its coco.json is missing ({self.coco_key})")
        parsed: JsonDict = orjson.loads(stored.body)
        return parsed

    def row_hashes(self) -> dict[str, str]:
        """label_hash -> the row's sha256 in this snapshot."""
        return {h: r["sha256"] for h, r in (self.manifest.get("rows") or {}).items()}


@dataclass(frozen=True, slots=True)
class SnapshotDiff:
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


def open_lake(location: str | os.PathLike[str]) -> Lake:
    """A lake directory or `s3://bucket/prefix` (boto3's usual credentials; `AWS_ENDPOINT_URL` honoured)."""
    where = str(location)
    if where.startswith("s3://"):
        from encord_mirror.adapters.aws.s3 import S3ClientConfigError, S3ObjectStore, s3_client

        bucket, _, prefix = where.removeprefix("s3://").partition("/")
        if not bucket:
            raise LakeReadError(f"{where!r}: an S3 lake is s3://BUCKET or s3://BUCKET/PREFIX")
        try:
            client = s3_client()
        except S3ClientConfigError as exc:
            raise LakeReadError(str(exc)) from None
        return Lake(S3ObjectStore(bucket, prefix.strip("/"), client))
    from pathlib import Path

    from encord_mirror.adapters.local import LocalLake

    root = Path(where).expanduser()
    if not root.is_dir():
        raise LakeReadError(f"{where}: no such lake directory")
    return Lake(LocalLake(root))


class Lake:
    """A read-only view of a lake (any `ObjectStore`)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store: ObjectStore = _ReadOnly(store)
        self._log = ChangeLog(self.store)

    # partitions and rows ------------------------------------------------------------------------------
    def partitions(self, project: str | None = None) -> list[Partition]:
        prefix = f"labels/project={project}/" if project else "labels/"
        return sorted({partition_of(k) for k in self.store.list_keys(prefix) if k.endswith(".json")})

    def _partitions(self, project: str, branch: str, stage: str | None) -> list[Partition]:
        known = self.partitions(project)
        chosen = [p for p in known if p.branch == branch and (stage is None or p.stage == stage)]
        if not chosen:
            have = ", ".join(f"{p.branch}/{p.stage}" for p in known) or "none"
            asked = f"branch {branch!r}" + (f" stage {stage!r}" if stage else "")
            raise LakeReadError(f"project {project}: no partition {asked} (the lake has: {have})")
        return chosen

    def rows(self, project: str, *, branch: str = "main", stage: str | None = None) -> Iterator[JsonDict]:
        """The current rows (`to_encord_dict()` plus `mirror`) of one partition, or of every stage."""
        for part in self._partitions(project, branch, stage):
            prefix = partition_prefix("labels", part.project_hash, part.branch, part.stage)
            for key in sorted(self.store.list_keys(prefix)):
                stored = self.store.get(key)
                if stored is not None:  # a row that left between the listing and the read
                    yield orjson.loads(stored.body)

    def label_rows(
        self, project: str, ontology: JsonDict, *, branch: str = "main", stage: str | None = None
    ) -> list[Any]:
        """The rows as the SDK's `LabelRowV2`, built offline from the lake (no request to Encord);
        `ontology` is `OntologyStructure.to_dict()` (a snapshot's categories are not enough)."""
        from encord_mirror.reader.sdk import label_row

        return [label_row(doc, ontology) for doc in self.rows(project, branch=branch, stage=stage)]

    # the annotations table ----------------------------------------------------------------------------
    def annotations(
        self,
        *,
        project: str | None = None,
        branch: str | None = None,
        stage: str | None = None,
        as_records: bool = False,
    ) -> Any:
        """The annotations table (see `encord_mirror.tables.records`) of the matching partitions: a pyarrow
        Table when pyarrow is installed (`.to_pandas()` for pandas), else a list of dicts."""
        prefix = f"tables/annotations/project={project}/" if project else "tables/annotations/"
        parts = sorted(
            table_partition(k) for k in self.store.list_keys(prefix) if k.endswith("/" + TABLE_FILE)
        )
        parts = [p for p in parts if (branch is None or p.branch == branch) and (stage in (None, p.stage))]
        if not parts and (project or branch or stage):
            asked = ", ".join(
                f"{k} {v!r}" for k, v in (("project", project), ("branch", branch), ("stage", stage)) if v
            )
            raise LakeReadError(f"no annotations table partition for {asked}")
        records: list[JsonDict] = [r for p in parts for r in read_table(self.store, p)]
        if as_records:
            return records
        try:
            import pyarrow as pa  # type: ignore[import-untyped]
        except ImportError:
            return records
        return pa.Table.from_pylist(records)

    # snapshots ------------------------------------------------------------------------------------------
    def snapshot(
        self,
        project: str,
        *,
        branch: str = "main",
        stage: str,
        snapshot_id: str | None = None,
        as_of: str | datetime | None = None,
    ) -> Snapshot:
        """The partition's latest snapshot, the one with `snapshot_id`, or the one that was latest at
        `as_of` (ISO 8601 with a timezone, or an aware datetime)."""
        part = Partition(project, branch, stage)
        if snapshot_id is None and as_of is None:
            stored = self.store.get(latest_key(project, branch, stage))
            if stored is None:
                raise LakeReadError(
                    f"no COCO snapshot in project {project} branch {branch!r} stage {stage!r}"
                )
            snapshot_id = orjson.loads(stored.body)["snapshot_id"]
        if snapshot_id is not None:
            return self._snapshot(part, snapshot_id)
        assert as_of is not None
        return snapshot_as_of(self.store, part, as_of)

    def _snapshot(self, part: Partition, snapshot_id: str) -> Snapshot:
        return _load_snapshot(self.store, part, snapshot_id)

    def snapshots(self, project: str, *, branch: str = "main", stage: str) -> list[str]:
        return snapshot_ids(self.store, Partition(project, branch, stage))

    def diff(self, older: Snapshot, newer: Snapshot) -> SnapshotDiff:
        """Rows added, changed (another sha256) and removed from `older` to `newer`."""
        a, b = older.row_hashes(), newer.row_hashes()
        return SnapshotDiff(
            added=tuple(sorted(set(b) - set(a))),
            changed=tuple(sorted(h for h in set(a) & set(b) if a[h] != b[h])),
            removed=tuple(sorted(set(a) - set(b))),
        )

    # history ------------------------------------------------------------------------------------------
    def history(self, label_hash: str, *, project: str | None = None) -> list[Version]:
        try:
            return self._log.versions(label_hash, project=project)
        except HistoryError as exc:
            raise LakeReadError(str(exc)) from None

    def row_as_of(
        self, label_hash: str, when: str | datetime, *, branch: str = "main", project: str | None = None
    ) -> JsonDict:
        """The row exactly as the lake held it after run `when` (a run id) or at time `when`."""
        row: JsonDict = orjson.loads(self.row_bytes_as_of(label_hash, when, branch=branch, project=project))
        return row

    def row_bytes_as_of(
        self, label_hash: str, when: str | datetime, *, branch: str = "main", project: str | None = None
    ) -> bytes:
        asked = when.isoformat() if isinstance(when, datetime) else when
        try:
            version = self._log.as_of(label_hash, asked, branch=branch, project=project)
            return self._log.row_bytes(version)
        except HistoryError as exc:
            raise LakeReadError(str(exc)) from None


def snapshot_ids(store: ObjectStore, part: Partition) -> list[str]:
    prefix = partition_prefix("coco", part.project_hash, part.branch, part.stage) + "snapshots/"
    return sorted(
        {k[len(prefix) :].split("/", 1)[0] for k in store.list_keys(prefix) if k.endswith("/manifest.json")}
    )


def snapshot_by_id(store: ObjectStore, part: Partition, snapshot_id: str) -> Snapshot:
    """The partition's snapshot `snapshot_id`; `SnapshotPrunedError` if retention deleted it."""
    return _load_snapshot(store, part, snapshot_id)


def _load_snapshot(store: ObjectStore, part: Partition, snapshot_id: str) -> Snapshot:
    prefix = (
        partition_prefix("coco", part.project_hash, part.branch, part.stage) + f"snapshots/{snapshot_id}/"
    )
    stored = store.get(prefix + "manifest.json")
    if stored is None:
        known = snapshot_ids(store, part)
        pruned = _pruned(store, part)
        if pruned is not None and snapshot_id <= str(pruned.get("through", "")):
            raise SnapshotPrunedError(
                f"snapshot {snapshot_id} of {_where(part)} was deleted by snapshot retention "
                f"({_policy(pruned)}); {_oldest(known)}"
            )
        have = f"{known[0]} .. {known[-1]} ({len(known)})" if known else "none"
        raise LakeReadError(
            f"no snapshot {snapshot_id} in {part.project_hash} {part.branch}/{part.stage} (it has: {have})"
        )
    manifest: JsonDict = orjson.loads(stored.body)
    return Snapshot(part, snapshot_id, manifest["created_at"], manifest, prefix + "coco.json", store)


def snapshot_as_of(store: ObjectStore, part: Partition, as_of: str | datetime) -> Snapshot:
    """The snapshot that was the partition's latest at `as_of`: the newest created at or before it."""
    at = _aware(as_of)
    ids = snapshot_ids(store, part)
    for sid in reversed(ids):
        snap = _load_snapshot(store, part, sid)
        if datetime.fromisoformat(snap.created_at) <= at:
            return snap
    where = _where(part)
    pruned = _pruned(store, part)
    first_pruned = snapshot_time(str(pruned.get("first", ""))) if pruned is not None else None
    if pruned is not None and (first_pruned is None or at >= first_pruned):
        raise SnapshotPrunedError(
            f"--as-of {_text(as_of)}: the snapshot of {where} that was the latest then was deleted by "
            f"snapshot retention ({_policy(pruned)}); {_oldest(ids, store, part)}"
        )
    if pruned is not None:
        raise LakeReadError(
            f"--as-of {_text(as_of)}: before the first snapshot of {where} ({pruned['first']}, since "
            "deleted by snapshot retention)"
        )
    if not ids:
        raise LakeReadError(f"no COCO snapshot in {where}")
    first = _load_snapshot(store, part, ids[0]).created_at
    raise LakeReadError(f"--as-of {_text(as_of)}: before the first snapshot of {where} (created {first})")


def _where(part: Partition) -> str:
    return f"project {part.project_hash} branch {part.branch!r} stage {part.stage!r}"


def _pruned(store: ObjectStore, part: Partition) -> JsonDict | None:
    """The partition's `pruned.json` (what snapshot retention deleted), or None."""
    stored = store.get(pruned_key(part.project_hash, part.branch, part.stage))
    if stored is None:
        return None
    try:
        record = orjson.loads(stored.body)
    except orjson.JSONDecodeError:
        return {}  # unreadable, but retention did delete snapshots here
    return record if isinstance(record, dict) else {}


def _policy(pruned: JsonDict) -> str:
    kept = []
    if pruned.get("keep"):
        kept.append(f"the newest {pruned['keep']}")
    if pruned.get("keep_days"):
        kept.append(f"those younger than {pruned['keep_days']} days")
    return "it keeps " + " and ".join(kept) if kept else "see --snapshots-keep"


def _oldest(ids: list[str], store: ObjectStore | None = None, part: Partition | None = None) -> str:
    if not ids:
        return "no snapshot is kept"
    if store is None or part is None:
        return f"the oldest kept is {ids[0]}"
    return f"the oldest kept is {ids[0]} (created {_load_snapshot(store, part, ids[0]).created_at})"


def _text(value: str | datetime) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


def _aware(value: str | datetime) -> datetime:
    if isinstance(value, str):
        try:
            return parse_time(value)
        except HistoryError as exc:
            raise LakeReadError(str(exc)) from None
    if value.tzinfo is None:
        raise LakeReadError(f"--as-of {value.isoformat()}: give a timezone (e.g. Z for UTC)")
    return value
