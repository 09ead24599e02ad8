"""Issue 4's benchmark: our COCO converter against Encord's CocoExporter, side by side on the same rows.

For each size, the generator's rows (every data type and shape, cached under .bench/fixtures/) are
converted by each side in its own child process (`benchmarks.coco_convert`), so import time and peak RSS
are each side's own; both outputs are compared. CocoExporter is quadratic in the number of rows, so it
only runs up to `baseline_max` rows; above that the table gives its time extrapolated from the largest run.
Then the snapshot refresh (`benchmarks.coco_refresh`): the partition's first snapshot, and its refresh
after 1% of the rows changed, with how many row objects each read. Last, the size of the Lambda layer and
of what the converter would add to it with CocoExporter's opencv and shapely.

    python -m benchmarks --suite coco --sizes 1000,10000
    python -m benchmarks.coco_bench --sizes 1000,10000 --baseline-max 10000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from benchmarks.mirror_bench import _fixture

LAYER = Path("layers/deps/python")
IMAGE_STACK = ("opencv-python-headless", "shapely")  # what CocoExporter imports on top of the runtime deps
RUNTIME = ("numpy", "pycocotools")  # what our converter imports (both already in the layer)


def _child(module: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _same_output(ours: Path, theirs: Path) -> bool:
    return bool(orjson.loads(ours.read_bytes()) == orjson.loads(theirs.read_bytes()))


def _rates(side: dict[str, Any]) -> dict[str, Any]:
    seconds = max(side["convert_s"], 1e-9)
    return {**side, "rows_per_s": side["rows"] / seconds, "annotations_per_s": side["annotations"] / seconds}


def _installed_mb(names: tuple[str, ...]) -> float:
    total = 0
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def _tree_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def package_sizes() -> dict[str, Any]:
    """Installed sizes (this interpreter's site-packages) and the built layer's, if there is one."""
    out: dict[str, Any] = {
        "converter_deps_mb": _installed_mb(RUNTIME),
        "image_stack_mb": _installed_mb(IMAGE_STACK),
    }
    if LAYER.is_dir():
        out["layer_mb"] = _tree_mb(LAYER)
        out["layer_with_image_stack_mb"] = out["layer_mb"] + out["image_stack_mb"]
    return out


def run(sizes: list[int], baseline_max: int = 10_000, repeat_max: int = 2_000) -> list[dict[str, Any]]:
    """Up to `repeat_max` rows, each side converts 3 times and the fastest counts (this machine is shared:
    a single run can be off by 30%)."""
    results: list[dict[str, Any]] = []
    largest: tuple[int, float] | None = None  # (rows, seconds) of the largest CocoExporter run
    print(
        f"{'rows':>7} {'annotations':>11} | {'ours s':>7} {'rows/s':>8} {'ann/s':>9} {'import':>7} "
        f"{'MB':>5} | {'Encord s':>8} {'rows/s':>7} {'ann/s':>7} {'import':>7} {'MB':>5} | "
        f"{'x rows/s':>8} same",
        flush=True,
    )
    for size in sizes:
        data, project = _fixture(size)
        with tempfile.TemporaryDirectory(prefix="coco-bench-") as tmp:
            ours_out, theirs_out = Path(tmp) / "ours.json", Path(tmp) / "theirs.json"
            common = (
                "--data",
                str(data),
                "--project",
                project,
                "--repeat",
                "3" if size <= repeat_max else "1",
            )
            ours = _rates(_child("coco_convert", *common, "--impl", "ours", "--out", str(ours_out)))
            row: dict[str, Any] = {"rows": size, "ours": ours}
            if size <= baseline_max:
                theirs = _rates(
                    _child("coco_convert", *common, "--impl", "exporter", "--out", str(theirs_out))
                )
                row["exporter"] = theirs
                row["identical"] = _same_output(ours_out, theirs_out)
                row["speedup_rows_per_s"] = ours["rows_per_s"] / theirs["rows_per_s"]
                row["speedup_annotations_per_s"] = ours["annotations_per_s"] / max(
                    theirs["annotations_per_s"], 1e-9
                )
                largest = (size, theirs["convert_s"])
            else:
                estimate = largest[1] * (size / largest[0]) ** 2 if largest else None
                row["exporter"] = None
                row["exporter_estimate_s"] = estimate
        row["refresh"] = _child("coco_refresh", "--data", str(data), "--project", project)
        results.append(row)
        _print_row(row)
    sizes_mb = package_sizes()
    results.append({"package": sizes_mb})
    _print_sizes(sizes_mb)
    return results


def _print_row(row: dict[str, Any]) -> None:
    o, e = row["ours"], row["exporter"]
    mine = (
        f"{row['rows']:>7} {o['annotations']:>11} | {o['convert_s']:7.2f} {o['rows_per_s']:8.0f} "
        f"{o['annotations_per_s']:9.0f} {o['import_s']:6.2f}s {o['peak_mb']:5.0f} | "
    )
    if e is None:
        estimate = row.get("exporter_estimate_s")
        guess = f"~{estimate / 60:.0f} min" if estimate else "unknown"
        theirs = f"not run (quadratic; would take {guess})"
    else:
        theirs = (
            f"{e['convert_s']:8.2f} {e['rows_per_s']:7.0f} {e['annotations_per_s']:7.0f} "
            f"{e['import_s']:6.2f}s {e['peak_mb']:5.0f} | {row['speedup_rows_per_s']:8.1f} {row['identical']}"
        )
    r = row["refresh"]
    print(mine + theirs, flush=True)
    print(
        f"{'':>7} snapshot of {r['rows']} rows: first {r['first_s']:.2f}s "
        f"({r['first_row_reads']} row reads); after {r['changed_rows']} changed: {r['refresh_s']:.2f}s "
        f"({r['refresh_row_reads']} row reads, {r['annotations_changed']} annotations changed)",
        flush=True,
    )


def _print_sizes(sizes: dict[str, Any]) -> None:
    line = (
        f"package: converter imports numpy + pycocotools ({sizes['converter_deps_mb']:.0f} MB installed, "
        f"already runtime deps); CocoExporter adds opencv-python-headless + shapely "
        f"({sizes['image_stack_mb']:.0f} MB)"
    )
    if "layer_mb" in sizes:
        line += (
            f"; layer {LAYER}: {sizes['layer_mb']:.0f} MB, would be "
            f"{sizes['layer_with_image_stack_mb']:.0f} MB with them (Lambda's limit: 250 MB unzipped)"
        )
    print(line, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coco_bench")
    parser.add_argument("--sizes", default="1000,10000", help="row counts, comma-separated")
    parser.add_argument("--baseline-max", type=int, default=10_000, help="largest size CocoExporter runs at")
    parser.add_argument("--out", default=".bench/coco.json")
    args = parser.parse_args()
    results = run([int(s) for s in args.sizes.split(",") if s], args.baseline_max)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
