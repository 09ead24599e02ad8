"""The lake on a local directory: atomic writes (temp file + rename), content etags, conditional writes.

A write goes to `.tmp-<host tag>-<pid>-<random>` beside its object, then is renamed over it. A writer killed
in between leaves that file; `sweep_temporaries` removes those whose process is gone (and any older than a
day), and listings never show them (dot names are not lake objects).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from encord_mirror.adapters.local.process import process_gone, this_host
from encord_mirror.domain.models import StoredObject
from encord_mirror.domain.ports import PreconditionFailedError

_TMP_PREFIX = ".tmp-"
_TMP_MAX_AGE_S = 86_400  # a temporary this old is stale whoever wrote it (another host, an older version)


class UnsafeKeyError(ValueError):
    """A key that would escape the lake root or is not a plain relative POSIX path."""

    def __init__(self, key: str) -> None:
        super().__init__(f"unsafe lake key {key!r}: use a relative POSIX path without '..' or empty parts")
        self.key = key


@functools.cache
def _host_tag() -> str:
    return hashlib.sha256(this_host().encode()).hexdigest()[:8]


def etag_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class LocalLake:
    """An ObjectStore on a directory. Readers never see a half-written object (os.replace is atomic);
    conditional writes are checked and applied under one lock, so threads of one process are safe.
    Names starting with a dot (temp files, a state database) are not lake objects and are never listed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @staticmethod
    def temporary_tag() -> str:
        """This host's tag in temporary file names (short, and safe in a file name)."""
        return _host_tag()

    def sweep_temporaries(self) -> list[Path]:
        """Remove the temporaries that writers which died left behind; returns what was removed."""
        mine = f"{_TMP_PREFIX}{self.temporary_tag()}-"
        cutoff = time.time() - _TMP_MAX_AGE_S
        removed = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                pid = name.removeprefix(mine).split("-", 1)[0] if name.startswith(mine) else ""
                try:
                    if (pid.isdigit() and process_gone(int(pid))) or path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed.append(path)
                except FileNotFoundError:
                    continue  # its writer renamed or removed it meanwhile
        return removed

    def _temporary_prefix(self) -> str:
        """Host and pid in a temporary's name, so `sweep_temporaries` knows when its writer is gone."""
        return f"{_TMP_PREFIX}{self.temporary_tag()}-{os.getpid()}-"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or "\\" in key
            or "\x00" in key
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise UnsafeKeyError(key)
        return self.root.joinpath(*parts)

    def get(self, key: str) -> StoredObject | None:
        try:
            body = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return StoredObject(body=body, etag=etag_of(body))

    def open(self, key: str) -> BinaryIO | None:
        try:
            return self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        path = self._path(key)
        with self._lock:
            if if_match is not None or if_none_match:
                current = self.get(key)
                if if_none_match and current is not None:
                    raise PreconditionFailedError(key)
                if if_match is not None and (current is None or current.etag != if_match):
                    raise PreconditionFailedError(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self._temporary_prefix(), dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(body)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return etag_of(body)

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        # Written outside the lock (it may take long); only the condition check and the rename are inside.
        fd, tmp = tempfile.mkstemp(prefix=self._temporary_prefix(), dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    handle.write(chunk)
            with self._lock:
                if if_none_match and path.exists():
                    raise PreconditionFailedError(key)
                os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._lock:
            path.unlink(missing_ok=True)
            # Prune emptied partition folders, so a moved row leaves no empty `stage=` directory behind.
            parent = path.parent
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def list_keys(self, prefix: str) -> Iterator[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if rel == "." else f"{rel}/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                dirnames[:] = []
                continue
            found.extend(
                f"{base}{n}" for n in filenames if not n.startswith(".") and f"{base}{n}".startswith(prefix)
            )
        yield from sorted(found)

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        for key in self.list_keys(prefix):
            stored = self.get(key)
            if stored is not None:
                yield key, stored.etag

    def uri(self, key: str) -> str:
        return str(self._path(key))
