"""`encord-mirror media` end to end: a generated project synced by the CLI (the real SDK against the
emulator), then its snapshots' images fetched through signed URLs the emulator serves (video frames decoded
out of the emulator's MP4s with PyAV), then read the way a training job reads them: pycocotools'
`COCO(coco.json)` plus the media folder, and `coco export`. The media step runs once for the module (it
decodes a few hundred video frames); tests that change the lake work on a copy."""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
import supervision as sv
from PIL import Image
from pycocotools.coco import COCO
from snapshot_checks import run_cli

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair
from encord_emulator.media import video_level
from encord_emulator.server import Emulator
from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.adapters.local import LocalLake
from encord_mirror.cli.media import NIFTI_SLICE
from encord_mirror.domain.lake import media_prefix
from encord_mirror.domain.ports import ObjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Synced:
    emu: Emulator
    project: str
    key_path: Path
    lake_dir: Path  # as `sync` then `media` left it: tests that change it copy it
    first: dict[str, Any]  # the media step's --json summary
    first_err: str
    requests_before: list[dict[str, Any]]  # Encord API requests of the media step

    def media(self, lake: str, *flags: str) -> tuple[int, dict[str, Any], str]:
        code, out, err = run_cli(
            "media", "--lake", lake, "--project", self.project, "--ssh-key", str(self.key_path),
            "--encord-domain", self.emu.url, "--json", *flags,
        )  # fmt: skip
        return code, orjson.loads(out) if out else {}, err


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    root = tmp_path_factory.mktemp("media")
    (project,) = generate(root / "fixture", 60, seed=21)
    key_path, public_line = generate_keypair(root / "keys")
    with Emulator(root / "fixture", authorized_keys=[public_line]) as emu:
        code, out, err = run_cli(
            "sync", "--project", project, "--lake", str(root / "lake"), "--ssh-key", str(key_path),
            "--encord-domain", emu.url,
        )  # fmt: skip
        assert code == 0, out + err
        shutil.copytree(root / "lake", root / "synced")  # before media, for the S3 test
        emu.clear_log()
        synced = Synced(emu, project, key_path, root / "lake", {}, "", [])
        code, synced.first, synced.first_err = synced.media(str(root / "lake"))
        assert code == 0, synced.first_err
        synced.requests_before = emu.request_log()
        yield synced


def _lake_copy(synced: Synced, tmp_path: Path) -> Path:
    shutil.copytree(synced.lake_dir, tmp_path / "lake")
    return tmp_path / "lake"


def _stills(lake_dir: Path, project: str) -> list[Path]:
    """The fetched still images and DICOM slices (not video frames), by name."""
    index = [
        orjson.loads(line)
        for line in (lake_dir / media_prefix(project) / "_index.jsonl").read_bytes().splitlines()
    ]
    videos = {
        i["file_name"]
        for b in _snapshots(LocalLake(lake_dir)).values()
        for i in orjson.loads(b)["images"]
        if "video_title" in i
    }
    return [lake_dir / media_prefix(project) / e["file_name"] for e in index if e["file_name"] not in videos]


def _snapshots(lake: ObjectStore) -> dict[str, bytes]:
    """Each partition's latest coco.json bytes, by stage."""
    out = {}
    for key in lake.list_keys("coco/"):
        if key.endswith("/latest.json"):
            latest = orjson.loads(lake.get(key).body)  # type: ignore[union-attr]
            out[key.split("/")[3].removeprefix("stage=")] = lake.get(latest["coco"]).body  # type: ignore[union-attr]
    return out


def _size_of(name: str, body: bytes) -> tuple[int, int]:
    if name.endswith(".dcm"):
        dataset = pydicom.dcmread(io.BytesIO(body))
        assert dataset.pixel_array.shape == (dataset.Rows, dataset.Columns)
        return int(dataset.Columns), int(dataset.Rows)
    with Image.open(io.BytesIO(body)) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size


