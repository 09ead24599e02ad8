"""A COCO snapshot of one partition, then its refresh after 1% of the rows changed, in a child process.

The partition's rows (the main branch of a generated project) go into a `LocalLake` in a temporary
directory; `CocoSnapshotBuilder` builds the first snapshot, then 1% of the rows are rewritten (a new edit
time and one object moved, so their annotations change too) and the partition is refreshed with only
those rows as changed. Prints one JSON line: both times and how many row objects each read.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from encord_mirror.adapters.local import LocalLake
from encord_mirror.coco.snapshot import CocoSnapshotBuilder
from encord_mirror.domain.lake import label_key, partition_prefix
from encord_mirror.domain.models import Partition, PartitionChanges, ProjectInfo, StoredObject


class CountingLake(LocalLake):
    """A LocalLake that counts reads of row objects (keys under `prefix`)."""

    def __init__(self, root: Path, prefix: str) -> None:
        super().__init__(root)
        self.prefix = prefix
        self.row_reads = 0

    def get(self, key: str) -> StoredObject | None:
        if key.startswith(self.prefix):
            self.row_reads += 1
        return super().get(key)


def _nudge(row: dict[str, Any]) -> None:
    """An edit: a new edit time, and the first box or polygon point moved a little."""
    row["last_edited_at"] = "Mon, 05 Jan 2026 00:00:00 UTC"
    for unit in row["data_units"].values():
        labels = unit["labels"]
        frames = [labels] if "objects" in labels else list(labels.values())
        for frame in frames:
            for obj in frame.get("objects") or []:
                box = obj.get("boundingBox")
                if box:
                    box["x"] = round(box["x"] * 0.9, 4)
                    return


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--fraction", type=float, default=0.01)
    args = parser.parse_args()
    project_dir = Path(args.data) / args.project
    ontology = orjson.loads((project_dir / "project.json").read_bytes())["ontology"]
    lines = (project_dir / "rows.jsonl").read_bytes().splitlines()
    rows = [orjson.loads(line)["row"] for line in lines if line.strip()]
    main_rows = [r for r in rows if r.get("branch_name") == "main" and r.get("label_hash")]
    part = Partition("p", "main", "s")
    project = ProjectInfo("p", "P", "o", ontology, ())
    with tempfile.TemporaryDirectory(prefix="coco-refresh-") as tmp:
        lake = CountingLake(Path(tmp), partition_prefix("labels", "p", "main", "s"))
        for row in main_rows:
            lake.put(label_key("p", "main", "s", row["label_hash"]), orjson.dumps(row))
        builder = CocoSnapshotBuilder(lake, encord_compatible=False)
        everything = tuple(r["label_hash"] for r in main_rows)
        started = time.perf_counter()
        builder.refresh(
            project,
            PartitionChanges(part, everything, ()),
            run_id="20260101T000000Z-a",
            now=datetime.now(UTC),
        )
        first_s, first_reads = time.perf_counter() - started, lake.row_reads

        changed = random.Random(1).sample(main_rows, max(1, round(len(main_rows) * args.fraction)))
        for row in changed:
            _nudge(row)
            lake.put(label_key("p", "main", "s", row["label_hash"]), orjson.dumps(row))
        lake.row_reads = 0
        started = time.perf_counter()
        event = builder.refresh(
            project,
            PartitionChanges(part, tuple(r["label_hash"] for r in changed), ()),
            run_id="20260101T000100Z-b",
            now=datetime.now(UTC),
        )
        refresh_s, refresh_reads = time.perf_counter() - started, lake.row_reads
    changes = event.detail["changes"] if event is not None else {}
    print(
        orjson.dumps(
            {
                "rows": len(main_rows),
                "changed_rows": len(changed),
                "first_s": first_s,
                "first_row_reads": first_reads,
                "refresh_s": refresh_s,
                "refresh_row_reads": refresh_reads,
                "rows_changed": changes.get("rows_changed"),
                "annotations_changed": changes.get("annotations_changed"),
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
