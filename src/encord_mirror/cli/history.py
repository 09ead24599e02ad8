"""`encord-mirror history --label-hash H`: a row's versions from the lake's change log (run, time, stage,
sha256), oldest first."""

from __future__ import annotations

import argparse
import sys

import orjson

from encord_mirror.cli.errors import CliError
from encord_mirror.cli.target import open_lake
from encord_mirror.reader import Lake, LakeReadError


def history_main(args: argparse.Namespace) -> int:
    lake = Lake(open_lake(args.lake))
    try:
        versions = lake.history(args.label_hash, project=args.project)
    except LakeReadError as exc:
        raise CliError(f"--label-hash {args.label_hash}: {exc}") from None
    if args.json:
        sys.stdout.write(orjson.dumps([v.as_dict() for v in versions], option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    print(f"{'run':32} {'time (finalized, UTC)':32} {'status':10} {'branch':8} {'stage':28} sha256")
    for v in versions:
        print(f"{v.run_id:32} {v.time:32} {v.status:10} {v.branch:8} {v.stage:28} {v.sha256 or '-'}")
    return 0
