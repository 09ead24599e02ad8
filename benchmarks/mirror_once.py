"""One `encord-mirror sync` in a child process: prints one JSON line (wall time, peak RSS, exit code)."""

from __future__ import annotations

import contextlib
import io
import resource
import sys
import time

import orjson

from encord_mirror.cli import sync  # noqa: F401  (import the SDK before the clock starts, as the baseline does)
from encord_mirror.cli.main import main as cli_main


def main() -> int:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(["sync", *sys.argv[1:]])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(orjson.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_mb, "exit": code}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
