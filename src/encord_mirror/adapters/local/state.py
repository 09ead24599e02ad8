"""The state store on SQLite (WAL): one connection per thread, every write in one IMMEDIATE transaction,
so the conditional writes hold across the threads of the local queue and across processes sharing the file.

A file is checked before anything is written to it: it must be empty or hold encord-mirror's tables (an
older version's are brought up to date), and SQLite's `quick_check` must pass; anything else raises
`StateFileError`. The `meta` table records which lake the state belongs to (`LakeBinding`), so the CLI can
refuse a state file of another lake. A lease records the process that took it (`pid N on HOST`): one whose
process is gone from this host is taken over at once (on one machine a dead run is certain; elsewhere the
lease's expiry decides).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from encord_mirror.adapters.local.process import process_gone, this_host
from encord_mirror.domain.codec import (
    decode_event,
    decode_run,
    encode_event,
    encode_run,
    outcomes_from_json,
    outcomes_to_json,
)
from encord_mirror.domain.models import (
    ChunkResult,
    Gap,
    IndexEntry,
    LakeBinding,
    Lease,
    Partition,
    RunFailure,
    RunProgress,
    RunRecord,
    SnapshotDebt,
    SnapshotEvent,
)
from encord_mirror.domain.ports import FinalizeClaim

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (project TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at TEXT NOT NULL,
    acquired_at TEXT, holder TEXT);
CREATE TABLE IF NOT EXISTS watermarks (project TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS filters (project TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failures (project TEXT PRIMARY KEY, run_id TEXT, at TEXT NOT NULL,
    reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (project TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS row_index (
    project TEXT NOT NULL, label_hash TEXT NOT NULL, data_hash TEXT NOT NULL, branch TEXT NOT NULL,
    key TEXT NOT NULL, partition_stage TEXT NOT NULL, last_edited_at TEXT, sha256 TEXT NOT NULL,
    etag TEXT NOT NULL, synced_at TEXT NOT NULL, task_status TEXT, stage_uuid TEXT,
    PRIMARY KEY (project, label_hash));
CREATE TABLE IF NOT EXISTS runs (project TEXT NOT NULL, run_id TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (project, run_id));
CREATE TABLE IF NOT EXISTS chunks (project TEXT NOT NULL, run_id TEXT NOT NULL, chunk_id TEXT NOT NULL,
    final INTEGER NOT NULL, result BLOB NOT NULL, PRIMARY KEY (project, chunk_id));
CREATE TABLE IF NOT EXISTS finalize_claims (project TEXT NOT NULL, run_id TEXT NOT NULL, token TEXT,
    expires_at TEXT, finished_at TEXT, PRIMARY KEY (project, run_id));
CREATE TABLE IF NOT EXISTS outbox (project TEXT NOT NULL, event_id TEXT NOT NULL, snapshot_id TEXT NOT NULL,
    status TEXT NOT NULL, event BLOB NOT NULL, PRIMARY KEY (project, event_id));
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (project, status);
CREATE TABLE IF NOT EXISTS snapshot_debts (project TEXT NOT NULL, branch TEXT NOT NULL, stage TEXT NOT NULL,
    run_id TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (project, branch, stage));
CREATE TABLE IF NOT EXISTS gaps (project TEXT NOT NULL, label_hash TEXT NOT NULL, last_edited_at TEXT,
    run_id TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (project, label_hash));
"""
# 2: outbox entries keyed by the event id of event format 2 (a version-1 file's are migrated on open).
SCHEMA_VERSION = 2
# Columns an older version's file may lack: added on open.
_ADDED_COLUMNS = {"row_index": ("task_status", "stage_uuid"), "leases": ("acquired_at", "holder")}


def _columns_of(script: str) -> dict[str, set[str]]:
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.executescript(script)
        return _tables(db)


