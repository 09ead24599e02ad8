"""A COCO snapshot of one partition, then its refresh after 1% of the rows changed, in a child process.

The partition's rows (the main branch of a generated project) go into a `LocalLake` in a temporary
directory; `CocoSnapshotBuilder` builds the first snapshot, then 1% of the rows are rewritten (a new edit
time and one object moved, so their annotations change too) and the partition is refreshed with only
those rows as changed. Prints one JSON line: both times, how many row objects each read, the bytes of
snapshot files (under `coco/`) each read and wrote, and each step's peak memory. Each step runs in a
process of its own, and its peak is the resident memory it added to what that process held before it
(Linux: the peak is reset through /proc/self/clear_refs; elsewhere it is the process's peak so far).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

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

    def open(self, key: str) -> BinaryIO | None:
        stream = super().open(key)
        if stream is not None and key.startswith("coco/"):
            self.coco_read += Path(self.uri(key)).stat().st_size
        return stream

    def put_stream(self, key: str, chunks: Iterable[bytes], **kwargs: Any) -> str:
        def counted() -> Iterator[bytes]:
            for chunk in chunks:
                self.coco_written += len(chunk)
                yield chunk

        return super().put_stream(key, counted(), **kwargs)

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


def _step(lake_dir: Path, ontology_file: Path, hashes_file: Path, run_id: str) -> dict[str, Any]:
    """One refresh in this (fresh) process, with only these rows as changed: its time, reads, writes and
    peak memory above what the process held before it (imports, the builder)."""
    ontology = orjson.loads(ontology_file.read_bytes())
    part = Partition("p", "main", "s")
    project = ProjectInfo("p", "P", "o", ontology, ())
    lake = CountingLake(lake_dir, partition_prefix("labels", "p", "main", "s"))
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    hashes = tuple(orjson.loads(hashes_file.read_bytes()))
    gc.collect()
    _reset_peak()
    before = _peak_mb()
    started = time.perf_counter()
    event = builder.refresh(project, PartitionChanges(part, hashes, ()), run_id=run_id, now=datetime.now(UTC))
    seconds = time.perf_counter() - started
    return {
        "s": seconds,
        "row_reads": lake.row_reads,
        "peak_mb": _peak_mb() - before,
        "snapshot_mb_read": lake.coco_read / 1e6,
        "snapshot_mb_written": lake.coco_written / 1e6,
        "changes": event.detail["changes"] if event is not None else {},
    }


def _child(tmp: Path, hashes: list[str], run_id: str) -> dict[str, Any]:
    (tmp / ".hashes.json").write_bytes(orjson.dumps(hashes))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.coco_refresh",
            "--step",
            run_id,
            "--lake",
            str(tmp / "lake"),
            "--ontology",
            str(tmp / ".ontology.json"),
            "--hashes",
            str(tmp / ".hashes.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"refresh step failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--project")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--step", help=argparse.SUPPRESS)  # a child: one refresh with this run id
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--ontology", help=argparse.SUPPRESS)
    parser.add_argument("--hashes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        result = _step(Path(args.lake), Path(args.ontology), Path(args.hashes), args.step)
        print(orjson.dumps(result).decode())
        return 0
    if not (args.data and args.project):
        parser.error("--data and --project are required")
    project_dir = Path(args.data) / args.project
    with tempfile.TemporaryDirectory(prefix="coco-refresh-") as name:
        tmp = Path(name)
        ontology = orjson.loads((project_dir / "project.json").read_bytes())["ontology"]
        (tmp / ".ontology.json").write_bytes(orjson.dumps(ontology))
        lake = LocalLake(tmp / "lake")
        hashes: list[str] = []
        with (project_dir / "rows.jsonl").open("rb") as lines:
            for line in lines:
                row = orjson.loads(line)["row"] if line.strip() else {}
                if row.get("branch_name") == "main" and row.get("label_hash"):
                    lake.put(label_key("p", "main", "s", row["label_hash"]), orjson.dumps(row))
                    hashes.append(row["label_hash"])
        # Each step in a process of its own, so that its peak memory is its own.
        first = _child(tmp, hashes, "20260101T000000Z-a")
        changed = random.Random(1).sample(hashes, max(1, round(len(hashes) * args.fraction)))
        for label_hash in changed:
            key = label_key("p", "main", "s", label_hash)
            row = orjson.loads(lake.get(key).body)  # type: ignore[union-attr]
            _nudge(row)
            lake.put(key, orjson.dumps(row))
        refresh = _child(tmp, changed, "20260101T000100Z-b")
    changes = refresh["changes"]
    print(
        orjson.dumps(
            {
                "rows": len(hashes),
                "changed_rows": len(changed),
                "first_s": first["s"],
                "first_row_reads": first["row_reads"],
                "refresh_s": refresh["s"],
                "refresh_row_reads": refresh["row_reads"],
                "first_peak_mb": first["peak_mb"],
                "refresh_peak_mb": refresh["peak_mb"],
                "first_snapshot_mb_read": first["snapshot_mb_read"],
                "first_snapshot_mb_written": first["snapshot_mb_written"],
                "refresh_snapshot_mb_read": refresh["snapshot_mb_read"],
                "refresh_snapshot_mb_written": refresh["snapshot_mb_written"],
                "rows_changed": changes.get("rows_changed"),
                "annotations_changed": changes.get("annotations_changed"),
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