def test_media_fetches_every_image_so_coco_and_the_folder_train_as_they_are(
    synced: Synced, tmp_path: Path
) -> None:
    # Given a synced lake whose media step ran (in the fixture)
    summary, err, lake_dir = synced.first, synced.first_err, synced.lake_dir
    # Then it fetched every image, image-group member, DICOM slice and video frame
    assert summary["failed"] == [] and summary["fetched"] > 0 and summary["present"] == 0
    folder = lake_dir / media_prefix(synced.project)
    assert Path(summary["media_uri"]) == folder
    checked: dict[str, int] = {}
    skipped = 0
    for stage, body in _snapshots(LocalLake(lake_dir)).items():
        (tmp_path / f"{stage}.json").write_bytes(body)
        coco = COCO(str(tmp_path / f"{stage}.json"))
        for image in coco.dataset["images"]:
            path = folder / image["file_name"]
            if image["file_name"].endswith(".nii"):
                skipped += 1
                assert not path.exists()
                continue
            # every file_name opens from the folder, with the size its COCO entry says
            assert _size_of(path.name, path.read_bytes()) == (image["width"], image["height"]), path
            kind = "video" if "video_title" in image else path.suffix
            checked[kind] = checked.get(kind, 0) + 1
            if kind == "video":  # the frame decoded is the frame named: the emulator greys frame k so
                with Image.open(path) as frame:
                    assert abs(frame.convert("L").getpixel((3, 3)) - video_level(image["encord_frame"])) <= 2
    assert set(checked) == {".jpg", ".png", ".dcm", "video"}, checked
    assert sum(checked.values()) == summary["fetched"]
    assert summary["not_fetched"] == {NIFTI_SLICE: skipped}
    # and image-group members are among them (still images of one label row), each under its own hash
    stills = [i for b in _snapshots(LocalLake(lake_dir)).values() for i in orjson.loads(b)["images"]]
    rows = [i["encord_label_hash"] for i in stills if "image_title" in i]
    group = next(h for h in rows if rows.count(h) > 1)
    members = [i for i in stills if i["encord_label_hash"] == group]
    assert len({i["encord_data_hash"] for i in members}) == len(members) > 1
    assert all((folder / i["file_name"]).is_file() for i in members)
    # and Encord saw reads only, the signed URLs came from the SDK's initialise
    assert [e for e in synced.requests_before if e["write"]] == []
    signed = [e for e in synced.requests_before if e["query_type"] == "labelrow"]
    assert signed and all(e["query_method"] == "GET" for e in signed)
    # and each video was downloaded once, however many of its frames were wanted
    videos = [p for p in synced.emu.media.requests if p.endswith("/video.mp4")]
    assert videos and len(videos) == len(set(videos)) < checked["video"]
    assert "fetched" in err and "media folder" in err


