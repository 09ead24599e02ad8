"""The change log: every version of every row the lake held, on every lake (not only in S3 object
versions), immutable and compacted per run.

```
history/project=<p>/run=<run_id>/part-<n>.jsonl.gz   the versions a run wrote or removed, with the bytes
history/project=<p>/run=<run_id>/_index.json         written last, create-only: the run's entries
history/project=<p>/base=<run_id>/...                 retention: what was current when runs up to <run_id>
                                                      were folded (same format)
```
A part line is `<entry JSON> TAB <the row object's bytes, exactly as the lake held them>` (orjson escapes
tabs inside strings, so the first tab ends the entry); a removal has no bytes. A row object's final newline
(row format 3) would end the line early: it is left out of the line and the entry says `"newline": true`.
`_index.json` is one line, `{"format_version": 2, "run_id", "time", "entries": [entry + {"part", "line"}]}`
with entry `{label_hash, branch, stage, data_hash, status, key, old_key, sha256, last_edited_at, run_id,
time[, newline]}` (version 1: no `newline`, and the index does not end with a newline);
`status` is `written`, `moved` (written at `key`, removed at `old_key`), `removed`, or `baseline` (a row
the lake held before its first logged run). `time` is when the run was finalized, the moment its versions
became the lake's committed state.

Every run writes an index, even when it changed nothing, so the log knows every run. The first logged run
of a project also records a baseline of the rows it did not write (a lake synced before the log existed).
Retention (`history_keep_runs`, default: keep all) folds the runs before the newest N into a base holding
the version of each row that was current then: a row keeps its history back to the base, and a question
about an earlier time names the base's run as the oldest answerable one.
"""

from __future__ import annotations

import contextlib
import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from encord_mirror.domain.lake import partition_of
from encord_mirror.domain.models import STRAY_COPY, JsonDict, RowOutcome, RunRecord
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError
from encord_mirror.domain.rowdoc import read_mirror
from encord_mirror.domain.watermark import iso_utc

FORMAT_VERSION = 2
INDEX = "_index.json"
PART_ROWS = 500  # rows per part file: bounds a finalizer's memory whatever a run's size
RUN_ID = re.compile(r"^\d{8}T\d{6}(\.\d+)?Z-[0-9a-f]+$")
_LOGGED = ("written", "moved", "removed")
_DATE_WITH_ZONE = re.compile(r"^\d{4}-\d{2}-\d{2}[+-]\d{2}:?\d{2}$")


class HistoryError(LookupError):
    """A history question that has no whole answer; the message names what was asked."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A version to log: `key` is where its bytes are (None for a removal)."""

    label_hash: str
    status: str
    key: str | None
    old_key: str | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class Version:
    project_hash: str
    label_hash: str
    branch: str
    stage: str
    status: str
    run_id: str
    time: str
    sha256: str | None
    key: str | None
    old_key: str | None
    last_edited_at: str | None
    part: str  # the part file holding it
    line: int
    newline: bool = False  # its bytes end with a newline, which the part line leaves out

    def as_dict(self) -> JsonDict:
        return {k: getattr(self, k) for k in self.__slots__ if k not in ("part", "line", "newline")}


def history_prefix(project_hash: str) -> str:
    return f"history/project={project_hash}/"


