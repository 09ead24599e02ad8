"""Issue 3's benchmark: the mirror against the export-script approach, side by side on one emulated project.

For each size: a full first sync, then repeat syncs after 0 %, 1 % and 10 % of the rows changed. The
export scripts write no COCO, so the mirror runs with `--coco off` by default, like for like (the COCO
step has its own benchmark, `coco_bench`). Both sides talk to the same emulator (its own process, a
fixed latency on every request) through the real SDK; each side runs in a child process so its peak
RSS is its own. Encord requests and rows initialised come from the emulator's request log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair

CACHE = Path(".bench")


@dataclass
class Measure:
    seconds: float
    peak_mb: float
    requests: int
    initialised: int
    writes: int


def _fixture(rows: int) -> tuple[Path, str]:
    out = CACHE / "fixtures" / f"rows-{rows}"
    marker = out / ".complete"
    if not marker.exists():
        out.mkdir(parents=True, exist_ok=True)
        projects = generate(out, rows, seed=7)
        marker.write_text(projects[0])
    return out, marker.read_text().strip()


def _drain_log(url: str) -> tuple[int, int, int]:
    with urllib.request.urlopen(f"{url}/__emulator/log?clear=1") as response:
        entries: list[dict[str, Any]] = json.load(response)["requests"]
    initialised = sum(
        e["uids"] for e in entries if e["query_type"] == "labelrow" and e["query_method"] == "GET"
    )
    return len(entries), initialised, sum(1 for e in entries if e["write"])


def _child(args: list[str], url: str) -> Measure:
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    requests, initialised, writes = _drain_log(url)
    return Measure(result["seconds"], result["peak_mb"], requests, initialised, writes)


def run(
    sizes: list[int], changes: list[float], latency_ms: float, workers: int, coco: str = "off"
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for size in sizes:
        data, project = _fixture(size)
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            work = Path(tmp)
            key, pub = generate_keypair(work)
            pubfile = work / "key.pub"
            pubfile.write_text(pub)
            emu = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.emulator_proc", "--data", str(data), "--project", project,
                 "--pubkey", str(pubfile), "--latency-ms", str(latency_ms)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert emu.stdin is not None and emu.stdout is not None
            try:
                url = emu.stdout.readline().strip()
                _drain_log(url)
                mirror_args = ["benchmarks.mirror_once", "--project", project, "--lake", str(work / "lake"),
                               "--ssh-key", str(key), "--encord-domain", url,
                               "--workers", str(workers), "--coco", coco]  # fmt: skip
                export_args = ["benchmarks.export_baseline", "--domain", url, "--key", str(key),
                               "--project", project, "--out", str(work / "export")]  # fmt: skip
                steps = [("first sync", 0.0)] + [(f"{c:.0%} changed", c) for c in changes]
                for seed, (label, fraction) in enumerate(steps):
                    if fraction:
                        emu.stdin.write(f"touch {fraction} {seed}\n")
                        emu.stdin.flush()
                        emu.stdout.readline()
                        _drain_log(url)
                    mirror = _child(mirror_args, url)
                    export = _child(export_args, url)
                    row = {"rows": size, "step": label, "mirror": mirror.__dict__, "export": export.__dict__}
                    results.append(row)
                    _print_row(row)
            finally:
                emu.stdin.close()
                emu.wait(timeout=30)
    return results


def _print_row(row: dict[str, Any]) -> None:
    m, e = row["mirror"], row["export"]
    print(
        f"{row['rows']:>7} {row['step']:<12} | time {m['seconds']:7.2f}s vs {e['seconds']:7.2f}s "
        f"(x{e['seconds'] / max(m['seconds'], 1e-9):5.1f}) "
        f"| requests {m['requests']:>5} vs {e['requests']:>5} "
        f"| initialised {m['initialised']:>6} vs {e['initialised']:>6} | peak {m['peak_mb']:6.0f} vs "
        f"{e['peak_mb']:6.0f} MB | writes {m['writes']} vs {e['writes']}",
        flush=True,
    )
