"""COCO snapshots per (project, branch, stage) partition, refreshed incrementally.

```
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/coco.json      the COCO file (create-only)
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/rows.tsv       the compacted form (create-only)
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/manifest.json  the audit record (create-only)
coco/project=<p>/branch=<b>/stage=<s>/latest.json                            the newest one (compare-and-swap)
```

The snapshot id is the run id (`<YYYYmmddTHHMMSS.mmmZ>-<hex>`: it sorts by run start), so a retried finalizer
finds its own snapshot and returns the same event instead of writing a second one. A refresh reads
`latest.json`, the previous snapshot's rows.tsv and coco.json, and only the changed rows; it reads every
row of the partition only for the partition's first snapshot and after the ontology changed.

Ids are stable: a row keeps its image ids per (data_hash, frame), its annotation ids per (data_hash, frame,
object_hash) and its track ids per object_hash across refreshes; new ones are numbered on from counters kept
in rows.tsv. rows.tsv holds, per row in label-hash order, its ids, its manifest entry and the byte lengths
of its images and annotations in coco.json, so a refresh splices the unchanged rows' bytes (of coco.json,
rows.tsv and the manifest) into the new snapshot without parsing them: its cost follows the changed rows,
apart from copying the unchanged bytes, which an immutable coco.json needs. rows.tsv is internal: one
that cannot be read, or a snapshot of another `SNAPSHOT_FORMAT_VERSION` or COCO mode, makes the refresh
rebuild the partition from all its rows (and `outdated` names such partitions, so the next run rebuilds
them even when none of their rows changed).

In compatible mode a snapshot reproduces CocoExporter's per-row output; its one cross-row quirk (dynamic
answers read from the first row, by image id) is not reproduced, since it would tie every row's attributes
to the other rows: dynamic answers come from each row's own frames.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, groupby
from operator import itemgetter
from typing import IO, Any

import orjson

from encord_mirror.coco.convert import (
    AnnotationEntry,
    Converter,
    ImageEntry,
    ImageKey,
    MaskBatch,
    Ontology,
    RowOntologyMismatchError,
    info,
    make_converter,
    row_annotations,
    row_images,
)
from encord_mirror.coco.modes import COCO_MODES, DEFAULT_COCO_MODE
from encord_mirror.coco.raster import Painting, RowMajorRuns
from encord_mirror.domain.lake import (
    NO_STAGE,
    label_key,
    latest_key,
    partition_of,
    partition_prefix,
    pruned_key,
    snapshot_key,
    stage_value,
)
from encord_mirror.domain.models import (
    JsonDict,
    Partition,
    PartitionChanges,
    ProjectInfo,
    SnapshotEvent,
    StoredObject,
)
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError
from encord_mirror.domain.retention import prunable
from encord_mirror.domain.rowdoc import MIRROR_KEY

ROWS_FILE = "rows.tsv"
_ROWS_V2 = b"#v2\t"
# The snapshot format (coco.json's content, the manifest's and latest.json's layout): a snapshot of another
# version, or of the other COCO mode, is rebuilt from all its rows by the next run (`outdated`).
# 1: before versioning; 2: corrected-mode training fixes, Encord keys on images, one-line manifests;
# 3: the manifest names the workflow stage (`stage_uuid`, `stage_title`; the event carries them).
SNAPSHOT_FORMAT_VERSION = 3
_LAYOUT = ("ontology_hash", "format_version", "encord_compatible")
_IMAGES_OPEN = b',"images":['
_ANNOTATIONS_OPEN = b'],"annotations":['
_COCO_CLOSE = b"]}\n"  # every lake document ends with a newline
# What makes one row unconvertible: it is left out of the snapshot and named in the manifest.
_ROW_ERRORS = (RowOntologyMismatchError, orjson.JSONDecodeError, KeyError, TypeError, ValueError)
# Converted rows waiting for their masks; the mask queue is flushed early when this many wait.
_WAITING_ROWS = 64
# coco.json never sits whole in memory: the previous one is read from a seekable file (the lake's own, or
# a temporary copy of an S3 object) and the new one's arrays are spooled to temporary files, then streamed
# to the lake (S3: a multipart upload), in blocks of this size.
_BLOCK = 1024 * 1024
# How far into a coco.json its `images` array may start (info and categories come first).
_HEAD_LIMIT = 64 * 1024 * 1024


class SnapshotConflictError(RuntimeError):
    """Another writer moved `latest.json` or wrote this snapshot with different content."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"snapshot conflict at {key!r}: {why}")
        self.key = key


@dataclass(slots=True)
class _RowState:
    images: dict[str, int]  # "data_hash/frame" -> image id
    annotations: dict[str, int]  # "data_hash/frame/object_hash" -> annotation id
    tracks: dict[str, int]  # object_hash -> track id


@dataclass(slots=True)
class _PrevRow:
    """A row of the previous snapshot: its manifest entry and ids, and its spans in coco.json (relative to
    the start of its `images` and `annotations` arrays), copied into the next snapshot unless touched."""

    record: bytes  # its manifest entry (JSON)
    state: bytes  # its ids (_RowState JSON)
    i0: int
    i1: int
    a0: int
    a1: int


@dataclass(slots=True)
class _Previous:
    """What a refresh needs of the previous snapshot. `coco` is None when its bytes and ids cannot be
    carried over (another ontology, or files that do not fit together): the refresh then rebuilds."""

    layout: JsonDict  # what its ids and bytes depend on: ontology hash, format version, COCO mode
    counters: dict[str, int]
    counts: dict[str, int]  # images, annotations
    rows: dict[str, _PrevRow]  # the rows a refresh touches (all of them when it rebuilds or rescans)
    rows_file: _RowsFile | None  # its rows.tsv, read again in order by the assembly
    images_len: int  # the bytes inside coco.json's images array
    annotations_len: int
    coco: _Source | None = None
    images_at: int = 0  # where that array's content starts in coco.json
    annotations_at: int = 0

    def close(self) -> None:
        for file in (self.coco, self.rows_file):
            if file is not None:
                file.close()
        self.coco = self.rows_file = None


