"""`make bench` (or `python -m benchmarks --help`)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--sizes", default="1000,10000", help="row counts, comma-separated")
    parser.add_argument("--changes", default="0,0.01,0.1", help="fractions changed before each repeat")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every Encord request")
    parser.add_argument("--workers", type=int, default=1, help="mirror worker threads (1 = like for like)")
    parser.add_argument("--mirror-coco", default="off", help="the mirror's --coco mode in the mirror suite")
    parser.add_argument(
        "--coco-baseline-max", type=int, default=10_000, help="largest size CocoExporter runs at (quadratic)"
    )
    parser.add_argument("--suite", choices=["mirror", "coco", "cold-start", "tables", "all"], default="all")
    parser.add_argument("--out", default=".bench/results.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}",
        "latency_ms": args.latency_ms,
    }
    if args.suite in ("mirror", "all"):
        from benchmarks import mirror_bench

        changes = [float(c) for c in args.changes.split(",") if c]
        results["mirror"] = mirror_bench.run(sizes, changes, args.latency_ms, args.workers, args.mirror_coco)
    if args.suite in ("coco", "all"):
        from benchmarks import coco_bench

        results["coco"] = coco_bench.run(sizes, args.coco_baseline_max)
    if args.suite in ("tables", "all"):
        from benchmarks import tables_bench

        results["tables"] = tables_bench.run(sizes)
    if args.suite in ("cold-start", "all"):
        from benchmarks import cold_start

        results["cold_start"] = cold_start.run()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
