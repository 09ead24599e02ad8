"""The layer build keeps the emulator and the dev-only image stack out of the Lambda package."""

from __future__ import annotations

from pathlib import Path

import pytest

from encord_mirror.build_layer import LayerBuildError, check_layer, copy_package

ROOT = Path(__file__).resolve().parents[2]


def test_package_copy_leaves_out_the_build_script(tmp_path: Path) -> None:
    # Given the repository's package / When copied into a layer directory
    copy_package(ROOT, tmp_path)
    copied = tmp_path / "encord_mirror"
    # Then the runtime code is there, this build script is not
    assert (copied / "aws_lambda" / "wiring.py").is_file()
    assert (copied / "adapters" / "aws" / "dynamodb.py").is_file()
    assert not (copied / "build_layer.py").exists()
    assert not list(copied.rglob("__pycache__"))
    check_layer(tmp_path)


@pytest.mark.parametrize("intruder", ["cv2", "shapely", "encord_emulator", "av"])
def test_a_layer_carrying_dev_only_packages_fails_the_build(tmp_path: Path, intruder: str) -> None:
    # Given a layer directory holding opencv, shapely or the emulator
    (tmp_path / intruder).mkdir(parents=True)
    # When checked / Then the build fails, naming what must go
    with pytest.raises(LayerBuildError, match=intruder.rsplit("/", 1)[-1]):
        check_layer(tmp_path)
