"""`encord-emulator serve|generate` (also reachable as `encord-mirror emulator ...` from a mirror checkout).

Declarations only: the server and the generator (which import the SDK) load inside the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def register(sub: Any) -> None:
    """Add `serve` and `generate` to an argparse sub-parser group (this CLI's, or a host CLI's)."""
    serve = sub.add_parser("serve", help="serve a fixture directory as the Encord API until stopped")
    serve.add_argument(
        "--data", required=True, help="fixture directory (DIR/<project_hash>/project.json ...)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    serve.add_argument(
        "--authorized-key",
        action="append",
        default=[],
        metavar="PUBFILE",
        help="OpenSSH ed25519 public key allowed to call the API (repeatable)",
    )
    serve.add_argument("--no-auth", action="store_true", help="accept any request unsigned")
    serve.set_defaults(func=_serve)

    gen = sub.add_parser("generate", help="write a synthetic fixture directory")
    gen.add_argument("--out", required=True, help="directory to write")
    gen.add_argument("--rows", type=int, required=True, help="label rows per project (all branches)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--projects", type=int, default=1)
    gen.set_defaults(func=_generate)


def _serve(args: argparse.Namespace) -> int:
    from encord_emulator.server import serve_main

    return serve_main(args)


def _generate(args: argparse.Namespace) -> int:
    from encord_emulator.generate import generate_main

    return generate_main(args)


def build_parser(prog: str = "encord-emulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A local Encord API emulator for tests.")
    register(parser.add_subparsers(dest="emulator_command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
