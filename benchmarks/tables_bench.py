"""Issue 8's benchmark: the annotations table's refresh after 1% of the rows changed, against rebuilding it
from every row, side by side; then "boxes per class per stage" in DuckDB over the row JSON and over the
annotations table.

The generator's `main` rows (cached under .bench/fixtures/) go into a `LocalLake` as lake objects (a
`mirror` block with their stage partition), partitioned by workflow stage. Each step runs in a child
process of its own, so its peak memory (resident memory added above what the process held before it) is
its own:
- build: the table from every row (`AnnotationsTable.rebuild_project`), as a first run does;
- then 1% of the rows are edited (a box moved, a new sha256);
- refresh: what a run does, the changed rows' records replaced (`record_run` with those outcomes);
- rebuild: the baseline, the whole table again from every row.
Both tables are compared (they must be equal). Then each DuckDB query runs 3 times (the fastest counts),
with the same answer checked.

    python -m benchmarks --suite tables --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import hashlib
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.coco_refresh import CountingLake
from encord_mirror.domain.lake import label_key, stage_value
from encord_mirror.domain.models import RowOutcome, RunRecord
from encord_mirror.tables.annotations import AnnotationsTable

PROJECT = "p"
BOXES_JSON = """
SELECT stage, json_extract_string(o, '$.name') AS name, count(*) AS boxes
FROM (
  SELECT json_extract_string(json, '$.mirror.stage') AS stage,
         unnest(list_concat(json_extract(json, '$.data_units.*.labels.objects[*]'),
                            json_extract(json, '$.data_units.*.labels.*.objects[*]'))) AS o
  FROM read_json_objects('{lake}/labels/*/*/*/*.json')
)
WHERE json_extract_string(o, '$.shape') = 'bounding_box'
GROUP BY ALL ORDER BY ALL
"""
BOXES_TABLE = """
SELECT stage, name, count(*) AS boxes
FROM read_json('{lake}/tables/annotations/*/*/*/*.jsonl.gz')
WHERE kind = 'object' AND shape = 'bounding_box'
GROUP BY ALL ORDER BY ALL
"""


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _table_bytes(lake_dir: Path) -> bytes:
    parts = sorted((lake_dir / "tables").rglob("*.jsonl.gz"))
    return b"".join(str(p.relative_to(lake_dir)).encode() + gzip.decompress(p.read_bytes()) for p in parts)


def _step(kind: str, lake_dir: Path, changed_file: Path) -> dict[str, Any]:
    lake = CountingLake(lake_dir, "labels/")
    table = AnnotationsTable(lake)
    changed = orjson.loads(changed_file.read_bytes()) if kind == "refresh" else []
    gc.collect()
    _reset_peak()
    before = _peak_mb()
    started = time.perf_counter()
    if kind == "refresh":
        now = datetime.now(UTC)
        run = RunRecord(PROJECT, "20260101T000100.000Z-b", now, None, False, ())
        outcomes = [RowOutcome(h, "written", key=key) for h, key in changed]
        table.record_run(run, outcomes, now=now)
    else:
        table.rebuild_project(PROJECT)
    seconds = time.perf_counter() - started
    return {"s": seconds, "rows_read": lake.row_reads, "peak_mb": _peak_mb() - before}


def _child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.tables_bench", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"tables step failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def _document(row: dict[str, Any], stage: str) -> dict[str, Any]:
    body = dict(row)
    body["mirror"] = {"project_hash": PROJECT, "label_hash": row["label_hash"], "data_hash": row["data_hash"]}
    body["mirror"].update(branch="main", stage=stage)
    body["mirror"]["sha256"] = hashlib.sha256(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return body


def _nudge(row: dict[str, Any]) -> None:
    for unit in row["data_units"].values():
        labels = unit["labels"]
        for frame in [labels] if "objects" in labels else list(labels.values()):
            for obj in frame.get("objects") or []:
                if obj.get("boundingBox"):
                    obj["boundingBox"]["x"] = round(obj["boundingBox"]["x"] * 0.9, 4)
                    return


def _query(sql: str) -> tuple[float, list[Any]]:
    import duckdb

    best, answer = float("inf"), []
    for _ in range(3):
        con = duckdb.connect()
        started = time.perf_counter()
        answer = con.execute(sql).fetchall()
        best = min(best, time.perf_counter() - started)
        con.close()
    return best, answer


def measure(data: Path, project: str, fraction: float = 0.01) -> dict[str, Any]:
    project_dir = data / project
    with tempfile.TemporaryDirectory(prefix="tables-bench-") as name:
        tmp = Path(name)
        lake_dir = tmp / "lake"
        lake = CountingLake(lake_dir, "labels/")
        keys: list[tuple[str, str]] = []
        with (project_dir / "rows.jsonl").open("rb") as lines:
            for line in lines:
                item = orjson.loads(line) if line.strip() else {}
                row = item.get("row") or {}
                if row.get("branch_name") == "main" and row.get("label_hash"):
                    title = str(item.get("stage") or "none")
                    stage = stage_value(hashlib.md5(title.encode()).hexdigest(), title)
                    key = label_key(PROJECT, "main", stage, row["label_hash"])
                    lake.put(key, orjson.dumps(_document(row, stage)))
                    keys.append((row["label_hash"], key))
        build = _child("--step", "build", "--lake", str(lake_dir), "--changed", str(tmp / "c.json"))
        changed = random.Random(1).sample(keys, max(1, round(len(keys) * fraction)))
        for _label_hash, key in changed:
            document = orjson.loads(lake.get(key).body)  # type: ignore[union-attr]
            _nudge(document)
            document.pop("mirror")
            lake.put(key, orjson.dumps(_document(document, key.split("/")[3].removeprefix("stage="))))
        (tmp / "c.json").write_bytes(orjson.dumps(changed))
        refresh = _child("--step", "refresh", "--lake", str(lake_dir), "--changed", str(tmp / "c.json"))
        refreshed = _table_bytes(lake_dir)
        rebuild = _child("--step", "rebuild", "--lake", str(lake_dir), "--changed", str(tmp / "c.json"))
        same = refreshed == _table_bytes(lake_dir)
        json_s, json_answer = _query(BOXES_JSON.format(lake=lake_dir))
        table_s, table_answer = _query(BOXES_TABLE.format(lake=lake_dir))
    return {
        "rows": len(keys),
        "changed_rows": len(changed),
        "build": build,
        "refresh": refresh,
        "rebuild": rebuild,
        "refresh_equals_rebuild": same,
        "rebuild_over_refresh_s": rebuild["s"] / refresh["s"],
        "duckdb_json_s": json_s,
        "duckdb_table_s": table_s,
        "duckdb_json_over_table": json_s / table_s,
        "duckdb_same_answer": json_answer == table_answer,
        "boxes": sum(n for *_, n in table_answer),
    }


def run(sizes: list[int]) -> list[dict[str, Any]]:
    from benchmarks.mirror_bench import _fixture

    results = []
    print(
        f"{'rows':>7} {'changed':>7} | {'refresh s':>9} {'read':>5} {'MB':>5} | {'rebuild s':>9} {'read':>7} "
        f"{'MB':>5} | {'x':>5} same | {'duckdb json s':>13} {'table s':>8} {'x':>5} same",
        flush=True,
    )
    for size in sizes:
        data, project = _fixture(size)
        r = measure(data, project)
        results.append(r)
        f, b = r["refresh"], r["rebuild"]
        print(
            f"{r['rows']:>7} {r['changed_rows']:>7} | "
            f"{f['s']:9.2f} {f['rows_read']:>5} {f['peak_mb']:5.0f} | "
            f"{b['s']:9.2f} {b['rows_read']:>7} {b['peak_mb']:5.0f} | {r['rebuild_over_refresh_s']:5.1f} "
            f"{r['refresh_equals_rebuild']} | {r['duckdb_json_s']:13.2f} {r['duckdb_table_s']:8.2f} "
            f"{r['duckdb_json_over_table']:5.1f} {r['duckdb_same_answer']}",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--changed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(orjson.dumps(_step(args.step, Path(args.lake), Path(args.changed))).decode())
        return 0
    print(orjson.dumps(run([int(s) for s in args.sizes.split(",")])).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
