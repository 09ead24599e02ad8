"""`encord-mirror show --label-hash H --as-of RUN_ID|TIME`: the row exactly as the lake held it then
(its bytes, from the change log), on stdout."""

from __future__ import annotations

import argparse
import sys

from encord_mirror.cli.errors import CliError
from encord_mirror.cli.target import open_lake
from encord_mirror.reader import Lake, LakeReadError


def show_main(args: argparse.Namespace) -> int:
    lake = Lake(open_lake(args.lake))
    try:
        body = lake.row_bytes_as_of(args.label_hash, args.as_of, branch=args.branch, project=args.project)
    except LakeReadError as exc:
        raise CliError(f"--label-hash {args.label_hash}: {exc}") from None
    buffer = getattr(sys.stdout, "buffer", None)  # bytes as stored; a text stream only when redirected
    if buffer is not None:
        sys.stdout.flush()
        buffer.write(body + b"\n")
        buffer.flush()
    else:
        sys.stdout.write(body.decode() + "\n")
    return 0
