"""COCO benchmark: the converter against Encord's CocoExporter; a snapshot refresh after 1% of rows changed.

    .venv/bin/python tests/bench/bench_coco.py --rows 1000 [--exporter] [--refresh]

Rows come from the synthetic generator (every data type and shape). `--exporter` also times CocoExporter
(quadratic in the number of images: slow beyond a few thousand rows). `--refresh` writes the main-branch rows
to a local lake, builds the partition's first snapshot, changes 1% of the rows and times the refresh.
Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from encord_mirror.coco.convert import convert
from encord_mirror.emulator.generate import generate


def _load(out: Path, rows: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    (project,) = generate(out, rows, seed=5)
    meta = orjson.loads((out / project / "project.json").read_bytes())
    lines = (out / project / "rows.jsonl").read_bytes().splitlines()
    return [orjson.loads(line)["row"] for line in lines if line.strip()], meta["ontology"]


def _convert(rows: list[dict[str, Any]], ontology: dict[str, Any], exporter: bool) -> None:
    start = time.perf_counter()
    coco = convert(rows, ontology, encord_compatible=True)
    ours = time.perf_counter() - start
    n_ann = len(coco["annotations"])
    print(f"converter     {len(rows)} rows, {n_ann} annotations: {ours:.2f}s  {len(rows) / ours:.0f} rows/s")
    if exporter:
        from encord.objects.ontology_structure import OntologyStructure
        from encord.utilities.coco.exporter import CocoExporter

        start = time.perf_counter()
        CocoExporter(rows, OntologyStructure.from_dict(ontology)).export()
        theirs = time.perf_counter() - start
        print(f"CocoExporter  {theirs:.2f}s  {len(rows) / theirs:.0f} rows/s  (ours: {theirs / ours:.1f}x)")


def _refresh(rows: list[dict[str, Any]], ontology: dict[str, Any], root: Path) -> None:
    from encord_mirror.adapters.local import LocalLake
    from encord_mirror.coco.snapshot import CocoSnapshotBuilder
    from encord_mirror.domain.lake import label_key
    from encord_mirror.domain.models import Partition, PartitionChanges, ProjectInfo

    lake = LocalLake(root)
    main = [r for r in rows if r["branch_name"] == "main"]
    for row in main:
        lake.put(label_key("p", "main", "s", row["label_hash"]), orjson.dumps(row))
    project = ProjectInfo("p", "P", "o", ontology, ())
    part = Partition("p", "main", "s")
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    start = time.perf_counter()
    all_rows = tuple(r["label_hash"] for r in main)
    builder.refresh(
        project, PartitionChanges(part, all_rows, ()), run_id="20260101T000000Z-a", now=datetime.now(UTC)
    )
    full = time.perf_counter() - start
    changed = random.Random(1).sample(main, max(1, len(main) // 100))
    for row in changed:
        row["last_edited_at"] = "Mon, 05 Jan 2026 00:00:00 UTC"
        lake.put(label_key("p", "main", "s", row["label_hash"]), orjson.dumps(row))
    start = time.perf_counter()
    touched = tuple(r["label_hash"] for r in changed)
    builder.refresh(
        project, PartitionChanges(part, touched, ()), run_id="20260101T000100Z-b", now=datetime.now(UTC)
    )
    inc = time.perf_counter() - start
    print(f"snapshot      {len(main)} rows: first {full:.2f}s; after {len(changed)} changed rows {inc:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--exporter", action="store_true")
    parser.add_argument("--refresh", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows, ontology = _load(Path(tmp) / "fixture", args.rows)
        _convert(rows, ontology, args.exporter)
        if args.refresh:
            _refresh(rows, ontology, Path(tmp) / "lake")


if __name__ == "__main__":
    main()
