"""`encord-mirror sync` and `status` against state that is not what it should be: a foreign, damaged or
another lake's state file, a lease left by a killed run, temporary files left in the lake by a killed write.

The CLI, the real SDK and the emulator on loopback, as in test_cli_sync (whose `Mirror` these tests reuse).
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from test_cli_sync import Mirror, _first_sync, serve_mirror

from encord_mirror.adapters.local import LocalLake

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LAKE_ID_KEY = "_lake.json"  # the lake's id, at its root (README: the lake)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    with serve_mirror(tmp_path, extra_images=4) as served:
        yield served


def _dead_pid() -> str:
    """The pid of a process that has exited (and been reaped)."""
    argv = [sys.executable, "-c", "import os; print(os.getpid())"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def _lake_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _foreign_schema(path: Path) -> None:
    """A SQLite file with a table of our name but another program's columns."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE watermarks (project TEXT PRIMARY KEY, mark TEXT)")
        db.execute("INSERT INTO watermarks VALUES ('p', '2026-01-01')")
    db.close()


def _other_program(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.close()


def _truncated(path: Path, mirror: Mirror) -> None:
    """A real state file of a synced lake, cut in half (a disk that filled up, a copy that stopped)."""
    synced = Mirror(mirror.emu, mirror.fixture, mirror.key_path, str(path.parent / "synced-lake"))
    assert synced.sync().code == 0
    source = Path(synced.dest) / ".mirror-state.sqlite"
    with sqlite3.connect(source) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the main file, as after a clean exit
    db.close()
    shutil.copy(source, path)
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_foreign_schema, "its table 'watermarks' has the columns mark, project"),
        (_other_program, "it holds the tables users, which encord-mirror never creates"),
        (_truncated, "damaged"),
    ],
    ids=["another-schema", "another-program", "truncated"],
)
def test_a_state_file_that_is_not_a_usable_state_exits_2_naming_it_and_writes_nothing(
    mirror: Mirror, tmp_path: Path, make: object, problem: str
) -> None:
    # Given a state file of another schema, of another program, or a truncated one
    state = tmp_path / "given.sqlite"
    make(state, mirror) if make is _truncated else make(state)  # type: ignore[operator]
    before = state.read_bytes()
    mirror.emu.clear_log()

    # When sync and status are pointed at it
    run = mirror.sync("--state", str(state))
    status = mirror.status("--state", str(state))

    # Then both exit 2 with one line naming the file and what is wrong, no traceback
    for result in (run, status):
        assert result.code == 2, result.out + result.err
        assert f"--state {state}: " in result.err and problem in result.err, result.err
        assert "Traceback" not in result.err
    # and nothing was written: not to the file, not to the lake, nothing asked of Encord
    assert state.read_bytes() == before
    assert _lake_files(Path(mirror.dest)) == {}
    assert not [e for e in mirror.emu.request_log() if e["query_type"] == "labelrowmetadata"]


def test_the_state_file_of_another_lake_is_refused_naming_both_lakes(mirror: Mirror, tmp_path: Path) -> None:
    # Given lake A synced, with its state inside it
    _first_sync(mirror)
    state_a = Path(mirror.dest) / ".mirror-state.sqlite"
    id_a = LocalLake(Path(mirror.dest)).get(LAKE_ID_KEY)
    assert id_a is not None
    other = Mirror(mirror.emu, mirror.fixture, mirror.key_path, str(tmp_path / "lake-b"))

    # When a new lake B is synced with A's state file
    run = other.sync("--state", str(state_a))

    # Then it is refused (exit 2) naming the state, both lakes, and what to do; B stays empty
    assert run.code == 2, run.out + run.err
    assert f"--state {state_a}: belongs to another lake" in run.err
    lake_a_id = orjson.loads(id_a.body)["lake_id"]
    assert f"lake {lake_a_id} (last synced at {mirror.dest}" in run.err
    assert f"--lake {tmp_path / 'lake-b'} is a lake without an id" in run.err
    assert not list(LocalLake(tmp_path / "lake-b").list_keys(""))
    # and status of B with A's state says the same
    status = other.cli("status", "--project", mirror.project, "--lake", other.dest, "--state", str(state_a))
    assert status.code == 2 and "belongs to another lake" in status.err

    # When B has been synced with its own state, and then A's state is pointed at B again
    assert other.sync().code == 0
    again = other.sync("--state", str(state_a))
    # Then it is refused naming B's id too
    id_b = LocalLake(tmp_path / "lake-b").get(LAKE_ID_KEY)
    assert id_b is not None
    lake_b_id = orjson.loads(id_b.body)["lake_id"]
    assert again.code == 2 and f"is lake {lake_b_id}" in again.err, again.err
    # and A itself is untouched and still in step with its state
    assert mirror.sync().code == 0
    mirror.assert_in_step()


