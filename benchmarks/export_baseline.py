"""The approach of Encord's own export scripts, as users copy them: every run lists every label row,
initialises all of them in bundles of 100, and writes every row's JSON, holding the project in memory.

Rows without a label hash are skipped: initialising them would create label rows in Encord.
Run as a child process: prints one JSON line with its wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import orjson
from encord import EncordUserClient


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    client = EncordUserClient.create_with_ssh_private_key(Path(args.key).read_text(), domain=args.domain)
    project = client.get_project(args.project)
    rows = [r for r in project.list_label_rows_v2() if r.label_hash is not None]
    for start in range(0, len(rows), 100):
        with project.create_bundle(bundle_size=100) as bundle:
            for row in rows[start : start + 100]:
                row.initialise_labels(bundle=bundle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        (out / f"{row.label_hash}.json").write_bytes(orjson.dumps(row.to_encord_dict()))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - started
    print(orjson.dumps({"seconds": seconds, "peak_mb": peak_mb, "rows": len(rows)}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
