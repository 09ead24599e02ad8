"""The emulator's in-memory truth: projects, data units, label rows per branch, and the server-side filters.

Pure (no sockets): the HTTP layer in `server.py` calls into `Store` under its lock.

Fixture format (written by `generate.py`, `testing.py` and others)::

    DIR/<project_hash>/project.json      {"title", "ontology": <OntologyStructure.to_dict()>,
                                           "workflow": {"stages": [{"uuid", "title", "stageType"}]}}
    DIR/<project_hash>/rows.jsonl        {"row": <LabelRowV2.to_encord_dict()>, "stage": <stage title>,
                                           "task_status": "QUEUED"|"ASSIGNED"|"IN_REVIEW"|"RETURNED"|...}
    DIR/<project_hash>/unlabelled.jsonl  {"data_hash", "data_title", "data_type", "dataset_hash",
                                           "dataset_title", "stage", "task_status", "width", "height"}
"""

from __future__ import annotations

import gc
import math
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

DateMode = Literal["strict", "inclusive"]
TASK_STATUSES = frozenset({"QUEUED", "ASSIGNED", "IN_REVIEW", "RETURNED", "COMPLETED"})
MAIN_BRANCH = "main"
LONG_FORMAT = "%a, %d %b %Y %H:%M:%S UTC"
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DEFAULT_MIME = {"IMAGE": "image/jpeg", "VIDEO": "video/mp4", "AUDIO": "audio/mpeg", "PDF": "application/pdf"}
_ID_NAMESPACE = uuid.UUID("5b0c3f1e-8f7e-4c59-9a53-0d6f1f3e7a10")


class StoreError(Exception):
    """Base of the emulator store's errors; `code` is the legacy envelope error the server answers with."""

    code = "INVALID_ARGUMENTS_ERROR"


class FixtureError(StoreError):
    """A fixture directory is malformed; `path` and `line` point at the offending input."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line


class NotFoundError(StoreError):
    """No such project / data unit / label row / stage in the emulator."""

    code = "RESOURCE_NOT_FOUND_ERROR"

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found")
        self.kind = kind
        self.key = key


class ConflictError(StoreError):
    """The change would create something that already exists (e.g. a second row on one branch)."""

    code = "RESOURCE_EXISTS_ERROR"


class InvalidArgumentsError(StoreError):
    """A request's arguments are inconsistent (e.g. `include_all_label_branches` with `branch_name`)."""


class FixtureChangedError(StoreError):
    """A fixture file changed on disk after loading; its rows can only be served again after a reload."""

    code = "UNKNOWN_ERROR"

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} changed on disk since it was loaded; reload (POST /__emulator/reload)")
        self.path = path


class InvalidDateError(StoreError):
    """A date filter is not an ISO 8601 timestamp."""

    code = "INVALID_DATE_FORMAT_ERROR"


def stable_uuid(*parts: str) -> str:
    """Deterministic ids (task uuid, ontology hash, ...) so a fixture serves the same answers every run."""
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))