def test_a_lake_id_of_the_older_format_is_rewritten_in_this_one_keeping_its_id(mirror: Mirror) -> None:
    # Given a lake whose _lake.json an older release wrote (indented, no format_version)
    _first_sync(mirror)
    path = Path(mirror.dest) / LAKE_ID_KEY
    fields = orjson.loads(path.read_bytes())
    del fields["format_version"]
    path.write_bytes(orjson.dumps(fields, option=orjson.OPT_INDENT_2))
    # When the next sync runs
    assert mirror.sync().code == 0
    # Then _lake.json is one line ending with a newline, of format 2, with the same id, time and writer
    body = path.read_bytes()
    assert body.count(b"\n") == 1 and body.endswith(b"}\n")
    assert orjson.loads(body) == {"format_version": 2, **fields}
    mirror.assert_in_step()


def test_a_lake_moved_with_its_state_keeps_syncing(mirror: Mirror, tmp_path: Path) -> None:
    # Given a lake in step, with its state inside it, then the directory moved
    _first_sync(mirror)
    moved = tmp_path / "moved-lake"
    shutil.move(mirror.dest, moved)
    mirror.dest = str(moved)

    # When sync runs on the new path
    run = mirror.sync()

    # Then it is the same lake: nothing is initialised again, and the lake is in step
    assert run.code == 0, run.out + run.err
    assert mirror.initialised() == 0
    mirror.assert_in_step()


def test_a_run_killed_with_sigkill_leaves_a_lease_the_next_sync_takes_over_at_once(mirror: Mirror) -> None:
    # Given an Encord that answers slowly, and a first sync in its own process killed (SIGKILL) mid-run
    mirror.emu.latency_s = 0.2
    argv = [sys.executable, "-m", "encord_mirror", "sync", "--project", mirror.project, "--lake", mirror.dest]
    argv += ["--ssh-key", str(mirror.key_path), "--encord-domain", mirror.emu.url, "--bundle-size", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in iter(proc.stderr.readline, ""):
        if "chunk 2 done" in line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    state = mirror.state()
    lease = state.get_lease(mirror.project)
    state.close()
    assert lease is not None and lease.holder == f"pid {proc.pid} on {os.uname().nodename}", lease
    mirror.emu.latency_s = 0.0
    # and status says the lease was left by a run that died, and which snapshots it left stale
    before = mirror.status()
    assert before.code == 1, before.out + before.err
    assert f"left by a run that died (pid {proc.pid} on" in before.out
    assert f"run {lease.owner} changed its rows and died before refreshing it" in before.out

    # When the next sync runs, long before the dead run's lease would expire
    run = mirror.sync()

    # Then it takes the lease over at once, says so, and brings the lake in step
    assert run.code == 0, run.out + run.err
    assert f"took over the lease of run {lease.owner}" in run.err and f"pid {proc.pid}" in run.err
    assert "skipped" not in run.out + run.err
    mirror.assert_in_step()
    after = mirror.status()
    assert after.code == 0, after.out + after.err


def test_stale_temporaries_in_the_lake_are_swept_by_the_next_sync(mirror: Mirror) -> None:
    # Given a lake in step, and temporary files that a killed writer left beside the label objects
    _first_sync(mirror)
    [first_key, *_] = mirror.lake.list_keys("labels/")
    partition = Path(mirror.lake.uri(first_key)).parent
    host = LocalLake.temporary_tag()
    stale = partition / f".tmp-{host}-{_dead_pid()}-abc123"
    stale.write_bytes(b'{"half": ')
    live = partition / f".tmp-{host}-{os.getpid()}-def456"  # a write in flight (this process is alive)
    live.write_bytes(b"{")
    assert stale.name not in {k.rsplit("/", 1)[-1] for k in mirror.lake.list_keys("")}

    # When the next sync runs
    run = mirror.sync()

    # Then the dead writer's temporary is gone, the live one stays, and the sync says what it swept
    assert run.code == 0, run.out + run.err
    assert not stale.exists() and live.exists()
    assert "removed 1 temporary file" in run.err
    mirror.assert_in_step()
