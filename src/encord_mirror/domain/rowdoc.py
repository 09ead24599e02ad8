"""The lake object of one label row: `to_encord_dict()` unchanged plus one added `mirror` key.

```
{ ...every key of LabelRowV2.to_encord_dict(), same values...,
  "mirror": {"format_version", "project_hash", "label_hash", "data_hash", "branch", "stage" (partition value),
             "stage_uuid", "stage_title", "task_status", "last_edited_at" (ISO 8601 UTC or null),
             "sha256", "synced_at" (ISO 8601 UTC)} }
```
`mirror.sha256` is the sha256 of the object's canonical JSON (orjson, sorted keys) with `mirror.sha256`
and `mirror.synced_at` left out. It covers the labels and the workflow metadata, not the sync time, so:
a row whose content and stage did not change is not rewritten (a re-sync leaves the lake byte-identical),
a task status change is, and anyone can verify an object by recomputing the hash.

`mirror.format_version` is `ROW_FORMAT_VERSION`; an object without it is version 1. It is part of the
hashed content, so a new version changes every row's sha256 and the worker rewrites a row it is sent; the
planner sends every row once after an upgrade (the version is part of `MirrorConfig.filters_fingerprint`).
The object is one line of compact JSON ending with a newline (from version 3: pyarrow's JSON dataset
reader reads a file without one as nulls); the newline is outside the hashed content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import datetime
from typing import Any

import orjson

from encord_mirror.domain.lake import stage_value
from encord_mirror.domain.models import JsonDict, LoadedRow
from encord_mirror.domain.watermark import iso_utc

MIRROR_KEY = "mirror"
# The shape of a row object (README, "The lake"). 1: objects written before the `mirror` block carried a
# version; 2: `mirror.format_version` added; 3: the object ends with a newline.
ROW_FORMAT_VERSION = 3
_UNHASHED = ("sha256", "synced_at")


class CorruptRowError(ValueError):
    """A row's labels cannot be turned into a lake object; `label_hash` names it."""

    def __init__(self, label_hash: str, problem: str) -> None:
        super().__init__(f"label row {label_hash}: {problem}")
        self.label_hash = label_hash


def filter_features(
    labels: JsonDict,
    object_feature_hashes: Collection[str] | None,
    classification_feature_hashes: Collection[str] | None,
) -> JsonDict:
    """A copy of `labels` keeping only the objects / classifications of the given feature hashes.

    None keeps everything of that kind (and returns `labels` itself when both are None). Object answers
    and actions follow their object; a classification lives in `classification_answers` (the SDK ignores
    per-frame classification lists when parsing, but they are filtered too so the JSON stays consistent).
    """
    if object_feature_hashes is None and classification_feature_hashes is None:
        return labels
    keep_obj = None if object_feature_hashes is None else frozenset(object_feature_hashes)
    keep_cls = None if classification_feature_hashes is None else frozenset(classification_feature_hashes)
    out = dict(labels)
    kept_objects: set[str] = set()
    dropped_objects: set[str] = set()

    def filter_frame(frame: Any) -> Any:
        if not isinstance(frame, dict):
            return frame
        frame = dict(frame)
        if keep_obj is not None and isinstance(frame.get("objects"), list):
            objects = []
            for obj in frame["objects"]:
                target = kept_objects if obj.get("featureHash") in keep_obj else dropped_objects
                target.add(str(obj.get("objectHash")))
                if target is kept_objects:
                    objects.append(obj)
            frame["objects"] = objects
        if keep_cls is not None and isinstance(frame.get("classifications"), list):
            frame["classifications"] = [
                c for c in frame["classifications"] if c.get("featureHash") in keep_cls
            ]
        return frame

    units = labels.get("data_units")
    if isinstance(units, dict):
        new_units: JsonDict = {}
        for data_hash, unit in units.items():
            unit = dict(unit)
            unit_labels = unit.get("labels")
            if isinstance(unit_labels, dict):
                if "objects" in unit_labels or "classifications" in unit_labels:
                    unit["labels"] = filter_frame(unit_labels)
                else:  # video / frames: {"<frame>": {"objects": [...], "classifications": [...]}}
                    unit["labels"] = {k: filter_frame(v) for k, v in unit_labels.items()}
            new_units[data_hash] = unit
        out["data_units"] = new_units
    if keep_obj is not None:
        # An object appears on several frames as one track: it stays if any of its frames kept it.
        gone = dropped_objects - kept_objects
        for key in ("object_answers", "object_actions"):
            if isinstance(labels.get(key), dict):
                out[key] = {h: v for h, v in labels[key].items() if h not in gone}
    if keep_cls is not None and isinstance(labels.get("classification_answers"), dict):
        out["classification_answers"] = {
            h: v for h, v in labels["classification_answers"].items() if v.get("featureHash") in keep_cls
        }
    return out


def content_sha256(document: JsonDict) -> str:
    """The sha256 of a lake object, leaving out `mirror.sha256` and `mirror.synced_at`."""
    mirror = {k: v for k, v in document.get(MIRROR_KEY, {}).items() if k not in _UNHASHED}
    hashed = {**document, MIRROR_KEY: mirror}
    return hashlib.sha256(orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build_document(row: LoadedRow, labels: JsonDict, *, synced_at: datetime) -> tuple[JsonDict, str]:
    """The lake object of `row` (with `labels` already filtered) and its content sha256."""
    meta = row.meta
    if not isinstance(labels, dict) or MIRROR_KEY in labels:
        raise CorruptRowError(meta.label_hash or meta.data_hash, "labels are not a to_encord_dict() mapping")
    document: JsonDict = dict(labels)
    document[MIRROR_KEY] = {
        "format_version": ROW_FORMAT_VERSION,
        "project_hash": meta.project_hash,
        "label_hash": meta.label_hash,
        "data_hash": meta.data_hash,
        "branch": meta.branch,
        "stage": stage_value(meta.stage_uuid, meta.stage_title),
        "stage_uuid": meta.stage_uuid,
        "stage_title": meta.stage_title,
        "task_status": meta.task_status,
        "last_edited_at": iso_utc(meta.last_edited_at),
    }
    try:
        sha = content_sha256(document)
    except TypeError as exc:  # orjson refuses values JSON cannot carry
        raise CorruptRowError(meta.label_hash or meta.data_hash, f"not serialisable: {exc}") from exc
    document[MIRROR_KEY]["sha256"] = sha
    document[MIRROR_KEY]["synced_at"] = iso_utc(synced_at)
    return document, sha


def encode_document(document: JsonDict) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE)


def read_mirror(body: bytes) -> JsonDict | None:
    """The `mirror` block of a stored lake object, or None when the body is not one of ours."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    mirror = parsed.get(MIRROR_KEY) if isinstance(parsed, dict) else None
    return mirror if isinstance(mirror, dict) else None


def intact_sha256(body: bytes) -> str | None:
    """A stored row object's `mirror.sha256` when its content hashes to it; None when it does not (the object
    was truncated or edited by hand) or is not a row object of ours."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    mirror = document.get(MIRROR_KEY) if isinstance(document, dict) else None
    if not isinstance(mirror, dict) or not isinstance(mirror.get("sha256"), str):
        return None
    try:
        sha = str(mirror["sha256"])
        return sha if content_sha256(document) == sha else None
    except TypeError:
        return None
