"""A lake as the readers users already have see it: `encord-mirror sync` (the real SDK against the
emulator) of two generated projects, all branches, in corrected COCO mode, then every partition's latest
snapshot read with pycocotools and COCOeval (`verify.training_differences`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from snapshot_checks import run_cli

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_mirror.adapters.local import LocalLake
from encord_mirror.verify import training_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Synced:
    emu: Emulator
    projects: list[str]
    key_path: Path
    root: Path

    @property
    def lake(self) -> LocalLake:
        return LocalLake(self.root)

    def cli(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(*argv)

    def latest_snapshots(self) -> dict[str, dict[str, Any]]:
        """Each partition's latest coco.json, by its latest.json key."""
        out = {}
        for key in self.lake.list_keys("coco/"):
            if key.endswith("/latest.json"):
                latest = orjson.loads(self.lake.get(key).body)  # type: ignore[union-attr]
                out[key] = orjson.loads(self.lake.get(latest["coco"]).body)  # type: ignore[union-attr]
        return out


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    root = tmp_path_factory.mktemp("readers")
    projects = generate(root / "fixture", 60, seed=21, projects=2)
    key_path, public_line = generate_keypair(root / "keys")
    with Emulator(root / "fixture", authorized_keys=[public_line]) as emu:
        synced = Synced(emu, projects, key_path, root / "lake")
        flags = [f for p in projects for f in ("--project", p)]
        code, out, err = synced.cli(
            "sync", *flags, "--lake", str(synced.root), "--ssh-key", str(key_path),
            "--encord-domain", emu.url, "--all-branches",
        )  # fmt: skip
        assert code == 0, out + err
        yield synced


def test_every_partition_of_a_synced_lake_scores_ap_1_against_itself(synced: Synced) -> None:
    # Given every partition's latest snapshot of two synced projects, all branches
    snapshots = synced.latest_snapshots()
    assert len(snapshots) >= 8 and {k.split("/")[1] for k in snapshots} == {
        f"project={p}" for p in synced.projects
    }
    # Then pycocotools decodes every segmentation and COCOeval gives AP 1.0 to the ground truth against
    # itself, for boxes, masks and each keypoint category
    for key, coco in snapshots.items():
        assert training_differences(coco) == [], key
    assert sum(len(c["annotations"]) for c in snapshots.values()) > 100


def test_coco_export_writes_a_yolo_folder_of_a_partitions_latest_snapshot(
    synced: Synced, tmp_path: Path
) -> None:
    # Given the largest partition of a synced project
    key, coco = max(synced.latest_snapshots().items(), key=lambda item: len(item[1]["annotations"]))
    _, project, branch, stage, _ = (p.partition("=")[2] for p in key.split("/"))
    # When it is exported as YOLO
    code, _, err = synced.cli(
        "coco", "export", "--format", "yolo", "--lake", str(synced.root), "--project", project,
        "--branch", branch, "--stage", stage, "--out", str(tmp_path / "yolo"),
    )  # fmt: skip
    # Then data.yaml names the categories and every exportable image has its label file
    assert code == 0, err
    data = (tmp_path / "yolo/data.yaml").read_text()
    assert f"names: {orjson.dumps([c['name'] for c in coco['categories']]).decode()}" in data
    labels = list((tmp_path / "yolo/labels/train").glob("*.txt"))
    lines = sum(len(p.read_text().splitlines()) for p in labels)
    assert labels and lines > 0 and f"{lines} labels" in err


def test_coco_export_names_a_missing_snapshot(synced: Synced, tmp_path: Path) -> None:
    # When a stage without a snapshot is asked for
    code, _, err = synced.cli(
        "coco", "export", "--format", "coco", "--lake", str(synced.root), "--project", synced.projects[0],
        "--stage", "no-such-stage", "--out", str(tmp_path / "x"),
    )  # fmt: skip
    # Then it exits 2 naming the partition
    assert code == 2 and "no-such-stage" in err
