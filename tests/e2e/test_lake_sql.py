"""The lake as SQL: the Athena DDL in sql/athena/ parses (sqlglot's Athena dialect) and its queries, run in
DuckDB over a lake the demo produced (real SDK against the emulator), count what the rows hold."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import sqlglot
from lake_sql import SQL_DIR, TABLE_FILES, athena_queries, columns, duckdb_views, sql_text, table_properties
from sqlglot import exp

from encord_mirror.cli.main import main
from encord_mirror.tables.records import COLUMNS


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("demo") / "lake"
    assert main(["demo", "--rows", "40", "--lake", str(lake)]) == 0
    return lake


def _frames(unit: dict[str, object]) -> list[dict[str, list[dict[str, object]]]]:
    labels = unit["labels"]
    assert isinstance(labels, dict)
    return [labels] if "objects" in labels or "classifications" in labels else list(labels.values())


def test_every_ddl_statement_parses_as_athena_sql_with_partition_projection() -> None:
    # Given the DDL files, with their placeholders filled in
    for name in sorted(p.name for p in SQL_DIR.glob("*.sql")):
        # When parsed with sqlglot's Athena dialect, then each is SQL it understands
        statements = sqlglot.parse(sql_text(name), read="athena")
        # (and only tables and queries: no MSCK REPAIR or other command a deployment would have to run)
        assert statements and all(isinstance(s, exp.Create | exp.Select) for s in statements), name
    # And every table projects its `project` partition from the key: no crawler, no MSCK REPAIR
    for table in TABLE_FILES:
        props = table_properties(table)
        assert props["projection.enabled"] == "true" and props["projection.project.type"] == "enum"
        assert props["storage.location.template"].endswith("project=${project}/")


def test_the_annotations_ddl_has_every_column_a_record_has() -> None:
    # Given the annotations table's DDL, then its columns are the records' columns, in order
    assert [name for name, _ in columns("annotations")] == COLUMNS


def test_athena_queries_in_duckdb_count_what_the_demo_rows_hold(demo_lake: Path) -> None:
    # Given a lake the demo produced, read straight from its row objects (the oracle)
    project = next(demo_lake.glob("labels/project=*")).name.removeprefix("project=")
    boxes: Counter[tuple[str, str]] = Counter()
    rows: Counter[str] = Counter()
    for path in demo_lake.glob("labels/*/branch=main/*/*.json"):
        document = json.loads(path.read_text())
        stage = document["mirror"]["stage"]
        rows[stage] += 1
        for unit in document["data_units"].values():
            for frame in _frames(unit):
                for obj in frame.get("objects") or []:
                    if obj["shape"] == "bounding_box":
                        boxes[(stage, str(obj["name"]))] += 1
    manifests = sorted(
        (json.loads(p.read_text()) for p in demo_lake.glob(f"runs/project={project}/*.json")),
        key=lambda m: m["run_id"],
    )
    # When the repository's Athena queries run in DuckDB over views built from the DDL's columns
    con = duckdb.connect()
    duckdb_views(con, demo_lake)
    by_class, by_stage, runs = (con.execute(q).fetchall() for q in athena_queries(project))
    # Then boxes per class per stage, rows per stage and each run's counts are what the lake holds
    assert sum(boxes.values()) > 0
    assert {(stage, name): n for stage, name, n in by_class} == dict(boxes)
    assert dict(by_stage) == dict(rows)
    assert [(r[0], r[2], r[3], r[4]) for r in runs] == [
        (m["run_id"], m["counts"]["written"], m["counts"]["moved"], m["counts"]["removed"]) for m in manifests
    ]