def test_media_again_fetches_nothing_and_verify_fetches_a_damaged_file_anew(
    synced: Synced, tmp_path: Path
) -> None:
    # Given a lake whose media were fetched
    lake_dir = _lake_copy(synced, tmp_path)
    first = synced.first
    requests = len(synced.emu.media.requests)
    # When media runs again
    code, again, err = synced.media(str(lake_dir))
    # Then nothing is downloaded
    assert code == 0, err
    assert again["fetched"] == 0 and again["present"] == first["fetched"]
    assert len(synced.emu.media.requests) == requests
    # Given one file damaged and another deleted
    damaged, deleted = [p for p in _stills(lake_dir, synced.project) if p.suffix == ".jpg"][:2]
    good = damaged.read_bytes()
    damaged.write_bytes(good[: len(good) // 2])
    deleted.unlink()
    # When media runs plainly, then with --verify
    code, plain, err = synced.media(str(lake_dir))
    assert code == 0 and plain["fetched"] == 1 and deleted.exists(), err
    code, verified, err = synced.media(str(lake_dir), "--verify")
    # Then the plain run restores the deleted file, the verifying run the damaged one
    assert code == 0 and verified["fetched"] == 1, err
    assert damaged.read_bytes() == good


def test_a_failed_download_is_named_counted_and_exits_1_then_the_next_run_fetches_it(
    synced: Synced, tmp_path: Path
) -> None:
    # Given two still images missing from the lake, and the storage refusing one of them
    lake_dir = _lake_copy(synced, tmp_path)
    refused, other = _stills(lake_dir, synced.project)[:2]
    refused.unlink()
    other.unlink()
    file_name = refused.relative_to(lake_dir / media_prefix(synced.project)).as_posix()
    data_hash = file_name.split("/")[0]
    synced.emu.media.fail(data_hash, 403)
    try:
        # When media runs
        code, summary, err = synced.media(str(lake_dir))
    finally:
        synced.emu.media.fail(data_hash, 0)
    # Then it exits 1 naming the file and why, the other is fetched, and nothing half-written is left
    assert code == 1
    assert [f["file_name"] for f in summary["failed"]] == [file_name]
    assert "HTTP 403" in summary["failed"][0]["reason"] and "signature" not in summary["failed"][0]["reason"]
    assert f"failed: {file_name}" in err and "1 failed" in err
    assert summary["fetched"] == 1 and other.is_file()
    assert not refused.exists() and not list(refused.parent.glob(".tmp-*"))
    # When the storage answers again, the next run fetches just that file
    code, again, err = synced.media(str(lake_dir))
    assert code == 0 and again["fetched"] == 1 and refused.is_file(), err


def test_coco_export_yolo_takes_the_fetched_images_and_supervision_loads_them(
    synced: Synced, tmp_path: Path
) -> None:
    # Given a lake with its media, and the partition with the most still images
    lake_dir = synced.lake_dir
    stage, _ = max(_snapshots(LocalLake(lake_dir)).items(), key=lambda kv: kv[1].count(b'"image_title"'))
    # When it is exported as YOLO
    code, _, err = run_cli(
        "coco", "export", "--format", "yolo", "--lake", str(lake_dir), "--project", synced.project,
        "--stage", stage, "--out", str(tmp_path / "yolo"),
    )  # fmt: skip
    # Then every image a YOLO reader takes is there, and supervision loads the dataset with its images
    assert code == 0, err
    assert "not in the lake's media folder" not in err and "video frames without" not in err
    images = sorted((tmp_path / "yolo/images/train").iterdir())
    assert images and f"{len(images)} images" in err
    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(tmp_path / "yolo/images/train"),
        annotations_directory_path=str(tmp_path / "yolo/labels/train"),
        data_yaml_path=str(tmp_path / "yolo/data.yaml"),
    )
    assert len(dataset) == len(images)
    for path, image, _ in dataset:
        assert image.shape[:2] == Image.open(path).size[::-1]


def test_media_into_an_s3_lake(
    synced: Synced,
    aws_env: dict[str, str],
    aws_client: Callable[[str], Any],
) -> None:
    # Given the lake as sync left it copied to a bucket on a local S3 (moto), and its stage with the most
    # still images and no video
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    s3 = aws_client("s3")
    s3.create_bucket(Bucket=bucket)
    before = synced.lake_dir.parent / "synced"
    for path in before.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            key = f"lake/{path.relative_to(before).as_posix()}"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    stages = {k: b for k, b in _snapshots(LocalLake(before)).items() if b'"video_title"' not in b}
    stage = max(stages, key=lambda k: stages[k].count(b'"image_title"'))
    # When media runs against s3://bucket/lake, twice
    code, summary, err = synced.media(f"s3://{bucket}/lake", "--stage", stage)
    code_again, again, _ = synced.media(f"s3://{bucket}/lake", "--stage", stage)
    # Then the objects are in the bucket's media prefix, and the second run fetches nothing
    assert code == 0 and code_again == 0, err
    lake = S3ObjectStore(bucket, "lake", s3)
    keys = [k for k in lake.list_keys(media_prefix(synced.project)) if not k.endswith("_index.jsonl")]
    assert len(keys) == summary["fetched"] > 0 and summary["partitions"] == [stage]
    assert again["fetched"] == 0 and again["present"] == summary["fetched"]
    for key in keys:
        body = lake.get(key).body  # type: ignore[union-attr]
        assert body == (synced.lake_dir / key).read_bytes()  # the same bytes as the local lake's
    assert summary["media_uri"] == f"s3://{bucket}/lake/{media_prefix(synced.project).rstrip('/')}"


def test_media_without_a_snapshot_or_a_key_exits_2_naming_what_is_missing(
    synced: Synced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake_dir = synced.lake_dir
    # When a stage without a snapshot is asked for
    code, _, err = synced.media(str(lake_dir), "--stage", "no-such-stage")
    assert code == 2 and "--stage no-such-stage" in err
    # When no key is given anywhere
    monkeypatch.delenv("ENCORD_SSH_KEY_FILE", raising=False)
    monkeypatch.delenv("ENCORD_SSH_KEY", raising=False)
    code, _, err = run_cli("media", "--lake", str(lake_dir), "--project", synced.project)
    assert code == 2 and "--ssh-key" in err and "ENCORD_SSH_KEY_FILE" in err
