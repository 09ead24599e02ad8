"""The annotations table: one gzip JSON Lines file per (project, branch, stage) partition, kept current by
every run.

```
tables/annotations/project=<p>/branch=<b>/stage=<s>/annotations.jsonl.gz   one record per line (records.py)
tables/annotations/project=<p>/_table.json                                  {"format_version": 1}
```
(`_table.json`, like every JSON document of the lake, ends with a newline; one written without it is
rewritten by the next run.)

Why gzip JSON Lines and not Parquet: pyarrow's manylinux wheel is 136 MB unzipped, and the Lambda layer
is 109 MB without it, so the layer would be ~245 MB: over the 200 MB this project allows itself (Lambda's
limit is 250 MB). Athena, Glue, DuckDB, Spark and pandas all read gzip JSON Lines as they are.

A refresh follows the run, not the partition: it reads the changed rows only (from the current view) and
the partition's previous file, whose lines are sorted by label hash and start with it, so the unchanged
rows' lines are copied without being parsed. A changed row's records are replaced, a moved row's leave its
old partition and join its new one, a deleted row's go. The file is replaced by one PUT (atomic for a
reader); a partition left without records loses its file. Idempotent: a retried finalizer rewrites the
same file.

A project whose `_table.json` is missing (a lake written before this table existed, or a lost file) is
rebuilt once from every row of the current view, then kept current like any other.
"""

from __future__ import annotations

import bisect
import gzip
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from encord_mirror.domain.finalizer import touched_partitions
from encord_mirror.domain.lake import label_key, partition_of, partition_prefix
from encord_mirror.domain.models import Partition, RowOutcome, RunRecord, StoredObject
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.tables.records import annotation_records

TABLE_FILE = "annotations.jsonl.gz"
FORMAT_VERSION = 1
_LINE_START = b'{"label_hash":"'
MEMBER_ROWS = 16  # rows per gzip member: 1% of rows changed at random touches ~15% of the members
_MARKER = orjson.dumps({"format_version": FORMAT_VERSION}, option=orjson.OPT_APPEND_NEWLINE)


def table_key(part: Partition) -> str:
    return partition_prefix("tables/annotations", part.project_hash, part.branch, part.stage) + TABLE_FILE


def table_partition(key: str) -> Partition:
    """The partition of a table file's key."""
    project, branch, stage = (p.partition("=")[2] for p in key.split("/")[2:5])
    return partition_of(f"labels/project={project}/branch={branch}/stage={stage}/x.json")


def index_key(part: Partition) -> str:
    return table_key(part).removesuffix(TABLE_FILE) + "_members.json"


def marker_key(project_hash: str) -> str:
    return f"tables/annotations/project={project_hash}/_table.json"


@dataclass(frozen=True, slots=True)
class RefreshStats:
    """What one partition's refresh read and wrote (for the benchmark and the tests)."""

    rows_read: int  # row objects read from the current view
    lines_copied: int  # records of unchanged rows carried over from the previous file
    records_written: int  # records of the changed rows


def _line_hash(line: bytes) -> str:
    end = line.index(b'"', len(_LINE_START))
    return line[len(_LINE_START) : end].decode()


