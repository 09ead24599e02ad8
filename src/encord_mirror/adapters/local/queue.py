"""The work queue in process: a thread pool drains chunks with at-least-once delivery, like SQS would.

A chunk whose result reports failed rows (or whose processing raised) is delivered again, up to
`max_attempts` deliveries; the last attempt's result is final (the worker turns its failures into gaps),
and a chunk that still raises then is kept in `dead_letters`, as a DLQ would. `request_finalize` runs the
finalizer on the pool; `drain()` returns once every chunk and finalize has run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from encord_mirror.domain.models import ChunkMessage, ChunkResult, SendReceipt

ProcessFn = Callable[[ChunkMessage, int], ChunkResult]  # (message, attempt) -> result
FinalizeFn = Callable[[str, str], object]  # (project_hash, run_id)
ChunkHook = Callable[[ChunkMessage, ChunkResult], None]


class QueueNotBoundError(RuntimeError):
    """The queue was used before `bind()` gave it a chunk processor and a finalizer."""


class LocalQueueError(RuntimeError):
    """A finalizer raised while the queue drained: the run is not closed; `errors` holds the causes."""

    def __init__(self, errors: Sequence[BaseException]) -> None:
        super().__init__(f"{len(errors)} finalize call(s) failed; first: {errors[0]!r}")
        self.errors = tuple(errors)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: ChunkMessage
    attempts: int
    error: str


class LocalWorkQueue:
    def __init__(self, *, workers: int = 4, max_attempts: int = 3) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (got {max_attempts})")
        self.max_attempts = max_attempts
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror-worker")
        self._process: ProcessFn | None = None
        self._finalize: FinalizeFn | None = None
        self._on_chunk: ChunkHook | None = None
        self._cond = threading.Condition()
        self._outstanding = 0
        self._errors: list[BaseException] = []
        self.dead_letters: list[DeadLetter] = []
        self.deliveries = 0

    def bind(self, process: ProcessFn, finalize: FinalizeFn, on_chunk: ChunkHook | None = None) -> None:
        """Wire the domain in (the queue is built before the deps that hold it)."""
        self._process, self._finalize, self._on_chunk = process, finalize, on_chunk

    def send_chunks(self, chunks: Sequence[ChunkMessage]) -> SendReceipt:
        if self._process is None:
            raise QueueNotBoundError("bind() the queue before sending chunks")
        for chunk in chunks:
            self._submit(self._deliver, chunk, 1)
        return SendReceipt(sent=tuple(c.chunk_id for c in chunks), failed={})

    def request_finalize(self, project_hash: str, run_id: str) -> None:
        if self._finalize is None:
            raise QueueNotBoundError("bind() the queue before requesting a finalize")
        self._submit(self._run_finalize, project_hash, run_id)

    def drain(self) -> None:
        """Block until all chunks (with their redeliveries) and finalizers are done."""
        with self._cond:
            self._cond.wait_for(lambda: self._outstanding == 0)
            errors, self._errors = self._errors, []
        if errors:
            raise LocalQueueError(errors)

    def close(self, *, cancel: bool = False) -> None:
        """Stop the pool; `cancel` drops deliveries not started yet (an interrupted sync), and waits only
        for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        with self._cond:
            self._outstanding += 1
        try:
            self._pool.submit(self._run, fn, *args)
        except RuntimeError:  # the pool was closed (a cancelled sync): nothing more will run
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()

    def _run(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        finally:
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()

    def _deliver(self, chunk: ChunkMessage, attempt: int) -> None:
        assert self._process is not None
        with self._cond:
            self.deliveries += 1
        try:
            result = self._process(chunk, attempt)
        except Exception as exc:
            if attempt < self.max_attempts:
                self._submit(self._deliver, chunk, attempt + 1)
            else:
                with self._cond:
                    self.dead_letters.append(DeadLetter(chunk, attempt, f"{type(exc).__name__}: {exc}"))
            return
        if self._on_chunk is not None:
            self._on_chunk(chunk, result)
        if not result.final:
            self._submit(self._deliver, chunk, attempt + 1)

    def _run_finalize(self, project_hash: str, run_id: str) -> None:
        assert self._finalize is not None
        try:
            self._finalize(project_hash, run_id)
        except Exception as exc:
            with self._cond:
                self._errors.append(exc)
