"""The Encord API emulator: a loopback HTTP server the unmodified `encord` SDK 0.1.211 talks to.

It serves a fixture directory (format in `store.py` and the package README) on both of the SDK's transports:

* v2 REST: `GET /v2/public/projects/{p}`, `GET /v2/public/ontologies/{h}`,
  `GET /v2/public/projects/{p}/branches` (paged with `pageToken` / `nextPageToken`).
* legacy RPC `POST /public`: `labelrowmetadata` GET (every filter applied server-side), `labelrow` GET
  (initialise, up to 1000 uids; with `get_signed_url`, signed media links: `media.py`), `labelrow` PUT
  (create), `labelrow` POST (save).
* `GET /__media/...`: the bytes behind a signed media URL (`media.py`).

Both signature schemes are verified against authorized OpenSSH ed25519 public keys, every API request
is logged (writes flagged), and the control endpoints under `/__emulator/` (no auth) steer the clock, faults,
rate limit, date comparison mode and the data itself. `Emulator` offers the same controls as Python methods.
"""

from __future__ import annotations

import argparse
import collections
import email.utils
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from encord_emulator.auth import Authenticator, AuthError
from encord_emulator.faults import FaultBook, FaultKind, FaultRule, FaultSpecError, RateLimiter, strike
from encord_emulator.keys import KeyFormatError, read_public_key_file
from encord_emulator.media import MEDIA_PREFIX, MediaServer
from encord_emulator.store import (
    MAIN_BRANCH,
    DateMode,
    FixtureError,
    InvalidArgumentsError,
    MetadataQuery,
    Store,
    StoreError,
    load_fixture_dir,
    parse_timestamp,
)

MAX_LABEL_ROWS_PER_REQUEST = 1000
CONTROL_PREFIX = "/__emulator"
_PROJECT_TIMESTAMP = "2025-01-01T00:00:00+00:00"
_ENVELOPE_STATUS = {
    "AUTHENTICATION_ERROR": 401,
    "AUTHORISATION_ERROR": 403,
    "RESOURCE_NOT_FOUND_ERROR": 404,
    "METHOD_NOT_ALLOWED_ERROR": 405,
    "RESOURCE_EXISTS_ERROR": 409,
}


class EmulatorStateError(RuntimeError):
    """The emulator is used in a state that does not allow it (e.g. `url` before `start()`)."""


@dataclass(slots=True)
class Reply:
    """What the handler writes back; `drop` closes the connection without an answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    error: str | None = None


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(value), {"Content-Type": "application/json", **(headers or {})})


def _envelope_ok(response: Any) -> Reply:
    return _json(200, {"status": 200, "response": response})


def _envelope_error(code: str, payload: Any = None) -> Reply:
    # The SDK compares `response` with one-element lists and ignores the HTTP status (200 as the API sends).
    reply = _json(200, {"status": _ENVELOPE_STATUS.get(code, 400), "response": [code], "payload": payload})
    reply.error = code
    return reply


def _v2_error(status: int, message: str) -> Reply:
    reply = _json(status, {"message": message})
    reply.error = message
    return reply


class Clock:
    """The emulator's now (stamps saves and creates): real UTC, real UTC plus an offset, or fixed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fixed: datetime | None = None
        self._offset = timedelta()

    def now(self) -> datetime:
        with self._lock:
            if self._fixed is not None:
                return self._fixed
            return datetime.now(UTC) + self._offset

    def set(self, moment: datetime | None) -> None:
        with self._lock:
            self._offset = timedelta()
            self._fixed = None if moment is None else _aware(moment)

    def set_offset(self, seconds: float) -> None:
        with self._lock:
            self._fixed = None
            self._offset = timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            if self._fixed is not None:
                self._fixed += timedelta(seconds=seconds)
            else:
                self._offset += timedelta(seconds=seconds)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            fixed = self._fixed.isoformat() if self._fixed is not None else None
            offset = self._offset.total_seconds()
        return {"now": self.now().isoformat(), "fixed": fixed, "offset_s": offset}


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "EncordEmulator/1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the record."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """Every answer's `Date` header reads the emulator's clock (offset or fixed), as Encord's would."""
        moment = (
            self.server.emulator.clock.now() if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
        )
        return email.utils.format_datetime(moment, usegmt=True)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key: value for key, value in self.headers.items()}
        try:
            reply = self.server.emulator.handle(self.command, self.path, headers, body)
        except Exception as exc:  # a bug in the emulator must reach the test as an answer, not a hang
            traceback.print_exc()
            reply = _json(500, {"message": f"emulator error: {exc!r}"})
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


