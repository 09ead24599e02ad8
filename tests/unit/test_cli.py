"""The entry point: commands are found by their module path, and `emulator` is handed to encord-emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from encord_mirror.cli.main import main


def test_emulator_command_hands_every_argument_to_the_emulator_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # When `encord-mirror emulator generate` is given a bad row count
    status = main(["emulator", "generate", "--out", str(tmp_path / "f"), "--rows", "0"])
    # Then the emulator's own generate command answered (exit 2, its message)
    assert status == 2
    assert "encord-emulator: error:" in capsys.readouterr().err
    # and --help goes to the emulator's parser, not encord-mirror's
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    assert "usage: encord-emulator" in capsys.readouterr().out


def test_help_does_not_import_the_sdk_boto3_or_numpy() -> None:
    # When a fresh interpreter builds the parser (what `--help` does)
    probe = (
        "import sys; from encord_mirror.cli.main import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'encord', 'boto3', 'numpy', 'pydantic'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    # Then none of the heavy packages was imported
    assert result.stdout.strip() == "[]"
