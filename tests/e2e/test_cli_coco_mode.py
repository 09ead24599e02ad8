"""`encord-mirror sync --coco`: the COCO snapshot mode is a deployment setting, for the CLI too."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import orjson
import pytest

from encord_emulator.testing import emulator_env
from encord_mirror.adapters.local import LocalLake
from encord_mirror.cli.main import main
from encord_mirror.coco.snapshot import CocoSnapshotBuilder, snapshot_builder

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _sync(env_url: str, key: Path, project: str, lake: Path, *extra: str) -> int:
    argv = ["sync", "--project", project, "--lake", str(lake), "--ssh-key", str(key)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main([*argv, "--encord-domain", env_url, *extra])


def _snapshot_modes(lake: Path) -> set[bool]:
    """The `encord_compatible` flag each snapshot manifest records, read back from the lake."""
    manifests = lake.glob("coco/**/snapshots/*/manifest.json")
    return {bool(orjson.loads(path.read_bytes())["encord_compatible"]) for path in manifests}


@pytest.mark.parametrize(("mode", "compatible"), [("corrected", False), ("encord-compatible", True)])
def test_sync_writes_snapshots_in_the_chosen_mode(tmp_path: Path, mode: str, compatible: bool) -> None:
    # Given an emulated project
    with emulator_env(tmp_path) as env:
        # When it is synced with --coco MODE
        code = _sync(env.emu.url, env.key_path, env.project_hash, tmp_path / "lake", "--coco", mode)
    # Then every snapshot was built in that mode
    assert code == 0
    assert _snapshot_modes(tmp_path / "lake") == {compatible}


def test_sync_with_coco_off_writes_labels_and_no_snapshot(tmp_path: Path) -> None:
    # Given an emulated project
    with emulator_env(tmp_path) as env:
        # When it is synced with --coco off
        code = _sync(env.emu.url, env.key_path, env.project_hash, tmp_path / "lake", "--coco", "off")
    # Then the labels are there and no COCO snapshot was made
    assert code == 0
    assert any((tmp_path / "lake" / "labels").rglob("*.json"))
    assert not (tmp_path / "lake" / "coco").exists()


def test_snapshot_builder_factory_maps_each_mode(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path)
    assert snapshot_builder(lake, "off") is None
    assert isinstance(snapshot_builder(lake, "corrected"), CocoSnapshotBuilder)
    with pytest.raises(ValueError, match="COCO mode"):
        snapshot_builder(lake, "fast")
