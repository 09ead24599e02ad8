"""A lake row flattened into annotation records: one per object instance per frame, one per classification
instance per frame, attribute answers as a nested list.

The keys follow the flat tables of Encord's own export scripts (objectHash, object name, featureHash, uid,
color, shape, classification name / answer / hash, attribute name / answer / featureHash, frame), in
snake case, plus where the record comes from and the geometry in a typed form. One record (a JSON object
whose first key is `label_hash`, so a table file can be filtered by row without parsing it):

```
label_hash, project_hash, branch, stage, data_hash (the row's), data_unit (the data unit's hash: an image
group has several), data_title, data_type, frame, kind ("object" | "classification"), object_hash,
classification_hash, uid (the instance: object_hash or classification_hash), feature_hash, name, value,
color, shape, width, height (of the data unit, pixels; null when unknown),
bbox_x, bbox_y, bbox_w, bbox_h (normalised 0..1), bbox_x_px, bbox_y_px, bbox_w_px, bbox_h_px, rotation,
points [{x, y}] (normalised: polygon, polyline, point, skeleton), rle, rle_width, rle_height (bitmask),
attributes [{name, value, feature_hash, answer, answer_feature_hash}] (one per answer: a checklist with
two ticks gives two), ranges [[start, end]] (audio, text and PDF instances, whose frame is null: one record
per instance, not per frame), created_by, created_at, last_edited_by, last_edited_at, confidence,
manual_annotation, sha256 (the row's mirror.sha256)
```
A bounding box of a polygon, polyline, point or skeleton is its points' extent, so "boxes" can be counted
on `shape` and measured on every shape alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from encord_mirror.domain.models import JsonDict

# Every column, in order: a record always has them all, so Athena, DuckDB and pyarrow see one schema.
COLUMNS = [
    "label_hash",
    "project_hash",
    "branch",
    "stage",
    "data_hash",
    "data_unit",
    "data_title",
    "data_type",
    "frame",
    "kind",
    "object_hash",
    "classification_hash",
    "uid",
    "feature_hash",
    "name",
    "value",
    "color",
    "shape",
    "width",
    "height",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "bbox_x_px",
    "bbox_y_px",
    "bbox_w_px",
    "bbox_h_px",
    "rotation",
    "points",
    "rle",
    "rle_width",
    "rle_height",
    "attributes",
    "ranges",
    "created_by",
    "created_at",
    "last_edited_by",
    "last_edited_at",
    "confidence",
    "manual_annotation",
    "sha256",
]
_RANGE_TYPES = {"audio", "plain_text", "text", "pdf"}
_BOX_KEYS = {"bounding_box": "boundingBox", "rotatable_bounding_box": "rotatableBoundingBox"}


def _frames(unit: Mapping[str, Any]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(frame, labels) of a data unit: images hold one labels dict (their frame is the unit's place in an
    image group), videos, DICOM and NIfTI one per frame."""
    labels = unit.get("labels") or {}
    if "objects" in labels or "classifications" in labels or not labels:
        yield int(unit.get("data_sequence") or 0), labels
        return
    for key, frame in labels.items():
        if isinstance(frame, Mapping):
            yield int(key), frame


def _answers(classifications: Any) -> list[JsonDict]:
    """Attribute answers (`object_answers[h].classifications` and the like), one entry per answer."""
    out: list[JsonDict] = []
    for attr in classifications or ():
        base = {"name": attr.get("name"), "value": attr.get("value"), "feature_hash": attr.get("featureHash")}
        answers = attr.get("answers")
        if isinstance(answers, list):
            for option in answers:
                out.append(
                    {**base, "answer": option.get("value"), "answer_feature_hash": option.get("featureHash")}
                )
        elif answers is not None:
            out.append({**base, "answer": str(answers), "answer_feature_hash": None})
    return out


def _dynamic(actions: Any, frame: int) -> list[JsonDict]:
    """The dynamic attribute answers an object has on `frame` (`object_actions[h].actions`)."""
    hits = []
    for action in (actions or {}).get("actions") or ():
        ranges = action.get("range") or []
        if any(start <= frame <= end for start, end in ranges):
            hits.append(action)
    return _answers(hits)


def _geometry(obj: Mapping[str, Any], width: int | None, height: int | None) -> JsonDict:
    shape = obj.get("shape")
    out: JsonDict = {}
    points: list[JsonDict] | None = None
    if shape in _BOX_KEYS:
        box = obj.get(_BOX_KEYS[shape]) or {}
        out.update(bbox_x=box.get("x"), bbox_y=box.get("y"), bbox_w=box.get("w"), bbox_h=box.get("h"))
        if "theta" in box:
            out["rotation"] = float(box["theta"])
    elif shape in ("polygon", "polyline", "point", "skeleton"):
        raw = obj.get(shape) or {}
        values = raw.values() if isinstance(raw, Mapping) else raw
        points = [{"x": float(p["x"]), "y": float(p["y"])} for p in values if isinstance(p, Mapping)]
        if points:
            xs, ys = [p["x"] for p in points], [p["y"] for p in points]
            out.update(bbox_x=min(xs), bbox_y=min(ys), bbox_w=max(xs) - min(xs), bbox_h=max(ys) - min(ys))
    elif shape == "bitmask":
        mask = obj.get("bitmask") or {}
        out.update(rle=mask.get("rleString"), rle_width=mask.get("width"), rle_height=mask.get("height"))
    out["points"] = points
    if width and height and out.get("bbox_x") is not None:
        out.update(
            bbox_x_px=out["bbox_x"] * width,
            bbox_y_px=out["bbox_y"] * height,
            bbox_w_px=out["bbox_w"] * width,
            bbox_h_px=out["bbox_h"] * height,
        )
    return out


