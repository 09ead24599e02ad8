"""One `encord-mirror sync` in a child process, counting the lake requests it makes: prints one JSON line
(wall time, exit code, lake GETs, LISTs and writes; on S3 a LIST is one page of up to 1000 keys)."""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections import Counter
from typing import Any

import orjson

from encord_mirror.adapters.aws import s3
from encord_mirror.adapters.local import lake as local
from encord_mirror.cli import sync  # noqa: F401  (import the SDK before the clock starts)
from encord_mirror.cli.main import main as cli_main

COUNTS: Counter[str] = Counter()


def _count(cls: Any, name: str, what: str) -> None:
    original = getattr(cls, name)

    def counted(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("labels/"):
            COUNTS[what] += 1
        return original(self, key, *args, **kwargs)

    setattr(cls, name, counted)


def _count_pages(client: Any) -> None:
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: COUNTS.update(["list_pages"]))


def main() -> int:
    for cls in (s3.S3ObjectStore, local.LocalLake):
        _count(cls, "get", "label_gets")
        _count(cls, "put", "label_puts")
        _count(cls, "delete", "label_deletes")
    original_init = s3.S3ObjectStore.__init__

    def init(self: Any, bucket: str, prefix: str, client: Any, **kwargs: Any) -> None:
        _count_pages(client)
        original_init(self, bucket, prefix, client, **kwargs)

    s3.S3ObjectStore.__init__ = init  # type: ignore[method-assign]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli_main(["sync", *sys.argv[1:]])
    print(orjson.dumps({"seconds": time.perf_counter() - started, "exit": code, **COUNTS}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
