"""COCO snapshots per (project, branch, stage) partition, refreshed incrementally.

```
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/coco.json      the COCO file (create-only)
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/index.json     ids per row (create-only)
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/manifest.json  the audit record (create-only)
coco/project=<p>/branch=<b>/stage=<s>/latest.json                            the newest one (compare-and-swap)
```

The snapshot id is the run id (`<YYYYmmddTHHMMSSZ>-<hex>`: it sorts by run start), so a retried finalizer
finds its own snapshot and returns the same event instead of writing a second one. A refresh reads
`latest.json`, the previous snapshot's coco.json and index.json, and only the changed rows; it reads every
row of the partition only for the partition's first snapshot and after the ontology changed.

Ids are stable: a row keeps its image ids per (data_hash, frame), its annotation ids per (data_hash, frame,
object_hash) and its track ids per object_hash across refreshes; new ones are numbered on from counters kept
in index.json. In compatible mode a snapshot reproduces CocoExporter's per-row output; its one cross-row quirk
(dynamic answers read from the first row, by image id) is not reproduced, since it would tie every row's
attributes to the other rows: dynamic answers come from each row's own frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from encord_mirror.coco.convert import (
    AnnotationEntry,
    ImageEntry,
    ImageKey,
    Ontology,
    _Converter,
    info,
    make_converter,
    row_annotations,
    row_images,
)
from encord_mirror.domain.lake import label_key, latest_key, partition_prefix, snapshot_key
from encord_mirror.domain.models import JsonDict, Partition, PartitionChanges, ProjectInfo, SnapshotEvent
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError

DETAIL_TYPE = "encord-mirror.snapshot.committed"
INDEX_VERSION = 1


class SnapshotConflictError(RuntimeError):
    """Another writer moved `latest.json` or wrote this snapshot with different content."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"snapshot conflict at {key!r}: {why}")
        self.key = key


@dataclass(slots=True)
class _RowState:
    images: dict[str, int]  # "data_hash/frame" -> image id
    annotations: dict[str, int]  # "data_hash/frame/object_hash" -> annotation id
    tracks: dict[str, int]  # object_hash -> track id


@dataclass(slots=True)
class _RowOut:
    images: list[JsonDict]
    annotations: list[JsonDict]
    state: _RowState
    record: JsonDict  # the manifest's entry for the row


def _ikey(key: ImageKey) -> str:
    return f"{key[0]}/{key[1]}"


