"""COCO snapshots per (project, branch, stage) partition, refreshed incrementally.

```
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/coco.json      the COCO file (create-only)
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/rows.tsv       the compacted form (create-only)
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/manifest.json  the audit record (create-only)
coco/project=<p>/branch=<b>/stage=<s>/latest.json                            the newest one (compare-and-swap)
```

The snapshot id is the run id (`<YYYYmmddTHHMMSS.mmmZ>-<hex>`: it sorts by run start), so a retried finalizer
finds its own snapshot and returns the same event instead of writing a second one. A refresh reads
`latest.json`, the previous snapshot's manifest and rows.tsv, and only the changed rows; it reads every
row of the partition only for the partition's first snapshot and after the ontology changed.

Ids are stable: a row keeps its image ids per (data_hash, frame), its annotation ids per (data_hash, frame,
object_hash) and its track ids per object_hash across refreshes; new ones are numbered on from counters kept
in rows.tsv. rows.tsv holds each row's ids and its COCO images and annotations as JSON bytes, so a refresh
copies unchanged rows into the new coco.json without parsing them.

In compatible mode a snapshot reproduces CocoExporter's per-row output; its one cross-row quirk (dynamic
answers read from the first row, by image id) is not reproduced, since it would tie every row's attributes
to the other rows: dynamic answers come from each row's own frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from encord_mirror.coco.convert import (
    AnnotationEntry,
    Converter,
    ImageEntry,
    ImageKey,
    Ontology,
    RowOntologyMismatchError,
    info,
    make_converter,
    row_annotations,
    row_images,
)
from encord_mirror.domain.lake import label_key, latest_key, partition_prefix, snapshot_key
from encord_mirror.domain.models import JsonDict, Partition, PartitionChanges, ProjectInfo, SnapshotEvent
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError

ROWS_FILE = "rows.tsv"


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
class _Fragment:
    """One row's share of a snapshot, kept as JSON bytes: unchanged rows are copied, never parsed."""

    state_json: bytes  # the row's _RowState
    images: bytes  # its COCO images: JSON objects joined by commas
    annotations_json: bytes  # its COCO annotations, likewise
    record: JsonDict = field(default_factory=dict)  # its manifest entry, when converted in this refresh

    def state(self) -> _RowState:
        return _RowState(**orjson.loads(self.state_json))

    def annotations(self) -> list[JsonDict]:
        parsed: list[JsonDict] = orjson.loads(b"[" + self.annotations_json + b"]")
        return parsed


def _read_fragments(body: bytes) -> tuple[dict[str, int], dict[str, _Fragment]]:
    """rows.tsv: a `#next` line with the id counters, then `label_hash TAB state TAB images TAB annotations`
    per row (orjson escapes tabs and newlines inside strings, so they only ever separate fields)."""
    header, *lines = body.split(b"\n")
    counters: dict[str, int] = orjson.loads(header.split(b"\t", 1)[1])
    rows: dict[str, _Fragment] = {}
    for line in lines:
        if line:
            label_hash, state, images, annotations = line.split(b"\t", 3)
            rows[label_hash.decode()] = _Fragment(state, images, annotations)
    return counters, rows


