"""The `encord-mirror` entry point: parse, import the chosen command's module, run it, map errors."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from encord_mirror import __version__
from encord_mirror.cli.args import COMMANDS
from encord_mirror.cli.errors import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encord-mirror",
        description="Keep a data lake in step with Encord labels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _command(path: str) -> Callable[[argparse.Namespace], int]:
    module, _, name = path.partition(":")
    command: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _command(args.func)(args)
    except CliError as exc:
        print(f"encord-mirror: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