def snapshot_id_for(run_id: str) -> str:
    """Deterministic per run and key-safe; run ids sort by start time, and so do snapshot ids."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)


def ontology_hash(project: ProjectInfo) -> str:
    return (
        project.ontology_hash
        or hashlib.sha256(orjson.dumps(project.ontology, option=orjson.OPT_SORT_KEYS)).hexdigest()
    )


class CocoSnapshotBuilder:
    """The `SnapshotBuilder` port over any `ObjectStore`."""

    def __init__(
        self, lake: ObjectStore, *, encord_compatible: bool, announce_min_annotations: int = 0
    ) -> None:
        self._lake = lake
        self._compatible = encord_compatible
        self._min = announce_min_annotations
        self._converters: dict[str, _Converter] = {}

    def refresh(
        self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
    ) -> SnapshotEvent | None:
        part = changes.partition
        sid = snapshot_id_for(run_id)
        latest_k = latest_key(part.project_hash, part.branch, part.stage)
        latest_obj = self._lake.get(latest_k)
        latest = orjson.loads(latest_obj.body) if latest_obj else None
        mine = self._read_json(snapshot_key(part.project_hash, part.branch, part.stage, sid, "manifest.json"))
        if latest is not None and latest["snapshot_id"] >= sid:
            # A retry of this run (or of an older one, after a newer run committed): never rebuild.
            return self._event(part, mine) if mine is not None else None
        if mine is not None:
            # An earlier attempt wrote the snapshot but did not move latest.json: finish its job.
            self._move_latest(part, mine, latest_obj)
            return self._event(part, mine)

        converter = self._converter(project)
        ohash = ontology_hash(project)
        prev_manifest = prev_coco = prev_index = None
        if latest is not None:
            prev_id = latest["snapshot_id"]
            prev_manifest = self._read_json(
                snapshot_key(part.project_hash, part.branch, part.stage, prev_id, "manifest.json")
            )
            if prev_manifest is not None and prev_manifest.get("ontology_hash") == ohash:
                prev_coco = self._read_json(
                    snapshot_key(part.project_hash, part.branch, part.stage, prev_id, "coco.json")
                )
                prev_index = self._read_json(
                    snapshot_key(part.project_hash, part.branch, part.stage, prev_id, "index.json")
                )
        incremental = prev_coco is not None and prev_index is not None and prev_manifest is not None

        counters = {"image": 0, "annotation": 0, "track": 0}
        old_states: dict[str, _RowState] = {}
        old_images: dict[str, list[JsonDict]] = {}
        old_annotations: dict[str, list[JsonDict]] = {}
        old_records: dict[str, JsonDict] = {}
        if incremental:
            assert prev_coco is not None and prev_index is not None and prev_manifest is not None
            counters = dict(prev_index["next"])
            old_states = {h: _RowState(**s) for h, s in prev_index["rows"].items()}
            old_records = dict(prev_manifest["rows"])
            image_owner = {i: h for h, s in old_states.items() for i in s.images.values()}
            for h in old_states:
                old_images[h], old_annotations[h] = [], []
            for image in prev_coco["images"]:
                old_images[image_owner[image["id"]]].append(image)
            for ann in prev_coco["annotations"]:
                old_annotations[image_owner[ann["image_id"]]].append(ann)
            touched = sorted(set(changes.upserted) | set(changes.removed))
        else:
            # No usable previous snapshot: the first one of the partition, or the ontology changed.
            prefix = partition_prefix("labels", part.project_hash, part.branch, part.stage)
            touched = sorted(
                k[len(prefix) : -len(".json")] for k in self._lake.list_keys(prefix) if k.endswith(".json")
            )
            touched = sorted(set(touched) | set(changes.removed))
            if prev_manifest is not None:
                old_records = dict(prev_manifest["rows"])  # ids restart, but the audit trail still compares

        rows_out: dict[str, _RowOut] = {}
        gone: set[str] = set()
        for label_hash in touched:
            stored = self._lake.get(label_key(part.project_hash, part.branch, part.stage, label_hash))
            if stored is None:
                gone.add(label_hash)
                continue
            row = orjson.loads(stored.body)
            rows_out[label_hash] = self._convert_row(
                converter, row, stored.body, old_states.get(label_hash), counters
            )

        # What changed since the previous snapshot, by row and by annotation.
        added = sorted(h for h in rows_out if h not in old_records)
        changed = sorted(
            h
            for h in rows_out
            if h in old_records and old_records[h]["sha256"] != rows_out[h].record["sha256"]
        )
        removed = sorted(h for h in gone if h in old_records)
        if incremental and not (added or changed or removed):
            return None
        old_by_id = {a["id"]: a for h in (set(rows_out) | gone) for a in old_annotations.get(h, [])}
        new_ids = {a["id"] for r in rows_out.values() for a in r.annotations}
        ann_added = sum(1 for r in rows_out.values() for a in r.annotations if a["id"] not in old_by_id)
        ann_changed = sum(
            1
            for r in rows_out.values()
            for a in r.annotations
            if a["id"] in old_by_id and old_by_id[a["id"]] != a
        )
        ann_removed = sum(1 for i in old_by_id if i not in new_ids)

        # Assemble: unchanged rows as they were, changed rows anew, in label-hash order.
        states: dict[str, _RowState] = {}
        records: dict[str, JsonDict] = {}
        images: list[JsonDict] = []
        annotations: list[JsonDict] = []
        for h in sorted((set(old_states) - gone - set(rows_out)) | set(rows_out)):
            if h in rows_out:
                out = rows_out[h]
                states[h], records[h] = out.state, out.record
                images += out.images
                annotations += out.annotations
            else:
                states[h], records[h] = old_states[h], old_records[h]
                images += old_images[h]
                annotations += old_annotations[h]
        first_title = next((records[h].get("data_title") for h in records), None)
        coco = {
            "info": info(None if first_title is None else str(first_title)),
            "categories": converter.ontology.categories,
            "images": images,
            "annotations": annotations,
        }
        coco_body = orjson.dumps(coco)
        index_body = orjson.dumps(
            {
                "version": INDEX_VERSION,
                "next": counters,
                "rows": {
                    h: {"images": s.images, "annotations": s.annotations, "tracks": s.tracks}
                    for h, s in states.items()
                },
            }
        )
        keys = {
            name: snapshot_key(part.project_hash, part.branch, part.stage, sid, name)
            for name in ("coco.json", "index.json", "manifest.json")
        }
        self._put_once(keys["coco.json"], coco_body)
        self._put_once(keys["index.json"], index_body)
        manifest: JsonDict = {
            "snapshot_id": sid,
            "run_id": run_id,
            "created_at": now.astimezone(UTC).isoformat(),
            "project_hash": part.project_hash,
            "branch": part.branch,
            "stage": part.stage,
            "previous_snapshot_id": latest["snapshot_id"] if latest else None,
            "ontology_hash": ohash,
            "encord_compatible": self._compatible,
            "incremental": incremental,
            "counts": {"rows": len(records), "images": len(images), "annotations": len(annotations)},
            "changes": {
                "added": added,
                "changed": changed,
                "removed": removed,
                "annotations_added": ann_added,
                "annotations_changed": ann_changed,
                "annotations_removed": ann_removed,
            },
            "coco": {
                "key": keys["coco.json"],
                "uri": self._lake.uri(keys["coco.json"]),
                "sha256": hashlib.sha256(coco_body).hexdigest(),
                "bytes": len(coco_body),
            },
            "manifest_uri": self._lake.uri(keys["manifest.json"]),
            "rows": records,
        }
        try:
            self._lake.put(
                keys["manifest.json"], orjson.dumps(manifest, option=orjson.OPT_INDENT_2), if_none_match=True
            )
        except PreconditionFailedError:
            manifest = self._read_json(keys["manifest.json"]) or manifest
        self._move_latest(part, manifest, latest_obj)
        return self._event(part, manifest)

    # -- helpers ---------------------------------------------------------------------------------
    def _converter(self, project: ProjectInfo) -> _Converter:
        key = ontology_hash(project)
        if key not in self._converters:
            self._converters[key] = make_converter(
                Ontology.from_dict(project.ontology), encord_compatible=self._compatible
            )
        return self._converters[key]

    def _convert_row(
        self,
        converter: _Converter,
        row: JsonDict,
        body: bytes,
        old: _RowState | None,
        counters: dict[str, int],
    ) -> _RowOut:
        old = old or _RowState({}, {}, {})
        state = _RowState({}, {}, {})

        def next_id(kind: str) -> int:
            value = counters[kind]
            counters[kind] = value + 1
            return value

        entries: dict[ImageKey, ImageEntry] = {}
        images: list[JsonDict] = []
        for entry in row_images(row):
            if entry.key in entries:
                continue  # a (data_hash, frame) twice in one row: one image
            k = _ikey(entry.key)
            image_id = old.images[k] if k in old.images else next_id("image")
            state.images[k] = image_id
            entries[entry.key] = entry
            images.append(
                {
                    "coco_url": entry.body["coco_url"],
                    "id": image_id,
                    **{x: v for x, v in entry.body.items() if x != "coco_url"},
                }
            )
        annotations: list[JsonDict] = []
        ann: AnnotationEntry
        for ann in row_annotations(converter, row, entries, lambda key: state.images[_ikey(key)]):
            k = f"{_ikey(ann.image_key)}/{ann.object_hash}"
            if k in state.annotations:
                ann_id = next_id("annotation")  # the same object twice on one frame: keep both
            else:
                ann_id = old.annotations[k] if k in old.annotations else next_id("annotation")
                state.annotations[k] = ann_id
            if ann.object_hash not in state.tracks:
                state.tracks[ann.object_hash] = old.tracks.get(ann.object_hash, -1)
                if state.tracks[ann.object_hash] < 0:
                    state.tracks[ann.object_hash] = next_id("track")
            ann.body["id"] = ann_id
            ann.body["attributes"]["track_id"] = state.tracks[ann.object_hash]
            annotations.append(ann.body)
        mirror = row.get("mirror") or {}
        record = {
            "label_hash": row.get("label_hash"),
            "data_hash": row.get("data_hash"),
            "data_title": row.get("data_title"),
            "last_edited_at": mirror.get("last_edited_at") or row.get("last_edited_at"),
            "sha256": hashlib.sha256(body).hexdigest(),
            "images": len(images),
            "annotations": len(annotations),
        }
        return _RowOut(images, annotations, state, record)

    def _read_json(self, key: str) -> Any:
        stored = self._lake.get(key)
        return None if stored is None else orjson.loads(stored.body)

    def _put_once(self, key: str, body: bytes) -> None:
        try:
            self._lake.put(key, body, if_none_match=True)
        except PreconditionFailedError:
            # An earlier attempt of this run wrote it: the inputs are the same, so must the bytes be.
            existing = self._lake.get(key)
            if existing is None or existing.body != body:
                raise SnapshotConflictError(key, "already written with different content") from None

    def _move_latest(self, part: Partition, manifest: Mapping[str, Any], latest_obj: Any) -> None:
        key = latest_key(part.project_hash, part.branch, part.stage)
        body = orjson.dumps(
            {
                "snapshot_id": manifest["snapshot_id"],
                "run_id": manifest["run_id"],
                "created_at": manifest["created_at"],
                "coco": manifest["coco"]["key"],
                "manifest": snapshot_key(
                    part.project_hash, part.branch, part.stage, manifest["snapshot_id"], "manifest.json"
                ),
                "counts": manifest["counts"],
            },
            option=orjson.OPT_INDENT_2,
        )
        try:
            if latest_obj is None:
                self._lake.put(key, body, if_none_match=True)
            else:
                self._lake.put(key, body, if_match=latest_obj.etag)
        except PreconditionFailedError:
            raise SnapshotConflictError(key, "latest.json moved while this snapshot was built") from None

    def _event(self, part: Partition, manifest: Mapping[str, Any]) -> SnapshotEvent | None:
        changes = manifest["changes"]
        if changes["annotations_added"] + changes["annotations_changed"] < self._min:
            return None
        detail = {
            "run_id": manifest["run_id"],
            "created_at": manifest["created_at"],
            "previous_snapshot_id": manifest["previous_snapshot_id"],
            "ontology_hash": manifest["ontology_hash"],
            "counts": manifest["counts"],
            "changes": {
                "rows_added": len(changes["added"]),
                "rows_changed": len(changes["changed"]),
                "rows_removed": len(changes["removed"]),
                "annotations_added": changes["annotations_added"],
                "annotations_changed": changes["annotations_changed"],
                "annotations_removed": changes["annotations_removed"],
            },
            "coco_uri": manifest["coco"]["uri"],
            "coco_sha256": manifest["coco"]["sha256"],
            "manifest_uri": manifest["manifest_uri"],
        }
        return SnapshotEvent(manifest["snapshot_id"], part.project_hash, part.branch, part.stage, detail)