def format_long(moment: datetime) -> str:
    """The SDK's canonical timestamp (`Tue, 02 Sep 2025 10:00:00 UTC`), as `to_encord_dict()` writes it."""
    return moment.astimezone(UTC).strftime(LONG_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Parse the timestamp formats label rows carry; naive values are UTC. Raises InvalidDateError."""
    # The long format is what fixture rows carry, so it gets a fast path (100k rows load in seconds).
    if len(text) == 29 and text.endswith((" UTC", " GMT")) and text[3:5] == ", ":
        try:
            return datetime(
                int(text[12:16]),
                _MONTHS[text[8:11]],
                int(text[5:7]),
                int(text[17:19]),
                int(text[20:22]),
                int(text[23:25]),
                tzinfo=UTC,
            )
        except (KeyError, ValueError) as exc:
            raise InvalidDateError(f"unparseable timestamp {text!r}") from exc
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as exc:
        raise InvalidDateError(f"unparseable timestamp {text!r}") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def like_to_regex(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (`%` any run, `_` one character, backslash escapes) as a case-insensitive full match.

    Case-insensitive like PostgreSQL ILIKE: the real server's case rule is unverified, and the
    emulator picks the more forgiving one (see the package README).
    """
    out: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class FixtureFile:
    """A rows.jsonl that loaded rows are served from: read per request, so 100k rows cost no heap."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(slots=True)
class RowRecord:
    """One label row (one data unit on one branch) and where its served JSON bytes are.

    Rows created or changed since loading hold their bytes in `raw`; fixture rows point into their file.
    """

    label_hash: str
    branch: str
    data_hash: str
    created_at: str | None
    last_edited_at: str | None
    edited: datetime | None
    label_status: str
    raw: bytes | None = None
    file: FixtureFile | None = None
    offset: int = 0
    length: int = 0


@dataclass(slots=True)
class DataUnit:
    """A data unit in the project: its media facts, its workflow task, and its label rows by branch."""

    data_hash: str
    data_title: str
    data_type: str  # upper case, as metadata carries it
    dataset_hash: str
    dataset_title: str
    stage: str  # workflow stage title
    task_status: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration: float | None = None
    number_of_frames: int = 1
    data_link: str | None = None
    file_type: str | None = None
    is_shadow_data: bool = False
    branches: dict[str, RowRecord] = field(default_factory=dict)
    ids: tuple[str, str] | None = None  # (task uuid, backing item uuid), derived on first listing


@dataclass(slots=True)
class Project:
    project_hash: str
    title: str
    description: str
    ontology: dict[str, Any]
    ontology_hash: str
    stages: list[dict[str, Any]]
    data_units: dict[str, DataUnit] = field(default_factory=dict)  # in listing order
    rows: dict[str, RowRecord] = field(default_factory=dict)  # by label_hash
    stage_map: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A data unit's place in `data_units` (only the order matters): a listing by label or data hashes
    # looks its units up and sorts them, as Encord's indexes would, instead of scanning the project.
    positions: dict[str, int] = field(default_factory=dict)
    next_position: int = 0

    def __post_init__(self) -> None:
        self.stage_map = {stage["title"]: stage for stage in self.stages}

    def add_unit(self, unit: DataUnit) -> DataUnit:
        # A unit added again after its deletion goes to the end, in the dict and here alike.
        self.data_units.pop(unit.data_hash, None)
        self.data_units[unit.data_hash] = unit
        self.positions[unit.data_hash] = self.next_position
        self.next_position += 1
        return unit

    def units_for(
        self, label_hashes: frozenset[str] | None, data_hashes: frozenset[str] | None
    ) -> Iterable[DataUnit]:
        """The data units a listing must look at, in listing order: all of them, or, when the query names
        label or data hashes, only theirs."""
        if label_hashes is None and data_hashes is None:
            return self.data_units.values()
        wanted: set[str] = set(data_hashes) if data_hashes is not None else set()
        if label_hashes is not None:
            by_label = {self.rows[h].data_hash for h in label_hashes if h in self.rows}
            wanted = by_label if data_hashes is None else wanted & by_label
        found = [self.data_units[d] for d in wanted if d in self.data_units]
        return sorted(found, key=lambda unit: self.positions[unit.data_hash])

    def stage_by_title(self, title: str) -> dict[str, Any]:
        try:
            return self.stage_map[title]
        except KeyError:
            raise NotFoundError("workflow stage", title) from None

    def branch_names(self) -> list[str]:
        names = {record.branch for record in self.rows.values()}
        return sorted(names, key=lambda name: (name != MAIN_BRANCH, name))


@dataclass(frozen=True, slots=True)
class MetadataQuery:
    """The `labelrowmetadata` GET payload, as the SDK sends it (every filter is applied by the server)."""

    edited_after: datetime | None = None
    edited_before: datetime | None = None
    label_statuses: frozenset[str] | None = None
    shadow_data_state: str | None = None
    include_uninitialised_labels: bool = False
    data_hashes: frozenset[str] | None = None
    label_hashes: frozenset[str] | None = None
    data_title_eq: str | None = None
    data_title_like: str | None = None
    workflow_graph_node_title_eq: str | None = None
    workflow_graph_node_title_like: str | None = None
    include_workflow_graph_node: bool = True
    include_all_label_branches: bool = False
    branch_name: str | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> MetadataQuery:
        if payload.get("include_all_label_branches") and payload.get("branch_name") is not None:
            raise InvalidArgumentsError("include_all_label_branches cannot be combined with branch_name")

        def date(key: str) -> datetime | None:
            value = payload.get(key)
            if value is None:
                return None
            if not isinstance(value, str):
                raise InvalidDateError(f"{key} must be an ISO 8601 string, got {value!r}")
            return parse_timestamp(value)

        def strings(key: str) -> frozenset[str] | None:
            value = payload.get(key)
            if value is None:
                return None
            if not isinstance(value, list):
                raise InvalidArgumentsError(f"{key} must be a list")
            return frozenset(str(item) for item in value)

        return cls(
            edited_after=date("edited_after"),
            edited_before=date("edited_before"),
            label_statuses=strings("label_statuses"),
            shadow_data_state=payload.get("shadow_data_state"),
            include_uninitialised_labels=bool(payload.get("include_uninitialised_labels", False)),
            data_hashes=strings("data_hashes"),
            label_hashes=strings("label_hashes"),
            data_title_eq=payload.get("data_title_eq"),
            data_title_like=payload.get("data_title_like"),
            workflow_graph_node_title_eq=payload.get("workflow_graph_node_title_eq"),
            workflow_graph_node_title_like=payload.get("workflow_graph_node_title_like"),
            include_workflow_graph_node=bool(payload.get("include_workflow_graph_node", True)),
            include_all_label_branches=bool(payload.get("include_all_label_branches", False)),
            branch_name=payload.get("branch_name"),
        )


_REQUIRED_TOP = ("label_hash", "branch_name", "data_hash", "data_title", "data_type", "dataset_hash")


@dataclass(slots=True)
class _Indexed:
    """The fields of a fixture line the emulator indexes: the row's top-level scalars, its first data unit's
    scalars, its number of data units, fps and duration, plus the line's stage and task status."""

    top: dict[str, Any]
    unit: dict[str, Any]
    units: int
    fps: float | None
    duration: float | None
    label_status: str
    stage: Any
    task_status: Any


def _number_after(line: bytes, key: bytes, start: int, end: int) -> Any:
    at = line.rfind(key, start, end)
    if at < 0:
        return None
    value_start = stop = at + len(key)
    while stop < end and line[stop] not in b",}":
        stop += 1
    return orjson.loads(line[value_start:stop])


def _scan_line(line: bytes) -> tuple[_Indexed, int, int] | None:
    """Index a canonical line without parsing its labels (parsing whole rows makes 100k rows take ~15 s).

    Canonical: `{"row":{...},"stage":...,"task_status":...}` with the row in `to_encord_dict()` key order, as
    orjson writes it. Returns the fields and the row's byte span in the line, or None for any other shape (the
    caller then parses the line whole). Unescaped `,"key":` sequences only occur as real keys in JSON.
    """
    start = len(b'{"row":')
    if not line.startswith(b'{"row":{'):
        return None
    end = line.rfind(b',"stage":')
    answers = line.find(b',"object_answers":', start, end)
    status_at = line.rfind(b',"label_status":"', answers, end)
    units_at = line.find(b',"data_units":{', answers, end)
    if min(end, answers, status_at, units_at) < 0:
        return None
    unit_open = line.find(b'":{', units_at + len(b',"data_units":{'), end)
    labels_at = line.find(b',"labels":', unit_open, end)
    if min(unit_open, labels_at) < 0:
        return None
    try:
        trailer = orjson.loads(b"{" + line[end + 1 :])
        top = orjson.loads(line[start:answers] + b"}")
        unit = orjson.loads(line[unit_open + 2 : labels_at] + b"}")
        status_start = status_at + len(b',"label_status":"')
        label_status = line[status_start : line.index(b'"', status_start)].decode("ascii")
        fps = _number_after(line, b'"data_fps":', units_at, end)
        duration = _number_after(line, b'"data_duration":', units_at, end)
    except (orjson.JSONDecodeError, ValueError):
        return None
    if not isinstance(trailer, dict) or set(trailer) != {"stage", "task_status"}:
        return None
    if not isinstance(top, dict) or not isinstance(unit, dict) or "data_type" not in unit:
        return None
    if any(key not in top for key in _REQUIRED_TOP):
        return None
    units = line.count(b'"data_sequence":', units_at, end)
    indexed = _Indexed(
        top, unit, units, fps, duration, label_status, trailer["stage"], trailer["task_status"]
    )
    return indexed, start, end


def _index_row(row: dict[str, Any], stage: Any = None, task_status: Any = None) -> _Indexed:
    units = list((row.get("data_units") or {}).values())
    first: dict[str, Any] = units[0] if units and isinstance(units[0], dict) else {}
    top = {key: value for key, value in row.items() if not isinstance(value, dict | list)}
    return _Indexed(
        top=top,
        unit={key: value for key, value in first.items() if key != "labels"},
        units=len(units),
        fps=first.get("data_fps"),
        duration=first.get("data_duration"),
        label_status=str(row.get("label_status") or "LABEL_IN_PROGRESS"),
        stage=stage,
        task_status=task_status,
    )


def _record(indexed: _Indexed, where: Path, line: int) -> RowRecord:
    top = indexed.top
    label_hash, branch, data_hash = top.get("label_hash"), top.get("branch_name"), top.get("data_hash")
    if not label_hash or not branch or not data_hash:
        raise FixtureError(where, "row needs label_hash, branch_name and data_hash", line)
    edited_text = top.get("last_edited_at")
    try:
        edited = parse_timestamp(edited_text) if edited_text else None
    except InvalidDateError as exc:
        raise FixtureError(where, str(exc), line) from exc
    return RowRecord(
        label_hash=str(label_hash),
        branch=str(branch),
        data_hash=str(data_hash),
        created_at=top.get("created_at"),
        last_edited_at=edited_text,
        edited=edited,
        label_status=indexed.label_status,
    )


def _record_from_row(row: dict[str, Any], where: Path = Path("<store>"), line: int = 0) -> RowRecord:
    record = _record(_index_row(row), where, line)
    record.raw = orjson.dumps(row)
    return record


def _frames(data_type: str, units: int, fps: float | None, duration: float | None) -> int:
    if data_type == "IMG_GROUP":
        return max(1, units)
    if data_type == "VIDEO" and fps and duration:
        exact = fps * duration
        return round(exact) if abs(exact - round(exact)) < 1e-6 else math.ceil(exact)
    return 1


def _data_unit(indexed: _Indexed, stage: str, task_status: str) -> DataUnit:
    top, first = indexed.top, indexed.unit
    data_type = str(top.get("data_type", "")).upper()
    return DataUnit(
        data_hash=str(top["data_hash"]),
        data_title=str(top.get("data_title", "")),
        data_type=data_type,
        dataset_hash=str(top.get("dataset_hash", "")),
        dataset_title=str(top.get("dataset_title", "")),
        stage=stage,
        task_status=task_status,
        width=first.get("width"),
        height=first.get("height"),
        fps=indexed.fps,
        duration=indexed.duration,
        number_of_frames=_frames(data_type, indexed.units, indexed.fps, indexed.duration),
        data_link=None if data_type == "IMG_GROUP" else first.get("data_link"),
        file_type=None if data_type == "IMG_GROUP" else first.get("data_type"),
        is_shadow_data=bool(top.get("is_shadow_data", False)),
    )


def _data_unit_from_row(row: dict[str, Any], stage: str, task_status: str) -> DataUnit:
    return _data_unit(_index_row(row), stage, task_status)


def _check_task_status(value: Any, where: Path, line: int) -> str:
    if value not in TASK_STATUSES:
        raise FixtureError(where, f"task_status must be one of {sorted(TASK_STATUSES)}, got {value!r}", line)
    return str(value)


def load_project(directory: Path) -> Project:
    """Load one `DIR/<project_hash>/` fixture directory."""
    project_file = directory / "project.json"
    try:
        spec = orjson.loads(project_file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise FixtureError(project_file, f"cannot read project.json: {exc}") from exc
    stages = list((spec.get("workflow") or {}).get("stages") or [])
    if not stages:
        raise FixtureError(project_file, "workflow.stages is empty; the SDK needs at least one stage")
    project_hash = directory.name
    project = Project(
        project_hash=project_hash,
        title=str(spec.get("title", project_hash)),
        description=str(spec.get("description", "")),
        ontology=dict(spec.get("ontology") or {}),
        ontology_hash=str(spec.get("ontology_hash") or stable_uuid("ontology", project_hash)),
        stages=stages,
    )
    titles = {stage["title"] for stage in stages}

    rows_file = directory / "rows.jsonl"
    if rows_file.exists():
        with rows_file.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            source = FixtureFile(rows_file, stat.st_size, stat.st_mtime_ns)
            offset = 0
            for number, line in enumerate(handle, 1):
                line_offset, offset = offset, offset + len(line)
                if line.isspace():
                    continue
                _load_line(project, titles, line, source, line_offset, number)

    unlabelled_file = directory / "unlabelled.jsonl"
    if unlabelled_file.exists():
        with unlabelled_file.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                    unit = _unlabelled_unit(item, titles, unlabelled_file, number)
                except orjson.JSONDecodeError as exc:
                    raise FixtureError(unlabelled_file, f"invalid JSON: {exc}", number) from exc
                if unit.data_hash in project.data_units:
                    raise FixtureError(unlabelled_file, f"data unit {unit.data_hash} also has rows", number)
                project.add_unit(unit)
    return project


def _load_line(
    project: Project, titles: set[str], line: bytes, source: FixtureFile, line_offset: int, number: int
) -> None:
    where = source.path
    scanned = _scan_line(line)
    if scanned is not None:
        indexed, row_start, row_end = scanned
        record = _record(indexed, where, number)
        record.file, record.offset, record.length = source, line_offset + row_start, row_end - row_start
    else:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FixtureError(where, f"invalid JSON: {exc}", number) from exc
        row = entry.get("row") if isinstance(entry, dict) else None
        if not isinstance(row, dict):
            raise FixtureError(where, "line has no 'row' object", number)
        indexed = _index_row(row, entry.get("stage"), entry.get("task_status"))
        record = _record(indexed, where, number)
        record.raw = orjson.dumps(row)
    if indexed.stage not in titles:
        raise FixtureError(where, f"unknown stage {indexed.stage!r} (stages: {sorted(titles)})", number)
    task_status = _check_task_status(indexed.task_status, where, number)
    if record.label_hash in project.rows:
        raise FixtureError(where, f"duplicate label_hash {record.label_hash}", number)
    unit = project.data_units.get(record.data_hash)
    if unit is None:
        unit = project.add_unit(_data_unit(indexed, str(indexed.stage), task_status))
    elif record.branch in unit.branches:
        raise FixtureError(
            where, f"two rows for data unit {record.data_hash} on branch {record.branch}", number
        )
    unit.branches[record.branch] = record
    project.rows[record.label_hash] = record


def _unlabelled_unit(item: dict[str, Any], titles: set[str], where: Path, line: int) -> DataUnit:
    try:
        data_type = str(item["data_type"]).upper()
        stage = item["stage"]
        unit = DataUnit(
            data_hash=item["data_hash"],
            data_title=item["data_title"],
            data_type=data_type,
            dataset_hash=item["dataset_hash"],
            dataset_title=item["dataset_title"],
            stage=stage,
            task_status=_check_task_status(item["task_status"], where, line),
            width=item.get("width"),
            height=item.get("height"),
            fps=item.get("frames_per_second"),
            duration=item.get("duration"),
            number_of_frames=int(item.get("number_of_frames") or 1),
            data_link=item.get("data_link"),
            file_type=item.get("file_type") or _DEFAULT_MIME.get(data_type),
            is_shadow_data=bool(item.get("is_shadow_data", False)),
        )
    except KeyError as exc:
        raise FixtureError(where, f"unlabelled data unit lacks {exc.args[0]!r}", line) from exc
    if stage not in titles:
        raise FixtureError(where, f"unknown stage {stage!r} (stages: {sorted(titles)})", line)
    return unit


def load_fixture_dir(data_dir: Path) -> dict[str, Project]:
    """Every `DIR/<project_hash>/project.json` under `data_dir`, by project hash."""
    if not data_dir.is_dir():
        raise FixtureError(data_dir, "fixture directory does not exist")
    # Loading allocates millions of long-lived objects; the cyclic GC would rescan them over and over.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return {
            child.name: load_project(child)
            for child in sorted(data_dir.iterdir())
            if child.is_dir() and (child / "project.json").exists()
        }
    finally:
        if was_enabled:
            gc.enable()


class Store:
    """All projects of one fixture directory plus the changes made since it was loaded.

    Not thread-safe on its own: the server serialises access with one lock.
    """

    def __init__(self, projects: dict[str, Project]) -> None:
        self.projects = projects
        self.date_mode: DateMode = "strict"

    def project(self, project_hash: str) -> Project:
        try:
            return self.projects[project_hash]
        except KeyError:
            raise NotFoundError("project", project_hash) from None

    def ontology(self, ontology_hash: str) -> tuple[Project, dict[str, Any]]:
        for project in self.projects.values():
            if project.ontology_hash == ontology_hash:
                return project, project.ontology
        raise NotFoundError("ontology", ontology_hash)

    # ---- listing --------------------------------------------------------------------------------

    def list_metadata(self, project_hash: str, query: MetadataQuery) -> list[dict[str, Any]]:
        """`labelrowmetadata` GET: one item per data unit (and branch), every filter applied here.

        Date filters compare the row's `last_edited_at` (strictly, or inclusively in "inclusive" mode) and
        drop items without a label row. `_eq` filters are case-sensitive, `_like` filters are not.
        """
        project = self.project(project_hash)
        title_like = like_to_regex(query.data_title_like) if query.data_title_like is not None else None
        stage_like = (
            like_to_regex(query.workflow_graph_node_title_like)
            if query.workflow_graph_node_title_like is not None
            else None
        )
        dated = query.edited_after is not None or query.edited_before is not None
        items: list[dict[str, Any]] = []
        for unit in project.units_for(query.label_hashes, query.data_hashes):
            if query.data_hashes is not None and unit.data_hash not in query.data_hashes:
                continue
            if query.data_title_eq is not None and unit.data_title != query.data_title_eq:
                continue
            if title_like is not None and not title_like.fullmatch(unit.data_title):
                continue
            if (
                query.workflow_graph_node_title_eq is not None
                and unit.stage != query.workflow_graph_node_title_eq
            ):
                continue
            if stage_like is not None and not stage_like.fullmatch(unit.stage):
                continue
            if query.label_statuses is not None and unit.task_status not in query.label_statuses:
                continue
            if query.shadow_data_state == "SHADOW_DATA" and not unit.is_shadow_data:
                continue
            if query.shadow_data_state == "NOT_SHADOW_DATA" and unit.is_shadow_data:
                continue
            for branch, record in self._selected(unit, query):
                if record is None:
                    if dated or query.label_hashes is not None or not query.include_uninitialised_labels:
                        continue
                else:
                    if query.label_hashes is not None and record.label_hash not in query.label_hashes:
                        continue
                    if dated and not self._in_window(record.edited, query):
                        continue
                items.append(
                    self._metadata_item(project, unit, branch, record, query.include_workflow_graph_node)
                )
        return items

    @staticmethod
    def _selected(unit: DataUnit, query: MetadataQuery) -> Iterator[tuple[str, RowRecord | None]]:
        if query.include_all_label_branches:
            if not unit.branches:
                yield MAIN_BRANCH, None
            yield from unit.branches.items()
            return
        branch = query.branch_name or MAIN_BRANCH
        yield branch, unit.branches.get(branch)

    def _in_window(self, edited: datetime | None, query: MetadataQuery) -> bool:
        if edited is None:
            return False
        after, before = query.edited_after, query.edited_before
        if self.date_mode == "strict":
            return (after is None or edited > after) and (before is None or edited < before)
        return (after is None or edited >= after) and (before is None or edited <= before)

    @staticmethod
    def _metadata_item(
        project: Project, unit: DataUnit, branch: str, record: RowRecord | None, with_stage: bool
    ) -> dict[str, Any]:
        ids = unit.ids
        if ids is None:
            ids = unit.ids = (
                stable_uuid("task", project.project_hash, unit.data_hash),
                stable_uuid("item", unit.data_hash),
            )
        item: dict[str, Any] = {
            "label_hash": record.label_hash if record else None,
            "created_at": record.created_at if record else None,
            "last_edited_at": record.last_edited_at if record else None,
            "branch_name": branch,
            "data_hash": unit.data_hash,
            "dataset_hash": unit.dataset_hash,
            "dataset_title": unit.dataset_title,
            "data_title": unit.data_title,
            "data_type": unit.data_type,
            "data_link": unit.data_link,
            "label_status": record.label_status if record else "NOT_LABELLED",
            "annotation_task_status": unit.task_status,
            "is_shadow_data": unit.is_shadow_data,
            "number_of_frames": unit.number_of_frames,
            "frames_per_second": unit.fps,
            "duration": unit.duration,
            "height": unit.height,
            "width": unit.width,
            "spaces": {},
            "task_uuid": ids[0],
            "priority": 0.5,
            "file_type": unit.file_type,
            "is_valid": True,
            "backing_item_uuid": ids[1],
            "assigned_user_email": None,
            "last_actioned_by_user_email": None,
        }
        if with_stage:
            stage = project.stage_by_title(unit.stage)
            item["workflow_graph_node"] = {"uuid": stage["uuid"], "title": stage["title"]}
        return item

    # ---- label rows -----------------------------------------------------------------------------

    @staticmethod
    def row_bytes(records: Sequence[RowRecord]) -> list[bytes]:
        """The served JSON bytes of each record, in order (fixture rows are read from their file)."""
        out: list[bytes | None] = [record.raw for record in records]
        by_file: dict[FixtureFile, list[int]] = {}
        for index, record in enumerate(records):
            if record.raw is None and record.file is not None:
                by_file.setdefault(record.file, []).append(index)
        for fixture_file, indexes in by_file.items():
            try:
                with fixture_file.path.open("rb") as handle:
                    stat = os.fstat(handle.fileno())
                    if (stat.st_size, stat.st_mtime_ns) != (fixture_file.size, fixture_file.mtime_ns):
                        raise FixtureChangedError(fixture_file.path)
                    for index in indexes:
                        out[index] = os.pread(handle.fileno(), records[index].length, records[index].offset)
            except FileNotFoundError as exc:
                raise FixtureChangedError(fixture_file.path) from exc
        return [raw if raw is not None else b"null" for raw in out]

    def row_dict(self, record: RowRecord) -> dict[str, Any]:
        loaded: dict[str, Any] = orjson.loads(self.row_bytes([record])[0])
        return loaded

    def row(self, project_hash: str, label_hash: str) -> RowRecord:
        try:
            return self.project(project_hash).rows[label_hash]
        except KeyError:
            raise NotFoundError("label row", label_hash) from None

    def data_unit(self, project_hash: str, data_hash: str) -> DataUnit:
        try:
            return self.project(project_hash).data_units[data_hash]
        except KeyError:
            raise NotFoundError("data unit", data_hash) from None

    def create_row(self, project_hash: str, data_hash: str, branch: str, now: datetime) -> RowRecord:
        """`labelrow` PUT: a new, empty label row on `branch` (an existing one is returned as it is)."""
        unit = self.data_unit(project_hash, data_hash)
        existing = unit.branches.get(branch)
        if existing is not None:
            return existing
        stamp = format_long(now)
        label_hash = str(uuid.uuid4())
        data_unit: dict[str, Any] = {
            "data_hash": unit.data_hash,
            "data_title": unit.data_title,
            "data_link": unit.data_link,
            "data_type": unit.file_type or _DEFAULT_MIME.get(unit.data_type, "application/octet-stream"),
            "data_sequence": 0,
            "width": unit.width or 0,
            "height": unit.height or 0,
            "labels": {},
        }
        if unit.duration is not None:
            data_unit["data_duration"] = unit.duration
        if unit.fps is not None:
            data_unit["data_fps"] = unit.fps
        row: dict[str, Any] = {
            "label_hash": label_hash,
            "branch_name": branch,
            "created_at": stamp,
            "last_edited_at": stamp,
            "data_hash": unit.data_hash,
            "dataset_hash": unit.dataset_hash,
            "dataset_title": unit.dataset_title,
            "data_title": unit.data_title,
            "data_type": unit.data_type.lower(),
            "annotation_task_status": unit.task_status,
            "is_shadow_data": unit.is_shadow_data,
            "object_answers": {},
            "classification_answers": {},
            "object_actions": {},
            "label_status": "LABEL_IN_PROGRESS",
            "data_units": {unit.data_hash: data_unit},
            "spaces": {},
        }
        return self._put(project_hash, unit, row)

    def save_row(self, project_hash: str, label_hash: str, row: dict[str, Any], now: datetime) -> RowRecord:
        """`labelrow` POST (`LabelRowV2.save()`): store the labels, stamp `last_edited_at` with `now`.

        Identity (label hash, branch, data unit, creation time) stays the server's, whatever the client sent.
        """
        record = self.row(project_hash, label_hash)
        unit = self.data_unit(project_hash, record.data_hash)
        stored = dict(row)
        stored["label_hash"] = record.label_hash
        stored["branch_name"] = record.branch
        stored["data_hash"] = record.data_hash
        stored["created_at"] = record.created_at
        stored["last_edited_at"] = format_long(now)
        return self._put(project_hash, unit, stored)

    def add_row(
        self,
        project_hash: str,
        row: dict[str, Any],
        now: datetime | None,
        *,
        stage: str | None = None,
        task_status: str | None = None,
    ) -> RowRecord:
        """Add a label row for a new (data unit, branch), e.g. a consensus branch; `now` stamps it."""
        project = self.project(project_hash)
        stored = dict(row)
        if now is not None:
            stored["last_edited_at"] = format_long(now)
            stored.setdefault("created_at", stored["last_edited_at"])
        probe = _record_from_row(stored, Path("<add_row>"), 0)
        if probe.label_hash in project.rows:
            raise ConflictError(f"label row {probe.label_hash} already exists")
        unit = project.data_units.get(probe.data_hash)
        if unit is None:
            if stage is None or task_status is None:
                raise InvalidArgumentsError("a row for a new data unit needs stage and task_status")
            project.stage_by_title(stage)
            if task_status not in TASK_STATUSES:
                raise InvalidArgumentsError(f"task_status must be one of {sorted(TASK_STATUSES)}")
            unit = project.add_unit(_data_unit_from_row(stored, stage, task_status))
        elif probe.branch in unit.branches:
            raise ConflictError(f"data unit {probe.data_hash} already has a row on branch {probe.branch}")
        return self._put(project_hash, unit, stored)

    def _put(self, project_hash: str, unit: DataUnit, row: dict[str, Any]) -> RowRecord:
        project = self.project(project_hash)
        record = _record_from_row(row)
        old = unit.branches.get(record.branch)
        if old is not None and old.label_hash != record.label_hash:
            project.rows.pop(old.label_hash, None)
        unit.branches[record.branch] = record
        project.rows[record.label_hash] = record
        return record

    # ---- workflow and deletions (no SDK call can do these) --------------------------------------

    def move_stage(self, project_hash: str, data_hash: str, stage_title: str) -> None:
        """Move a data unit's task to another stage. Label rows are NOT edited (last_edited_at unchanged)."""
        project = self.project(project_hash)
        project.stage_by_title(stage_title)
        self.data_unit(project_hash, data_hash).stage = stage_title

    def set_task_status(self, project_hash: str, data_hash: str, status: str) -> None:
        """Set a data unit's task status; rows' annotation_task_status follows, last_edited_at does not."""
        if status not in TASK_STATUSES:
            raise InvalidArgumentsError(f"task status must be one of {sorted(TASK_STATUSES)}, got {status!r}")
        unit = self.data_unit(project_hash, data_hash)
        unit.task_status = status
        for record in list(unit.branches.values()):
            row = self.row_dict(record)
            if "annotation_task_status" in row:
                row["annotation_task_status"] = status
                self._put(project_hash, unit, row)

    def delete_row(self, project_hash: str, label_hash: str) -> None:
        """Delete one label row (one branch); a data unit left without a main row lists as uninitialised."""
        record = self.row(project_hash, label_hash)
        project = self.project(project_hash)
        del project.rows[label_hash]
        del project.data_units[record.data_hash].branches[record.branch]

    def delete_data_unit(self, project_hash: str, data_hash: str) -> None:
        """Remove a data unit and all its label rows from the project."""
        unit = self.data_unit(project_hash, data_hash)
        project = self.project(project_hash)
        for record in unit.branches.values():
            project.rows.pop(record.label_hash, None)
        del project.data_units[data_hash]

    def state(self, project_hash: str) -> list[dict[str, Any]]:
        """Every live label row with its branch, stage and task status: the truth a mirror must reach."""
        project = self.project(project_hash)
        out: list[dict[str, Any]] = []
        records: list[RowRecord] = []
        for unit in project.data_units.values():
            stage = project.stage_by_title(unit.stage)
            for branch, record in unit.branches.items():
                records.append(record)
                out.append(
                    {
                        "label_hash": record.label_hash,
                        "branch_name": branch,
                        "data_hash": unit.data_hash,
                        "data_title": unit.data_title,
                        "stage": stage["title"],
                        "stage_uuid": stage["uuid"],
                        "task_status": unit.task_status,
                        "last_edited_at": record.last_edited_at,
                    }
                )
        for item, raw in zip(out, self.row_bytes(records), strict=True):
            item["row"] = orjson.loads(raw)
        return out

    def unlabelled(self, project_hash: str) -> list[str]:
        """Data hashes of data units without a label row on main."""
        project = self.project(project_hash)
        return [unit.data_hash for unit in project.data_units.values() if MAIN_BRANCH not in unit.branches]
