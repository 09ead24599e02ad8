"""The CLI's conventions end to end (the real SDK against the emulator): where the Encord key comes from
(`--ssh-key` > `$ENCORD_SSH_KEY_FILE` > `$ENCORD_SSH_KEY`), and `sync --json`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from snapshot_checks import run_cli

from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import Fixture, build_fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@dataclass
class Served:
    emu: Emulator
    fixture: Fixture
    key_path: Path
    lake: Path

    def sync(self, *flags: str) -> tuple[int, str, str]:
        return run_cli(
            "sync", "--project", self.fixture.project_hash, "--lake", str(self.lake),
            "--encord-domain", self.emu.url, *flags,
        )  # fmt: skip


@pytest.fixture()
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.delenv("ENCORD_SSH_KEY_FILE", raising=False)
    monkeypatch.delenv("ENCORD_SSH_KEY", raising=False)
    fixture = build_fixture(tmp_path / "fixture")
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        yield Served(emu, fixture, key_path, tmp_path / "lake")


def test_the_key_file_named_by_encord_ssh_key_file_is_used_without_a_flag(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given only the SDK's own variable naming the key file
    monkeypatch.setenv("ENCORD_SSH_KEY_FILE", str(served.key_path))
    # When sync runs without --ssh-key
    code, out, err = served.sync()
    # Then it syncs with that key
    assert code == 0, out + err
    assert "OK: in step" in out


def test_the_key_text_in_encord_ssh_key_is_used_when_no_file_is_named(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCORD_SSH_KEY", served.key_path.read_text())
    code, out, err = served.sync()
    assert code == 0, out + err


def test_the_flag_wins_over_the_variables_and_an_error_names_where_the_key_came_from(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given ENCORD_SSH_KEY_FILE naming a missing file and ENCORD_SSH_KEY holding garbage
    monkeypatch.setenv("ENCORD_SSH_KEY_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("ENCORD_SSH_KEY", "not a key")
    # When --ssh-key names the right key, the sync uses it
    code, out, err = served.sync("--ssh-key", str(served.key_path))
    assert code == 0, out + err
    # When the flag names a missing file, the error names the flag (the good key in the variables is not
    # used instead)
    code, _, err = served.sync("--ssh-key", str(tmp_path / "nope"))
    assert code == 2 and "--ssh-key" in err and "nope" in err
    # When only the variables are left, the file variable comes first and is named
    code, _, err = served.sync()
    assert code == 2 and "ENCORD_SSH_KEY_FILE" in err and "missing" in err
    # And ENCORD_SSH_KEY is named when it is the one used; its text is never shown
    monkeypatch.delenv("ENCORD_SSH_KEY_FILE")
    code, _, err = served.sync()
    assert code == 2 and "ENCORD_SSH_KEY" in err and "not a key" not in err


def test_no_key_anywhere_exits_2_naming_the_flag_and_both_variables(served: Served) -> None:
    code, _, err = served.sync()
    assert code == 2
    assert "--ssh-key" in err and "ENCORD_SSH_KEY_FILE" in err and "ENCORD_SSH_KEY " in err


def test_sync_json_prints_one_json_summary_on_stdout_and_progress_on_stderr(served: Served) -> None:
    # When sync runs with --json, twice
    code, out, err = served.sync("--ssh-key", str(served.key_path), "--json")
    code_again, out_again, _ = served.sync("--ssh-key", str(served.key_path), "--json")
    # Then stdout is one JSON object with the run's figures, and the human progress went to stderr
    assert code == 0 and code_again == 0, err
    summary, again = orjson.loads(out), orjson.loads(out_again)
    rows = sum(r["branch_name"] == "main" for r in served.emu.state(served.fixture.project_hash))
    (project,) = summary["projects"]
    assert summary["ok"] is True and summary["gaps_open"] == 0 and summary["lake"] == str(served.lake)
    assert project["project_hash"] == served.fixture.project_hash and project["status"] == "synced"
    assert project["mode"] == "full" and project["written"] == rows and project["gaps"] == []
    assert Path(project["manifest_uri"]).is_file()
    assert project["watermark_after"] is not None
    assert again["projects"][0]["written"] == 0 and again["projects"][0]["mode"] == "incremental"
    assert "written" in err and "OK: in step" not in out
