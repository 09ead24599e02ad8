"""A COCO snapshot of one partition, then its refresh after 1% of the rows changed, in a child process.

The partition's rows (the main branch of a generated project) go into a `LocalLake` in a temporary
directory; `CocoSnapshotBuilder` builds the first snapshot, then 1% of the rows are rewritten (a new edit
time and one object moved, so their annotations change too) and the partition is refreshed with only
those rows as changed. Prints one JSON line: both times, how many row objects each read, the bytes of
snapshot files (under `coco/`) each read and wrote, and each step's peak resident memory. The rows are
streamed into the lake rather than held, so the peak is the builder's own (Linux: the peak is reset before
each step through /proc/self/clear_refs; elsewhere it is the process's peak so far).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import resource
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
    """A LocalLake that counts reads of row objects (keys under `prefix`), and bytes of snapshot files."""

    def __init__(self, root: Path, prefix: str) -> None:
        super().__init__(root)
        self.prefix = prefix
        self.row_reads = 0
        self.coco_read = 0
        self.coco_written = 0

    def get(self, key: str) -> StoredObject | None:
        if key.startswith(self.prefix):
            self.row_reads += 1
        got = super().get(key)
        if got is not None and key.startswith("coco/"):
            self.coco_read += len(got.body)
        return got

    def put(self, key: str, body: bytes, **kwargs: Any) -> str:
        if key.startswith("coco/"):
            self.coco_written += len(body)
        return super().put(key, body, **kwargs)

    def reset(self) -> None:
        self.row_reads = self.coco_read = self.coco_written = 0


def _reset_peak() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    part = Partition("p", "main", "s")
    project = ProjectInfo("p", "P", "o", ontology, ())
    with tempfile.TemporaryDirectory(prefix="coco-refresh-") as tmp:
        lake = CountingLake(Path(tmp), partition_prefix("labels", "p", "main", "s"))
        hashes: list[str] = []
        row: dict[str, Any] = {}
        with (project_dir / "rows.jsonl").open("rb") as lines:
            for line in lines:
                row = orjson.loads(line)["row"] if line.strip() else {}
                if row.get("branch_name") == "main" and row.get("label_hash"):
                    lake.put(label_key("p", "main", "s", row["label_hash"]), orjson.dumps(row))
                    hashes.append(row["label_hash"])
        del row
        gc.collect()
        builder = CocoSnapshotBuilder(lake, encord_compatible=False)
        _reset_peak()
        started = time.perf_counter()
        builder.refresh(
            project,
            PartitionChanges(part, tuple(hashes), ()),
            run_id="20260101T000000Z-a",
            now=datetime.now(UTC),
        )
        first_s, first_reads, first_peak = time.perf_counter() - started, lake.row_reads, _peak_mb()
        first_io = (lake.coco_read, lake.coco_written)

        changed = random.Random(1).sample(hashes, max(1, round(len(hashes) * args.fraction)))
        for label_hash in changed:
            key = label_key("p", "main", "s", label_hash)
            row = orjson.loads(lake.get(key).body)  # type: ignore[union-attr]
            _nudge(row)
            lake.put(key, orjson.dumps(row))
        del row
        gc.collect()
        lake.reset()
        _reset_peak()
        started = time.perf_counter()
        event = builder.refresh(
            project,
            PartitionChanges(part, tuple(changed), ()),
            run_id="20260101T000100Z-b",
            now=datetime.now(UTC),
        )
        refresh_s, refresh_reads, refresh_peak = time.perf_counter() - started, lake.row_reads, _peak_mb()
        refresh_io = (lake.coco_read, lake.coco_written)
    changes = event.detail["changes"] if event is not None else {}
    print(
        orjson.dumps(
            {
                "rows": len(hashes),
                "changed_rows": len(changed),
                "first_s": first_s,
                "first_row_reads": first_reads,
                "refresh_s": refresh_s,
                "refresh_row_reads": refresh_reads,
                "first_peak_mb": first_peak,
                "refresh_peak_mb": refresh_peak,
                "first_snapshot_mb_read": first_io[0] / 1e6,
                "first_snapshot_mb_written": first_io[1] / 1e6,
                "refresh_snapshot_mb_read": refresh_io[0] / 1e6,
                "refresh_snapshot_mb_written": refresh_io[1] / 1e6,
                "rows_changed": changes.get("rows_changed"),
                "annotations_changed": changes.get("annotations_changed"),
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