class ChangeLog:
    """Writes a run's change log (a `RunRecorder`) and answers history questions over any lake."""

    def __init__(self, lake: ObjectStore, *, keep_runs: int | None = None) -> None:
        if keep_runs is not None and keep_runs < 1:
            raise ValueError(f"keep_runs must be at least 1 (got {keep_runs})")
        self._lake = lake
        self._keep = keep_runs
        self._indexes: dict[str, JsonDict] = {}

    # writing ------------------------------------------------------------------------------------------
    def record_run(self, run: RunRecord, outcomes: Sequence[RowOutcome], *, now: datetime) -> None:
        project = run.project_hash
        folder = f"{history_prefix(project)}run={run.run_id}/"
        if self._lake.get(folder + INDEX) is not None:
            return  # a retried finalizer: the log of this run is complete
        first = not any(k.endswith(INDEX) for k in self._lake.list_keys(history_prefix(project)))
        time = iso_utc(now)
        pending = [
            _Pending(o.label_hash, o.status, o.key if o.status != "removed" else None, o.old_key, o.sha256)
            for o in outcomes
            if o.status in _LOGGED and o.reason != STRAY_COPY
        ]
        if first:
            written = {o.key for o in outcomes if o.key and o.status in ("written", "moved")}
            pending += [
                _Pending(key.rsplit("/", 1)[1].removesuffix(".json"), "baseline", key, None, None)
                for key in sorted(self._lake.list_keys(f"labels/project={project}/"))
                if key.endswith(".json") and key not in written
            ]
        entries = self._write_parts(folder, run.run_id, time, pending)
        index = {"format_version": FORMAT_VERSION, "run_id": run.run_id, "time": time, "entries": entries}
        self._create(folder + INDEX, orjson.dumps(index, option=orjson.OPT_APPEND_NEWLINE))
        if self._keep is not None:
            self._fold(project)

    def _write_parts(
        self, folder: str, run_id: str, time: str, pending: Sequence[_Pending]
    ) -> list[JsonDict]:
        entries: list[JsonDict] = []
        for n in range(0, len(pending), PART_ROWS):
            part = f"{folder}part-{n // PART_ROWS:05d}.jsonl.gz"
            lines = []
            for p in pending[n : n + PART_ROWS]:
                body = self._lake.get(p.key) if p.key else None
                mirror = (read_mirror(body.body) if body is not None else None) or {}
                where = partition_of(p.key or p.old_key or "")
                entry: JsonDict = {
                    "label_hash": p.label_hash,
                    "branch": where.branch,
                    "stage": where.stage,
                    "data_hash": mirror.get("data_hash"),
                    "status": p.status,
                    "key": p.key,
                    "old_key": p.old_key,
                    "sha256": mirror.get("sha256") if p.key else None,
                    "last_edited_at": mirror.get("last_edited_at"),
                    "run_id": run_id,
                    "time": time,
                }
                if p.key and (body is None or (p.sha256 and entry["sha256"] != p.sha256)):
                    # A later run replaced the object before this (retried) finalizer read it: the version
                    # is in that run's log, not here. Recorded without bytes rather than with wrong ones.
                    entry["status"] = f"{p.status}-superseded"
                    body = None
                row = body.body if body is not None else b""
                if row.endswith(b"\n"):
                    row = row[:-1]
                    entry["newline"] = True
                lines.append(orjson.dumps(entry) + b"\t" + row + b"\n")
                entries.append({**entry, "part": part, "line": len(lines) - 1})
            self._lake.put(part, gzip.compress(b"".join(lines), mtime=0), content_type="application/gzip")
        return entries

    def _create(self, key: str, body: bytes) -> None:
        # Another attempt of the same run may have finished first: its log stands.
        with contextlib.suppress(PreconditionFailedError):
            self._lake.put(key, body, if_none_match=True)

    def _fold(self, project: str) -> None:
        """Retention: fold every run before the newest `keep_runs` into one base (see the module doc)."""
        assert self._keep is not None
        runs = self._run_folders(project)
        if len(runs) <= self._keep:
            return
        old_base = self._base_folder(project)
        folded = runs[: len(runs) - self._keep]
        sources = ([old_base] if old_base else []) + folded
        current: dict[tuple[str, str], JsonDict] = {}
        for folder in sources:
            for entry in self._index(folder + INDEX)["entries"]:
                current[(entry["label_hash"], entry["branch"])] = entry
        horizon = folded[-1].rsplit("run=", 1)[1].rstrip("/")
        horizon_time = self._index(folded[-1] + INDEX)["time"]
        base = f"{history_prefix(project)}base={horizon}/"
        keep = [e for e in current.values() if e["status"] in ("written", "moved", "baseline")]
        entries: list[JsonDict] = []
        lines: list[bytes] = []
        parts = 0

        def flush() -> None:
            nonlocal lines, parts
            if lines:
                key = f"{base}part-{parts:05d}.jsonl.gz"
                self._lake.put(key, gzip.compress(b"".join(lines), mtime=0), content_type="application/gzip")
                for e in entries[-len(lines) :]:
                    e["part"] = key
                parts += 1
                lines = []

        for entry in sorted(keep, key=lambda e: (e["label_hash"], e["branch"])):
            raw = self._part_lines(entry["part"])[entry["line"]]
            entries.append({**entry, "line": len(lines)})
            lines.append(raw + b"\n")
            if len(lines) >= PART_ROWS:
                flush()
        flush()
        index = {
            "format_version": FORMAT_VERSION,
            "run_id": horizon,
            "time": horizon_time,
            "base": True,
            "entries": entries,
        }
        self._create(base + INDEX, orjson.dumps(index, option=orjson.OPT_APPEND_NEWLINE))
        # The base is complete: what it replaces can go (a reader ignores runs at or before a base).
        for folder in sources:
            for key in list(self._lake.list_keys(folder)):
                self._lake.delete(key)

    # reading ------------------------------------------------------------------------------------------
    def projects(self) -> list[str]:
        found = {k.split("/")[1].removeprefix("project=") for k in self._lake.list_keys("history/")}
        return sorted(found)

    def _run_folders(self, project: str) -> list[str]:
        """The project's logged runs (complete, after its base), oldest first."""
        base = self._base_folder(project)
        horizon = base.rsplit("base=", 1)[1].rstrip("/") if base else ""
        folders = {
            k.removesuffix(INDEX)
            for k in self._lake.list_keys(f"{history_prefix(project)}run=")
            if k.endswith(INDEX)
        }
        return sorted(f for f in folders if f.rsplit("run=", 1)[1].rstrip("/") > horizon)

    def _base_folder(self, project: str) -> str | None:
        bases = sorted(
            k.removesuffix(INDEX)
            for k in self._lake.list_keys(f"{history_prefix(project)}base=")
            if k.endswith(INDEX)
        )
        return bases[-1] if bases else None

    def _index(self, key: str) -> JsonDict:
        if key not in self._indexes:
            stored = self._lake.get(key)
            if stored is None:
                raise HistoryError(f"the change log lost {key} while it was being read")
            self._indexes[key] = orjson.loads(stored.body)
        return self._indexes[key]

    def _part_lines(self, key: str) -> list[bytes]:
        stored = self._lake.get(key)
        if stored is None:
            raise HistoryError(f"the change log's part {key} is missing")
        return gzip.decompress(stored.body).split(b"\n")[:-1]

    def runs(self, project: str) -> list[tuple[str, str, bool]]:
        """(run_id, finalized time, is the base) of every logged run, oldest first; the base, when there
        is one, stands for every run up to its run id."""
        base = self._base_folder(project)
        folders = ([base] if base else []) + self._run_folders(project)
        return [
            (self._index(f + INDEX)["run_id"], self._index(f + INDEX)["time"], f == base) for f in folders
        ]

    def versions(self, label_hash: str, *, project: str | None = None) -> list[Version]:
        """Every logged version of the row (all branches), oldest first. HistoryError when none."""
        projects = [project] if project else self.projects()
        found: list[Version] = []
        for p in projects:
            base = self._base_folder(p)
            folders = ([base] if base else []) + self._run_folders(p)
            for folder in folders:
                for e in self._index(folder + INDEX)["entries"]:
                    if e["label_hash"] == label_hash:
                        found.append(_version(p, e))
        if not found:
            where = f"project {project}" if project else f"{len(projects)} logged project(s)"
            raise HistoryError(f"label hash {label_hash}: no version in the change log of {where}")
        return sorted(found, key=lambda v: (v.run_id, v.status != "removed"))

    def row_bytes(self, version: Version) -> bytes:
        line = self._part_lines(version.part)[version.line]
        _entry, _, row = line.partition(b"\t")
        if not row:
            raise HistoryError(
                f"label hash {version.label_hash}: run {version.run_id} {version.status} it; no bytes to show"
            )
        return row + b"\n" if version.newline else row

    def as_of(
        self, label_hash: str, when: str, *, branch: str = "main", project: str | None = None
    ) -> Version:
        """The version of the row (on `branch`) that the lake held after run `when` (a run id) or at time
        `when` (ISO 8601). HistoryError names what was asked when there is no whole answer."""
        versions = [v for v in self.versions(label_hash, project=project) if v.branch == branch]
        if not versions:
            raise HistoryError(f"label hash {label_hash}: no version on branch {branch!r}")
        project_hash = versions[0].project_hash
        runs = self.runs(project_hash)
        first_id, first_time, folded = runs[0]
        oldest = (
            f"the oldest kept history (runs up to {first_id} were folded by retention)"
            if folded
            else f"the first logged run ({first_id}, finalized at {first_time})"
        )
        if RUN_ID.match(when):
            known = [r for r, _, _ in runs]
            if when not in known and folded and when < first_id:
                raise HistoryError(f"--as-of {when}: before {oldest}")
            if when not in known:
                raise HistoryError(
                    f"--as-of {when}: no such run in project {project_hash}'s change log "
                    f"(it has {len(known)} runs, {known[0]} to {known[-1]})"
                )
            before = [v for v in versions if v.run_id <= when]
            cutoff = f"run {when}"
        else:
            at = parse_time(when)
            if at < datetime.fromisoformat(first_time):
                raise HistoryError(f"--as-of {when}: before {oldest}")
            before = [v for v in versions if datetime.fromisoformat(v.time) <= at]
            cutoff = when
        if not before:
            raise HistoryError(f"label hash {label_hash}: not in the lake yet as of {cutoff}")
        last = before[-1]
        if last.status == "removed" or last.status.endswith("superseded"):
            raise HistoryError(
                f"label hash {label_hash}: not in the lake as of {cutoff} (run {last.run_id}: {last.status})"
            )
        return last


def _version(project: str, e: JsonDict) -> Version:
    return Version(
        project_hash=project,
        label_hash=e["label_hash"],
        branch=e["branch"],
        stage=e["stage"],
        status=e["status"],
        run_id=e["run_id"],
        time=e["time"],
        sha256=e.get("sha256"),
        key=e.get("key"),
        old_key=e.get("old_key"),
        last_edited_at=e.get("last_edited_at"),
        part=e["part"],
        line=e["line"],
        newline=bool(e.get("newline")),
    )


def parse_time(value: str) -> datetime:
    """An `--as-of` time: ISO 8601 with a zone (`Z` or an offset); a date alone is its midnight."""
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if _DATE_WITH_ZONE.match(text):
        text = text[:10] + "T00:00:00" + text[10:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise HistoryError(
            f"--as-of {value!r}: neither a run id (20261123T182200.123Z-1a2b3c4d) nor an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None:
        raise HistoryError(f"--as-of {value!r}: give a timezone (e.g. {value.strip()}Z for UTC)")
    return parsed
