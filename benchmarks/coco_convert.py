"""One COCO conversion in a child process: ours (`--impl ours`) or Encord's CocoExporter (`--impl exporter`).

Prints one JSON line: import time (CocoExporter's import brings the SDK, opencv and shapely), conversion time
(rows already parsed; CocoExporter's time includes `OntologyStructure.from_dict`; with `--repeat N`, the best
of N conversions, each on freshly parsed rows), rows, images, annotations and peak RSS. With `--out`, also
writes the COCO dict as JSON (after the clock stops).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="a generator output directory")
    parser.add_argument("--project", required=True)
    parser.add_argument("--impl", choices=["ours", "exporter"], required=True)
    parser.add_argument("--out", help="write the COCO JSON here")
    parser.add_argument("--repeat", type=int, default=1, help="convert N times, report the fastest")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.impl == "ours":
        from encord_mirror.coco.convert import convert
    else:
        from encord.objects.ontology_structure import OntologyStructure
        from encord.utilities.coco.exporter import CocoExporter
    import_s = time.perf_counter() - started

    import orjson

    project = Path(args.data) / args.project
    ontology = orjson.loads((project / "project.json").read_bytes())["ontology"]
    lines = (project / "rows.jsonl").read_bytes().splitlines()
    timings = []
    coco: Any = None
    for _ in range(max(args.repeat, 1)):
        coco = None  # the previous result is freed before the next run
        rows = [orjson.loads(line)["row"] for line in lines if line.strip()]
        started = time.perf_counter()
        if args.impl == "ours":
            coco = convert(rows, ontology, encord_compatible=True)
        else:
            coco = CocoExporter(rows, OntologyStructure.from_dict(ontology)).export()
        timings.append(time.perf_counter() - started)
    convert_s = min(timings)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if args.out:
        Path(args.out).write_bytes(orjson.dumps(coco, option=orjson.OPT_SERIALIZE_NUMPY))
    result = {
        "import_s": import_s,
        "convert_s": convert_s,
        "runs_s": timings,
        "rows": len(rows),
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "peak_mb": peak_mb,
    }
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
