"""Cold-start import time of each Lambda handler, in fresh interpreters, side by side with a baseline
that also imports the COCO stack up front (what every handler paid before only the finalizer did).

`python -m benchmarks --suite cold-start`. Each figure is the median of `repeats` fresh processes, with
`-X importtime`'s own overhead left out (time.perf_counter around the module load).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_PROBE = """
import importlib.util, sys, time
started = time.perf_counter()
for name in sys.argv[2:]:
    importlib.import_module(name)
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(time.perf_counter() - started)
"""
HANDLERS = ("planner", "worker", "finalizer")


def _load_seconds(handler: str, preload: tuple[str, ...]) -> float:
    app = str(ROOT / "functions" / handler / "app.py")
    env = {"POWERTOOLS_SERVICE_NAME": "bench", "POWERTOOLS_METRICS_NAMESPACE": "bench", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, app, *preload], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip())


def run(repeats: int = 7) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for handler in HANDLERS:
        # Interleaved, so a busy moment of the machine hits both sides alike.
        ours, baseline = [], []
        for _ in range(repeats):
            ours.append(_load_seconds(handler, ()))
            baseline.append(_load_seconds(handler, ("encord_mirror.coco.snapshot",)))
        mine, theirs = statistics.median(ours), statistics.median(baseline)
        results[handler] = {"seconds": round(mine, 3), "baseline_seconds": round(theirs, 3)}
        results[handler]["speedup"] = round(theirs / mine, 2)
        print(
            f"cold start {handler}: {mine:.3f}s vs {theirs:.3f}s with the COCO stack ({theirs / mine:.2f}x)"
        )
    return results
