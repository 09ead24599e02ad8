"""`encord-emulator serve` as a subprocess: prints its URL, serves the SDK, stops on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from encord_emulator.keys import generate_keypair
from encord_emulator.testing import build_fixture, user_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def test_serve_prints_its_url_serves_the_sdk_and_stops_on_sigterm(tmp_path: Path) -> None:
    # Given a fixture directory and an authorized public key file
    fixture = build_fixture(tmp_path / "fixture")
    key_path, _ = generate_keypair(tmp_path / "keys")
    command = [
        sys.executable,
        "-m",
        "encord_emulator",
        "serve",
        "--data",
        str(tmp_path / "fixture"),
    ]
    command += ["--authorized-key", f"{key_path}.pub"]

    # When the server is started
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()

        # Then its first line is the base URL, which the SDK can use
        assert url.startswith("http://127.0.0.1:")
        rows = user_client(url, key_path).get_project(fixture.project_hash).list_label_rows_v2()
        assert len(rows) == 4
    finally:
        process.terminate()
        returncode = process.wait(timeout=10)

    # And SIGTERM stops it cleanly
    assert returncode == 0


def test_serve_without_keys_or_no_auth_fails_naming_the_options(tmp_path: Path) -> None:
    # Given a fixture directory but neither --authorized-key nor --no-auth
    build_fixture(tmp_path / "fixture")

    # When the server is started
    result = subprocess.run(
        [sys.executable, "-m", "encord_emulator", "serve", "--data", str(tmp_path / "fixture")],
        capture_output=True,
        text=True,
        timeout=30,
    )

    # Then it refuses, naming both options
    assert result.returncode == 2
    assert "--authorized-key" in result.stderr and "--no-auth" in result.stderr