class AnnotationsTable:
    """Keeps the annotations table of every partition a run touched current (a `RunRecorder`)."""

    def __init__(self, lake: ObjectStore) -> None:
        self._lake = lake

    def record_run(self, run: RunRecord, outcomes: Sequence[RowOutcome], *, now: datetime) -> None:
        project = run.project_hash
        marker = self._lake.get(marker_key(project))
        if marker is None:
            self.rebuild_project(project)
            return
        if marker.body != _MARKER:
            self._lake.put(marker_key(project), _MARKER)  # written before lake documents ended with "\n"
        for change in touched_partitions(list(outcomes)):
            self.refresh(change.partition, change.upserted, change.removed)

    def rebuild_project(self, project_hash: str) -> None:
        """Every partition's file from every row of the current view, then the project's marker."""
        rows: dict[Partition, set[str]] = defaultdict(set)
        for key in self._lake.list_keys(f"labels/project={project_hash}/"):
            if key.endswith(".json"):
                rows[partition_of(key)].add(key.rsplit("/", 1)[1].removesuffix(".json"))
        stale = {
            table_partition(k)
            for k in self._lake.list_keys(f"tables/annotations/project={project_hash}/")
            if k.endswith(TABLE_FILE)
        }
        for part in sorted(set(rows) | stale):
            self.refresh(part, rows.get(part, set()), set(), previous=False)
        self._lake.put(marker_key(project_hash), _MARKER)

    def refresh(
        self, part: Partition, upserted: Iterable[str], removed: Iterable[str], *, previous: bool = True
    ) -> RefreshStats:
        """Replace the records of `upserted` rows (read from the current view: a row no longer there is
        dropped) and drop those of `removed` rows; `previous=False` starts from an empty table."""
        touched = set(upserted) | set(removed)
        key = table_key(part)
        old = self._lake.get(key) if previous else None
        members = self._members(part, old)
        fresh: dict[str, list[bytes]] = {}
        rows_read = written = 0
        pieces: list[tuple[str, bytes | memoryview]] = []
        for label_hash in sorted(set(upserted)):
            stored = self._lake.get(label_key(part.project_hash, part.branch, part.stage, label_hash))
            rows_read += 1
            if stored is not None:
                records = annotation_records(orjson.loads(stored.body))
                if records:
                    fresh[label_hash] = [orjson.dumps(r) + b"\n" for r in records]
            if not members and len(fresh) == MEMBER_ROWS:
                # A new table (a first run, a rebuild): compressed as it is read, so memory stays flat.
                written += sum(len(lines) for lines in fresh.values())
                pieces.extend(_compress(fresh))
                fresh = {}
        body = old.body if old is not None else b""
        # Each touched row belongs to the member whose first row sorts at or before it (or the first one).
        firsts = [m[0] for m in members]
        todo: dict[int, list[str]] = defaultdict(list)
        for label_hash in sorted(touched):
            todo[max(bisect.bisect_right(firsts, label_hash) - 1, 0)].append(label_hash)
        view = memoryview(body)
        copied = 0
        for i, (first, start, end) in enumerate(members):
            if i not in todo:
                pieces.append((first, view[start:end]))  # untouched: its compressed bytes, as they are
                continue
            rows: dict[str, list[bytes]] = defaultdict(list)
            for line in gzip.decompress(view[start:end]).splitlines(keepends=True):
                rows[_line_hash(line)].append(line)
            for label_hash in todo[i]:
                rows.pop(label_hash, None)
                if label_hash in fresh:
                    rows[label_hash] = fresh.pop(label_hash)
                    written += len(rows[label_hash])
            copied += sum(len(lines) for h, lines in rows.items() if h not in touched)
            pieces.extend(_compress(rows))
        written += sum(len(lines) for lines in fresh.values())  # a partition that had no table yet
        pieces.extend(_compress(fresh))
        if not pieces:
            if old is not None or not previous:
                self._lake.delete(key)
                self._lake.delete(index_key(part))
            return RefreshStats(rows_read, copied, written)
        etag = self._lake.put(key, b"".join(p for _, p in pieces), content_type="application/gzip")
        index = {"etag": etag, "members": [[first, len(p)] for first, p in pieces]}
        self._lake.put(index_key(part), orjson.dumps(index, option=orjson.OPT_APPEND_NEWLINE))
        return RefreshStats(rows_read, copied, written)

    def _members(self, part: Partition, old: StoredObject | None) -> list[tuple[str, int, int]]:
        """(first label hash, start, end) of each gzip member of the table file, from its index; the
        whole file as one member when the index is missing or belongs to another version of the file (a
        finalizer that died between the two writes): that refresh then reads it all, and indexes it."""
        if old is None:
            return []
        stored = self._lake.get(index_key(part))
        index = orjson.loads(stored.body) if stored is not None else {}
        if index.get("etag") == old.etag and sum(n for _, n in index["members"]) == len(old.body):
            out, at = [], 0
            for first, n in index["members"]:
                out.append((first, at, at + n))
                at += n
            return out
        return [("", 0, len(old.body))]


def _compress(rows: dict[str, list[bytes]]) -> list[tuple[str, bytes]]:
    """Rows (label hash -> its record lines) as gzip members of MEMBER_ROWS rows each, in label-hash order:
    a refresh rewrites only the members that hold a changed row, and copies the others' bytes."""
    ordered = sorted(rows.items())
    out = []
    for n in range(0, len(ordered), MEMBER_ROWS):
        chunk = ordered[n : n + MEMBER_ROWS]
        data = b"".join(line for _, lines in chunk for line in lines)
        out.append((chunk[0][0], gzip.compress(data, compresslevel=6, mtime=0)))
    return out


def _lines(body: bytes | None) -> Iterator[bytes]:
    if body is None:
        return iter(())
    return iter(gzip.GzipFile(fileobj=io.BytesIO(body), mode="rb"))


def read_table(lake: ObjectStore, part: Partition) -> list[dict[str, object]]:
    """The partition's records (empty when it has none)."""
    stored = lake.get(table_key(part))
    return [orjson.loads(line) for line in _lines(stored.body if stored else None)]
