"""Encord label rows (`LabelRowV2.to_encord_dict()`) + ontology (`OntologyStructure.to_dict()`) to COCO.

Plain dicts only: no encord, opencv or shapely import (the Lambda package has none of them, and importing
encord alone takes about a second). pycocotools and numpy do the RLE work.

Two modes:

* `encord_compatible=True` gives what `encord.utilities.coco.exporter.CocoExporter(rows, ontology).export()`
  gives, quirks included (tests/unit/test_coco_parity.py runs CocoExporter on the same rows).
* `encord_compatible=False` corrects CocoExporter where it is wrong, and only there:
  1. dynamic attribute answers come from each annotation's own row and frame (CocoExporter reads the
     `object_actions` of the first row it annotates, for every row, and looks them up by image id instead of
     frame number, so other rows get no dynamic answers and videos get the wrong frame's);
  2. skeleton points keep their visibility (`"visibility": "invisible" | "occluded" | "selfOccluded"`, as
     the SDK writes it; CocoExporter reads `"invisible": true` keys that the SDK never writes, so every point
     comes out visible);
  3. answers to nested attributes (under a radio option) are kept (CocoExporter drops them);
  4. what training and evaluation tools need (CocoExporter's output loses labels in all of them):
     every annotation is `iscrowd: 0` (detectron2, Ultralytics' converter and COCOeval skip crowd
     regions; CocoExporter marks every bitmask and multi-part polygon a crowd): a multi-part polygon is a
     list of polygon parts, one with holes (which COCO polygons cannot express) and a bitmask an RLE;
     ids start at 1 (COCOeval takes a matched id 0 for "unmatched"); every box has a size of at least one
     pixel and every segmentation decodes with pycocotools' `annToMask`: a point is a 1x1 pixel square
     around it, a polyline a one-pixel-wide strip along each segment, a skeleton the box around its points;
     points and skeletons are COCO keypoints, their categories with `keypoints` (names) and `skeleton`
     (1-based edges) lists;
  5. `file_name`s are unique and name where the media step puts the bytes
     (`media/project=<p>/<data_hash>/<frame>.<ext>`), and every image carries `encord_data_hash`,
     `encord_frame`, `encord_data_link` and, in an image group, `encord_label_hash` (the row a member
     belongs to).

The row-level functions (`row_images`, `row_annotations`) are shared with the snapshot builder, which gives
ids of its own so that they survive incremental refresh.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pycocotools import mask as cocomask

from encord_mirror.coco.raster import Painting, RowMajorRuns, coco_rle_counts, decode_rle_string
from encord_mirror.domain.models import JsonDict

PDF_MIME_TYPES = frozenset({"application/pdf"})
TEXT_MIME_TYPES = frozenset({"application/json", "application/xml", "text/plain", "text/html", "text/xml"})
DICOM_MIME_TYPE = "application/dicom"
NIFTI_MIME_TYPES = frozenset({"application/nifti1", "application/nifti2"})
ROOT_SPACE_ID = "root"
_NOT_COCO_SHAPES = frozenset({"audio", "text"})
_FRAME_ROW_TYPES = frozenset({"video", "dicom", "nifti"})

ImageKey = tuple[str, int]  # (data_hash, frame)
UnitKind = Literal["dicom", "nifti", "video", "image", "none"]


class RowOntologyMismatchError(ValueError):
    """A label row holds an object whose feature hash the ontology does not have."""

    def __init__(self, label_hash: str | None, data_title: str | None, feature_hash: str) -> None:
        super().__init__(
            f"label row {label_hash!r} ({data_title!r}) has an object with feature hash {feature_hash!r}, "
            "which the ontology does not define: export the ontology of the rows' project"
        )
        self.label_hash = label_hash
        self.data_title = data_title
        self.feature_hash = feature_hash


@dataclass(frozen=True, slots=True)
class _Attribute:
    name: str
    kind: str  # radio | checklist | text | numeric
    dynamic: bool
    option_labels: tuple[str, ...]


@dataclass(slots=True)
class Ontology:
    """The parts of `OntologyStructure.to_dict()` the converter needs, indexed once."""

    categories: list[JsonDict]
    category_ids: dict[str, int]  # object feature hash -> COCO category id
    flat_attributes: dict[str, _Attribute]  # top-level attributes of every object, by feature hash
    nested_attributes: dict[str, _Attribute]  # attributes under radio options, by feature hash
    object_attributes: dict[str, list[_Attribute]] = field(default_factory=dict)
    # skeleton object feature hash -> its template's point feature hashes, in the template's order
    skeleton_points: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the corrected mode's categories: COCO keypoint lists on point and skeleton categories
    corrected_categories: list[JsonDict] = field(default_factory=list)

    def coco_categories(self, *, encord_compatible: bool) -> list[JsonDict]:
        return self.categories if encord_compatible else self.corrected_categories

    @classmethod
    def from_dict(cls, ontology: Mapping[str, Any]) -> Ontology:
        categories: list[JsonDict] = []
        category_ids: dict[str, int] = {}
        flat: dict[str, _Attribute] = {}
        nested: dict[str, _Attribute] = {}
        per_object: dict[str, list[_Attribute]] = {}
        for obj in ontology.get("objects") or []:
            attrs = [_attribute(a) for a in obj.get("attributes") or []]
            for raw, attr in zip(obj.get("attributes") or [], attrs, strict=True):
                flat[raw["featureNodeHash"]] = attr
                _collect_nested(raw, nested)
            # Like CocoExporter: the first object with a feature hash owns its attributes.
            per_object.setdefault(obj["featureNodeHash"], attrs)
            if obj["shape"] in _NOT_COCO_SHAPES:
                continue
            category_id = len(categories) + 1  # 0 is the background of COCO stuff masks
            category: JsonDict = {"supercategory": obj["shape"], "id": category_id, "name": obj["name"]}
            if obj["shape"] == "point":
                category["keypoints"] = "keypoint"
                category["skeleton"] = []
            categories.append(category)
            category_ids[obj["featureNodeHash"]] = category_id
        templates = {
            t["template"].get("feature_node_hash"): t["template"]
            for t in ontology.get("skeleton_templates") or []
            if isinstance(t, Mapping) and isinstance(t.get("template"), Mapping)
        }
        skeleton_points: dict[str, tuple[str, ...]] = {}
        corrected = list(categories)
        for obj in ontology.get("objects") or []:
            cid = category_ids.get(obj["featureNodeHash"])
            if cid is None or obj["shape"] not in ("point", "skeleton"):
                continue
            category = dict(categories[cid - 1])
            if obj["shape"] == "point":
                category["keypoints"], category["skeleton"] = [obj["name"]], []
            else:
                names, points, edges = _skeleton_template(templates.get(obj["featureNodeHash"]))
                skeleton_points.setdefault(obj["featureNodeHash"], points)
                category["keypoints"], category["skeleton"] = names, edges
            corrected[cid - 1] = category
        return cls(categories, category_ids, flat, nested, per_object, skeleton_points, corrected)


def _skeleton_template(
    template: Mapping[str, Any] | None,
) -> tuple[list[str], tuple[str, ...], list[list[int]]]:
    """A skeleton template's point names and feature hashes in its order, and its edges as COCO's 1-based
    index pairs."""
    if not template:
        return [], (), []
    points = template.get("skeleton") or {}
    order = sorted(points, key=int)
    index = {key: i + 1 for i, key in enumerate(order)}
    edges = [
        [index[a], index[b]]
        for a, targets in (template.get("skeletonEdges") or {}).items()
        for b in targets
        if a in index and b in index
    ]
    return [points[k]["name"] for k in order], tuple(points[k]["featureHash"] for k in order), edges


def _attribute(raw: Mapping[str, Any]) -> _Attribute:
    labels = tuple(o["label"] for o in raw.get("options") or []) if raw["type"] == "checklist" else ()
    return _Attribute(raw["name"], raw["type"], bool(raw.get("dynamic", False)), labels)


def _collect_nested(raw: Mapping[str, Any], out: dict[str, _Attribute]) -> None:
    for option in raw.get("options") or []:
        for child in option.get("options") or []:
            if "type" in child:
                out[child["featureNodeHash"]] = _attribute(child)
                _collect_nested(child, out)


@dataclass(slots=True)  # not frozen: a frozen dataclass is three times slower to build
class ImageEntry:
    key: ImageKey
    body: JsonDict  # the COCO image without its id
    width: int
    height: int


@dataclass(slots=True)
class AnnotationEntry:
    image_key: ImageKey
    object_hash: str
    body: JsonDict  # the COCO annotation; `id` and `attributes.track_id` are set by the caller


def unit_kind(data_type: str, row_type: str) -> UnitKind:
    """What a data unit holds, from its MIME type and its row's data type, tested in CocoExporter's order
    ("none": audio, text and PDF, which have no COCO images)."""
    if DICOM_MIME_TYPE in data_type:
        return "dicom"
    if data_type in NIFTI_MIME_TYPES:
        return "nifti"
    if data_type in PDF_MIME_TYPES or data_type in TEXT_MIME_TYPES or row_type.upper() == "AUDIO":
        return "none"
    return "video" if "video" in data_type else "image"


def _is_frame_row(row: Mapping[str, Any]) -> bool:
    return str(row["data_type"]).lower() in _FRAME_ROW_TYPES and ROOT_SPACE_ID not in (
        row.get("spaces") or {}
    )


def _classification_frames(row: Mapping[str, Any]) -> list[int]:
    frames: list[int] = []
    for answer in (row.get("classification_answers") or {}).values():
        if not answer.get("featureHash"):
            continue
        for start, end in answer.get("range") or []:
            frames.extend(range(start, end + 1))
    return frames


def row_images(row: Mapping[str, Any], *, encord_compatible: bool) -> list[ImageEntry]:
    """The COCO images of one row, in CocoExporter's order (one per image, labelled frame, DICOM slice,
    classification-only frame; none for audio, text and PDF)."""
    out = _compatible_images(row)
    if not encord_compatible:
        label_hash = row.get("label_hash")
        units = row["data_units"]
        for entry in out:
            data_hash, frame = entry.key
            unit = units.get(data_hash) or {}
            body = entry.body
            mime = str(unit.get("data_type") or "")
            body["file_name"] = media_file_name(data_hash, frame, mime, str(row["data_type"]), body)
            body["encord_data_hash"] = data_hash
            body["encord_frame"] = frame
            body["encord_data_link"] = unit.get("data_link")
            body["encord_label_hash"] = label_hash
    return out


_MEDIA_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/tiff": "tiff"}


def media_file_name(
    data_hash: str, frame: int, mime_type: str, row_type: str, body: Mapping[str, Any]
) -> str:
    """`<data_hash>/<frame>.<ext>`: unique per (data unit, frame), relative to the media folder the
    `media` step fills (README "Training from a snapshot"). Video frames are JPEG; a DICOM slice keeps its
    own file (`.dcm`); an image keeps its extension (its MIME type's, or its title's)."""
    kind = unit_kind(mime_type, row_type)
    if kind == "video":
        ext = "jpg"
    elif kind == "dicom" or row_type.lower() == "dicom":
        ext = "dcm"
    elif kind == "nifti" or row_type.lower() == "nifti":
        ext = "nii"
    else:
        title = str(body.get("image_title") or "")
        ext = _MEDIA_EXTENSIONS.get(mime_type) or (title.rsplit(".", 1)[-1] if "." in title else "")
        ext = "".join(c for c in ext.lower() if c.isalnum()) or "img"
    return f"{data_hash}/{frame}.{ext}"


def _compatible_images(row: Mapping[str, Any]) -> list[ImageEntry]:
    out: list[ImageEntry] = []
    row_type = str(row["data_type"])
    extra_frames = _classification_frames(row) if _is_frame_row(row) else []
    for unit in row["data_units"].values():
        labels = unit["labels"]
        if extra_frames:
            labels = dict(labels)
            for frame in extra_frames:
                labels.setdefault(str(frame), {"objects": [], "classifications": []})
        kind = unit_kind(unit["data_type"], row_type)
        data_hash = unit["data_hash"]
        if kind == "dicom":
            for key, label in labels.items():
                out.append(_dicom_image(data_hash, int(key), unit, label))
        elif kind == "nifti":
            for key in labels:
                body = {
                    "coco_url": unit["data_link"],
                    "file_name": f"nifti/{data_hash}/{int(key)}",
                    "height": unit["height"],
                    "width": unit["width"],
                }
                out.append(_entry((data_hash, int(key)), body))
        elif kind == "none":
            continue
        elif kind == "image":
            title = unit["data_title"]
            body = {
                "coco_url": unit["data_link"],
                "image_title": title,
                "file_name": f"images/{data_hash}.{title.split('.')[-1]}",
                "height": unit["height"],
                "width": unit["width"],
            }
            out.append(_entry((data_hash, 0), body))
        else:
            link, title, height, width = unit["data_link"], unit["data_title"], unit["height"], unit["width"]
            size_w, size_h = max(1, width or 0), max(1, height or 0)
            for key in labels:
                frame = int(key)
                body = {
                    "coco_url": link,
                    "video_title": title,
                    "file_name": f"videos/{data_hash}/{frame}.jpg",
                    "height": height,
                    "width": width,
                }
                out.append(ImageEntry((data_hash, frame), body, size_w, size_h))
    return out


def _dicom_image(data_hash: str, frame: int, unit: Mapping[str, Any], label: Mapping[str, Any]) -> ImageEntry:
    metadata = label.get("metadata")
    if metadata:
        file_name = f"dicom/{data_hash}/{metadata['dicom_instance_uid']}"
        if metadata.get("multiframe_frame_number") is not None:
            file_name += f"/{metadata['multiframe_frame_number']}"
        body = {
            "coco_url": metadata["file_uri"],
            "file_name": file_name,
            "height": metadata["height"],
            "width": metadata["width"],
        }
    else:
        body = {
            "coco_url": "",
            "file_name": f"dicom/{data_hash}/{frame}",
            "height": unit["height"],
            "width": unit["width"],
        }
    return _entry((data_hash, frame), body)


def _entry(key: ImageKey, body: JsonDict) -> ImageEntry:
    # Non-geometric data (and a missing size) still rasterise on a 1x1 canvas, as in CocoExporter.
    return ImageEntry(key, body, max(1, body.get("width") or 0), max(1, body.get("height") or 0))


def _row_frames(row: Mapping[str, Any]) -> Iterator[tuple[ImageKey, list[JsonDict]]]:
    """Every (image, objects on it), in CocoExporter's annotation order."""
    row_type = str(row["data_type"])
    for unit in row["data_units"].values():
        data_hash, data_type = unit["data_hash"], unit["data_type"]
        kind = unit_kind(data_type, row_type)
        # CocoExporter tests for a video before it skips an audio row's units, here only.
        if kind in ("video", "dicom", "nifti") or "video" in data_type:
            for frame, item in unit["labels"].items():
                yield (data_hash, int(frame)), item.get("objects") or []
        elif kind == "none":
            continue
        else:
            yield (data_hash, 0), unit["labels"].get("objects") or []


