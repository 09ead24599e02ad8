"""The lake's JSON documents as readers get them, on a lake the demo produced (real SDK against the
emulator): each is one line ending with a newline, pyarrow reads them, and each validates against its JSON
Schema in schemas/ (jsonschema, draft 2020-12), which refuses a wrong one."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.json as pj
import pytest
from jsonschema import Draft202012Validator

from encord_mirror.cli.main import main

pytestmark = pytest.mark.e2e

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
# Each schema and the lake documents it describes (README, "The lake").
DOCUMENTS = {
    "row": "labels/*/*/*/*.json",
    "run-manifest": "runs/*/*.json",
    "snapshot-manifest": "coco/*/*/*/snapshots/*/manifest.json",
    "snapshot-latest": "coco/*/*/*/latest.json",
}
EVENTS = "events/events.jsonl"


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("demo") / "lake"
    assert main(["demo", "--rows", "40", "--lake", str(lake)]) == 0
    return lake


def _validator(name: str) -> Draft202012Validator:
    schema = orjson.loads((SCHEMAS / f"{name}.schema.json").read_bytes())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _documents(lake: Path, name: str) -> list[dict[str, Any]]:
    if name == "event":
        return [orjson.loads(line) for line in (lake / EVENTS).read_bytes().splitlines()]
    return [orjson.loads(p.read_bytes()) for p in sorted(lake.glob(DOCUMENTS[name]))]


def test_every_json_document_of_the_lake_is_one_line_ending_with_a_newline(demo_lake: Path) -> None:
    # Given every JSON document the demo's syncs wrote (dot files are the CLI's state, not the lake's)
    paths = [p for p in sorted(demo_lake.rglob("*.json")) if not p.name.startswith(".")]
    names = {p.name for p in paths}
    assert {"_lake.json", "_index.json", "_table.json", "_members.json"} <= names
    assert {"coco.json", "manifest.json", "latest.json"} <= names
    assert all(list(demo_lake.glob(DOCUMENTS[kind])) for kind in ("row", "run-manifest"))
    # Then each is one JSON object on one line that ends with a newline
    for path in paths:
        body = path.read_bytes()
        assert body.endswith(b"}\n") and body.count(b"\n") == 1, path
        assert isinstance(orjson.loads(body), dict)
    # and so is every line of the events file
    events = (demo_lake / EVENTS).read_bytes()
    assert events.endswith(b"\n") and all(orjson.loads(line) for line in events.splitlines())


def _run_schema() -> pa.Schema:
    counts = pa.struct([(k, pa.int64()) for k in ("written", "unchanged", "moved", "removed", "failed")])
    return pa.schema(
        [
            ("format_version", pa.int64()),
            ("run_id", pa.string()),
            ("mode", pa.string()),
            ("finished_at", pa.string()),
            ("counts", counts),
            ("rows", pa.list_(pa.struct([("label_hash", pa.string()), ("sha256", pa.string())]))),
        ]
    )


def _read_dataset(root: Path, schema: pa.Schema) -> pa.Table:
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return ds.dataset(root, format=ds.JsonFileFormat(parse_options=options), schema=schema).to_table()


def test_pyarrow_reads_the_run_manifests_and_snapshot_pointers_as_datasets_without_nulls(
    demo_lake: Path, tmp_path: Path
) -> None:
    # Given the run manifests and latest.json pointers of the demo lake
    manifests = sorted(demo_lake.glob(DOCUMENTS["run-manifest"]))
    # When pyarrow's JSON dataset reader reads them (the manifests with the columns a reader asks for)
    runs = _read_dataset(demo_lake / "runs", _run_schema())
    latest = ds.dataset(sorted(demo_lake.glob(DOCUMENTS["snapshot-latest"])), format="json").to_table()
    # Then there is one record per file and no column has a null
    assert runs.num_rows == len(manifests) >= 2
    assert {c: runs.column(c).null_count for c in runs.column_names} == dict.fromkeys(runs.column_names, 0)
    assert sorted(runs.column("run_id").to_pylist()) == sorted(p.stem for p in manifests)
    written = [orjson.loads(p.read_bytes())["counts"]["written"] for p in manifests]
    assert sorted(c["written"] for c in runs.column("counts").to_pylist()) == sorted(written)
    assert latest.num_rows == len(list(demo_lake.glob(DOCUMENTS["snapshot-latest"]))) >= 2
    assert sum(latest.column(c).null_count for c in latest.column_names) == 0
    # and the same files without their final newline are read as nulls: why every document ends with one
    cut = tmp_path / "runs"
    shutil.copytree(demo_lake / "runs", cut)
    for path in cut.rglob("*.json"):
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert _read_dataset(cut, _run_schema()).column("run_id").null_count == len(manifests)


def test_the_row_objects_put_together_are_json_lines_that_pyarrow_reads(demo_lake: Path) -> None:
    # Given every row object of the lake, concatenated as they are (what `cat` or a Hive SerDe sees)
    paths = sorted(demo_lake.glob(DOCUMENTS["row"]))
    mirror = pa.struct(
        [("format_version", pa.int64())]
        + [(k, pa.string()) for k in ("label_hash", "stage", "stage_uuid", "stage_title", "sha256")]
    )
    schema = pa.schema([("label_hash", pa.string()), ("data_title", pa.string()), ("mirror", mirror)])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    # When pyarrow's JSON reader reads them as one JSON Lines file
    table = pj.read_json(pa.BufferReader(b"".join(p.read_bytes() for p in paths)), parse_options=options)
    # Then each object is one record, with its columns
    assert table.num_rows == len(paths) > 0
    assert table.column("label_hash").to_pylist() == [p.stem for p in paths]
    assert table.column("mirror").null_count == 0 and table.column("data_title").null_count == 0
    assert {m["format_version"] for m in table.column("mirror").to_pylist()} == {3}


@pytest.mark.parametrize("name", [*DOCUMENTS, "event"])
def test_every_document_of_the_demo_lake_validates_against_its_schema(demo_lake: Path, name: str) -> None:
    # Given the published schema and the lake's documents of its kind
    validator = _validator(name)
    documents = _documents(demo_lake, name)
    assert documents
    # Then each one is valid
    for document in documents:
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)
        ]
        assert errors == [], errors


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of one document: the value at a `/`-separated path (`-` deletes the key)."""

    def edit(document: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value == "-":
            del target[last]
        else:
            target[last] = value

    return edit


WRONG: list[tuple[str, str, Any]] = [
    ("row", "mirror/format_version", 2),
    ("row", "mirror/sha256", "not-a-sha256"),
    ("row", "mirror/stage_uuid", "-"),
    ("row", "mirror/stage", "Review"),
    ("row", "mirror/synced_at", "yesterday"),
    ("row", "mirror/extra", 1),
    ("row", "data_units", "-"),
    ("run-manifest", "format_version", "-"),
    ("run-manifest", "counts/written", -1),
    ("run-manifest", "mode", "partial"),
    ("run-manifest", "rows/0/status", "done"),
    ("run-manifest", "watermark", "2026-12-03 10:00"),
    ("run-manifest", "extra", []),
    ("snapshot-manifest", "format_version", 2),
    ("snapshot-manifest", "stage_title", "-"),
    ("snapshot-manifest", "coco/sha256", "abc"),
    ("snapshot-manifest", "changes/annotations_added", "3"),
    ("snapshot-latest", "manifest", "coco/elsewhere.json"),
    ("snapshot-latest", "counts/images", None),
    ("snapshot-latest", "extra", True),
    ("event", "detail/event_id", "project/main/annotate-1234abcd/20261203T100000.000Z-1a2b3c4d"),
    ("event", "detail/event_id", "x" * 81),
    ("event", "detail/stage_uuid", "-"),
    ("event", "detail/format_version", 1),
    ("event", "detail-type", "encord-mirror.snapshot.created"),
    ("event", "account", "-"),
    ("event", "time", "2026-12-03T10:00:00.123+00:00"),
]


@pytest.mark.parametrize(("name", "path", "value"), WRONG, ids=[f"{n}:{p}={v!r}"[:60] for n, p, v in WRONG])
def test_a_schema_refuses_a_wrong_document(demo_lake: Path, name: str, path: str, value: Any) -> None:
    # Given a valid document of the lake, with one thing made wrong
    document = copy.deepcopy(_documents(demo_lake, name)[0])
    if path.startswith("rows/0/"):
        document = copy.deepcopy(next(d for d in _documents(demo_lake, name) if d["rows"]))
    _set(path, value)(document)
    # Then its schema refuses it
    assert not _validator(name).is_valid(document)
