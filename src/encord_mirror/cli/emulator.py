"""`encord-mirror emulator ...`: the `encord-emulator` command of the workspace's emulator package."""

from __future__ import annotations

import argparse

from encord_mirror.cli.errors import CliError


def emulator_main(args: argparse.Namespace) -> int:
    try:
        from encord_emulator.cli import main
    except ImportError:
        raise CliError(
            "the emulator is the separate package encord-emulator (packages/encord-emulator in the "
            "repository; `make dev` installs it): install it to use `encord-mirror emulator`"
        ) from None
    return main(args.emulator_argv)
