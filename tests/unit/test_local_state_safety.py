"""What the local adapters do with what a killed or foreign run left: state files that are not ours, leases
of dead processes, temporary files of dead writers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.adapters.local.state import SCHEMA_VERSION, LakeBinding, StateFileError

T = datetime(2026, 11, 23, 18, 0, 0, tzinfo=UTC)
P = "proj"


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    argv = [sys.executable, "-c", "import os; print(os.getpid())"]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def _set_holder(path: Path, holder: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE leases SET holder = ?", (holder,))
    db.close()


def test_a_lease_whose_process_is_gone_from_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    # Given a lease taken by a process of this host that has died, long before it would expire
    state = SqliteStateStore(tmp_path / "s.db")
    assert state.acquire_lease(P, "run-dead", T, 900)
    _set_holder(tmp_path / "s.db", f"pid {_dead_pid()} on {os.uname().nodename}")

    # When another run asks for it / Then it gets it at once, recorded as this process's
    assert state.acquire_lease(P, "run-next", T + timedelta(seconds=1), 900)
    lease = state.get_lease(P)
    assert lease is not None and lease.owner == "run-next"
    assert lease.holder == f"pid {os.getpid()} on {os.uname().nodename}"
    state.close()


@pytest.mark.parametrize(
    "holder",
    [f"pid {os.getpid()} on {os.uname().nodename}", "pid 1 on another-host", None],
    ids=["alive-here", "another-host", "unrecorded"],
)
def test_a_lease_of_a_live_process_another_host_or_no_record_waits_for_its_expiry(
    tmp_path: Path, holder: str | None
) -> None:
    # Given a lease whose holder is alive, on another host, or not recorded (an older version)
    state = SqliteStateStore(tmp_path / "s.db")
    assert state.acquire_lease(P, "run-1", T, 60)
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE leases SET holder = ?", (holder,))
    db.close()
    # When another run asks before the expiry / Then it is refused; after the expiry it is granted
    assert not state.acquire_lease(P, "run-2", T + timedelta(seconds=59), 60)
    assert state.acquire_lease(P, "run-2", T + timedelta(seconds=60), 60)
    state.close()


def test_a_state_file_of_a_newer_version_is_refused_unchanged(tmp_path: Path) -> None:
    # Given a state file written by a newer version
    path = tmp_path / "s.db"
    SqliteStateStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    before = path.read_bytes()
    # When this version opens it / Then it refuses, naming the versions, and leaves the file as it was
    with pytest.raises(StateFileError, match=rf"newer encord-mirror \(state version {SCHEMA_VERSION + 1}"):
        SqliteStateStore(path)
    assert path.read_bytes() == before


def test_a_state_file_from_before_leases_had_holders_opens_and_records_them(tmp_path: Path) -> None:
    # Given a state file of an older version: no meta table, leases without holders
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE leases (project TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at TEXT NOT NULL)"
        )
        db.execute("CREATE TABLE watermarks (project TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO watermarks VALUES ('proj', '2026-11-23T18:00:00.000000Z')")
    db.close()
    # When this version opens it / Then it keeps the watermark, and leases record their holder
    state = SqliteStateStore(path)
    assert state.get_watermark(P) == T
    assert state.lake_binding() is None
    assert state.acquire_lease(P, "run-1", T, 60)
    lease = state.get_lease(P)
    assert lease is not None and lease.holder is not None and str(os.getpid()) in lease.holder
    state.close()


def test_the_lake_binding_round_trips_and_its_projects_accumulate(tmp_path: Path) -> None:
    state = SqliteStateStore(tmp_path / "s.db")
    state.bind_lake(LakeBinding("id-1", "/lakes/a", ("p2", "p1")))
    assert state.lake_binding() == LakeBinding("id-1", "/lakes/a", ("p1", "p2"))
    state.close()
    assert SqliteStateStore(tmp_path / "s.db").lake_binding() == LakeBinding("id-1", "/lakes/a", ("p1", "p2"))


def test_the_lake_sweeps_temporaries_of_dead_writers_and_old_ones_only(tmp_path: Path) -> None:
    # Given a lake with an object, and temporaries: of a dead writer here, of this live process, of
    # another host (recent and a day old), and one of an older version's naming (a day old)
    lake = LocalLake(tmp_path / "lake")
    lake.put("labels/p/a.json", b"{}")
    folder = tmp_path / "lake" / "labels" / "p"
    tag = LocalLake.temporary_tag()
    names = {
        "dead": f".tmp-{tag}-{_dead_pid()}-x1",
        "live": f".tmp-{tag}-{os.getpid()}-x2",
        "other-host": ".tmp-0000ffff-1-x3",
        "other-host-old": ".tmp-0000ffff-1-x4",
        "old-naming": ".tmp-k2j3h4",
    }
    for name in names.values():
        (folder / name).write_bytes(b"{")
    day_ago = datetime.now(UTC).timestamp() - 86_401
    for old in ("other-host-old", "old-naming"):
        os.utime(folder / names[old], (day_ago, day_ago))

    # When the lake sweeps its temporaries
    removed = {p.name for p in lake.sweep_temporaries()}

    # Then the dead writer's and the day-old ones are gone; the live and the recent foreign one stay
    assert removed == {names["dead"], names["other-host-old"], names["old-naming"]}
    assert sorted(p.name for p in folder.iterdir()) == sorted(["a.json", names["live"], names["other-host"]])
    assert list(lake.list_keys("")) == ["labels/p/a.json"]


def test_a_write_names_its_temporary_after_this_host_and_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write that dies between writing its temporary and renaming it
    lake = LocalLake(tmp_path / "lake")

    def die(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", die)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # as if killed: no cleanup
    with pytest.raises(KeyboardInterrupt):
        lake.put("labels/p/a.json", b"{}")
    monkeypatch.undo()
    # Then its temporary names this host and process, so the next sweep knows whether its writer lives
    [left] = (tmp_path / "lake" / "labels" / "p").iterdir()
    assert left.name.startswith(f".tmp-{LocalLake.temporary_tag()}-{os.getpid()}-")
    assert lake.sweep_temporaries() == []  # this process is alive
