"""The `encord-mirror` command line.

Each command group lives in its own module and registers its sub-parsers; heavy imports (the SDK,
boto3, numpy) happen inside the command functions so that `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from encord_mirror import __version__


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from encord_mirror import sync_cli
    from encord_mirror.coco import cli as coco_cli
    from encord_mirror.emulator import cli as emulator_cli

    parser = argparse.ArgumentParser(
        prog="encord-mirror",
        description="Keep a data lake in step with Encord labels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sync_cli.register(sub)
    coco_cli.register(sub)
    emulator_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except CliError as exc:
        print(f"encord-mirror: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