def _provenance(item: Mapping[str, Any]) -> JsonDict:
    return {
        "created_by": item.get("createdBy"),
        "created_at": item.get("createdAt"),
        "last_edited_by": item.get("lastEditedBy"),
        "last_edited_at": item.get("lastEditedAt"),
        "confidence": item.get("confidence"),
        "manual_annotation": item.get("manualAnnotation"),
    }


def annotation_records(document: Mapping[str, Any]) -> list[JsonDict]:
    """The annotation records of one lake row object (`to_encord_dict()` plus `mirror`), in a stable order:
    per data unit and frame, objects then classifications."""
    mirror = document.get("mirror") or {}
    row = {
        "label_hash": mirror.get("label_hash") or document.get("label_hash"),
        "project_hash": mirror.get("project_hash"),
        "branch": mirror.get("branch"),
        "stage": mirror.get("stage"),
        "data_hash": mirror.get("data_hash") or document.get("data_hash"),
    }
    object_answers = document.get("object_answers") or {}
    object_actions = document.get("object_actions") or {}
    class_answers = document.get("classification_answers") or {}
    records: list[JsonDict] = []
    seen_classifications: set[str] = set()
    for unit_hash, unit in (document.get("data_units") or {}).items():
        width, height = unit.get("width"), unit.get("height")
        where = {
            **row,
            "data_unit": unit.get("data_hash") or unit_hash,
            "data_title": unit.get("data_title") or document.get("data_title"),
            "data_type": document.get("data_type"),
        }
        for frame, labels in _frames(unit):
            for obj in labels.get("objects") or ():
                object_hash = obj.get("objectHash")
                answers = _answers((object_answers.get(object_hash) or {}).get("classifications"))
                records.append(
                    _record(
                        where,
                        frame,
                        "object",
                        obj,
                        width,
                        height,
                        object_hash=object_hash,
                        attributes=answers + _dynamic(object_actions.get(object_hash), frame),
                        geometry=_geometry(obj, width, height),
                    )
                )
            for cls in labels.get("classifications") or ():
                chash = cls.get("classificationHash")
                seen_classifications.add(chash)
                answer = class_answers.get(chash) or {}
                records.append(
                    _record(
                        where,
                        frame,
                        "classification",
                        cls,
                        width,
                        height,
                        classification_hash=chash,
                        attributes=_answers(answer.get("classifications")),
                    )
                )
    # Instances that only the answers hold: classifications over a frame range (videos), and the objects
    # and classifications of audio, text and PDF rows, whose ranges are not frames (one record, `ranges`).
    first_unit: Mapping[str, Any] = next(iter((document.get("data_units") or {}).values()), {})
    where = {
        **row,
        "data_unit": first_unit.get("data_hash"),
        "data_title": document.get("data_title"),
        "data_type": document.get("data_type"),
    }
    frame_based = str(document.get("data_type", "")).lower() not in _RANGE_TYPES
    size = (first_unit.get("width"), first_unit.get("height"))
    for chash, answer in class_answers.items():
        if chash in seen_classifications or not answer.get("featureHash"):
            continue
        attrs = answer.get("classifications") or []
        item = {**answer, **({"name": attrs[0].get("name"), "value": attrs[0].get("value")} if attrs else {})}
        ranges = answer.get("range") or []
        frames: list[int | None] = (
            [f for start, end in ranges or [[0, 0]] for f in range(start, end + 1)] if frame_based else [None]
        )
        for at in frames:
            records.append(
                _record(
                    where,
                    at,
                    "classification",
                    item,
                    *size,
                    classification_hash=chash,
                    attributes=_answers(attrs),
                    ranges=None if frame_based else ranges,
                )
            )
    seen_objects = {r["object_hash"] for r in records}
    for object_hash, answer in object_answers.items():
        if object_hash in seen_objects or not answer.get("featureHash"):
            continue
        records.append(
            _record(
                where,
                None,
                "object",
                answer,
                *size,
                object_hash=object_hash,
                attributes=_answers(answer.get("classifications")),
                ranges=answer.get("range") or [],
            )
        )
    sha = mirror.get("sha256")
    for record in records:
        record["sha256"] = sha
    return records


def _record(
    where: JsonDict,
    frame: int | None,
    kind: str,
    item: Mapping[str, Any],
    width: int | None,
    height: int | None,
    *,
    object_hash: str | None = None,
    classification_hash: str | None = None,
    attributes: list[JsonDict],
    geometry: JsonDict | None = None,
    ranges: list[list[int]] | None = None,
) -> JsonDict:
    values: JsonDict = {
        **where,
        "frame": frame,
        "kind": kind,
        "object_hash": object_hash,
        "classification_hash": classification_hash,
        "uid": object_hash or classification_hash,
        "feature_hash": item.get("featureHash"),
        "name": item.get("name"),
        "value": item.get("value"),
        "color": item.get("color"),
        "shape": item.get("shape"),
        "width": width,
        "height": height,
        **(geometry or {}),
        "attributes": attributes,
        "ranges": ranges,
        **_provenance(item),
    }
    return {column: values.get(column) for column in COLUMNS}
