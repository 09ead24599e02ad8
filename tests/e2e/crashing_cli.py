"""`encord-mirror`, killed by SIGKILL at a named step: the subprocess of the crash-recovery tests.

```
python crashing_cli.py STEP N WHEN -- ARGV...
```
STEP is `lake.<method>[:<key part>]` (LocalLake and S3ObjectStore) or `state.<method>` (SqliteStateStore),
e.g. `lake.put:/latest.json` or `state.put_index`; the process kills itself at the Nth call that matches,
`before` or `after` the call itself, as `kill -9` would at that moment (no `finally`, no flush). It writes one
line, `crash point reached: ...`, to stderr first, so a test can tell a kill at the point from any other end.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.cli.main import main

TARGETS: dict[str, tuple[type, ...]] = {"lake": (LocalLake, S3ObjectStore), "state": (SqliteStateStore,)}


def arm(step: str, nth: int, when: str) -> None:
    kind, _, rest = step.partition(".")
    method, _, key_part = rest.partition(":")
    lock = threading.Lock()
    calls = [0]

    def die() -> None:
        sys.stderr.write(f"crash point reached: {step} #{nth} {when}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            if key_part and not (args and isinstance(args[0], str) and key_part in args[0]):
                return original(self, *args, **kwargs)
            with lock:
                calls[0] += 1
                hit = calls[0] == nth
            if hit and when == "before":
                die()
            result = original(self, *args, **kwargs)
            if hit:
                die()
            return result

        return wrapper

    for cls in TARGETS[kind]:
        setattr(cls, method, wrap(getattr(cls, method)))


if __name__ == "__main__":
    step, nth, when, separator, *argv = sys.argv[1:]
    assert separator == "--" and when in ("before", "after"), sys.argv
    arm(step, int(nth), when)
    sys.exit(main(argv))
