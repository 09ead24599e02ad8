"""`coco export`: a snapshot as a folder a training job reads as it is.

YOLO is loaded with supervision's real reader (`DetectionDataset.from_yolo`) and checked against the rules
of Ultralytics' loader (`ultralytics/data/utils.py`: `img2label_paths` replaces the last `/images/` with
`/labels/` and the extension with `.txt`; `verify_image_label` wants images of at least 10x10 pixels in
its IMG_FORMATS, five columns per line, coordinates in [-0.01, 1.01], class ids below `nc`; its
`check_det_dataset` wants `train`, `val` and `names` in data.yaml). Ultralytics itself needs torch, which
this machine cannot install, so its rules are checked as its source states them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import supervision as sv
import yaml
from PIL import Image

from encord_emulator.generate import generate
from encord_mirror.coco.convert import convert
from encord_mirror.coco.export import YOLO_IMAGE_FORMATS, export_coco, export_yolo


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gen")
    (project,) = generate(out, 60, seed=5)
    ontology = orjson.loads((out / project / "project.json").read_bytes())["ontology"]
    rows = [orjson.loads(line) for line in (out / project / "rows.jsonl").read_bytes().splitlines()]
    main = [r["row"] for r in rows if r["row"]["branch_name"] == "main"]
    return dict(orjson.loads(orjson.dumps(convert(main, ontology, encord_compatible=False))))


def _media(coco: dict[str, Any]) -> dict[str, bytes]:
    """An image of each COCO image's size and format, as the media step would have fetched it."""
    out = {}
    for image in coco["images"]:
        ext = image["file_name"].rsplit(".", 1)[-1].lower()
        if ext not in ("jpg", "jpeg", "png") or not image["width"]:
            continue
        buffer = io.BytesIO()
        Image.new("RGB", (image["width"], image["height"]), "gray").save(
            buffer, "JPEG" if ext in ("jpg", "jpeg") else "PNG"
        )
        out[image["file_name"]] = buffer.getvalue()
    return out


def _ultralytics_problems(root: Path) -> list[str]:
    """What Ultralytics' loader would refuse or miss, by the rules of its source (module docstring)."""
    data = yaml.safe_load((root / "data.yaml").read_text())
    problems = [f"data.yaml lacks {k}" for k in ("train", "val", "names") if k not in data]
    images = sorted(p for p in (root / data["train"]).rglob("*") if p.is_file())
    for image in images:
        if image.suffix[1:].lower() not in YOLO_IMAGE_FORMATS:
            problems.append(f"{image}: not an image format")
        sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
        label = Path(sb.join(str(image).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")
        if not label.is_file():
            problems.append(f"{image}: no label file {label}")
            continue
        with Image.open(image) as im:
            if min(im.size) < 10 or im.format.lower() not in YOLO_IMAGE_FORMATS:
                problems.append(f"{image}: {im.format} {im.size}")
        for line in label.read_text().splitlines():
            values = [float(v) for v in line.split()]
            if len(values) != 5 or not (0 <= values[0] < len(data["names"])):
                problems.append(f"{label}: line {line!r}")
            elif max(values[1:]) > 1.01 or min(values[1:]) < -0.01:
                problems.append(f"{label}: not normalised: {line!r}")
    return problems


def test_yolo_export_loads_in_supervision_with_the_snapshots_boxes(
    coco: dict[str, Any], tmp_path: Path
) -> None:
    # Given a corrected-mode snapshot of every shape, and its images in the media folder but one
    media = _media(coco)
    media.pop(sorted(media)[0])
    # When it is exported as YOLO
    summary = export_yolo(coco, tmp_path / "yolo", media.get, title="test")
    # Then Ultralytics' loader rules hold, and supervision's YOLO reader loads every image
    assert _ultralytics_problems(tmp_path / "yolo") == []
    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(tmp_path / "yolo/images/train"),
        annotations_directory_path=str(tmp_path / "yolo/labels/train"),
        data_yaml_path=str(tmp_path / "yolo/data.yaml"),
    )
    assert dataset.classes == [c["name"] for c in coco["categories"]]
    assert len(dataset) == summary.images == len(media) and summary.missing_media == 1
    # And each image's boxes and classes are the snapshot's (clipped to the image)
    by_name = {i["file_name"].replace("/", "_"): i for i in coco["images"]}
    classes = {c["id"]: n for n, c in enumerate(coco["categories"])}
    loaded = 0
    for path, _image, detections in dataset:
        image = by_name[Path(path).name]
        w, h = image["width"], image["height"]
        want = sorted(
            (classes[a["category_id"]], max(0, a["bbox"][0]), max(0, a["bbox"][1]),
             min(w, a["bbox"][0] + a["bbox"][2]), min(h, a["bbox"][1] + a["bbox"][3]))
            for a in coco["annotations"] if a["image_id"] == image["id"]
        )  # fmt: skip
        got = sorted(zip(detections.class_id.tolist(), *detections.xyxy.T.tolist(), strict=True))
        assert [g[0] for g in got] == [x[0] for x in want]
        assert np.allclose([g[1:] for g in got], [x[1:] for x in want], atol=1e-3 * max(w, h))
        loaded += len(got)
    assert loaded > 50
    assert set(summary.skipped) == {
        "not an image format YOLO reads (.dcm)",
        "not an image format YOLO reads (.nii)",
    }


def test_coco_export_is_the_snapshot_with_its_images_under_their_file_names(
    coco: dict[str, Any], tmp_path: Path
) -> None:
    # Given a snapshot and its images
    media = _media(coco)
    # When it is exported as COCO
    summary = export_coco(coco, tmp_path / "coco", media.get)
    # Then annotations.json is the snapshot, and each fetched image is at images/<file_name>
    assert orjson.loads((tmp_path / "coco/annotations.json").read_bytes()) == coco
    assert summary.images == len(media)
    for file_name, body in media.items():
        assert (tmp_path / "coco/images" / file_name).read_bytes() == body
