"""The Athena DDL in sql/athena/ read with sqlglot: its statements, its tables' columns, and DuckDB views
over a local lake built from the same columns (so the DDL's types are checked against the data)."""

from __future__ import annotations

from pathlib import Path

import sqlglot
from sqlglot import exp

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "athena"
TABLE_FILES = {"labels": "02_labels.sql", "annotations": "03_annotations.sql", "runs": "04_runs.sql"}
# Where each table's files are under a lake, as DuckDB globs (one per partition depth).
GLOBS = {
    "labels": "labels/*/*/*/*.json",
    "annotations": "tables/annotations/*/*/*/*.jsonl.gz",
    "runs": "runs/*/*.json",
}


def sql_text(
    name: str, *, database: str = "encord_mirror", lake: str = "s3://bucket/prefix", projects: str = "p"
) -> str:
    text = (SQL_DIR / name).read_text()
    for key, value in {"${DATABASE}": database, "${LAKE}": lake, "${PROJECTS}": projects}.items():
        text = text.replace(key, value)
    return text


def create_statement(table: str) -> exp.Create:
    statement = sqlglot.parse_one(sql_text(TABLE_FILES[table]), read="athena")
    assert isinstance(statement, exp.Create)
    return statement


def columns(table: str) -> list[tuple[str, exp.DataType]]:
    schema = create_statement(table).this
    return [(d.name, d.args["kind"]) for d in schema.expressions if isinstance(d, exp.ColumnDef)]


def table_properties(table: str) -> dict[str, str]:
    props = create_statement(table).args["properties"]
    return {
        p.name: p.args["value"].name
        for p in props.expressions
        if isinstance(p, exp.Property) and isinstance(p.args.get("value"), exp.Literal)
    }


def duckdb_views(con: object, lake_root: Path, database: str = "encord_mirror") -> None:
    """One view per table over a local lake, with the DDL's columns and a `project` column (the
    partition key Athena projects from the key)."""
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {database}")  # type: ignore[attr-defined]
    for table in TABLE_FILES:
        spec = ", ".join(f"'{name}': '{kind.sql('duckdb')}'" for name, kind in columns(table))
        source = f"read_json('{lake_root}/{GLOBS[table]}', columns={{{spec}}}, format='newline_delimited'"
        con.execute(  # type: ignore[attr-defined]
            f"CREATE VIEW {database}.{table} AS SELECT *, "
            "split_part(split_part(filename, 'project=', 2), '/', 1) AS project "
            f"FROM {source}, filename=true, hive_partitioning=false)"
        )


def athena_queries(project: str, database: str = "encord_mirror") -> list[str]:
    """queries.sql, each statement transpiled from Athena's dialect to DuckDB's."""
    text = (
        (SQL_DIR / "queries.sql").read_text().replace("${DATABASE}", database).replace("${PROJECT}", project)
    )
    return [
        sqlglot.transpile(s, read="athena", write="duckdb")[0]
        for s in text.split(";")
        if s.strip(" \n") and "SELECT" in s
    ]
