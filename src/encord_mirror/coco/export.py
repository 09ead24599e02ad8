"""A snapshot as a folder a training job reads as it is: COCO (`annotations.json` + `images/`) or YOLO
(Ultralytics' layout: `images/train/`, `labels/train/*.txt`, `data.yaml`).

The images come from the lake's media folder (`media/project=<p>/<file_name>`, filled by `encord-mirror
media`); an image that is not there is counted, its labels still written.

YOLO: one line `class cx cy w h` per annotation, normalised to the image size and clipped to it (boxes
only: Ultralytics reads a file with any polygon line as all polygons, and masks with holes have no polygon
form without contour tracing); the class is the category's index in `categories`. File names are
flattened to `<data_hash>_<frame>.<ext>`, since Ultralytics and supervision find a label by the image's
stem in one folder. Only the image formats Ultralytics trains on are exported (not DICOM or NIfTI).
There is one split, `train`, which `data.yaml` also names as `val`: split it as your evaluation needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# Ultralytics' IMG_FORMATS that COCO images here can have.
YOLO_IMAGE_FORMATS = frozenset({"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"})
EXPORT_FORMATS = ("coco", "yolo")

MediaReader = Callable[[str], bytes | None]  # file_name -> the image's bytes, None when not fetched


@dataclass(slots=True)
class ExportSummary:
    images: int = 0  # images written with their bytes
    missing_media: int = 0  # images whose bytes the media folder does not hold (labels still written)
    missing_video: int = 0  # of which video frames (the media step decodes them only with PyAV)
    labels: int = 0  # annotations written (YOLO: box lines)
    skipped: dict[str, int] = field(default_factory=dict)  # what was left out, and why

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def missed(self, image: Mapping[str, Any]) -> None:
        self.missing_media += 1
        self.missing_video += "video_title" in image


def _write(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def export_coco(coco: Mapping[str, Any], out: Path, media: MediaReader) -> ExportSummary:
    """`out/annotations.json` (the snapshot's COCO as it is) and `out/images/<file_name>`."""
    summary = ExportSummary(labels=len(coco["annotations"]))
    for image in coco["images"]:
        body = media(image["file_name"])
        if body is None:
            summary.missed(image)
            continue
        _write(out / "images" / image["file_name"], body)
        summary.images += 1
    _write(out / "annotations.json", orjson.dumps(coco, option=orjson.OPT_APPEND_NEWLINE))
    return summary


def yolo_name(file_name: str) -> str:
    """`<data_hash>/<frame>.<ext>` as one flat name."""
    return file_name.replace("/", "_")


def yolo_line(cls: int, bbox: list[float], width: int, height: int) -> str | None:
    """`cls cx cy w h` normalised and clipped to the image; None when nothing of the box is inside it."""
    x0, y0 = max(0.0, bbox[0]), max(0.0, bbox[1])
    x1, y1 = min(float(width), bbox[0] + bbox[2]), min(float(height), bbox[1] + bbox[3])
    if x1 <= x0 or y1 <= y0:
        return None
    cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
    return f"{cls} {cx:.6f} {cy:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


def export_yolo(coco: Mapping[str, Any], out: Path, media: MediaReader, *, title: str) -> ExportSummary:
    """Ultralytics' detection layout under `out` (see the module docstring)."""
    summary = ExportSummary()
    classes = {c["id"]: index for index, c in enumerate(coco["categories"])}
    by_image: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    for image in coco["images"]:
        name = yolo_name(str(image["file_name"]))
        stem, _, ext = name.rpartition(".")
        width, height = image.get("width") or 0, image.get("height") or 0
        if ext.lower() not in YOLO_IMAGE_FORMATS:
            summary.skip(f"not an image format YOLO reads (.{ext})")
            continue
        if width <= 0 or height <= 0:
            summary.skip("image without a size")
            continue
        lines = []
        for ann in by_image.get(image["id"], ()):
            line = yolo_line(classes[ann["category_id"]], ann["bbox"], width, height)
            if line is None:
                summary.skip("box outside its image")
                continue
            lines.append(line)
        _write(out / "labels" / "train" / f"{stem}.txt", "".join(f"{line}\n" for line in lines).encode())
        summary.labels += len(lines)
        body = media(str(image["file_name"]))
        if body is None:
            summary.missed(image)
        else:
            _write(out / "images" / "train" / name, body)
            summary.images += 1
    names = [str(c["name"]) for c in coco["categories"]]
    # JSON strings and lists are YAML flow scalars and sequences: no YAML writer needed.
    data_yaml = "\n".join(
        [
            f"# {title}",
            f"path: {orjson.dumps(str(out.resolve())).decode()}",
            "train: images/train",
            "val: images/train",
            f"nc: {len(names)}",
            f"names: {orjson.dumps(names).decode()}",
            "",
        ]
    )
    _write(out / "data.yaml", data_yaml.encode())
    return summary