class Emulator:
    """A running (or ready-to-run) emulator over one fixture directory.

    `authorized_keys` are OpenSSH public key lines (`ssh-ed25519 AAAA...`); `no_auth` accepts every request;
    `bearer_tokens` are the only bearer tokens accepted (none by default). `latency_s` delays every API
    request.
    `branch_page_size` is small on purpose so the SDK's paging is exercised.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        authorized_keys: Sequence[str] = (),
        no_auth: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        bearer_tokens: Sequence[str] = (),
        branch_page_size: int = 2,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.no_auth = no_auth
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.branch_page_size = branch_page_size
        self.auth = Authenticator(authorized_keys, bearer_tokens)
        self.clock = Clock()
        self.faults = FaultBook()
        self.rate_limiter = RateLimiter()
        self.media = MediaServer()
        self._lock = threading.RLock()
        self._store = Store(load_fixture_dir(self.data_dir))
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=200_000)
        self._log_lock = threading.Lock()
        self._seq = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        server = self._server
        # A short poll keeps stop() quick: the e2e suites start and stop one emulator per test.
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.02), name="encord-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to pass as `domain=` to the SDK."""
        if self._server is None:
            raise EmulatorStateError(
                "the emulator is not started; call start() or use it as a context manager"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ---- controls (also reachable over HTTP under /__emulator/) -------------------------------------------

    def request_log(self) -> list[dict[str, Any]]:
        """Every API request so far, oldest first (control requests are not logged)."""
        with self._log_lock:
            return [dict(entry) for entry in self._log]

    def clear_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    def writes(self) -> list[dict[str, Any]]:
        """Logged requests that tried to write (label row create/save, any v2 non-GET), answered or not."""
        return [entry for entry in self.request_log() if entry["write"]]

    def set_clock(self, moment: datetime | None) -> None:
        """Fix the clock at `moment` (naive = UTC), or back to real UTC now with None."""
        self.clock.set(moment)

    def set_clock_offset(self, seconds: float) -> None:
        """Run the clock at real UTC now plus `seconds`."""
        self.clock.set_offset(seconds)

    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def now(self) -> datetime:
        return self.clock.now()

    def describe(self) -> str:
        """`N project(s), M label rows` for logs."""
        with self._lock:
            projects = self._store.projects
            rows = sum(len(project.rows) for project in projects.values())
        return f"{len(projects)} project(s), {rows} label rows"

    def reload(self) -> None:
        """Re-read the fixture directory; every change made since loading is lost. Date mode is kept."""
        store = Store(load_fixture_dir(self.data_dir))
        with self._lock:
            store.date_mode = self._store.date_mode
            self._store = store

    def set_date_mode(self, mode: DateMode) -> None:
        """`strict` (default): edited_after/before compare with > and <; `inclusive`: >= and <=."""
        if mode not in ("strict", "inclusive"):
            raise InvalidArgumentsError(f"date mode must be 'strict' or 'inclusive', got {mode!r}")
        with self._lock:
            self._store.date_mode = mode

    @property
    def date_mode(self) -> DateMode:
        with self._lock:
            return self._store.date_mode

    def inject_fault(self, kind: FaultKind, **spec: Any) -> None:
        """Arm a fault for the next `count` API requests matching `path` (fnmatch), query_type, query_method.

        `spec` is `FaultRule`'s fields (`count` for `remaining`), as `POST /faults` takes them; see
        `FaultRule` for the kinds. A bad field raises FaultSpecError naming it.
        """
        self.faults.add(FaultRule.from_dict({"kind": kind, **spec}))

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_rate_limit(
        self, rate_per_s: float | None, *, burst: int = 1, retry_after: int | str | None = 1
    ) -> None:
        """Token bucket over API requests (`rate_per_s` None turns it off); a refusal is 429 + Retry-After."""
        self.rate_limiter.configure(rate_per_s, burst=burst, retry_after=retry_after)

    def move_stage(self, project: str, data_hash: str, stage_title: str) -> None:
        """Move a data unit to another workflow stage; its label rows' last_edited_at is NOT touched."""
        with self._lock:
            self._store.move_stage(project, data_hash, stage_title)

    def set_task_status(self, project: str, data_hash: str, status: str) -> None:
        with self._lock:
            self._store.set_task_status(project, data_hash, status)

    def delete_row(self, project: str, label_hash: str) -> None:
        with self._lock:
            self._store.delete_row(project, label_hash)

    def delete_data_unit(self, project: str, data_hash: str) -> None:
        with self._lock:
            self._store.delete_data_unit(project, data_hash)

    def edit_row(self, project: str, label_hash: str, row_dict: dict[str, Any]) -> None:
        """Same effect as an SDK `save()`: store the row, stamp last_edited_at with the emulator clock."""
        with self._lock:
            self._store.save_row(project, label_hash, row_dict, self.clock.now())

    def add_row(
        self,
        project: str,
        row_dict: dict[str, Any],
        *,
        stamp: bool = True,
        stage: str | None = None,
        task_status: str | None = None,
    ) -> None:
        """Add a row for a new (data unit, branch), e.g. a consensus branch; `stamp` sets last_edited_at.

        A row for a data unit the project does not have yet also needs `stage` and `task_status`.
        """
        with self._lock:
            self._store.add_row(
                project, row_dict, self.clock.now() if stamp else None, stage=stage, task_status=task_status
            )

    def state(self, project: str) -> list[dict[str, Any]]:
        """Every live label row: label_hash, branch_name, data_hash, data_title, stage, stage_uuid,
        task_status, last_edited_at and row (its to_encord_dict)."""
        with self._lock:
            return self._store.state(project)

    def unlabelled(self, project: str) -> list[str]:
        """Data hashes without a label row on main."""
        with self._lock:
            return self._store.unlabelled(project)

    # ---- request handling -----------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        path = urlsplit(target).path
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            return self._control(method, target, body)
        if path.startswith(MEDIA_PREFIX):
            status, media_body, media_headers = self.media.answer(method, target)
            return Reply(status, media_body, media_headers)
        return self._api(method, target, headers, body)

    def _api(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        started = time.monotonic()
        split = urlsplit(target)
        legacy = split.path in ("/public", "/public/user")
        request: dict[str, Any] | None = None
        if legacy:
            try:
                loaded = orjson.loads(body) if body else None
                request = loaded if isinstance(loaded, dict) else None
            except orjson.JSONDecodeError:
                request = None
        values = (request or {}).get("values") or {}
        uids = values.get("uid") if isinstance(values, dict) else None
        query_type = (request or {}).get("query_type")
        query_method = (request or {}).get("query_method")
        entry: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(),
            "method": method,
            "path": split.path,
            "query": split.query,
            "transport": "legacy" if legacy else "v2" if split.path.startswith("/v2/") else "unknown",
            "resource_id": headers.get("ResourceID") or None,
            "query_type": query_type,
            "query_method": query_method,
            "uids": len(uids) if isinstance(uids, list) else (1 if uids else 0),
            "write": (query_method in ("PUT", "POST", "DELETE")) if legacy else method not in ("GET", "HEAD"),
            "fault": None,
            "status": None,
            "error": None,
            "duration_ms": None,
        }
        with self._log_lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._log.append(entry)
        reply = self._api_reply(method, target, split.path, headers, body, request, entry)
        with self._log_lock:
            entry["status"] = reply.status if not reply.drop else None
            entry["error"] = reply.error
            entry["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        return reply

    def _api_reply(
        self,
        method: str,
        target: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        request: dict[str, Any] | None,
        entry: dict[str, Any],
    ) -> Reply:
        struck = strike(
            path,
            entry["query_type"],
            entry["query_method"],
            latency_s=self.latency_s,
            limiter=self.rate_limiter,
            book=self.faults,
        )
        entry["fault"] = struck.fault
        if struck.drop:
            return Reply(0, drop=True)
        if struck.answer is not None:
            return Reply(*struck.answer)
        if entry["transport"] == "legacy":
            return self._legacy(headers, body, request, struck.omit)
        if entry["transport"] == "v2":
            return self._v2(method, target, headers, body)
        return _v2_error(404, f"no such endpoint {path}")

    # ---- legacy RPC -----------------------------------------------------------------------------

    def _legacy(
        self, headers: Mapping[str, str], body: bytes, request: dict[str, Any] | None, omit: int
    ) -> Reply:
        if not self.no_auth:
            try:
                self.auth.verify_legacy(headers, body)
            except AuthError as exc:
                return _envelope_error("AUTHENTICATION_ERROR", str(exc))
        if request is None:
            return _envelope_error("INVALID_ARGUMENTS_ERROR", "body is not a JSON object")
        if headers.get("ResourceType") != "project":
            return _envelope_error(
                "METHOD_NOT_ALLOWED_ERROR",
                "the emulator serves project resources only (ResourceType: project)",
            )
        project_hash = headers.get("ResourceID", "")
        values = request.get("values") or {}
        uid = values.get("uid")
        uids = [str(u) for u in uid] if isinstance(uid, list) else ([] if uid is None else [str(uid)])
        payload = values.get("payload") or {}
        operation = (request.get("query_type"), request.get("query_method"))
        with self._lock:
            store = self._store
            if project_hash not in store.projects:
                return _envelope_error("AUTHORISATION_ERROR", f"no access to project {project_hash!r}")
            try:
                if operation == ("labelrowmetadata", "GET"):
                    return _envelope_ok(
                        store.list_metadata(project_hash, MetadataQuery.from_payload(payload))
                    )
                if operation[0] == "labelrow" and operation[1] in ("GET", "PUT", "POST"):
                    if len(uids) > MAX_LABEL_ROWS_PER_REQUEST:
                        return _envelope_error(
                            "MULTI_LABEL_LIMIT_ERROR", {"maximum_labels_allowed": MAX_LABEL_ROWS_PER_REQUEST}
                        )
                    if operation[1] == "GET":
                        records = [store.row(project_hash, label_hash) for label_hash in uids]
                        if omit:
                            records = records[: max(0, len(records) - omit)]
                        raws = store.row_bytes(records)
                        if payload.get("get_signed_url"):
                            raws = [self.media.sign_row(self.url, project_hash, raw) for raw in raws]
                        return _raw_rows(raws)
                    if operation[1] == "PUT":
                        branch = payload.get("branch_name") or MAIN_BRANCH
                        now = self.clock.now()
                        created = [
                            store.create_row(project_hash, data_hash, branch, now) for data_hash in uids
                        ]
                        return _raw_rows(store.row_bytes(created))
                    return self._save(store, project_hash, uids, payload)
            except StoreError as exc:
                return _envelope_error(exc.code, str(exc))
        return _envelope_error("METHOD_NOT_ALLOWED_ERROR", f"the emulator does not implement {operation}")

    def _save(self, store: Store, project_hash: str, uids: list[str], payload: dict[str, Any]) -> Reply:
        labels = payload.get("labels")
        if labels is None and "label" in payload:
            labels = [payload["label"]]
        if not isinstance(labels, list) or len(labels) != len(uids):
            return _envelope_error("INVALID_ARGUMENTS_ERROR", "payload.labels must hold one row per uid")
        now = self.clock.now()
        for label_hash in uids:
            store.row(project_hash, label_hash)  # all or nothing: check every hash before storing any
        for label_hash, row in zip(uids, labels, strict=True):
            store.save_row(project_hash, label_hash, row, now)
        return _envelope_ok(True)

    # ---- v2 REST --------------------------------------------------------------------------------

    def _v2(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if not self.no_auth:
            try:
                self.auth.verify_v2(method, target, headers, body)
            except AuthError as exc:
                return _v2_error(401, str(exc))
        split = urlsplit(target)
        parts = [unquote(part) for part in split.path[len("/v2/public/") :].strip("/").split("/")]
        query = parse_qs(split.query)
        with self._lock:
            store = self._store
            if len(parts) == 2 and parts[0] == "projects":
                if method != "GET":
                    return _v2_error(405, "method not allowed")
                if parts[1] not in store.projects:
                    return _v2_error(404, "project not found")
                return _json(200, self._project_dto(store, parts[1]))
            if len(parts) == 3 and parts[0] == "projects" and parts[2] == "branches":
                if method != "GET":
                    return _v2_error(405, "method not allowed")
                if parts[1] not in store.projects:
                    return _v2_error(404, "project not found")
                return self._branches(store, parts[1], query)
            if len(parts) == 2 and parts[0] == "ontologies":
                if method != "GET":
                    return _v2_error(405, "method not allowed")
                try:
                    project, ontology = store.ontology(parts[1])
                except StoreError:
                    return _v2_error(404, "ontology not found")
                return _json(
                    200,
                    {
                        "ontologyUuid": project.ontology_hash,
                        "title": f"{project.title} ontology",
                        "description": "",
                        "editor": ontology,
                        "createdAt": _PROJECT_TIMESTAMP,
                        "lastEditedAt": _PROJECT_TIMESTAMP,
                        "userRole": None,
                    },
                )
        return _v2_error(404, f"the emulator does not serve {split.path}")

    @staticmethod
    def _project_dto(store: Store, project_hash: str) -> dict[str, Any]:
        project = store.project(project_hash)
        return {
            "projectHash": project.project_hash,
            "projectType": "workflow",
            "status": "inProgress",
            "title": project.title,
            "description": project.description,
            "createdAt": _PROJECT_TIMESTAMP,
            "creatorEmail": "emulator@example.com",
            "lastEditedAt": _PROJECT_TIMESTAMP,
            "ontologyHash": project.ontology_hash,
            "editorOntology": project.ontology,
            "userRole": 0,
            "workflow": {"stages": project.stages},
        }

    def _branches(self, store: Store, project_hash: str, query: dict[str, list[str]]) -> Reply:
        names = store.project(project_hash).branch_names()
        if MAIN_BRANCH not in names:
            names.insert(0, MAIN_BRANCH)
        try:
            start = int(query.get("pageToken", ["0"])[0])
            size = int(query.get("limit", [str(self.branch_page_size)])[0])
        except ValueError:
            return _v2_error(400, "pageToken and limit must be integers")
        size = max(1, min(size, self.branch_page_size))
        page = names[start : start + size]
        next_token = str(start + size) if start + size < len(names) else None
        return _json(200, {"results": [{"name": name} for name in page], "nextPageToken": next_token})

    # ---- control endpoints ----------------------------------------------------------------------

    def _control(self, method: str, target: str, body: bytes) -> Reply:
        """`/__emulator/...`: JSON in and out, no auth, not logged. Errors are 400 / 404 / 409 with
        `{"error", "message"}`. The endpoints (each handler's docstring says more; the package README too):

        GET /log[?clear=1], DELETE /log, GET /writes, POST /reload, GET|POST /clock, GET|POST|DELETE /faults,
        GET|POST /rate-limit, GET|POST /date-mode, GET /projects, GET /projects/{p}/state,
        POST /projects/{p}/data-units/{d}/stage, POST /projects/{p}/data-units/{d}/task-status,
        DELETE /projects/{p}/data-units/{d}, POST /projects/{p}/label-rows,
        PUT /projects/{p}/label-rows/{l}, DELETE /projects/{p}/label-rows/{l}.
        """
        split = urlsplit(target)
        parts = [unquote(part) for part in split.path[len(CONTROL_PREFIX) :].strip("/").split("/") if part]
        query = parse_qs(split.query)
        try:
            spec: Any = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            return _json(400, {"error": "InvalidJSON", "message": str(exc)})
        if not isinstance(spec, dict):
            return _json(400, {"error": "InvalidJSON", "message": "the body must be a JSON object"})
        try:
            handler = self._control_route(method, parts)
            if handler is None:
                return _json(
                    404, {"error": "NotFound", "message": f"no control endpoint {method} {split.path}"}
                )
            return _json(200, handler(parts, spec, query))
        except StoreError as exc:
            status = {"RESOURCE_NOT_FOUND_ERROR": 404, "RESOURCE_EXISTS_ERROR": 409}.get(exc.code, 400)
            return _json(status, {"error": type(exc).__name__, "message": str(exc)})
        except (FaultSpecError, KeyError, TypeError, ValueError) as exc:
            return _json(400, {"error": type(exc).__name__, "message": str(exc)})

    def _control_route(
        self, method: str, parts: list[str]
    ) -> Callable[[list[str], dict[str, Any], dict[str, list[str]]], Any] | None:
        head = parts[0] if parts else ""
        routes: dict[tuple[str, str], Callable[[list[str], dict[str, Any], dict[str, list[str]]], Any]] = {
            ("GET", "log"): self._c_get_log,
            ("DELETE", "log"): self._c_clear_log,
            ("GET", "writes"): lambda p, s, q: {"requests": self.writes()},
            ("POST", "reload"): self._c_reload,
            ("GET", "clock"): lambda p, s, q: self.clock.describe(),
            ("POST", "clock"): self._c_clock,
            ("GET", "faults"): lambda p, s, q: {"faults": self.faults.armed()},
            ("POST", "faults"): self._c_faults,
            ("DELETE", "faults"): self._c_clear_faults,
            ("GET", "rate-limit"): lambda p, s, q: self.rate_limiter.describe(),
            ("POST", "rate-limit"): self._c_rate_limit,
            ("GET", "date-mode"): lambda p, s, q: {"mode": self.date_mode},
            ("POST", "date-mode"): self._c_date_mode,
            ("GET", "projects"): self._c_projects_get,
            ("POST", "projects"): self._c_projects_change,
            ("PUT", "projects"): self._c_projects_change,
            ("DELETE", "projects"): self._c_projects_change,
        }
        return routes.get((method, head))

    def _project_list(self) -> list[str]:
        with self._lock:
            return sorted(self._store.projects)

    def _c_clear_log(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """DELETE /log: forget every logged request. -> {"cleared": true}"""
        self.clear_log()
        return {"cleared": True}

    def _c_reload(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """POST /reload: re-read DIR from disk, dropping every change (date mode kept). -> {"projects"}"""
        self.reload()
        return {"projects": self._project_list()}

    def _c_clear_faults(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """DELETE /faults: disarm every fault. -> {"faults": []}"""
        self.clear_faults()
        return {"faults": []}

    def _c_date_mode(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """POST /date-mode {"mode": "strict"|"inclusive"}: how edited_after/before compare. -> {"mode"}"""
        self.set_date_mode(spec["mode"])
        return {"mode": self.date_mode}

    def _c_get_log(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """GET /log[?clear=1]: every logged API request, oldest first (then cleared). -> {"requests"}"""
        with self._log_lock:
            requests = [dict(entry) for entry in self._log]
            if query.get("clear", ["0"])[0] in ("1", "true"):
                self._log.clear()
        return {"requests": requests}

    def _c_clock(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """POST /clock {"time": ISO|null} | {"offset_s": n} | {"advance_s": n}: fix the clock (null:
        real UTC), run it at real time plus an offset, or move it on. -> {"now", "fixed", "offset_s"}"""
        if "offset_s" in spec:
            self.set_clock_offset(float(spec["offset_s"]))
        elif "advance_s" in spec:
            self.advance_clock(float(spec["advance_s"]))
        else:
            moment = spec.get("time")
            self.set_clock(None if moment is None else parse_timestamp(str(moment)))
        return self.clock.describe()

    def _c_faults(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """POST /faults {kind, count, path, query_type, query_method, status, retry_after, latency_s, omit}
        (or {"faults": [...]}): arm faults for the next matching API requests (see FaultRule).
        -> {"faults": armed}"""
        for item in spec.get("faults", [spec]):
            self.faults.add(FaultRule.from_dict(item))
        return {"faults": self.faults.armed()}

    def _c_rate_limit(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """POST /rate-limit {"rate_per_s": n|null, "burst": 1, "retry_after": 1}: token bucket over API
        requests, answering 429 + Retry-After when empty; null turns it off. -> the settings"""
        rate = spec.get("rate_per_s")
        self.set_rate_limit(
            None if rate is None else float(rate),
            burst=int(spec.get("burst", 1)),
            retry_after=spec.get("retry_after", 1),
        )
        return self.rate_limiter.describe()

    def _c_projects_get(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """GET /projects -> {"projects": [hashes]}; GET /projects/{p}/state -> {"rows": Emulator.state(p),
        "unlabelled": [data hashes without a main row]}"""
        if len(parts) == 1:
            return {"projects": self._project_list()}
        if len(parts) == 3 and parts[2] == "state":
            return {"rows": self.state(parts[1]), "unlabelled": self.unlabelled(parts[1])}
        raise KeyError(f"no control endpoint GET /{'/'.join(parts)}")

    def _c_projects_change(self, parts: list[str], spec: dict[str, Any], query: dict[str, list[str]]) -> Any:
        """Data changes the SDK cannot make (-> {"ok": true}):

        POST /projects/{p}/data-units/{d}/stage {"stage": title}: move the task; last_edited_at unchanged.
        POST /projects/{p}/data-units/{d}/task-status {"status": s}: set the task status.
        DELETE /projects/{p}/data-units/{d}: remove the data unit and all its rows.
        POST /projects/{p}/label-rows {"row", "stamp": true, "stage"?, "task_status"?}: add a (data unit,
        branch) row, e.g. a consensus branch; 409 if that branch already has one.
        PUT /projects/{p}/label-rows/{l} {"row"}: same as an SDK save (stamps the clock).
        DELETE /projects/{p}/label-rows/{l}: delete one branch's row.
        """
        shape = tuple(parts[2:3]) + tuple(parts[4:5])
        if len(parts) == 5 and shape == ("data-units", "stage"):
            self.move_stage(parts[1], parts[3], spec["stage"])
        elif len(parts) == 5 and shape == ("data-units", "task-status"):
            self.set_task_status(parts[1], parts[3], spec["status"])
        elif len(parts) == 4 and parts[2] == "data-units":
            self.delete_data_unit(parts[1], parts[3])
        elif len(parts) == 3 and parts[2] == "label-rows":
            self.add_row(
                parts[1],
                spec["row"],
                stamp=bool(spec.get("stamp", True)),
                stage=spec.get("stage"),
                task_status=spec.get("task_status"),
            )
        elif len(parts) == 4 and parts[2] == "label-rows" and "row" in spec:
            self.edit_row(parts[1], parts[3], spec["row"])
        elif len(parts) == 4 and parts[2] == "label-rows":
            self.delete_row(parts[1], parts[3])
        else:
            raise KeyError(f"no control endpoint /{'/'.join(parts)}")
        return {"ok": True}


def _raw_rows(raws: list[bytes]) -> Reply:
    # Rows are kept as their JSON bytes, so a 1000-row bundle is spliced, not re-serialised.
    body = b'{"status":200,"response":[' + b",".join(raws) + b"]}"
    return Reply(200, body, {"Content-Type": "application/json"})


def serve_main(args: argparse.Namespace) -> int:
    """`encord-emulator serve`: print the base URL as the first stdout line, serve until a signal."""
    key_files: list[str] = list(args.authorized_key or [])
    if not key_files and not args.no_auth:
        print(
            "error: give at least one --authorized-key PUBFILE (OpenSSH ed25519 public key), "
            "or --no-auth to accept every request unchecked",
            file=sys.stderr,
        )
        return 2
    keys: list[str] = []
    try:
        for name in key_files:
            keys.extend(read_public_key_file(Path(name)))
        emulator = Emulator(
            Path(args.data), authorized_keys=keys, no_auth=args.no_auth, host=args.host, port=args.port
        )
    except (OSError, KeyFormatError, FixtureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with emulator:
        print(emulator.url, flush=True)
        print(
            f"serving {emulator.describe()} from {args.data}; controls at {emulator.url}{CONTROL_PREFIX}/ "
            f"({'no auth' if args.no_auth else f'{len(keys)} authorized key(s)'})",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.2):
            pass
    return 0