@dataclass(slots=True)
class _Converted:
    """A row converted in this refresh whose masks may still be in the shared queue."""

    images: list[JsonDict]
    annotations: list[JsonDict]
    state: bytes
    record: JsonDict


@dataclass(slots=True)
class _NewRow:
    """A row converted in this refresh, serialised. Every bytes object here is built by a join or a slice:
    orjson's own results take at least 4 KiB each, which a few per row would make the largest cost."""

    sha256: str
    data_title: Any
    n_images: int
    n_annotations: int
    images: bytes  # its COCO images: JSON objects joined by commas
    annotations: bytes  # its COCO annotations, likewise
    line: bytes  # its rows.tsv line
    entry: bytes  # its manifest entry, `"label_hash": {...}`


def _rows_line(label_hash: bytes, images: bytes, annotations: bytes, record: bytes, state: bytes) -> bytes:
    return b"\t".join((label_hash, b"%d" % len(images), b"%d" % len(annotations), record, state + b"\n"))


def _entry(label_hash: str, record: bytes) -> bytes:
    return b"".join((orjson.dumps(label_hash), b":", record))


class _Source:
    """The previous coco.json as a seekable file, read by byte range; closed with the refresh."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        file.seek(0, 2)
        self.size = file.tell()

    @classmethod
    def of(cls, stream: IO[bytes]) -> _Source:
        """The stream itself when it can seek (a local file), else a temporary copy of it (S3's body)."""
        if stream.seekable():
            return cls(stream)
        copy = tempfile.TemporaryFile()  # noqa: SIM115  (kept open as the source; closed by close())
        try:
            with stream:
                shutil.copyfileobj(stream, copy, _BLOCK)
        except BaseException:
            copy.close()
            raise
        return cls(copy)

    def read(self, start: int, end: int) -> bytes:
        self._file.seek(start)
        return self._file.read(end - start)

    def find_head(self, marker: bytes) -> int:
        """Where `marker` first occurs within the first `_HEAD_LIMIT` bytes, or -1 (read block by block)."""
        window, at = b"", 0  # `window` starts at byte `at`
        while at + len(window) < min(self.size, _HEAD_LIMIT):
            window += self.read(at + len(window), at + len(window) + _BLOCK)
            found = window.find(marker)
            if found >= 0:
                return at + found
            keep = len(marker) - 1  # a marker may straddle two blocks
            at, window = at + len(window) - keep, window[-keep:]
        return -1

    def lines(self, start: int, limit: int = -1) -> Iterator[bytes]:
        """The lines from byte `start` on, each with its newline (the last one may have none)."""
        self._file.seek(start)
        while line := self._file.readline(limit):
            yield line

    def copy_to(self, out: _Spool, start: int, end: int) -> None:
        self._file.seek(start)
        while start < end:
            block = self._file.read(min(_BLOCK, end - start))
            if not block:
                raise EOFError(f"the previous coco.json ended at {start} of {end} bytes")
            out.write(block)
            start += len(block)

    def close(self) -> None:
        self._file.close()


class _RowsFile:
    """The previous rows.tsv as a seekable file: a `#v2` line (JSON: ontology_hash, next id counters,
    counts), then per row in label-hash order `label_hash TAB images_bytes TAB annotations_bytes TAB
    manifest_entry TAB ids`, where the byte counts measure the row's objects in coco.json's arrays (joined
    by commas, rows with none skipped). orjson escapes tabs and newlines inside strings, so they only ever
    separate fields. Read line by line, never whole; closed with the refresh."""

    def __init__(self, source: _Source) -> None:
        self._source = source
        head = source.lines(0, _HEAD_LIMIT)
        line = next(head, b"")
        if not line.startswith(_ROWS_V2) or not line.endswith(b"\n"):
            raise ValueError("rows.tsv does not start with a #v2 line")
        self.header: JsonDict = orjson.loads(line[len(_ROWS_V2) : -1])
        self._body_at = len(line)

    def scan(self) -> Iterator[tuple[str, _PrevRow, bytes]]:
        """Every row in order: its label hash, its entry, and its whole line."""
        images = annotations = 0
        for line in self._source.lines(self._body_at):
            fields = line.split(b"\t", 4)
            if len(fields) != 5 or not line.endswith(b"\n"):
                raise ValueError(f"rows.tsv has a line that is not 5 fields: {line[:80]!r}")
            n_images, n_annotations = int(fields[1]), int(fields[2])
            row = _PrevRow(
                fields[3], fields[4][:-1], images, images + n_images, annotations, annotations + n_annotations
            )
            if n_images:
                images += n_images + 1
            if n_annotations:
                annotations += n_annotations + 1
            yield fields[0].decode(), row, line

    def index(self, wanted: set[str] | None) -> tuple[dict[str, _PrevRow], int, int]:
        """The entries of the `wanted` rows (None: all), and the bytes inside coco.json's two arrays."""
        rows: dict[str, _PrevRow] = {}
        images = annotations = 0  # where the last row with any ends
        for label_hash, row, _ in self.scan():
            if wanted is None or label_hash in wanted:
                rows[label_hash] = row
            images = row.i1 if row.i1 > row.i0 else images
            annotations = row.a1 if row.a1 > row.a0 else annotations
        return rows, images, annotations

    def close(self) -> None:
        self._source.close()


class _TempBytes:
    """Bytes written to a temporary file, read back in blocks; closed by close()."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115  (lives with the object; closed by close())

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def blocks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while block := self._file.read(_BLOCK):
            yield block

    def close(self) -> None:
        self._file.close()


class _Spool(_TempBytes):
    """One JSON array's content (items joined by commas) on a temporary file: copied spans of the previous
    coco.json and new items, in order; runs of copied spans that follow each other there are copied as one."""

    def __init__(self, source: _Source | None) -> None:
        super().__init__()
        self._source = source
        self._start = self._end = -1
        self._empty = True

    def copy(self, start: int, end: int) -> None:
        if start == end:
            return
        if self._start >= 0 and start == self._end + 1:  # the next item after a comma
            self._end = end
            return
        self._flush()
        self._start, self._end = start, end

    def add(self, piece: bytes) -> None:
        if piece:
            self._flush()
            self._item()
            self.write(piece)

    def _item(self) -> None:
        if not self._empty:
            self.write(b",")
        self._empty = False

    def _flush(self) -> None:
        if self._start >= 0:
            assert self._source is not None
            self._item()
            self._source.copy_to(self, self._start, self._end)
            self._start = self._end = -1

    def blocks(self) -> Iterator[bytes]:
        self._flush()
        yield from super().blocks()


@dataclass(slots=True)
class _Conversion:
    """The touched rows of a refresh: converted (`converted`, their bytes in the assembly), gone from the
    partition or left out (`gone`, with the reason in `skipped` for a row that could not be converted),
    and the annotations added, changed and removed in the rows converted so far."""

    previous: Mapping[str, _PrevRow]  # the previous snapshot's entries of the touched rows
    incremental: bool  # the previous snapshot is carried over
    converted: list[str] = field(default_factory=list)  # in label-hash order
    sha256: dict[str, str] = field(default_factory=dict)  # of the converted rows the previous one held
    counts: dict[str, int] = field(default_factory=lambda: {"images": 0, "annotations": 0})
    gone: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, int] = field(default_factory=lambda: {"added": 0, "changed": 0, "removed": 0})

    def add(self, label_hash: str, new: _NewRow) -> None:
        self.converted.append(label_hash)
        if label_hash in self.previous:
            self.sha256[label_hash] = new.sha256
        self.counts["images"] += new.n_images
        self.counts["annotations"] += new.n_annotations

    def leave_out(self, label_hash: str, reason: str) -> None:
        self.gone.add(label_hash)
        self.skipped[label_hash] = reason


@dataclass(frozen=True, slots=True)
class _Tally:
    """What changed since the previous snapshot, by row, and the new snapshot's counts."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    counts: dict[str, int]  # images, annotations


class _Assembly:
    """A new snapshot's bodies, assembled while the touched rows are converted, rows in label-hash order:
    unchanged rows are spliced from the previous snapshot's files (runs of them in one piece), never
    parsed, and converted rows go in as they come (in label-hash order too): one merge pass over the
    previous rows.tsv. coco.json's arrays, rows.tsv's lines and the manifest's rows are spooled to
    temporary files, so none of them is held whole. Closing it removes the spools and closes the previous
    snapshot's files."""

    def __init__(self, carried: _Previous | None, touched: list[str]) -> None:
        source = carried.coco if carried is not None else None
        self._carried = carried
        self.images, self.annotations = _Spool(source), _Spool(source)
        self.lines = _TempBytes()  # rows.tsv after its header line
        self.entries = _TempBytes()  # the manifest's rows, `"label_hash":{...}` joined by commas
        self.rows = 0
        self.first_title: Any = None
        skip = set(touched)
        rows_file = carried.rows_file if carried is not None else None
        self._kept = (k for k in (rows_file.scan() if rows_file is not None else ()) if k[0] not in skip)
        self._next_kept = next(self._kept, None)

    def add(self, label_hash: str, new: _NewRow) -> None:
        """A converted row, after every unchanged row before it (rows come in label-hash order)."""
        self._keep_until(label_hash)
        if not self.rows:
            self.first_title = new.data_title
        self._row(new.entry)
        self.images.add(new.images)
        self.annotations.add(new.annotations)
        self.lines.write(new.line)

    def _row(self, entry: bytes) -> None:
        if self.rows:
            self.entries.write(b",")
        self.entries.write(entry)
        self.rows += 1

    def finish(self) -> None:
        """The unchanged rows after the last converted one."""
        self._keep_until(None)

    def _keep_until(self, label_hash: str | None) -> None:
        carried = self._carried
        while self._next_kept is not None and (label_hash is None or self._next_kept[0] < label_hash):
            assert carried is not None
            h, old, line = self._next_kept
            if not self.rows:
                self.first_title = orjson.loads(old.record).get("data_title")
            self._row(_entry(h, old.record))
            self.images.copy(carried.images_at + old.i0, carried.images_at + old.i1)
            self.annotations.copy(carried.annotations_at + old.a0, carried.annotations_at + old.a1)
            self.lines.write(line)
            self._next_kept = next(self._kept, None)

    def coco(self, head: bytes) -> Iterator[bytes]:
        """coco.json in blocks: `head` (info and categories), then the two arrays."""
        yield head + _IMAGES_OPEN
        yield from self.images.blocks()
        yield _ANNOTATIONS_OPEN
        yield from self.annotations.blocks()
        yield _COCO_CLOSE

    def close(self) -> None:
        for spool in (self.images, self.annotations, self.lines, self.entries):
            spool.close()
        if self._carried is not None:
            self._carried.close()


def _tally(conversion: _Conversion, touched: list[str], carried: _Previous | None) -> _Tally | None:
    """The changes by row (only touched rows are parsed) and the counts; None when a refresh that carries
    the previous snapshot over finds nothing changed (no new snapshot then)."""
    prev_rows = conversion.previous
    old_records = {h: orjson.loads(prev_rows[h].record) for h in touched if h in prev_rows}
    added = [h for h in conversion.converted if h not in prev_rows]
    changed = sorted(h for h, sha in conversion.sha256.items() if old_records[h]["sha256"] != sha)
    removed = sorted(h for h in conversion.gone if h in prev_rows)
    n_images = n_annotations = 0
    if carried is not None:
        if not (added or changed or removed):
            return None
        conversion.annotations["removed"] += sum(int(old_records[h]["annotations"]) for h in removed)
        n_images = carried.counts["images"] - sum(int(r["images"]) for r in old_records.values())
        n_annotations = carried.counts["annotations"] - sum(
            int(r["annotations"]) for r in old_records.values()
        )
    n_images += conversion.counts["images"]
    n_annotations += conversion.counts["annotations"]
    return _Tally(added, changed, removed, {"images": n_images, "annotations": n_annotations})


class _RowMasks(MaskBatch):
    """One mask queue across rows (numpy's cost is per call, not per mask). A batch that fails is computed
    again row by row, so that only the row whose mask is bad is left out (named in `failed`)."""

    def __init__(self) -> None:
        super().__init__()
        self.row = ""  # the row whose masks are being added
        self.failed: dict[str, str] = {}
        self._owners: list[tuple[str, JsonDict, Painting | RowMajorRuns]] = []

    def add(self, body: JsonDict, mask: Painting | RowMajorRuns) -> None:
        self._owners.append((self.row, body, mask))
        super().add(body, mask)

    def flush(self) -> None:
        owners, self._owners = self._owners, []
        try:
            super().flush()
        except _ROW_ERRORS:
            for row, items in groupby(owners, key=itemgetter(0)):
                alone = MaskBatch()
                try:
                    for _, body, mask in items:
                        alone.add(body, mask)
                    alone.flush()
                except _ROW_ERRORS as exc:
                    self.failed[row] = f"{type(exc).__name__}: {exc}"


def _ikey(key: ImageKey) -> str:
    return f"{key[0]}/{key[1]}"


def snapshot_id_for(run_id: str) -> str:
    """Deterministic per run and key-safe; run ids sort by start time, and so do snapshot ids."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def _workflow_stage(project: ProjectInfo, stage: str) -> JsonDict:
    """The uuid and title of the workflow stage a partition value names: the stage with that value, else
    (renamed since) the one with its uuid prefix; null for `none` and a stage the workflow no longer has."""
    found = [s for s in project.stages if stage_value(s.uuid, s.title) == stage] or [
        s for s in project.stages if s.uuid.replace("-", "").lower()[:8] == stage.rsplit("-", 1)[-1]
    ]
    if stage == NO_STAGE or len(found) != 1:
        return {"stage_uuid": None, "stage_title": None}
    return {"stage_uuid": found[0].uuid, "stage_title": found[0].title}


def ontology_hash(project: ProjectInfo) -> str:
    return (
        project.ontology_hash
        or hashlib.sha256(orjson.dumps(project.ontology, option=orjson.OPT_SORT_KEYS)).hexdigest()
    )


class CocoSnapshotBuilder:
    """The `SnapshotBuilder` port over any `ObjectStore`.

    `refresh` returns the event to announce (detail-type `encord-mirror.snapshot.committed`, see
    `domain.codec`) with `detail`:
    snapshot_id, project_hash, branch, stage, stage_uuid, stage_title (the workflow stage's, as the manifest
    has them), run_id, created_at, previous_snapshot_id, ontology_hash,
    counts {rows, images, annotations}, changes {rows_added, rows_changed, rows_removed, rows_skipped,
    annotations_added, annotations_changed, annotations_removed}, coco_uri, coco_sha256, manifest_uri.
    The snapshot id is the event's idempotency key: a retried finalizer gets the same event back. With
    `announce_min_annotations=N`, a snapshot with fewer than N added or changed annotations is committed
    but not announced (None).
    """

    def __init__(
        self, lake: ObjectStore, *, encord_compatible: bool, announce_min_annotations: int = 0
    ) -> None:
        self._lake = lake
        self._compatible = encord_compatible
        self._min = announce_min_annotations
        self._converters: dict[str, Converter] = {}
        self._checked: set[str] = set()

    def refresh(
        self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
    ) -> SnapshotEvent | None:
        # Conversion makes many small objects and no cycles: with the cyclic collector on, each of its full
        # passes walks every row converted so far again (as in `convert.convert`).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._refresh(project, changes, run_id=run_id, now=now)
        finally:
            if collecting:
                gc.enable()

    def _refresh(
        self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
    ) -> SnapshotEvent | None:
        part = changes.partition
        sid = snapshot_id_for(run_id)
        latest_obj = self._lake.get(latest_key(part.project_hash, part.branch, part.stage))
        latest = _parsed_latest(latest_obj)
        mine = self._read_json(self._key(part, sid, "manifest.json"))
        if latest is not None and latest["snapshot_id"] >= sid:
            # A retry of this run (or of an older one, after a newer run committed): never rebuild.
            return self._event(part, mine) if mine is not None else None
        if mine is not None:
            # An earlier attempt wrote the snapshot but did not move latest.json: finish its job.
            self._move_latest(part, mine, latest_obj)
            return self._event(part, mine)
        newest = None
        if latest is None:
            # No readable latest.json (deleted or damaged: `outdated` named it): the newest whole snapshot
            # is the previous one, and latest.json is written again (over the damaged one's etag).
            newest = self._unfinished(part, None)
            latest = {"snapshot_id": newest["snapshot_id"]} if newest is not None else None

        converter = self._converter(project)
        ohash = ontology_hash(project)
        # A refresh reads the previous snapshot's entries of the rows it touches; a rescan touches them all.
        wanted = None if changes.rescan else {*changes.upserted, *changes.removed}
        prev = self._previous(part, latest["snapshot_id"], ohash, wanted) if latest is not None else None
        carried = prev if prev is not None and prev.coco is not None else None
        counters, touched = self._touched(part, changes, carried)
        assembly = _Assembly(carried, touched)
        try:
            previous = prev.rows if prev is not None else {}
            conversion = self._convert_touched(
                converter, part, touched, carried, previous, counters, assembly
            )
            tally = _tally(conversion, touched, carried)
            if tally is None:
                if newest is not None:
                    self._move_latest(part, newest, latest_obj)  # nothing changed since: point at it
                return None
            assembly.finish()
            manifest: JsonDict = {
                "snapshot_id": sid,
                "run_id": run_id,
                "created_at": now.astimezone(UTC).isoformat(),
                "project_hash": part.project_hash,
                "branch": part.branch,
                "stage": part.stage,
                **_workflow_stage(project, part.stage),
                "previous_snapshot_id": latest["snapshot_id"] if latest else None,
                **self._layout(ohash),
                "incremental": conversion.incremental,
                "counts": {"rows": assembly.rows, **tally.counts},
                "changes": {
                    "added": tally.added,
                    "changed": tally.changed,
                    "removed": tally.removed,
                    "skipped": dict(sorted(conversion.skipped.items())),
                    "annotations_added": conversion.annotations["added"],
                    "annotations_changed": conversion.annotations["changed"],
                    "annotations_removed": conversion.annotations["removed"],
                },
            }
            stored = self._write(part, sid, manifest, counters, tally, converter, assembly)
        finally:
            assembly.close()
        self._move_latest(part, stored, latest_obj)
        return self._event(part, stored)

    # -- the phases of a refresh -----------------------------------------------------------------
    def _touched(
        self, part: Partition, changes: PartitionChanges, carried: _Previous | None
    ) -> tuple[dict[str, int], list[str]]:
        """The id counters to number on from, and the rows to convert (in label-hash order)."""
        if carried is None:
            # No usable previous snapshot: the first one of the partition, or the ontology changed (the ids
            # restart then, but the manifest still compares rows with the previous snapshot's).
            # Corrected mode numbers from 1 (COCOeval reads a matched id 0 as "unmatched").
            first_id = 0 if self._compatible else 1
            counters = {"image": first_id, "annotation": first_id, "track": 0}
            return counters, sorted(self._listed(part) | set(changes.removed))
        touched = set(changes.upserted) | set(changes.removed)
        if changes.rescan:
            # An earlier refresh failed, so which rows changed since the previous snapshot is not known:
            # every row there and every row of the snapshot is checked (unchanged ones keep their ids).
            touched |= {*self._listed(part), *carried.rows}
        return dict(carried.counters), sorted(touched)

    def _convert_touched(
        self,
        converter: Converter,
        part: Partition,
        touched: list[str],
        carried: _Previous | None,
        previous: Mapping[str, _PrevRow],
        counters: dict[str, int],
        assembly: _Assembly,
    ) -> _Conversion:
        """Read and convert the touched rows; a row is serialised as soon as its masks are computed and
        goes into the assembly at once (only its label hash and counts are kept, and its sha256 if the
        previous snapshot held it)."""
        out = _Conversion(previous, carried is not None)
        masks = _RowMasks()
        waiting: list[tuple[str, _Converted]] = []

        def finish_waiting() -> None:
            masks.flush()
            for label_hash, converted in waiting:
                if label_hash in masks.failed:
                    out.leave_out(label_hash, masks.failed[label_hash])
                    continue
                old = carried.rows.get(label_hash) if carried is not None else None
                new = self._serialise(label_hash, converted, carried, old, out.annotations)
                assembly.add(label_hash, new)
                out.add(label_hash, new)
            waiting.clear()

        for label_hash in touched:
            stored = self._lake.get(label_key(part.project_hash, part.branch, part.stage, label_hash))
            if stored is None:
                out.gone.add(label_hash)
                continue
            old = carried.rows.get(label_hash) if carried is not None else None
            masks.row = label_hash
            try:
                old_state = (
                    _RowState(**orjson.loads(old.state)) if carried is not None and old is not None else None
                )
                converted = self._convert_row(
                    converter, orjson.loads(stored.body), stored.body, old_state, counters, masks
                )
            except _ROW_ERRORS as exc:
                # One bad row must not hold back the partition's snapshot: it is left out and named in the
                # manifest, and comes back when it is fixed (touched again) or the ontology changes.
                out.leave_out(label_hash, f"{type(exc).__name__}: {exc}")
                continue
            waiting.append((label_hash, converted))
            # A row is serialised once its masks are computed: as soon as the shared queue is empty.
            if not masks or len(waiting) >= _WAITING_ROWS:
                finish_waiting()
        finish_waiting()
        return out

    def _write(
        self,
        part: Partition,
        sid: str,
        manifest: JsonDict,
        counters: dict[str, int],
        tally: _Tally,
        converter: Converter,
        assembly: _Assembly,
    ) -> Mapping[str, Any]:
        """Write coco.json (streamed from the assembly), rows.tsv and the manifest (create-only, in that
        order: the manifest says the snapshot is whole); the manifest as stored."""
        keys = {name: self._key(part, sid, name) for name in ("coco.json", ROWS_FILE, "manifest.json")}
        title = assembly.first_title
        head = b"".join(
            [
                b'{"info":',
                orjson.dumps(info(None if title is None else str(title))),
                b',"categories":',
                orjson.dumps(converter.ontology.coco_categories(encord_compatible=self._compatible)),
            ]
        )
        digest, size = self._put_stream_once(keys["coco.json"], assembly.coco(head))
        rows_head = {**self._layout(str(manifest["ontology_hash"])), "next": counters, "counts": tally.counts}
        self._put_stream_once(
            keys[ROWS_FILE], chain([_ROWS_V2 + orjson.dumps(rows_head) + b"\n"], assembly.lines.blocks())
        )
        manifest["coco"] = {
            "key": keys["coco.json"],
            "uri": self._lake.uri(keys["coco.json"]),
            "sha256": digest,
            "bytes": size,
        }
        manifest["manifest_uri"] = self._lake.uri(keys["manifest.json"])
        # One JSON object on one line, newline-terminated (Hive JSON SerDes and pyarrow read it); "rows"
        # goes last, streamed as its entries' bytes.
        manifest_body = chain(
            [orjson.dumps(manifest)[:-1] + b',"rows":{'], assembly.entries.blocks(), [b"}}\n"]
        )
        try:
            self._lake.put_stream(keys["manifest.json"], manifest_body, if_none_match=True)
        except PreconditionFailedError:
            return self._read_json(keys["manifest.json"]) or manifest
        return manifest

    def drift(
        self, partition: Partition, rows: Mapping[str, str], *, recover: bool
    ) -> tuple[PartitionChanges, SnapshotEvent | None]:
        part = partition
        latest_obj = self._lake.get(latest_key(part.project_hash, part.branch, part.stage))
        latest = _parsed_latest(latest_obj)
        manifest = self._read_json(str(latest["manifest"])) if latest is not None else None
        if recover:
            unfinished = self._unfinished(part, latest["snapshot_id"] if latest is not None else None)
            if unfinished is not None:
                # A finalizer died after writing this snapshot and before moving latest.json: finish it.
                self._move_latest(part, unfinished, latest_obj)
                manifest = unfinished
        held = {h: r.get("sha256") for h, r in (manifest or {}).get("rows", {}).items()}
        upserted = tuple(sorted(h for h, sha in rows.items() if held.get(h) != sha))
        removed = tuple(sorted(h for h in held if h not in rows))
        event = self._event(part, manifest) if recover and manifest is not None else None
        return PartitionChanges(part, upserted, removed), event

    def partitions(self, project_hash: str) -> set[Partition]:
        latest, snapshotted = self._pointers(project_hash)
        return {partition_of(key) for key in latest} | snapshotted

    def prune(
        self, project_hash: str, *, keep: int | None, keep_days: int | None, now: datetime
    ) -> list[tuple[Partition, str]]:
        """Delete what retention lets go, recording it in the partition's `pruned.json` first, so a reader
        asked for a deleted snapshot says so. A snapshot's manifest is deleted last: one half-deleted is
        still listed, and the next prune finishes it. In a versioned bucket each delete leaves a delete
        marker; the bytes stay as noncurrent versions until a lifecycle rule expires them."""
        if keep is None and keep_days is None:
            return []
        found: dict[Partition, dict[str, list[str]]] = {}
        for key in self._lake.list_keys(f"coco/project={project_hash}/"):
            parts = key.split("/")
            if len(parts) == 7 and parts[4] == "snapshots":
                part = partition_of("/".join([*parts[:4], "latest.json"]))
                found.setdefault(part, {}).setdefault(parts[5], []).append(key)
        pruned: list[tuple[Partition, str]] = []
        for part, snapshots in sorted(found.items()):
            latest = _parsed_latest(self._lake.get(latest_key(part.project_hash, part.branch, part.stage)))
            if latest is None:
                continue  # nothing committed: no snapshot is known to be older than the latest
            doomed = prunable(snapshots, str(latest["snapshot_id"]), keep=keep, keep_days=keep_days, now=now)
            if not doomed:
                continue
            self._record_pruned(part, doomed, keep=keep, keep_days=keep_days, now=now)
            for snapshot_id in doomed:
                for key in sorted(snapshots[snapshot_id], key=lambda k: k.endswith("/manifest.json")):
                    self._lake.delete(key)
                pruned.append((part, snapshot_id))
        return pruned

    def _record_pruned(
        self, part: Partition, doomed: list[str], *, keep: int | None, keep_days: int | None, now: datetime
    ) -> None:
        key = pruned_key(part.project_hash, part.branch, part.stage)
        try:
            before = self._read_json(key)
        except orjson.JSONDecodeError:
            before = None
        before = before if isinstance(before, dict) else {}
        record = {
            "format_version": 1,
            "first": min(str(before.get("first") or doomed[0]), doomed[0]),
            "through": max(str(before.get("through") or doomed[-1]), doomed[-1]),
            "pruned_at": now.astimezone(UTC).isoformat(),
            "keep": keep,
            "keep_days": keep_days,
        }
        self._lake.put(key, orjson.dumps(record) + b"\n")

    def _latest_keys(self, project_hash: str) -> list[str]:
        return self._pointers(project_hash)[0]

    def _pointers(self, project_hash: str) -> tuple[list[str], set[Partition]]:
        """The project's `latest.json` keys, and the partitions that hold a whole snapshot (a manifest)."""
        latest: list[str] = []
        snapshotted: set[Partition] = set()
        for key in self._lake.list_keys(f"coco/project={project_hash}/"):
            parts = key.split("/")
            if len(parts) == 5 and key.endswith("/latest.json"):
                latest.append(key)
            elif len(parts) == 7 and parts[4] == "snapshots" and parts[6] == "manifest.json":
                snapshotted.add(partition_of("/".join([*parts[:4], "latest.json"])))
        return latest, snapshotted

    def _unfinished(self, part: Partition, latest_id: str | None) -> JsonDict | None:
        """The newest snapshot of the partition newer than `latest_id` whose manifest (its last file) is
        written: one a finalizer committed all but `latest.json` of."""
        prefix = snapshot_key(part.project_hash, part.branch, part.stage, "", "")[:-1]
        keys = self._lake.list_keys(prefix)
        ids = [k[len(prefix) :].split("/", 1)[0] for k in keys if k.endswith("/manifest.json")]
        newer = sorted(i for i in ids if latest_id is None or i > latest_id)
        return self._read_json(self._key(part, newer[-1], "manifest.json")) if newer else None

    # -- helpers ---------------------------------------------------------------------------------
    def _previous(
        self, part: Partition, snapshot_id: str, ohash: str, wanted: set[str] | None
    ) -> _Previous | None:
        """The previous snapshot as far as it can be read; `coco` and `rows_file` are set only if it can be
        carried over. Its rows are read for the `wanted` label hashes (None: all) when it is carried over,
        else all of them (the refresh rebuilds and compares every row)."""
        stream = self._lake.open(self._key(part, snapshot_id, ROWS_FILE))
        source = _Source.of(stream) if stream is not None else None
        prev: _Previous | None = None
        try:
            # Another layout (an earlier version's `#next` rows.tsv) is never carried over: its snapshot
            # format is older, so the partition is rebuilt; the manifest still names its rows.
            if source is not None:
                rows_file = _RowsFile(source)
                header = rows_file.header
                layout = {k: header.get(k) for k in _LAYOUT}
                rows, images_len, annotations_len = rows_file.index(
                    wanted if layout == self._layout(ohash) else None
                )
                counters = {k: int(header["next"][k]) for k in ("image", "annotation", "track")}
                counts = {k: int(header["counts"][k]) for k in ("images", "annotations")}
                prev = _Previous(layout, counters, counts, rows, rows_file, images_len, annotations_len)
        except _ROW_ERRORS:
            prev = None
        if prev is None:
            if source is not None:
                source.close()
            # No readable rows.tsv: the manifest still says which rows the snapshot held, for the changes.
            manifest = self._read_json(self._key(part, snapshot_id, "manifest.json"))
            if manifest is None:
                return None
            rows = {h: _PrevRow(orjson.dumps(r), b"", 0, 0, 0, 0) for h, r in manifest["rows"].items()}
            return _Previous({k: manifest.get(k) for k in _LAYOUT}, {}, {}, rows, None, 0, 0)
        if prev.layout == self._layout(ohash):
            stream = self._lake.open(self._key(part, snapshot_id, "coco.json"))
            if stream is not None:
                self._attach(prev, _Source.of(stream))
            if prev.coco is None and wanted is not None and prev.rows_file is not None:
                prev.rows = prev.rows_file.index(None)[0]  # not carried over after all: every row
        if prev.coco is None:
            prev.close()
        return prev

    @staticmethod
    def _attach(prev: _Previous, coco: _Source) -> None:
        """Carry `coco` over if rows.tsv's byte counts lay it out exactly; else close it (the refresh
        rebuilds)."""
        # The first `,"images":[` outside a string: inside one its quotes would be escaped.
        start = coco.find_head(_IMAGES_OPEN)
        images_at = start + len(_IMAGES_OPEN)
        images_end = images_at + prev.images_len
        annotations_at = images_end + len(_ANNOTATIONS_OPEN)
        if (
            start >= 0
            and coco.read(images_end, annotations_at) == _ANNOTATIONS_OPEN
            and coco.size == annotations_at + prev.annotations_len + len(_COCO_CLOSE)
            and coco.read(coco.size - len(_COCO_CLOSE), coco.size) == _COCO_CLOSE
        ):
            prev.coco, prev.images_at, prev.annotations_at = coco, images_at, annotations_at
        else:
            coco.close()

    def _serialise(
        self,
        label_hash: str,
        converted: _Converted,
        carried: _Previous | None,
        old: _PrevRow | None,
        ann_changes: dict[str, int],
    ) -> _NewRow:
        images = orjson.dumps(converted.images)[1:-1]
        annotations = orjson.dumps(converted.annotations)[1:-1]
        if carried is None or carried.coco is None or old is None:
            ann_changes["added"] += len(converted.annotations)
        else:
            at = carried.annotations_at
            before = {
                a["id"]: a for a in orjson.loads(b"[" + carried.coco.read(at + old.a0, at + old.a1) + b"]")
            }
            after: list[JsonDict] = orjson.loads(b"[" + annotations + b"]")
            after_ids = {a["id"] for a in after}
            ann_changes["added"] += sum(1 for a in after if a["id"] not in before)
            ann_changes["changed"] += sum(1 for a in after if a["id"] in before and before[a["id"]] != a)
            ann_changes["removed"] += sum(1 for i in before if i not in after_ids)
        record = converted.record
        record_json = orjson.dumps(record)
        return _NewRow(
            str(record["sha256"]),
            record.get("data_title"),
            len(converted.images),
            len(converted.annotations),
            images,
            annotations,
            _rows_line(label_hash.encode(), images, annotations, record_json, converted.state),
            _entry(label_hash, record_json),
        )

    def _layout(self, ohash: str) -> JsonDict:
        return {
            "ontology_hash": ohash,
            "format_version": SNAPSHOT_FORMAT_VERSION,
            "encord_compatible": self._compatible,
        }

    def outdated(self, project_hash: str) -> list[Partition]:
        """The project's partitions whose latest snapshot has another format version or COCO mode: the
        finalizer rebuilds them (`PartitionChanges.rescan`). Checked once per builder and project (the
        format only changes with the code, and a rebuild that fails is owed through the state store)."""
        if project_hash in self._checked:
            return []
        keys, snapshotted = self._pointers(project_hash)
        out = snapshotted - {partition_of(key) for key in keys}
        for part in sorted(out):
            where = self._lake.uri(latest_key(part.project_hash, part.branch, part.stage))
            _log.warning("%s is missing: rebuilding the partition's snapshot and its latest.json", where)
        for key in keys:
            stored = self._lake.get(key)
            latest = _parsed_latest(stored)
            if latest is None and stored is not None:
                _log.warning(
                    "%s is damaged (not a latest.json pointer): rebuilding the partition's snapshot and "
                    "its latest.json",
                    self._lake.uri(key),
                )
                out.add(partition_of(key))
            elif latest is not None and (
                latest.get("format_version") != SNAPSHOT_FORMAT_VERSION
                or latest.get("encord_compatible") != self._compatible
            ):
                out.add(partition_of(key))
        self._checked.add(project_hash)
        return sorted(out)

    def _converter(self, project: ProjectInfo) -> Converter:
        key = ontology_hash(project)
        if key not in self._converters:
            self._converters[key] = make_converter(
                Ontology.from_dict(project.ontology), encord_compatible=self._compatible
            )
        return self._converters[key]

    def _convert_row(
        self,
        converter: Converter,
        row: JsonDict,
        body: bytes,
        old: _RowState | None,
        counters: dict[str, int],
        masks: MaskBatch,
    ) -> _Converted:
        """The row's images and annotations with their ids; its masks are left in `masks`."""
        old = old or _RowState({}, {}, {})
        state = _RowState({}, {}, {})

        def next_id(kind: str) -> int:
            value = counters[kind]
            counters[kind] = value + 1
            return value

        entries: dict[ImageKey, ImageEntry] = {}
        images: list[JsonDict] = []
        for entry in row_images(row, encord_compatible=self._compatible):
            if entry.key in entries:
                continue  # a (data_hash, frame) twice in one row: one image
            k = _ikey(entry.key)
            image_id = old.images[k] if k in old.images else next_id("image")
            state.images[k] = image_id
            entries[entry.key] = entry
            images.append(
                {
                    "coco_url": entry.body["coco_url"],
                    "id": image_id,
                    **{x: v for x, v in entry.body.items() if x != "coco_url"},
                }
            )
        annotations: list[JsonDict] = []
        ann: AnnotationEntry
        for ann in row_annotations(
            converter, row, entries, lambda key: state.images[_ikey(key)], None, masks
        ):
            k = f"{_ikey(ann.image_key)}/{ann.object_hash}"
            if k in state.annotations:
                ann_id = next_id("annotation")  # the same object twice on one frame: keep both
            else:
                ann_id = old.annotations[k] if k in old.annotations else next_id("annotation")
                state.annotations[k] = ann_id
            if ann.object_hash not in state.tracks:
                state.tracks[ann.object_hash] = old.tracks.get(ann.object_hash, -1)
                if state.tracks[ann.object_hash] < 0:
                    state.tracks[ann.object_hash] = next_id("track")
            ann.body["id"] = ann_id
            ann.body["attributes"]["track_id"] = state.tracks[ann.object_hash]
            annotations.append(ann.body)
        mirror = row.get(MIRROR_KEY) or {}
        record = {
            "label_hash": row.get("label_hash"),
            "data_hash": row.get("data_hash"),
            "data_title": row.get("data_title"),
            "last_edited_at": mirror.get("last_edited_at") or row.get("last_edited_at"),
            # The row's own content hash, as its object and the run manifests carry it (so the three join);
            # the bytes' hash only for an object without one.
            "sha256": mirror.get("sha256") or hashlib.sha256(body).hexdigest(),
            "images": len(images),
            "annotations": len(annotations),
        }
        state_json = orjson.dumps(
            {"images": state.images, "annotations": state.annotations, "tracks": state.tracks}
        )
        return _Converted(images, annotations, state_json, record)

    def _listed(self, part: Partition) -> set[str]:
        """The label hashes the lake holds in the partition now."""
        prefix = partition_prefix("labels", part.project_hash, part.branch, part.stage)
        return {k[len(prefix) : -len(".json")] for k in self._lake.list_keys(prefix) if k.endswith(".json")}

    def _key(self, part: Partition, snapshot_id: str, name: str) -> str:
        return snapshot_key(part.project_hash, part.branch, part.stage, snapshot_id, name)

    def _read_json(self, key: str) -> Any:
        stored = self._lake.get(key)
        return None if stored is None else orjson.loads(stored.body)

    def _put_stream_once(self, key: str, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Stream `chunks` to `key` create-only; their sha256 and size. An object an earlier attempt of this
        run wrote must hold the same bytes, as its inputs are the same (compared by streaming its sha256)."""
        digest, size = hashlib.sha256(), 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        try:
            self._lake.put_stream(key, counted(), if_none_match=True)
        except PreconditionFailedError:
            for _ in counted():  # the rest of our bytes, for their digest
                pass
            stream = self._lake.open(key)
            existing = hashlib.sha256()
            if stream is not None:
                with stream:
                    while block := stream.read(_BLOCK):
                        existing.update(block)
            if stream is None or existing.hexdigest() != digest.hexdigest():
                raise SnapshotConflictError(key, "already written with different content") from None
        return digest.hexdigest(), size

    def _move_latest(self, part: Partition, manifest: Mapping[str, Any], latest_obj: Any) -> None:
        key = latest_key(part.project_hash, part.branch, part.stage)
        body = orjson.dumps(
            {
                "snapshot_id": manifest["snapshot_id"],
                "run_id": manifest["run_id"],
                "created_at": manifest["created_at"],
                "coco": manifest["coco"]["key"],
                "manifest": snapshot_key(
                    part.project_hash, part.branch, part.stage, manifest["snapshot_id"], "manifest.json"
                ),
                "counts": manifest["counts"],
                "format_version": manifest.get("format_version", 1),
                "encord_compatible": manifest.get("encord_compatible"),
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        try:
            if latest_obj is None:
                self._lake.put(key, body, if_none_match=True)
            else:
                self._lake.put(key, body, if_match=latest_obj.etag)
        except PreconditionFailedError:
            raise SnapshotConflictError(key, "latest.json moved while this snapshot was built") from None

    def _event(self, part: Partition, manifest: Mapping[str, Any]) -> SnapshotEvent | None:
        changes = manifest["changes"]
        if changes["annotations_added"] + changes["annotations_changed"] < self._min:
            return None
        detail = {
            "snapshot_id": manifest["snapshot_id"],
            "project_hash": part.project_hash,
            "branch": part.branch,
            "stage": part.stage,
            "stage_uuid": manifest.get("stage_uuid"),  # null from a manifest of snapshot format 2
            "stage_title": manifest.get("stage_title"),
            "run_id": manifest["run_id"],
            "created_at": manifest["created_at"],
            "previous_snapshot_id": manifest["previous_snapshot_id"],
            "ontology_hash": manifest["ontology_hash"],
            "counts": manifest["counts"],
            "changes": {
                "rows_added": len(changes["added"]),
                "rows_changed": len(changes["changed"]),
                "rows_removed": len(changes["removed"]),
                "rows_skipped": len(changes.get("skipped") or {}),
                "annotations_added": changes["annotations_added"],
                "annotations_changed": changes["annotations_changed"],
                "annotations_removed": changes["annotations_removed"],
            },
            "coco_uri": manifest["coco"]["uri"],
            "coco_sha256": manifest["coco"]["sha256"],
            "manifest_uri": manifest["manifest_uri"],
        }
        return SnapshotEvent(manifest["snapshot_id"], part.project_hash, part.branch, part.stage, detail)


def _parsed_latest(stored: StoredObject | None) -> JsonDict | None:
    """A partition's `latest.json`, or None when there is none or it cannot be read as one."""
    if stored is None:
        return None
    try:
        latest = orjson.loads(stored.body)
    except orjson.JSONDecodeError:
        return None
    return latest if isinstance(latest, dict) and {"snapshot_id", "manifest"} <= set(latest) else None


_log = logging.getLogger(__name__)


def snapshot_builder(
    lake: ObjectStore, mode: str = DEFAULT_COCO_MODE, *, announce_min_annotations: int = 0
) -> CocoSnapshotBuilder | None:
    """The snapshot step for a deployment's COCO mode: `corrected` (the converter's documented
    corrections), `encord-compatible` (CocoExporter's output exactly) or `off` (no snapshots)."""
    if mode not in COCO_MODES:
        raise ValueError(f"COCO mode must be one of {', '.join(COCO_MODES)} (got {mode!r})")
    if mode == "off":
        return None
    return CocoSnapshotBuilder(
        lake, encord_compatible=mode == "encord-compatible", announce_min_annotations=announce_min_annotations
    )
