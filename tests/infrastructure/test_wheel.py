"""The runtime wheel as `uv build` makes it: typed (`py.typed`), without the emulator or test tools."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    local = ROOT / ".tools/bin/uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed (make dev puts it in .tools/bin)")
    return found


def test_the_wheel_is_typed_and_ships_neither_the_emulator_nor_dev_dependencies(tmp_path: Path) -> None:
    # When the wheel is built as a release would build it
    subprocess.run(
        [_uv(), "build", "--wheel", "--offline", "--package", "encord-mirror", "-o", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("encord_mirror-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    # Then it holds the package with its py.typed marker, and nothing of the emulator or the tests
    assert "encord_mirror/py.typed" in names and "encord_mirror/cli/media.py" in names
    assert {n.split("/")[0] for n in names} == {"encord_mirror", wheel.name.split("-py3")[0] + ".dist-info"}
    requires = [
        line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert [r for r in requires if r.startswith("av")] == ["av>=12; extra == 'video'"]  # opt-in only
    assert requires and not any(
        r.split(">")[0].split("=")[0].split("[")[0]
        in {"encord-emulator", "moto", "pytest", "pydicom", "opencv-python-headless"}
        for r in requires
    )