# How an annotation finds its dynamic attribute answers: (object_hash, frame, image_id) -> answers.
DynamicLookup = Callable[[str, int, int], Mapping[str, Any] | None]


class Converter:
    """Turns one object of a row into a COCO annotation, in either mode (see the module docstring)."""

    def __init__(self, ontology: Ontology, *, encord_compatible: bool) -> None:
        self.ontology = ontology
        self.compatible = encord_compatible
        # (feature hash, dynamic) -> the (key, default) pairs of the object's attributes, in order
        self._defaults: dict[tuple[str, bool], tuple[tuple[str, bool | None], ...]] = {}

    # -- classifications -------------------------------------------------------------------------
    def answer(self, attr: _Attribute, answers: Any) -> dict[str, Any]:
        if attr.kind == "radio":
            return {attr.name: answers[0]["name"]}
        if attr.kind == "checklist":
            chosen = {a["name"] for a in answers}
            return {label: label in chosen for label in attr.option_labels}
        if attr.kind in ("text", "numeric"):
            return {attr.name: answers}
        return {}

    def answers(self, entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for entry in entries:
            attr = self.ontology.flat_attributes.get(entry["featureHash"])
            if attr is None and not self.compatible:
                attr = self.ontology.nested_attributes.get(entry["featureHash"])
            if attr is not None:
                out.update(self.answer(attr, entry["answers"]))
        return out

    def add_defaults(self, feature_hash: str, out: dict[str, Any], *, dynamic: bool) -> None:
        defaults = self._defaults.get((feature_hash, dynamic))
        if defaults is None:
            defaults = self._defaults[feature_hash, dynamic] = self._collect_defaults(feature_hash, dynamic)
        for key, value in defaults:
            out.setdefault(key, value)

    def _collect_defaults(self, feature_hash: str, dynamic: bool) -> tuple[tuple[str, bool | None], ...]:
        out: list[tuple[str, bool | None]] = []
        for attr in self.ontology.object_attributes.get(feature_hash, ()):
            if attr.dynamic != dynamic:
                continue
            if attr.kind == "checklist":
                out.extend((label, False) for label in attr.option_labels)
            else:
                out.append((attr.name, None))
        return tuple(out)

    def dynamic_map(self, object_actions: Mapping[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
        out: dict[tuple[int, str], dict[str, Any]] = {}
        for object_hash, payload in object_actions.items():
            for action in payload["actions"]:
                attr = self.ontology.flat_attributes.get(action["featureHash"])
                if attr is None and not self.compatible:
                    attr = self.ontology.nested_attributes.get(action["featureHash"])
                if attr is None:
                    continue
                answered = self.answer(attr, action["answers"])
                for start, end in action["range"]:
                    for frame in range(start, end + 1):
                        out.setdefault((frame, object_hash), {}).update(answered)
        return out

    def classifications(
        self,
        obj: Mapping[str, Any],
        frame: int,
        image_id: int,
        object_answers: Mapping[str, Any],
        dyn: DynamicLookup,
        static: dict[tuple[str, str], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """`static` caches an object's own answers for the other frames of its row (a video's object
        is on many)."""
        object_hash, feature_hash = obj["objectHash"], obj["featureHash"]
        known = None if static is None else static.get((object_hash, feature_hash))
        if known is None:
            known = self.answers(object_answers[object_hash]["classifications"])
            self.add_defaults(feature_hash, known, dynamic=False)
            if static is not None:
                static[object_hash, feature_hash] = known
        out = dict(known)
        dynamic = dict(dyn(object_hash, frame, image_id) or {})
        self.add_defaults(feature_hash, dynamic, dynamic=True)
        out.update(dynamic)
        return out

    # -- shapes ----------------------------------------------------------------------------------
    def annotation(
        self,
        obj: Mapping[str, Any],
        image: ImageEntry,
        image_id: int,
        row: Mapping[str, Any],
        dyn: DynamicLookup,
        masks: MaskBatch,
        static: dict[tuple[str, str], dict[str, Any]] | None = None,
    ) -> JsonDict | None:
        """The annotation of `obj`; an RLE mask's segmentation, box and area are filled in by `masks`."""
        shape = obj["shape"]
        if shape not in _COCO_SHAPES:
            return None  # shapes COCO has no form for (cuboids, audio and text ranges, ...): skipped
        geometry = (
            self._compatible_geometry(obj, image.width, image.height)
            if self.compatible
            else _corrected_geometry(obj, image.width, image.height, self.ontology.skeleton_points, self)
        )
        category_id = self.ontology.category_ids.get(obj["featureHash"])
        if category_id is None:
            raise RowOntologyMismatchError(row.get("label_hash"), row.get("data_title"), obj["featureHash"])
        frame = image.key[1]
        classifications = self.classifications(obj, frame, image_id, row["object_answers"], dyn, static)
        attributes: JsonDict = {"track_id": None, "encord_track_uuid": obj["objectHash"]}
        if geometry.rotation is not None:
            attributes["rotation"] = geometry.rotation
        attributes["classifications"] = classifications
        if obj.get("manualAnnotation") is not None:
            attributes["manual_annotation"] = obj["manualAnnotation"]
        body: JsonDict = {
            "area": float(geometry.area),
            "bbox": [float(v) for v in geometry.bbox],
            "category_id": category_id,
            "image_id": image_id,
            "iscrowd": geometry.is_crowd,
            "segmentation": geometry.segmentation,
            "keypoints": geometry.keypoints,
            "num_keypoints": geometry.num_keypoints,
            "id": None,
            "attributes": attributes,
        }
        if geometry.mask is not None:
            masks.add(body, geometry.mask)
        return body

    def _compatible_geometry(self, obj: Mapping[str, Any], w: int, h: int) -> _Geometry:
        """CocoExporter's geometry, quirks included (crowd masks, zero-size point boxes, ...)."""
        shape = obj["shape"]
        if shape in ("bounding_box", "rotatable_bounding_box"):
            box = obj["boundingBox" if shape == "bounding_box" else "rotatableBoundingBox"]
            x, y, bw, bh = box["x"] * w, box["y"] * h, box["w"] * w, box["h"] * h
            rotation = float(box["theta"]) if shape == "rotatable_bounding_box" else None
            segmentation = [_floats([x, y, x + bw, y, x + bw, y + bh, x, y + bh])]
            return _Geometry(segmentation, [x, y, bw, bh], bw * bh, rotation=rotation)
        if shape == "polygon":
            polygons = obj.get("polygons")
            if polygons and (len(polygons) > 1 or len(polygons[0]) > 1):
                return _Geometry(None, [], 0.0, is_crowd=1, mask=_multipolygon(polygons, w, h))
            points = _points(obj["polygon"], w, h)
            return _Geometry([_floats(c for p in points for c in p)], _bounds(points), polygon_area([points]))
        if shape == "polyline":
            points = _points(obj["polyline"], w, h)
            flat = [c for p in points for c in p]
            segmentation = [_floats(flat + [c for p in reversed(points) for c in p])]
            if len(points) == 2:
                (x0, y0), (x1, y1) = points
                bbox = [float(min(x0, x1)), float(min(y0, y1)), float(abs(x0 - x1)), float(abs(y0 - y1))]
            else:
                bbox = _bounds(points)
            return _Geometry(segmentation, bbox, 0.0)
        if shape == "bitmask":
            return _Geometry(None, [], 0.0, is_crowd=1, mask=_bitmask(obj["bitmask"]))
        if shape == "point":
            x, y = obj["point"]["0"]["x"] * w, obj["point"]["0"]["y"] * h
            return _Geometry([[float(x), float(y)]], [x, y, 0.0, 0.0], 0.0, [float(x), float(y), 2.0], 1)
        keypoints: list[float] = []
        for point in obj["skeleton"].values():
            keypoints += [float(point["x"] * w), float(point["y"] * h), float(self.visibility(point))]
        xs, ys = keypoints[::3], keypoints[1::3]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return _Geometry([], bbox, 0.0, keypoints, len(keypoints) // 3)

    def visibility(self, point: Mapping[str, Any]) -> int:
        flags = point if self.compatible else {str(point.get("visibility")): True, **point}
        if flags.get("invisible") is True:
            return 0
        if flags.get("occluded") is True or flags.get("selfOccluded") is True:
            return 1
        return 2


_COCO_SHAPES = frozenset(
    {"bounding_box", "rotatable_bounding_box", "polygon", "polyline", "bitmask", "point", "skeleton"}
)


@dataclass(slots=True)
class _Geometry:
    """An annotation's shape fields; `mask` (an RLE still to compute) fills segmentation, bbox and area."""

    segmentation: Any
    bbox: list[float]
    area: float
    keypoints: list[float] | None = None
    num_keypoints: int | None = None
    is_crowd: int = 0
    mask: Painting | RowMajorRuns | None = None
    rotation: float | None = None


def _corrected_geometry(
    obj: Mapping[str, Any],
    w: int,
    h: int,
    skeleton_points: Mapping[str, tuple[str, ...]],
    converter: Converter,
) -> _Geometry:
    """Geometry every COCO reader keeps (module docstring, correction 4): never a crowd, never a box
    without size, a segmentation `annToMask` decodes."""
    shape = obj["shape"]
    if shape in ("bounding_box", "rotatable_bounding_box"):
        box = obj["boundingBox" if shape == "bounding_box" else "rotatableBoundingBox"]
        x, y, bw, bh = _at_least_a_pixel([box["x"] * w, box["y"] * h, box["w"] * w, box["h"] * h])
        rotation = float(box["theta"]) if shape == "rotatable_bounding_box" else None
        return _Geometry(_box_polygon([x, y, bw, bh]), [x, y, bw, bh], bw * bh, rotation=rotation)
    if shape == "polygon":
        polygons = obj.get("polygons")
        if polygons and any(len(rings) > 1 for rings in polygons):
            return _Geometry(None, [], 0.0, mask=_multipolygon(polygons, w, h))  # holes: an RLE
        if polygons and len(polygons) > 1:
            parts = [[(r[i] * w, r[i + 1] * h) for i in range(0, len(r) - 1, 2)] for (r,) in polygons]
        else:
            parts = [_points(obj["polygon"], w, h)]
        return _parts_geometry(parts)
    if shape == "polyline":
        return _polyline_geometry(_points(obj["polyline"], w, h))
    if shape == "bitmask":
        return _Geometry(None, [], 0.0, mask=_bitmask(obj["bitmask"]))
    if shape == "point":
        x, y = obj["point"]["0"]["x"] * w, obj["point"]["0"]["y"] * h
        bbox = _pixel_of(x, y, w, h)
        return _Geometry(_box_polygon(bbox), bbox, 1.0, [float(x), float(y), 2.0], 1)
    points = list(obj["skeleton"].values())
    order = skeleton_points.get(obj["featureHash"], ())
    by_feature = {p.get("featureHash"): p for p in points}
    if order and set(by_feature) <= set(order) and len(by_feature) == len(points):
        # The category's keypoint order; a template point the object lacks is "not labelled" (0, 0, 0).
        keypoints: list[float] = []
        for feature_hash in order:
            point = by_feature.get(feature_hash)
            keypoints += (
                [0.0, 0.0, 0.0]
                if point is None
                else [float(point["x"] * w), float(point["y"] * h), float(converter.visibility(point))]
            )
    else:
        keypoints = [c for p in points for c in (p["x"] * w, p["y"] * h, float(converter.visibility(p)))]
    labelled = [(x, y) for x, y, v in zip(keypoints[::3], keypoints[1::3], keypoints[2::3], strict=True) if v]
    located = labelled or list(zip(keypoints[::3], keypoints[1::3], strict=True))
    bbox = _at_least_a_pixel(_bounds(located))
    return _Geometry(_box_polygon(bbox), bbox, bbox[2] * bbox[3], keypoints, len(labelled))


def _at_least_a_pixel(bbox: Sequence[float]) -> list[float]:
    """The box grown about its centre to at least one pixel each way (COCOeval's IoU of an empty box is
    undefined, and Ultralytics' converter drops it)."""
    x, y, bw, bh = bbox
    if bw < 1.0:
        x, bw = x - (1.0 - bw) / 2, 1.0
    if bh < 1.0:
        y, bh = y - (1.0 - bh) / 2, 1.0
    return [float(x), float(y), float(bw), float(bh)]


def _pixel_of(x: float, y: float, w: int, h: int) -> list[float]:
    """The pixel a point falls in, as a box (a point on the right or bottom edge is in the last pixel)."""
    return [float(min(max(int(x), 0), max(w - 1, 0))), float(min(max(int(y), 0), max(h - 1, 0))), 1.0, 1.0]


def _box_polygon(bbox: Sequence[float]) -> list[list[float]]:
    x, y, bw, bh = bbox
    return [_floats([x, y, x + bw, y, x + bw, y + bh, x, y + bh])]


def _parts_geometry(parts: Sequence[Sequence[tuple[float, float]]]) -> _Geometry:
    """Polygon parts as COCO polygons; a part with fewer than three vertices (which pycocotools would read
    as a box, or not at all) as the pixel box around it."""
    segmentation: list[list[float]] = []
    area = 0.0
    corners: list[tuple[float, float]] = []
    for part in parts:
        if len(part) >= 3:
            segmentation.append(_floats(c for p in part for c in p))
            area += polygon_area([part])
            corners.extend(part)
        elif part:
            box = _at_least_a_pixel(_bounds(part))
            segmentation += _box_polygon(box)
            area += box[2] * box[3]
            corners += [(box[0], box[1]), (box[0] + box[2], box[1] + box[3])]
    bbox = _at_least_a_pixel(_bounds(corners))
    return _Geometry(segmentation, bbox, area)


def _polyline_geometry(points: Sequence[tuple[float, float]]) -> _Geometry:
    """A polyline as the one-pixel-wide strip along each of its segments (a line has no area to mask)."""
    strips: list[list[tuple[float, float]]] = []
    length = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        dx, dy = x1 - x0, y1 - y0
        norm = (dx * dx + dy * dy) ** 0.5
        if norm == 0.0:
            continue
        nx, ny = -dy / norm / 2, dx / norm / 2
        strips.append([(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)])
        length += norm
    if not strips:
        return _parts_geometry([points[:1]])
    geometry = _parts_geometry(strips)
    geometry.area = length
    return geometry


def _floats(values: Iterable[float]) -> list[float]:
    return [float(v) for v in values]


def _points(coords: Any, w: int, h: int) -> list[tuple[float, float]]:
    if isinstance(coords, list):
        return [(p["x"] * w, p["y"] * h) for p in coords]
    return [(coords[str(i)]["x"] * w, coords[str(i)]["y"] * h) for i in range(len(coords))]


def _bounds(points: Sequence[tuple[float, float]]) -> list[float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _ring_area(ring: Sequence[tuple[float, float]]) -> float:
    """GEOS' shoelace (the operation order shapely uses, so the float comes out bit for bit the same)."""
    closed = list(ring)
    if closed and closed[0] != closed[-1]:
        closed.append(closed[0])
    n = len(closed)
    if n < 3:
        return 0.0
    x0 = closed[0][0]
    total = 0.0
    for i in range(1, n - 1):
        total += (closed[i][0] - x0) * (closed[i - 1][1] - closed[i + 1][1])
    return abs(total / 2.0)


def polygon_area(rings: Sequence[Sequence[tuple[float, float]]]) -> float:
    """A polygon's area: its shell minus its holes, as shapely computes it."""
    if not rings:
        return 0.0
    area = _ring_area(rings[0])
    for hole in rings[1:]:
        area -= _ring_area(hole)
    return area


def _multipolygon(polygons: Sequence[Sequence[Sequence[float]]], w: int, h: int) -> Painting:
    """CocoExporter's mask of a polygon with holes or parts: the largest part first, each part's shell
    painted and its holes cleared, on integer-truncated vertices."""
    parts = []
    for polygon in polygons:
        rings = [[(ring[i] * w, ring[i + 1] * h) for i in range(0, len(ring) - 1, 2)] for ring in polygon]
        parts.append(rings)
    int_rings: list[list[tuple[int, int]]] = []
    values: list[int] = []
    for rings in sorted(parts, key=polygon_area, reverse=True):
        for index, ring in enumerate(rings):
            # int() truncates toward zero, as the exporter's np.int32 cast does.
            int_rings.append([(int(x), int(y)) for x, y in ring])
            values.append(0 if index else 1)
    return Painting(int_rings, values, w, h)


def _bitmask(bitmask: Mapping[str, Any]) -> RowMajorRuns:
    # Encord's RLE runs row-major (COCO's string format), COCO's column-major.
    return RowMajorRuns(decode_rle_string(bitmask["rleString"]), bitmask["width"], bitmask["height"])


class MaskBatch:
    """Annotations whose RLE masks are still to be computed: numpy's cost per call, not per pixel,
    dominates one polygon, so masks are computed many at a time (`flush`). About 32 at a time keeps the
    arrays in cache (measured: 0.30 s at 32, 0.34 s at 64, 0.40 s at 512 for the 1,000-row benchmark)."""

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._pending: list[tuple[JsonDict, Painting | RowMajorRuns]] = []

    def __len__(self) -> int:
        """How many masks are still to be computed (a caller sharing the batch across rows waits for 0)."""
        return len(self._pending)

    def add(self, body: JsonDict, mask: Painting | RowMajorRuns) -> None:
        self._pending.append((body, mask))
        if len(self._pending) >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Fills in `segmentation` (the string `cocomask.encode` gives), `bbox` and `area` of every
        pending annotation."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        done = coco_rle_counts([mask for _, mask in pending])
        rles = cocomask.frPyObjects(
            [
                {"size": [m.height, m.width], "counts": c}
                for (_, m), c in zip(pending, done.counts, strict=True)
            ],
            0,
            0,
        )
        boxes, areas = done.boxes.tolist(), done.areas.tolist()
        for (body, mask), rle, box, area in zip(pending, rles, boxes, areas, strict=True):
            body["segmentation"] = {
                "size": [mask.height, mask.width],
                "counts": rle["counts"].decode("ascii"),
            }
            body["bbox"] = box
            body["area"] = area


def row_annotations(
    converter: Converter,
    row: Mapping[str, Any],
    images: Mapping[ImageKey, ImageEntry],
    image_id: Callable[[ImageKey], int],
    dyn: DynamicLookup | None = None,
    masks: MaskBatch | None = None,
) -> list[AnnotationEntry]:
    """The COCO annotations of one row, in CocoExporter's order; ids are left for the caller to set.
    `dyn` defaults to the row's own dynamic answers by frame (the corrected behaviour). With `masks`,
    RLE masks are left in it for the caller to flush; without, they are computed before returning."""
    if dyn is None:
        own = converter.dynamic_map(row.get("object_actions") or {})

        def dyn(object_hash: str, frame: int, _image_id: int) -> Mapping[str, Any] | None:
            return own.get((frame, object_hash))

    own_masks = MaskBatch()
    static: dict[tuple[str, str], dict[str, Any]] = {}
    out: list[AnnotationEntry] = []
    for key, objects in _row_frames(row):
        image = images.get(key)
        if image is None:
            continue
        iid = image_id(key)
        for obj in objects:
            body = converter.annotation(
                obj, image, iid, row, dyn, own_masks if masks is None else masks, static
            )
            if body is not None:
                out.append(AnnotationEntry(key, obj["objectHash"], body))
    own_masks.flush()
    return out


def make_converter(ontology: Mapping[str, Any] | Ontology, *, encord_compatible: bool) -> Converter:
    index = ontology if isinstance(ontology, Ontology) else Ontology.from_dict(ontology)
    return Converter(index, encord_compatible=encord_compatible)


def info(description: str | None) -> JsonDict:
    return {
        "description": description,
        "contributor": None,
        "date_created": None,
        "url": None,
        "version": None,
        "year": None,
    }


def convert(
    rows: Sequence[Mapping[str, Any]], ontology: Mapping[str, Any], *, encord_compatible: bool = False
) -> JsonDict:
    """Convert label rows to one COCO dict; in compatible mode ids, order and values are CocoExporter's."""
    # The conversion makes many small objects and no cycles: with the cyclic collector on, each of its
    # full passes walks every input row again (about 15% of the time at 1,000 rows).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _convert(rows, ontology, encord_compatible=encord_compatible)
    finally:
        if collecting:
            gc.enable()


def _convert(
    rows: Sequence[Mapping[str, Any]], ontology: Mapping[str, Any], *, encord_compatible: bool
) -> JsonDict:
    converter = make_converter(ontology, encord_compatible=encord_compatible)
    # Image ids: CocoExporter numbers images by the size of its (data_hash, frame) map, so two rows on the
    # same data unit (two branches) share ids in a way only the compatible mode reproduces.
    row_entries = [row_images(row, encord_compatible=encord_compatible) for row in rows]
    images: list[JsonDict] = []
    compat_ids: dict[ImageKey, int] = {}
    own_ids: list[dict[ImageKey, int]] = []
    by_id: dict[int, ImageEntry] = {}
    for entries in row_entries:
        mine: dict[ImageKey, int] = {}
        for entry in entries:
            new_id = len(compat_ids) if encord_compatible else len(images) + 1
            compat_ids[entry.key] = new_id
            mine.setdefault(entry.key, new_id)
            by_id[new_id] = entry
            images.append(_with_id(entry.body, new_id))
        own_ids.append(mine)

    annotations: list[JsonDict] = []
    track_ids: dict[str, int] = {}
    # CocoExporter caches the dynamic answers of the first row it annotates and uses them for every row.
    first_actions: list[dict[tuple[int, str], dict[str, Any]]] = []
    current: list[Mapping[str, Any]] = []

    def compat_dyn(object_hash: str, _frame: int, image_id: int) -> Mapping[str, Any] | None:
        if not first_actions:
            first_actions.append(converter.dynamic_map(current[-1].get("object_actions") or {}))
        return first_actions[0].get((image_id, object_hash))

    # Sizes come from the image that holds the id last, as CocoExporter's scan of its image list does.
    compat_sized = {key: by_id[image_id] for key, image_id in compat_ids.items()}
    masks = MaskBatch()
    for row, entries, mine in zip(rows, row_entries, own_ids, strict=True):
        current.append(row)
        ids = compat_ids if encord_compatible else mine
        sized = compat_sized if encord_compatible else {e.key: e for e in entries}
        dyn = compat_dyn if encord_compatible else None
        for ann in row_annotations(converter, row, sized, ids.__getitem__, dyn, masks):
            ann.body["id"] = len(annotations) + (0 if encord_compatible else 1)
            ann.body["attributes"]["track_id"] = track_ids.setdefault(ann.object_hash, len(track_ids))
            annotations.append(ann.body)
    masks.flush()
    return {
        "info": info(str(rows[0]["data_title"]) if rows else None),
        "categories": converter.ontology.coco_categories(encord_compatible=encord_compatible),
        "images": images,
        "annotations": annotations,
    }


def _with_id(body: JsonDict, image_id: int) -> JsonDict:
    # Every body starts with coco_url: the id goes right after it.
    items = iter(body.items())
    out = dict([next(items), ("id", image_id)])
    out.update(items)
    return out