def _tables(db: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {
        name: {c[1] for c in db.execute(f'PRAGMA table_info("{name}")')}
        for name in names
        if not name.startswith("sqlite_")
    }


_COLUMNS = _columns_of(_SCHEMA)


class StateFileError(Exception):
    """The file is not a state this version can use (not SQLite, damaged, another program's schema, or a
    newer version's); nothing was written to it. `path` is the file, `problem` what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def this_process() -> str:
    return f"pid {os.getpid()} on {this_host()}"


def holder_gone(holder: str | None) -> bool:
    """Whether the process named by a lease's `holder` (`pid N on HOST`) is known to be gone: it ran on
    this host and no process has its pid."""
    pid, _, host = (holder or "").removeprefix("pid ").partition(" on ")
    return host == this_host() and pid.isdigit() and process_gone(int(pid))


def _ts(value: datetime | None) -> str | None:
    # Fixed-width UTC text compares in time order, so SQL can do newer-wins on it.
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _migrate_outbox(db: sqlite3.Connection) -> None:
    """Re-key the outbox entries a version-1 file holds under an event's `event_key` (ids hold no `/`,
    keys do) by its `event_id`, so that they are published (and found sent) under the id of today. An event
    recorded under both keeps one entry, sent if either was."""
    rows = db.execute("SELECT project, event_id, status, event FROM outbox WHERE event_id LIKE '%/%'")
    for project, key, status, event in rows.fetchall():
        event_id = decode_event(event).event_id
        db.execute(
            "INSERT OR IGNORE INTO outbox SELECT project, ?, snapshot_id, status, event FROM outbox"
            " WHERE project = ? AND event_id = ?",
            (event_id, project, key),
        )
        if status == "sent":
            db.execute(
                "UPDATE outbox SET status = 'sent' WHERE project = ? AND event_id = ?", (project, event_id)
            )
        db.execute("DELETE FROM outbox WHERE project = ? AND event_id = ?", (project, key))


def _need_dt(value: str) -> datetime:
    parsed = _dt(value)
    assert parsed is not None
    return parsed


class SqliteStateStore:
    """A StateStore in one SQLite file (created if missing).

    `read_only=True` (for `status` and `verify`) opens an existing file without writing anything next to
    it: a read-only SQLite connection to a WAL database otherwise creates `-wal` and `-shm` files and
    leaves them behind, owned by whoever ran the reader, which can lock the next sync out. With no `-wal`
    beside it the file holds every committed write, so it is read as immutable (no locks, no side files);
    with one (a sync is running, or one died), through the existing `-wal` and `-shm`."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()
        if read_only and not self.path.is_file():
            raise FileNotFoundError(f"no state file at {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._check()
            if read_only:
                return
            self._db().executescript(_SCHEMA)  # executescript runs its statements in their own transactions
            for table, names in _ADDED_COLUMNS.items():
                self._add_columns(table, names)
            with self._tx() as db:
                _migrate_outbox(db)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StateFileError(self.path, f"not a SQLite database, or a damaged one ({exc})") from None
        except StateFileError:
            self.close()
            raise

    def _check(self) -> None:
        """Refuse, before writing anything (even WAL mode), a file that is not an older or current state."""
        with contextlib.closing(self._connect()) as db:
            tables = _tables(db)
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            version = (
                db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if "meta" in tables and "key" in tables["meta"]
                else None
            )
        if verdict != "ok":
            raise StateFileError(self.path, f"damaged ({verdict}); a truncated or overwritten file?")
        for table, have in sorted(tables.items()):
            want = _COLUMNS.get(table, have)
            missing = want - have - set(_ADDED_COLUMNS.get(table, ()))
            if missing or have - want:
                raise StateFileError(
                    self.path,
                    f"not an encord-mirror state file: its table {table!r} has the columns "
                    f"{', '.join(sorted(have))} (encord-mirror's: {', '.join(sorted(want))})",
                )
        foreign = sorted(set(tables) - set(_COLUMNS))
        if foreign:
            raise StateFileError(
                self.path,
                f"not an encord-mirror state file: it holds the tables {', '.join(foreign)}, "
                "which encord-mirror never creates",
            )
        if version is not None and int(version[0]) > SCHEMA_VERSION:
            raise StateFileError(
                self.path,
                f"written by a newer encord-mirror (state version {version[0]}; this one knows up to "
                f"{SCHEMA_VERSION}): upgrade encord-mirror",
            )

    def _add_columns(self, table: str, names: Sequence[str]) -> None:
        """Bring a state file written by an older version up to the schema (new columns at the end)."""
        with self._tx() as db:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for name in names:
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} TEXT")

    # the lake this state belongs to
    def lake_binding(self) -> LakeBinding | None:
        rows = dict(self._db().execute("SELECT key, value FROM meta").fetchall())
        if "lake_id" not in rows:
            return None
        projects = tuple(orjson.loads(rows.get("projects", "[]")))
        return LakeBinding(rows["lake_id"], rows.get("lake_location", ""), projects)

    def bind_lake(self, binding: LakeBinding) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [
                    ("lake_id", binding.lake_id),
                    ("lake_location", binding.location),
                    ("projects", orjson.dumps(sorted(set(binding.projects))).decode()),
                ],
            )

    def _connect(self) -> sqlite3.Connection:
        if not self.read_only:
            return sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        wal = self.path.with_name(self.path.name + "-wal").exists()
        uri = f"{self.path.resolve().as_uri()}?mode=ro{'' if wal else '&immutable=1'}"
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0, check_same_thread=False)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            if not self.read_only:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # Threads of this process queue on a lock: SQLite's own busy handler would make them sleep and
        # retry for milliseconds. BEGIN IMMEDIATE still excludes writers in other processes.
        db = self._db()
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _one(self, sql: str, args: Sequence[Any]) -> Any:
        row = self._db().execute(sql, args).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._all_lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    # lease
    def acquire_lease(self, project_hash: str, owner: str, now: datetime, ttl_s: int) -> bool:
        """Also takes over, at once, a lease whose holder process is gone from this host (`holder_gone`)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT owner, expires_at, holder FROM leases WHERE project = ?", (project_hash,)
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > _ts(now) and not holder_gone(row[2]):
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                (project_hash, owner, _ts(now + timedelta(seconds=ttl_s)), _ts(now), this_process()),
            )
            return True

    def get_lease(self, project_hash: str) -> Lease | None:
        row = (
            self._db()
            .execute(
                "SELECT owner, acquired_at, expires_at, holder FROM leases WHERE project = ?", (project_hash,)
            )
            .fetchone()
        )
        return None if row is None else Lease(project_hash, row[0], _dt(row[1]), _need_dt(row[2]), row[3])

    def release_lease(self, project_hash: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE project = ? AND owner = ?", (project_hash, owner))

    # watermark
    def get_watermark(self, project_hash: str) -> datetime | None:
        return _dt(self._one("SELECT value FROM watermarks WHERE project = ?", (project_hash,)))

    def set_watermark(
        self, project_hash: str, value: datetime, *, rewind_from: datetime | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO watermarks VALUES (?, ?) ON CONFLICT(project) DO UPDATE SET value=excluded.value"
                " WHERE excluded.value > watermarks.value OR watermarks.value = ?",
                (project_hash, _ts(value), _ts(rewind_from)),
            )

    def get_filters(self, project_hash: str) -> str | None:
        value = self._one("SELECT fingerprint FROM filters WHERE project = ?", (project_hash,))
        return None if value is None else str(value)

    def set_filters(self, project_hash: str, fingerprint: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO filters VALUES (?, ?)", (project_hash, fingerprint))

    def get_failure(self, project_hash: str) -> RunFailure | None:
        try:
            row = (
                self._db()
                .execute("SELECT run_id, at, reason FROM failures WHERE project = ?", (project_hash,))
                .fetchone()
            )
        except sqlite3.OperationalError:
            if not self.read_only:
                raise
            return None  # read-only, a state file from before failures were recorded: none recorded
        return None if row is None else RunFailure(project_hash, row[0], _need_dt(row[1]), row[2])

    def set_failure(self, project_hash: str, failure: RunFailure | None) -> None:
        with self._tx() as db:
            if failure is None:
                db.execute("DELETE FROM failures WHERE project = ?", (project_hash,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                    (project_hash, failure.run_id, _ts(failure.at), failure.reason),
                )

    def next_run_number(self, project_hash: str) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO counters VALUES (?, 1) ON CONFLICT(project) DO UPDATE SET n = n + 1 RETURNING n",
                (project_hash,),
            ).fetchone()
        return int(row[0])

    # row index
    def get_index(self, project_hash: str, label_hash: str) -> IndexEntry | None:
        row = (
            self._db()
            .execute(
                "SELECT * FROM row_index WHERE project = ? AND label_hash = ?", (project_hash, label_hash)
            )
            .fetchone()
        )
        return None if row is None else _entry(row)

    def put_index(self, entry: IndexEntry) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO row_index VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(project, label_hash)"
                " DO UPDATE SET data_hash=excluded.data_hash, branch=excluded.branch, key=excluded.key,"
                " partition_stage=excluded.partition_stage, last_edited_at=excluded.last_edited_at,"
                " sha256=excluded.sha256, etag=excluded.etag, synced_at=excluded.synced_at,"
                " task_status=excluded.task_status, stage_uuid=excluded.stage_uuid"
                " WHERE row_index.last_edited_at IS NULL"
                " OR (excluded.last_edited_at IS NOT NULL"
                " AND excluded.last_edited_at >= row_index.last_edited_at)",
                (
                    entry.project_hash,
                    entry.label_hash,
                    entry.data_hash,
                    entry.branch,
                    entry.key,
                    entry.partition_stage,
                    _ts(entry.last_edited_at),
                    entry.sha256,
                    entry.etag,
                    _ts(entry.synced_at),
                    entry.task_status,
                    entry.stage_uuid,
                ),
            )
            return cur.rowcount == 1

    def delete_index(self, project_hash: str, label_hash: str) -> None:
        with self._tx() as db:
            db.execute(
                "DELETE FROM row_index WHERE project = ? AND label_hash = ?", (project_hash, label_hash)
            )

    def scan_index(self, project_hash: str) -> Iterator[IndexEntry]:
        rows = (
            self._db()
            .execute("SELECT * FROM row_index WHERE project = ? ORDER BY label_hash", (project_hash,))
            .fetchall()
        )
        return iter([_entry(r) for r in rows])

    # run ledger
    def create_run(self, run: RunRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?)", (run.project_hash, run.run_id, _run_blob(run))
            )

    def get_run(self, project_hash: str, run_id: str) -> RunRecord | None:
        blob = self._one("SELECT record FROM runs WHERE project = ? AND run_id = ?", (project_hash, run_id))
        return None if blob is None else _run_from(blob)

    def record_chunk(self, project_hash: str, result: ChunkResult) -> RunProgress:
        """A final record is kept: a later delivery of a finished chunk (a duplicate) does not replace it."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?) ON CONFLICT(project, chunk_id) DO UPDATE SET"
                " final=excluded.final, result=excluded.result WHERE chunks.final = 0",
                (project_hash, result.run_id, result.chunk_id, int(result.final), _chunk_blob(result)),
            )
            blob = db.execute(
                "SELECT record FROM runs WHERE project = ? AND run_id = ?", (project_hash, result.run_id)
            ).fetchone()
            chunk_ids = set(_run_from(blob[0]).chunk_ids) if blob else set()
            finals = db.execute(
                "SELECT chunk_id FROM chunks WHERE project = ? AND run_id = ? AND final = 1",
                (project_hash, result.run_id),
            ).fetchall()
        return RunProgress(done=sum(1 for (cid,) in finals if cid in chunk_ids), total=len(chunk_ids))

    def chunk_results(self, project_hash: str, run_id: str) -> list[ChunkResult]:
        rows = (
            self._db()
            .execute(
                "SELECT result FROM chunks WHERE project = ? AND run_id = ? ORDER BY chunk_id",
                (project_hash, run_id),
            )
            .fetchall()
        )
        return [_chunk_from(r[0]) for r in rows]

    def begin_finalize(
        self, project_hash: str, run_id: str, token: str, now: datetime, ttl_s: int
    ) -> FinalizeClaim:
        with self._tx() as db:
            row = db.execute(
                "SELECT token, expires_at, finished_at FROM finalize_claims WHERE project = ? AND run_id = ?",
                (project_hash, run_id),
            ).fetchone()
            if row is not None and row[2] is not None:
                return "finished"
            if row is not None and row[0] not in (None, token) and row[1] > _ts(now):
                return "busy"
            db.execute(
                "INSERT OR REPLACE INTO finalize_claims VALUES (?, ?, ?, ?, NULL)",
                (project_hash, run_id, token, _ts(now + timedelta(seconds=ttl_s))),
            )
            return "claimed"

    def end_finalize(self, project_hash: str, run_id: str, token: str, *, finished: bool) -> None:
        with self._tx() as db:
            if finished:
                db.execute(
                    "INSERT INTO finalize_claims VALUES (?, ?, NULL, NULL, ?) ON CONFLICT(project, run_id)"
                    " DO UPDATE SET token = NULL, expires_at = NULL, finished_at = excluded.finished_at"
                    " WHERE finalize_claims.finished_at IS NULL",
                    (project_hash, run_id, _ts(datetime.now(UTC))),
                )
            else:
                db.execute(
                    "UPDATE finalize_claims SET token = NULL, expires_at = NULL"
                    " WHERE project = ? AND run_id = ? AND token = ?",
                    (project_hash, run_id, token),
                )

    # outbox
    def stage_events(self, project_hash: str, events: Sequence[SnapshotEvent]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, 'pending', ?)",
                [(project_hash, e.event_id, e.snapshot_id, encode_event(e)) for e in events],
            )

    def pending_events(self, project_hash: str) -> list[SnapshotEvent]:
        rows = (
            self._db()
            .execute(
                "SELECT event FROM outbox WHERE project = ? AND status = 'pending'"
                " ORDER BY snapshot_id, event_id",
                (project_hash,),
            )
            .fetchall()
        )
        return [decode_event(r[0]) for r in rows]

    def mark_events_sent(self, project_hash: str, event_ids: Sequence[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET status = 'sent' WHERE project = ? AND event_id = ?",
                [(project_hash, i) for i in event_ids],
            )

    # snapshot debts
    def owe_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO snapshot_debts VALUES (?, ?, ?, ?, ?)",
                [(*_partition(d.partition), d.run_id, d.reason) for d in debts],
            )

    def owed_snapshots(self, project_hash: str) -> list[SnapshotDebt]:
        rows = (
            self._db()
            .execute(
                "SELECT project, branch, stage, run_id, reason FROM snapshot_debts WHERE project = ?"
                " ORDER BY branch, stage",
                (project_hash,),
            )
            .fetchall()
        )
        return [SnapshotDebt(Partition(r[0], r[1], r[2]), r[3], r[4]) for r in rows]

    def settle_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM snapshot_debts WHERE project = ? AND branch = ? AND stage = ? AND run_id = ?",
                [(*_partition(d.partition), d.run_id) for d in debts],
            )

    # gaps
    def add_gaps(self, gaps: Sequence[Gap]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO gaps VALUES (?, ?, ?, ?, ?)",
                [(g.project_hash, g.label_hash, _ts(g.last_edited_at), g.run_id, g.reason) for g in gaps],
            )

    def clear_gaps(self, project_hash: str, label_hashes: Sequence[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM gaps WHERE project = ? AND label_hash = ?",
                [(project_hash, h) for h in label_hashes],
            )

    def list_gaps(self, project_hash: str) -> list[Gap]:
        rows = (
            self._db()
            .execute(
                "SELECT project, label_hash, last_edited_at, run_id, reason FROM gaps WHERE project = ?"
                " ORDER BY label_hash",
                (project_hash,),
            )
            .fetchall()
        )
        return [Gap(r[0], r[1], _dt(r[2]), r[3], r[4]) for r in rows]


def _partition(p: Partition) -> tuple[str, str, str]:
    return (p.project_hash, p.branch, p.stage)


def _entry(row: tuple[Any, ...]) -> IndexEntry:
    return IndexEntry(
        project_hash=row[0],
        label_hash=row[1],
        data_hash=row[2],
        branch=row[3],
        key=row[4],
        partition_stage=row[5],
        last_edited_at=_dt(row[6]),
        sha256=row[7],
        etag=row[8],
        synced_at=_need_dt(row[9]),
        task_status=row[10],
        stage_uuid=row[11],
    )


def _run_blob(run: RunRecord) -> bytes:
    return encode_run(run)


def _run_from(blob: bytes) -> RunRecord:
    return decode_run(blob)


def _chunk_blob(result: ChunkResult) -> bytes:
    return orjson.dumps(
        {
            "run_id": result.run_id,
            "chunk_id": result.chunk_id,
            "final": result.final,
            "outcomes": outcomes_to_json(result.outcomes),
        }
    )


def _chunk_from(blob: bytes) -> ChunkResult:
    d = orjson.loads(blob)
    return ChunkResult(d["run_id"], d["chunk_id"], outcomes_from_json(d["outcomes"]), d["final"])
