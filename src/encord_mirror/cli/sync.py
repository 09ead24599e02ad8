"""`encord-mirror sync`: bring a lake (a directory or `s3://bucket/prefix`) in step with Encord projects.

```
encord-mirror sync --project HASH [--project HASH]... --lake DEST [--ssh-key FILE] [--encord-domain URL]
                   [--state PATH] [--full] [--reconcile-every N] [--workers N] [--bundle-size N]
                   [--branch NAME | --all-branches] [--json]
```
The key: `--ssh-key FILE`, else `$ENCORD_SSH_KEY_FILE`, else `$ENCORD_SSH_KEY` (see `open_source`).
State: see `encord_mirror.cli.target`. Keep that file: without it the next run is a full listing that
rewrites nothing but re-reads everything.
Progress goes to stderr, the summary table (`--json`: a JSON object) to stdout. Exit status: 0 when every
project synced and no gap (failed row) and no owed COCO snapshot remains, 1 otherwise (both are retried by
the next run), 2 for a usage or configuration error (the message names the setting), 130 when interrupted
(Ctrl-C or SIGTERM): the running chunks finish, the rest are dropped, the project's lease is released and
its watermark stays, so the next sync starts at once and repeats the unfinished work.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import orjson
from encord.configs import ENCORD_DOMAIN

from encord_mirror.adapters.encord_source import (
    EncordApiError,
    EncordAuthError,
    EncordCredentialsError,
    EncordLabelSource,
    EncordProjectAccessError,
    EncordSourceError,
)
from encord_mirror.adapters.local import LocalLake, LocalQueueError
from encord_mirror.cli.args import FLAG_OF_SETTING
from encord_mirror.cli.errors import CliError
from encord_mirror.cli.target import LakeTarget, is_s3, open_state, open_target
from encord_mirror.coco.snapshot import snapshot_builder
from encord_mirror.domain.config import ConfigError, MirrorConfig
from encord_mirror.domain.models import BranchSelection
from encord_mirror.domain.ports import LabelSource, SnapshotBuilder, StateStore
from encord_mirror.local_sync import (
    ProjectSummary,
    SyncInterruptedError,
    SyncSummary,
    describe_lease,
    run_local_sync,
)

_SHOWN = 5  # gap reasons and errors shown per project; the run manifest has them all


class Progress:
    """Timestamped progress lines on a stream (stderr), relative to when the command started."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._started = time.perf_counter()
        self._lock = threading.Lock()  # worker threads report chunks: one whole line at a time

    def __call__(self, message: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(f"[{time.perf_counter() - self._started:6.1f}s] {message}\n")
            stream.flush()


# -- building the pieces from the command line ----------------------------------------------------------


def branches_from_args(args: argparse.Namespace) -> BranchSelection:
    if getattr(args, "all_branches", False):
        return BranchSelection("all")
    if getattr(args, "branch", None):
        return BranchSelection("named", args.branch)
    return BranchSelection()


def config_from_args(args: argparse.Namespace) -> MirrorConfig:
    """The MirrorConfig the flags declared with `cli.args.config_flag` ask for (unset ones: the defaults)."""
    settings: dict[str, object] = {"branches": branches_from_args(args)}
    for setting in FLAG_OF_SETTING:
        value = getattr(args, setting, None)
        if value is not None and setting != "branches":
            settings[setting] = tuple(value) if isinstance(value, list) else value
    try:
        return MirrorConfig.model_validate(settings)
    except ConfigError as exc:
        raise config_cli_error(exc) from None


def config_cli_error(exc: ConfigError) -> CliError:
    """A ConfigError as the CLI says it: with the flag that sets the setting."""
    flag = FLAG_OF_SETTING.get(exc.setting)
    return CliError(f"{exc}" + (f" (set with {flag})" if flag else ""))


def check_domain(domain: str | None) -> None:
    """`--encord-domain` must be an http(s) URL with a host (the SDK would fail on its first request with
    a message about a request path, naming neither the flag nor the value)."""
    if domain is None:
        return
    url = urlsplit(domain.strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise CliError(
            f"--encord-domain {domain!r}: not an http(s) URL with a host; give Encord's API address, "
            f"e.g. {ENCORD_DOMAIN} (the default), or an emulator's http://127.0.0.1:PORT"
        )


KEY_FILE_ENV = "ENCORD_SSH_KEY_FILE"  # the SDK's own names, in the SDK's order
KEY_TEXT_ENV = "ENCORD_SSH_KEY"


def open_source(ssh_key: str | None, domain: str | None) -> EncordLabelSource:
    """The Encord key from `--ssh-key FILE`, else from the file `$ENCORD_SSH_KEY_FILE` names, else the
    key's text in `$ENCORD_SSH_KEY` (the SDK's variables, in its order); an error names where it came from."""
    check_domain(domain)
    key_file = os.environ.get(KEY_FILE_ENV) if ssh_key is None else ssh_key
    origin = "--ssh-key" if ssh_key is not None else KEY_FILE_ENV
    try:
        if key_file:
            return EncordLabelSource.from_key_file(key_file, domain=domain)
        if KEY_TEXT_ENV in os.environ:
            origin = KEY_TEXT_ENV
            return EncordLabelSource.from_private_key(
                os.environ[KEY_TEXT_ENV], domain=domain, key_origin=f"the {KEY_TEXT_ENV} environment variable"
            )
    except EncordCredentialsError as exc:
        raise CliError(f"{origin}: {exc}") from None
    raise CliError(
        f"no Encord key: give --ssh-key FILE, or set {KEY_FILE_ENV} to the key file (or {KEY_TEXT_ENV} "
        "to the key's text)"
    )


# -- running -------------------------------------------------------------------------------------------


class SyncAbortedError(Exception):
    """Encord failed in a way the run could not absorb (e.g. the listing, after the SDK's retries)."""


def execute_sync(
    config: MirrorConfig,
    source: LabelSource,
    target: LakeTarget,
    state: StateStore,
    *,
    workers: int,
    full: bool,
    snapshots: SnapshotBuilder | None,
    progress: Callable[[str], None],
) -> SyncSummary:
    """The one code path of `sync` and `demo`: check access to every project, then sync them.

    Raises `CliError` for what the user must fix (key, domain, project access) and `SyncAbortedError`
    when Encord failed mid-run (the watermark moves only when a run completes; run again).
    """
    for project_hash in config.projects:
        try:
            info = source.project_info(project_hash)
        except (EncordAuthError, EncordProjectAccessError) as exc:
            raise CliError(str(exc)) from None
        except EncordSourceError as exc:
            raise SyncAbortedError(str(exc)) from None
        progress(f"{project_hash}: project {info.title!r}, {len(info.stages)} workflow stages")
    try:
        return run_local_sync(
            config,
            source,
            target.lake,
            state,
            workers=workers,
            full=full,
            snapshots=snapshots,
            progress=progress,
        )
    except EncordAuthError as exc:
        raise CliError(str(exc)) from None
    except ConfigError as exc:
        raise config_cli_error(exc) from None
    except EncordApiError as exc:
        raise SyncAbortedError(str(exc)) from None
    except LocalQueueError as exc:
        # A chunk or the finalizer crashed (a bug, or a lake/state failure): say so without a traceback.
        raise SyncAbortedError(f"a sync step failed: {exc}") from exc


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a container stop, `kill`) stops a sync the way Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test calling main() from a worker): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_interrupt(exc: KeyboardInterrupt) -> int:
    if isinstance(exc, SyncInterruptedError):
        mark = _when(exc.watermark)
        where = (
            f"run {exc.run_id} of project {exc.project_hash}" if exc.run_id else f"project {exc.project_hash}"
        )
        print(
            f"encord-mirror: sync interrupted ({exc.signal_name}) during {where}: stopped the workers "
            f"(chunks already running finished), released the project's lease, watermark stays at {mark}.",
            file=sys.stderr,
        )
        done = ", ".join(p.project_hash for p in exc.finished)
        if done:
            print(f"Synced before the interruption: {done}.", file=sys.stderr)
    else:
        print(
            f"encord-mirror: sync interrupted ({exc or 'SIGINT'}) before any project was locked.",
            file=sys.stderr,
        )
    print(
        "Nothing is lost: rows already written stay, and the next sync starts at once and repeats the rest.",
        file=sys.stderr,
    )
    return 130


