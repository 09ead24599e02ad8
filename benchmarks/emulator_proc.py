"""The emulator in its own process, so the client under test does not share its GIL.

Prints the base URL on the first line, then takes commands on stdin, one per line:
`touch FRACTION SEED` edits that fraction of the main-branch label rows (a real content change,
stamped with the emulator's clock) and prints how many; EOF stops the server.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

from encord_emulator.server import Emulator


def _touch(emu: Emulator, project: str, fraction: float, seed: int) -> int:
    rows = [r for r in emu.state(project) if r["branch_name"] == "main"]
    rng = random.Random(seed)
    picked = rng.sample(rows, round(len(rows) * fraction)) if fraction > 0 else []
    for item in picked:
        emu.edit_row(project, item["label_hash"], _changed(item["row"], rng))
    return len(picked)


def _changed(row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A small, valid content change: nudge the first bounding box, else stamp only."""
    for unit in row["data_units"].values():
        labels = unit.get("labels", {})
        frames = [labels] if "objects" in labels else list(labels.values())
        for frame in frames:
            for obj in frame.get("objects", []):
                box = obj.get("boundingBox")
                if box:
                    box["x"] = round(min(0.9, max(0.0, box["x"] + rng.uniform(-0.01, 0.01))), 4)
                    return row
    return row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--pubkey", required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    emu = Emulator(
        Path(args.data), authorized_keys=[Path(args.pubkey).read_text()], latency_s=args.latency_ms / 1000
    )
    with emu:
        print(emu.url, flush=True)
        for line in sys.stdin:
            words = line.split()
            if words and words[0] == "touch":
                print(_touch(emu, args.project, float(words[1]), int(words[2])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