def _write_fragments(counters: dict[str, int], rows: list[tuple[str, _Fragment]]) -> bytes:
    lines = [b"#next\t" + orjson.dumps(counters)]
    lines += [b"\t".join((h.encode(), f.state_json, f.images, f.annotations_json)) for h, f in rows]
    return b"\n".join(lines) + b"\n"


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
    """The `SnapshotBuilder` port over any `ObjectStore`.

    `refresh` returns the event to announce (detail-type `encord-mirror.snapshot.committed`, see
    `domain.codec`) with `detail`:
    snapshot_id, project_hash, branch, stage, run_id, created_at, previous_snapshot_id, ontology_hash,
    counts {rows, images, annotations}, changes {rows_added, rows_changed, rows_removed, rows_skipped,
    annotations_added, annotations_changed, annotations_removed}, coco_uri, coco_sha256, manifest_uri.
    The snapshot id is the event's idempotency key: a retried finalizer gets the same event back. With
    `announce_min_annotations=N`, a snapshot with fewer than N added or changed annotations is committed
    but not announced (None).
    """

    def __init__(
        self, lake: ObjectStore, *, encord_compatible: bool, announce_min_annotations: int = 0
    ) -> None:
        self._lake = lake
        self._compatible = encord_compatible
        self._min = announce_min_annotations
        self._converters: dict[str, Converter] = {}

    def refresh(
        self, project: ProjectInfo, changes: PartitionChanges, *, run_id: str, now: datetime
    ) -> SnapshotEvent | None:
        part = changes.partition
        sid = snapshot_id_for(run_id)
        latest_k = latest_key(part.project_hash, part.branch, part.stage)
        latest_obj = self._lake.get(latest_k)
        latest = orjson.loads(latest_obj.body) if latest_obj else None
        mine = self._read_json(self._key(part, sid, "manifest.json"))
        if latest is not None and latest["snapshot_id"] >= sid:
            # A retry of this run (or of an older one, after a newer run committed): never rebuild.
            return self._event(part, mine) if mine is not None else None
        if mine is not None:
            # An earlier attempt wrote the snapshot but did not move latest.json: finish its job.
            self._move_latest(part, mine, latest_obj)
            return self._event(part, mine)

        converter = self._converter(project)
        ohash = ontology_hash(project)
        prev_manifest: JsonDict | None = None
        prev_rows: dict[str, _Fragment] | None = None
        counters = {"image": 0, "annotation": 0, "track": 0}
        if latest is not None:
            prev_id = latest["snapshot_id"]
            prev_manifest = self._read_json(self._key(part, prev_id, "manifest.json"))
            if prev_manifest is not None and prev_manifest.get("ontology_hash") == ohash:
                stored_rows = self._lake.get(self._key(part, prev_id, ROWS_FILE))
                if stored_rows is not None:
                    counters, prev_rows = _read_fragments(stored_rows.body)
        incremental = prev_rows is not None and prev_manifest is not None
        old_rows: dict[str, _Fragment] = prev_rows or {}
        old_records: dict[str, JsonDict] = dict(prev_manifest["rows"]) if prev_manifest else {}
        if incremental:
            touched = sorted(set(changes.upserted) | set(changes.removed))
        else:
            # No usable previous snapshot: the first one of the partition, or the ontology changed (the ids
            # restart then, but the manifest still compares rows with the previous snapshot's).
            prefix = partition_prefix("labels", part.project_hash, part.branch, part.stage)
            listed = (
                k[len(prefix) : -len(".json")] for k in self._lake.list_keys(prefix) if k.endswith(".json")
            )
            touched = sorted(set(listed) | set(changes.removed))

        rows_out: dict[str, _Fragment] = {}
        gone: set[str] = set()
        skipped: dict[str, str] = {}
        for label_hash in touched:
            stored = self._lake.get(label_key(part.project_hash, part.branch, part.stage, label_hash))
            if stored is None:
                gone.add(label_hash)
                continue
            old = old_rows.get(label_hash)
            try:
                rows_out[label_hash] = self._convert_row(
                    converter, orjson.loads(stored.body), stored.body, old.state() if old else None, counters
                )
            except (RowOntologyMismatchError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                # One bad row must not hold back the partition's snapshot: it is left out and named in the
                # manifest, and comes back when it is fixed (touched again) or the ontology changes.
                gone.add(label_hash)
                skipped[label_hash] = f"{type(exc).__name__}: {exc}"

        # What changed since the previous snapshot, by row and by annotation (only touched rows are parsed).
        added = sorted(h for h in rows_out if h not in old_records)
        changed = sorted(
            h
            for h in rows_out
            if h in old_records and old_records[h]["sha256"] != rows_out[h].record["sha256"]
        )
        removed = sorted(h for h in gone if h in old_records)
        if incremental and not (added or changed or removed):
            return None
        old_by_id = {a["id"]: a for h in touched if h in old_rows for a in old_rows[h].annotations()}
        new_anns = [a for h in rows_out for a in rows_out[h].annotations()]
        new_ids = {a["id"] for a in new_anns}
        ann_added = sum(1 for a in new_anns if a["id"] not in old_by_id)
        ann_changed = sum(1 for a in new_anns if a["id"] in old_by_id and old_by_id[a["id"]] != a)
        ann_removed = sum(1 for i in old_by_id if i not in new_ids)

        # Assemble from bytes: unchanged rows are copied, never parsed; rows in label-hash order.
        fragments = {h: f for h, f in old_rows.items() if h not in gone and h not in rows_out}
        fragments.update(rows_out)
        order = sorted(fragments)
        records = {h: fragments[h].record if h in rows_out else old_records[h] for h in order}
        first_title = next((records[h].get("data_title") for h in order), None)
        coco_body = b"".join(
            [
                b'{"info":',
                orjson.dumps(info(None if first_title is None else str(first_title))),
                b',"categories":',
                orjson.dumps(converter.ontology.categories),
                b',"images":[',
                b",".join(fragments[h].images for h in order if fragments[h].images),
                b'],"annotations":[',
                b",".join(fragments[h].annotations_json for h in order if fragments[h].annotations_json),
                b"]}",
            ]
        )
        rows_body = _write_fragments(counters, [(h, fragments[h]) for h in order])
        n_images = sum(int(records[h]["images"]) for h in order)
        n_annotations = sum(int(records[h]["annotations"]) for h in order)
        keys = {name: self._key(part, sid, name) for name in ("coco.json", ROWS_FILE, "manifest.json")}
        self._put_once(keys["coco.json"], coco_body)
        self._put_once(keys[ROWS_FILE], rows_body)
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
            "counts": {"rows": len(records), "images": n_images, "annotations": n_annotations},
            "changes": {
                "added": added,
                "changed": changed,
                "removed": removed,
                "skipped": skipped,
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
    def _converter(self, project: ProjectInfo) -> Converter:
        key = ontology_hash(project)
        if key not in self._converters:
            self._converters[key] = make_converter(
                Ontology.from_dict(project.ontology), encord_compatible=self._compatible
            )
        return self._converters[key]

    def _convert_row(
        self,
        converter: Converter,
        row: JsonDict,
        body: bytes,
        old: _RowState | None,
        counters: dict[str, int],
    ) -> _Fragment:
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
            # The row's own content hash, as its object and the run manifests carry it (so the three join);
            # the bytes' hash only for an object without one.
            "sha256": mirror.get("sha256") or hashlib.sha256(body).hexdigest(),
            "images": len(images),
            "annotations": len(annotations),
        }
        state_json = orjson.dumps(
            {"images": state.images, "annotations": state.annotations, "tracks": state.tracks}
        )
        return _Fragment(state_json, orjson.dumps(images)[1:-1], orjson.dumps(annotations)[1:-1], record)

    def _key(self, part: Partition, snapshot_id: str, name: str) -> str:
        return snapshot_key(part.project_hash, part.branch, part.stage, snapshot_id, name)

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
            "snapshot_id": manifest["snapshot_id"],
            "project_hash": part.project_hash,
            "branch": part.branch,
            "stage": part.stage,
            "run_id": manifest["run_id"],
            "created_at": manifest["created_at"],
            "previous_snapshot_id": manifest["previous_snapshot_id"],
            "ontology_hash": manifest["ontology_hash"],
            "counts": manifest["counts"],
            "changes": {
                "rows_added": len(changes["added"]),
                "rows_changed": len(changes["changed"]),
                "rows_removed": len(changes["removed"]),
                "rows_skipped": len(changes.get("skipped") or {}),
                "annotations_added": changes["annotations_added"],
                "annotations_changed": changes["annotations_changed"],
                "annotations_removed": changes["annotations_removed"],
            },
            "coco_uri": manifest["coco"]["uri"],
            "coco_sha256": manifest["coco"]["sha256"],
            "manifest_uri": manifest["manifest_uri"],
        }
        return SnapshotEvent(manifest["snapshot_id"], part.project_hash, part.branch, part.stage, detail)


COCO_MODES = ("corrected", "encord-compatible", "off")


def snapshot_builder(
    lake: ObjectStore, mode: str = "corrected", *, announce_min_annotations: int = 0
) -> CocoSnapshotBuilder | None:
    """The snapshot step for a deployment's COCO mode: `corrected` (the converter's documented
    corrections), `encord-compatible` (CocoExporter's output exactly) or `off` (no snapshots)."""
    if mode not in COCO_MODES:
        raise ValueError(f"COCO mode must be one of {', '.join(COCO_MODES)} (got {mode!r})")
    if mode == "off":
        return None
    return CocoSnapshotBuilder(
        lake, encord_compatible=mode == "encord-compatible", announce_min_annotations=announce_min_annotations
    )