class _ToProgress(logging.Handler):
    """The package's warnings (a damaged `latest.json` being rebuilt) as progress lines."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self._progress(f"warning: {record.getMessage()}")


@contextlib.contextmanager
def _warnings_to(progress: Callable[[str], None]) -> Iterator[None]:
    logger, handler = logging.getLogger("encord_mirror"), _ToProgress(progress)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def sync_main(args: argparse.Namespace) -> int:
    with _sigterm_interrupts():
        try:
            return _sync_main(args)
        except KeyboardInterrupt as exc:
            return _report_interrupt(exc)


def _sync_main(args: argparse.Namespace) -> int:
    progress = Progress()
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1 (got {args.workers})")
    config = config_from_args(args)
    is_s3(args.lake)  # a bad --lake fails before the key is read or Encord is called
    source = open_source(args.ssh_key, args.encord_domain)
    target = open_target(args.lake, args.state)
    state = open_state(target, config.projects)
    try:
        with _warnings_to(progress):
            return _run(args, progress, config, source, target, state)
    finally:
        state.close()  # the last connection checkpoints the WAL: the file alone holds the state


def _run(
    args: argparse.Namespace,
    progress: Progress,
    config: MirrorConfig,
    source: EncordLabelSource,
    target: LakeTarget,
    state: StateStore,
) -> int:
    progress(f"lake {target.location}, state {target.state_location}, Encord {source.domain}")
    if isinstance(target.lake, LocalLake):
        swept = target.lake.sweep_temporaries()
        if swept:
            progress(f"lake: removed {len(swept)} temporary file(s) that killed writes left behind")
    try:
        summary = execute_sync(
            config,
            source,
            target,
            state,
            workers=args.workers,
            full=args.full,
            snapshots=snapshot_builder(target.lake, args.coco),
            progress=progress,
        )
    except SyncAbortedError as exc:
        return _report_abort(exc)
    if args.json:
        print(orjson.dumps(summary_json(summary, target, state), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_summary(summary, target, state))
    return 0 if summary.ok else 1


def _report_abort(exc: SyncAbortedError) -> int:
    print(f"encord-mirror: sync stopped: {exc}", file=sys.stderr)
    print("Nothing is lost: the watermark moves only when a run completes; run sync again.", file=sys.stderr)
    if exc.__cause__ is not None and os.environ.get("ENCORD_MIRROR_DEBUG"):
        traceback.print_exception(exc.__cause__)
    elif exc.__cause__ is not None:
        print("Set ENCORD_MIRROR_DEBUG=1 to see the traceback.", file=sys.stderr)
    return 1


# -- the summary ---------------------------------------------------------------------------------------

_COLUMNS: Sequence[tuple[str, str]] = (
    ("mode", "mode"),
    ("listed", "listed"),
    ("initialised", "requested"),
    ("written", "written"),
    ("moved", "moved"),
    ("removed", "removed"),
    ("unchanged", "unchanged"),
    ("failed", "failed"),
    ("unlabelled", "unlabelled"),
    ("gaps", "gaps_open"),
    ("seconds", "seconds"),
)


def _cell(project: Any, attr: str) -> str:
    if attr == "mode":
        return "full" if project.full else "incremental"
    value = getattr(project, attr)
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "none"


def format_summary(summary: SyncSummary, target: LakeTarget, state: StateStore | None = None) -> str:
    """The end-of-run table (one row per project), where things are, and what to do next."""
    header = ["project", *(name for name, _ in _COLUMNS)]
    rows = [[p.project_hash, *(_cell(p, attr) for _, attr in _COLUMNS)] for p in summary.projects]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]
    for p in summary.projects:
        out.append(f"{p.project_hash}: watermark {_when(p.watermark_before)} -> {_when(p.watermark_after)}")
        out.extend(f"  {note}" for note in _project_notes(p, target, state))
    out.append("")
    out.append(f"lake:  {target.location}")
    out.append(f"state: {target.state_location}")
    if summary.ok:
        out.append(f"OK: in step, no gaps ({summary.seconds:.2f}s)")
    else:
        problems = []
        if summary.gaps_open:
            problems.append(f"{summary.gaps_open} row(s) failed and hold the watermark")
        if summary.snapshots_owed:
            problems.append(f"{summary.snapshots_owed} COCO snapshot(s) failed and stay stale")
        if not problems:
            problems.append("see the notes above")
        out.append(
            f"NOT IN STEP: {'; '.join(problems)}. The next run retries them: run `encord-mirror sync` again."
        )
    return "\n".join(out)


def summary_json(summary: SyncSummary, target: LakeTarget, state: StateStore) -> dict[str, Any]:
    """`sync --json`: the table's figures and the notes' details, for scripts."""
    projects = []
    for p in summary.projects:
        gaps = state.list_gaps(p.project_hash) if p.gaps_open else []
        projects.append(
            {
                **asdict(p),
                "mode": "full" if p.full else "incremental",
                "manifest_uri": target.lake.uri(p.manifest_key) if p.manifest_key else None,
                "gaps": [{"label_hash": g.label_hash, "reason": g.reason} for g in gaps],
            }
        )
    return {
        "ok": summary.ok,
        "gaps_open": summary.gaps_open,
        "snapshots_owed": summary.snapshots_owed,
        "seconds": round(summary.seconds, 3),
        "lake": target.location,
        "state": target.state_location,
        "projects": projects,
    }


def _project_notes(p: ProjectSummary, target: LakeTarget, state: StateStore | None) -> list[str]:
    notes: list[str] = []
    if p.status == "lease_held":
        notes.append(f"skipped: {describe_lease(p.lease)}")
    elif p.status == "unfinished":
        notes.append("unfinished: a chunk could not record its result; the next run retries from the mark")
    if p.manifest_key:
        notes.append(f"run manifest: {target.lake.uri(p.manifest_key)}")
    gaps = state.list_gaps(p.project_hash) if state is not None and p.gaps_open else []
    notes.extend(f"gap: {gap.label_hash}: {gap.reason}" for gap in gaps[:_SHOWN])
    notes.extend(f"error: {error}" for error in p.errors[:_SHOWN])
    hidden = max(0, len(gaps) - _SHOWN) + max(0, len(p.errors) - _SHOWN)
    if hidden:
        notes.append(f"... and {hidden} more (see the run manifest)")
    return notes
