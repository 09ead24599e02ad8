"""COCO snapshots: create-only files, CAS on latest.json, incremental refresh, stable ids, idempotent retries,
the announce threshold; on the in-memory fake and on the local directory lake."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from coco_fixtures import MemoryLake, as_port, fixture
from pycocotools.coco import COCO

from encord_mirror.coco.snapshot import SNAPSHOT_FORMAT_VERSION, CocoSnapshotBuilder, SnapshotConflictError
from encord_mirror.domain.lake import label_key, latest_key
from encord_mirror.domain.models import Partition, PartitionChanges, ProjectInfo, Stage
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError
from encord_mirror.domain.rowdoc import content_sha256

PROJECT = "p-0001"
ANNOTATE, REVIEW = "annotate-1a2b3c4d", "review-5e6f7a8b"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _project(ontology_hash: str = "ont-1") -> ProjectInfo:
    return ProjectInfo(PROJECT, "Project", ontology_hash, fixture().ontology(), ())


def _rows(n: int) -> list[dict[str, Any]]:
    """n distinct rows: the fixture's four, then copies of them under new label and data hashes."""
    base = fixture().rows()
    out = []
    for i in range(n):
        row = orjson.loads(orjson.dumps(base[i % len(base)]))
        if i >= len(base):
            old = row["data_hash"]
            row["label_hash"], row["data_hash"] = f"{row['label_hash']}-{i}", f"{old}-{i}"
            row["data_units"] = {f"{old}-{i}": {**row["data_units"][old], "data_hash": f"{old}-{i}"}}
        out.append(row)
    return out


def _write(lake: ObjectStore, row: dict[str, Any], stage: str = ANNOTATE) -> str:
    doc = {**row, "mirror": {"stage_uuid": "u", "stage_title": stage, "task_status": "QUEUED"}}
    doc["mirror"]["sha256"] = content_sha256(doc)
    lake.put(label_key(PROJECT, "main", stage, row["label_hash"]), orjson.dumps(doc))
    return str(row["label_hash"])


def _changes(upserted: list[str] = [], removed: list[str] = [], stage: str = ANNOTATE) -> PartitionChanges:  # noqa: B006
    return PartitionChanges(Partition(PROJECT, "main", stage), tuple(upserted), tuple(removed))


def _snapshot(lake: ObjectStore, stage: str = ANNOTATE) -> tuple[dict[str, Any], dict[str, Any]]:
    latest = orjson.loads(lake.get(latest_key(PROJECT, "main", stage)).body)  # type: ignore[union-attr]
    manifest = orjson.loads(lake.get(latest["manifest"]).body)  # type: ignore[union-attr]
    coco = orjson.loads(lake.get(latest["coco"]).body)  # type: ignore[union-attr]
    return coco, manifest


def _move_box(row: dict[str, Any]) -> None:
    """An edit: the street image's box moves."""
    for unit in row["data_units"].values():
        for obj in unit["labels"].get("objects", []):
            if obj["shape"] == "bounding_box":
                obj["boundingBox"]["x"] = 0.25


@pytest.fixture(params=["memory", "local directory"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return as_port(MemoryLake())
    from encord_mirror.adapters.local import LocalLake

    return LocalLake(tmp_path / "lake")


def test_first_snapshot_holds_every_row_and_pycocotools_reads_it(lake: ObjectStore) -> None:
    # Given four rows in a partition that has no snapshot yet
    rows = _rows(4)
    hashes = [_write(lake, r) for r in rows]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    # When the run refreshes the partition
    event = builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    # Then latest.json points at a snapshot with every row, and the event says where it is
    coco, manifest = _snapshot(lake)
    assert event is not None and event.snapshot_id == "20261123T120000Z-aaaa"
    assert manifest["counts"] == {
        "rows": 4,
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
    }
    assert manifest["changes"]["added"] == sorted(hashes) and manifest["previous_snapshot_id"] is None
    assert event.detail["coco_uri"] == lake.uri(manifest["coco"]["key"])
    assert event.detail["counts"] == manifest["counts"]
    coco_body = lake.get(manifest["coco"]["key"]).body  # type: ignore[union-attr]
    assert manifest["coco"]["sha256"] == hashlib.sha256(coco_body).hexdigest()
    for h in hashes:
        stored = lake.get(label_key(PROJECT, "main", ANNOTATE, h))
        assert manifest["rows"][h]["sha256"] == orjson.loads(stored.body)["mirror"]["sha256"]  # type: ignore[union-attr]
        assert manifest["rows"][h]["last_edited_at"]
    # and pycocotools loads it, with a mask for every annotation that has an area
    api = COCO()
    api.dataset = coco
    api.createIndex()
    with_area = [a for a in coco["annotations"] if a["area"] > 0]
    assert len(with_area) >= 5
    for ann in with_area:
        mask = api.annToMask(ann)
        image = api.imgs[ann["image_id"]]
        assert mask.shape == (image["height"], image["width"])
        assert np.count_nonzero(mask) > 0 or ann["area"] < 1  # the sub-pixel polygon rasterises to nothing


def test_refresh_reads_only_the_changed_rows_and_keeps_ids() -> None:
    # Given a partition of 40 rows with a snapshot
    lake = MemoryLake()
    rows = _rows(40)
    hashes = [_write(lake, r) for r in rows]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    before, _ = _snapshot(lake)
    # When one row is edited, one removed and one added, and the next run refreshes
    edited, gone = rows[4], rows[9]
    _move_box(edited)
    _write(lake, edited)
    lake.delete(label_key(PROJECT, "main", ANNOTATE, gone["label_hash"]))
    new = _rows(41)[40]
    _write(lake, new)
    lake.gets.clear()
    event = builder.refresh(
        _project(),
        _changes([edited["label_hash"], new["label_hash"]], [gone["label_hash"]]),
        run_id="20261123T121500Z-bbbb",
        now=NOW,
    )
    # Then only those three rows were read from labels/, never the other 38
    label_reads = sorted(k for k in lake.gets if k.startswith("labels/"))
    assert label_reads == sorted(
        label_key(PROJECT, "main", ANNOTATE, r["label_hash"]) for r in (edited, gone, new)
    )
    after, manifest = _snapshot(lake)
    assert manifest["changes"]["added"] == [new["label_hash"]]
    assert manifest["changes"]["changed"] == [edited["label_hash"]]
    assert manifest["changes"]["removed"] == [gone["label_hash"]]
    assert manifest["changes"]["annotations_changed"] == 1 and manifest["previous_snapshot_id"].endswith(
        "aaaa"
    )
    assert event is not None and event.detail["changes"]["annotations_changed"] == 1
    # and every untouched annotation kept its id, its image id and its body
    old = {a["id"]: a for a in before["annotations"]}
    new_by_id = {a["id"]: a for a in after["annotations"]}
    kept = [i for i in old if i in new_by_id]
    assert len(kept) == len(old) - sum(
        1 for a in before["annotations"] if a["image_id"] in _image_ids(before, gone)
    )
    changed = [i for i in kept if old[i] != new_by_id[i]]
    assert len(changed) == 1 and new_by_id[changed[0]]["bbox"][0] == 10.0
    assert len({a["id"] for a in after["annotations"]}) == len(after["annotations"])
    assert len({i["id"] for i in after["images"]}) == len(after["images"])


def _image_ids(coco: dict[str, Any], row: dict[str, Any]) -> set[int]:
    units = set(row["data_units"])
    return {i["id"] for i in coco["images"] if any(u in i["file_name"] for u in units)}


def test_stage_move_leaves_one_snapshot_and_enters_the_other_in_the_same_run() -> None:
    # Given a row in the annotate partition's snapshot
    lake = MemoryLake()
    rows = _rows(4)
    hashes = [_write(lake, r) for r in rows]
    builder = CocoSnapshotBuilder(lake, encord_compatible=True)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    # When the worker moves it to review and the finalizer refreshes both partitions of the run
    moved = rows[0]["label_hash"]
    lake.delete(label_key(PROJECT, "main", ANNOTATE, moved))
    _write(lake, rows[0], REVIEW)
    run = "20261123T121500Z-bbbb"
    left = builder.refresh(_project(), _changes(removed=[moved]), run_id=run, now=NOW)
    entered = builder.refresh(_project(), _changes([moved], stage=REVIEW), run_id=run, now=NOW)
    # Then the row is in the review snapshot only
    annotate, annotate_manifest = _snapshot(lake, ANNOTATE)
    review, review_manifest = _snapshot(lake, REVIEW)
    assert moved not in annotate_manifest["rows"] and list(review_manifest["rows"]) == [moved]
    assert annotate_manifest["changes"]["removed"] == [moved] and review_manifest["changes"]["added"] == [
        moved
    ]
    assert not any("d-row-street" in i["file_name"] for i in annotate["images"])
    assert any("d-row-street" in i["file_name"] for i in review["images"])
    assert left is not None and entered is not None and left.stage == ANNOTATE and entered.stage == REVIEW


def test_a_retried_finalizer_gets_the_same_event_and_writes_nothing() -> None:
    # Given a committed snapshot
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(4)]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    first = builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    puts = len(lake.puts)
    # When the finalizer is retried for the same run (later, so with another clock)
    again = builder.refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=datetime.now(UTC)
    )
    # Then it announces the very same snapshot (one event id), and nothing is written
    assert again == first
    assert len(lake.puts) == puts


class _FailingLatest(MemoryLake):
    """Crashes the first time latest.json is written, like a finalizer killed mid-way."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def put(self, key: str, body: bytes, **kwargs: Any) -> str:
        if self.armed and key.endswith("latest.json"):
            self.armed = False
            raise TimeoutError("killed")
        return super().put(key, body, **kwargs)


def test_a_finalizer_killed_before_moving_latest_finishes_on_retry() -> None:
    # Given a refresh that wrote the snapshot files but died before latest.json
    lake = _FailingLatest()
    hashes = [_write(lake, r) for r in _rows(4)]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    with pytest.raises(TimeoutError):
        builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    assert lake.get(latest_key(PROJECT, "main", ANNOTATE)) is None
    # When the finalizer is retried
    event = builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    # Then latest.json points at that one snapshot, and there is no second one
    assert event is not None
    _, manifest = _snapshot(lake)
    assert manifest["snapshot_id"] == event.snapshot_id
    assert len({k.split("/snapshots/")[1].split("/")[0] for k in lake.objects if "/snapshots/" in k}) == 1


class _RacingLake(MemoryLake):
    """Moves latest.json behind the builder's back just before it swaps it."""

    def __init__(self, race: Callable[[MemoryLake], None]) -> None:
        super().__init__()
        self.race: Callable[[MemoryLake], None] | None = race

    def put(self, key: str, body: bytes, **kwargs: Any) -> str:
        if self.race is not None and key.endswith("latest.json") and kwargs.get("if_match"):
            race, self.race = self.race, None
            race(self)
        return super().put(key, body, **kwargs)


def test_latest_moves_only_by_compare_and_swap() -> None:
    # Given a partition with a snapshot, and another writer that moves latest.json during the next refresh
    def race(lake: MemoryLake) -> None:
        lake.put(latest_key(PROJECT, "main", ANNOTATE), b'{"snapshot_id": "someone-else"}')

    lake = _RacingLake(race)
    rows = _rows(4)
    hashes = [_write(lake, r) for r in rows]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    _move_box(rows[0])
    _write(lake, rows[0])
    # When the refresh tries to swap latest.json, then it refuses to overwrite the other writer's pointer
    with pytest.raises(SnapshotConflictError):
        builder.refresh(_project(), _changes([hashes[0]]), run_id="20261123T121500Z-bbbb", now=NOW)
    assert orjson.loads(lake.get(latest_key(PROJECT, "main", ANNOTATE)).body)["snapshot_id"] == "someone-else"  # type: ignore[union-attr]


def test_snapshot_files_are_create_only() -> None:
    # Given a committed snapshot
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(2)]
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    _, manifest = _snapshot(lake)
    # When anyone writes its coco.json again create-only, then the lake refuses
    with pytest.raises(PreconditionFailedError):
        lake.put(manifest["coco"]["key"], b"{}", if_none_match=True)


def test_threshold_silences_small_snapshots_but_still_commits_them() -> None:
    # Given a builder that announces only snapshots with at least 3 added or changed annotations
    lake = MemoryLake()
    rows = _rows(4)
    hashes = [_write(lake, r) for r in rows]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False, announce_min_annotations=3)
    first = builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    # When one annotation changes in the next run
    _move_box(rows[0])
    _write(lake, rows[0])
    second = builder.refresh(_project(), _changes([hashes[0]]), run_id="20261123T121500Z-bbbb", now=NOW)
    # Then the first (many annotations) is announced, the second is committed but not announced
    assert first is not None and first.detail["changes"]["annotations_added"] >= 3
    assert second is None
    _, manifest = _snapshot(lake)
    assert manifest["snapshot_id"] == "20261123T121500Z-bbbb"


def test_a_rewrite_with_the_same_content_makes_no_snapshot() -> None:
    # Given a committed snapshot
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(3)]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    # When a run touches a row whose lake object did not change
    event = builder.refresh(_project(), _changes([hashes[1]]), run_id="20261123T121500Z-bbbb", now=NOW)
    # Then there is no new snapshot and no event
    assert event is None
    assert _snapshot(lake)[1]["snapshot_id"] == "20261123T120000Z-aaaa"


def test_an_ontology_change_rebuilds_the_partition_from_all_rows() -> None:
    # Given a committed snapshot of 6 rows
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(6)]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW)
    # When the project's ontology hash changes and one row is touched
    lake.gets.clear()
    event = builder.refresh(_project("ont-2"), _changes([hashes[0]]), run_id="20261123T121500Z-bbbb", now=NOW)
    # Then every row was read again and the manifest records the new ontology
    assert len([k for k in lake.gets if k.startswith("labels/")]) == 6
    _, manifest = _snapshot(lake)
    assert manifest["ontology_hash"] == "ont-2" and manifest["incremental"] is False
    assert event is not None


def _normalised(coco: dict[str, Any]) -> tuple[Any, ...]:
    """A snapshot's content without its ids: images by file name, annotations by (image, track)."""
    names = {i["id"]: i["file_name"] for i in coco["images"]}
    images = sorted(
        ({k: v for k, v in i.items() if k != "id"} for i in coco["images"]), key=lambda i: i["file_name"]
    )
    annotations = []
    for a in coco["annotations"]:
        body = {k: v for k, v in a.items() if k not in ("id", "image_id")}
        body["attributes"] = {k: v for k, v in a["attributes"].items() if k != "track_id"}
        annotations.append((names[a["image_id"]], a["attributes"]["encord_track_uuid"], orjson.dumps(body)))
    return coco["info"], coco["categories"], images, sorted(annotations)


def test_an_incremental_snapshot_has_the_content_of_a_full_rebuild() -> None:
    # Given a partition refreshed three times: 12 rows, then edits, removals and additions
    lake = MemoryLake()
    rows = _rows(15)
    for r in rows[:12]:
        _write(lake, r)
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(
        _project(), _changes([r["label_hash"] for r in rows[:12]]), run_id="20261123T120000Z-a", now=NOW
    )
    _move_box(rows[0])
    _write(lake, rows[0])
    lake.delete(label_key(PROJECT, "main", ANNOTATE, rows[3]["label_hash"]))
    _write(lake, rows[12])
    builder.refresh(
        _project(),
        _changes([rows[0]["label_hash"], rows[12]["label_hash"]], [rows[3]["label_hash"]]),
        run_id="20261123T121500Z-b",
        now=NOW,
    )
    for r in rows[13:]:
        _write(lake, r)
    builder.refresh(
        _project(), _changes([r["label_hash"] for r in rows[13:]]), run_id="20261123T123000Z-c", now=NOW
    )
    incremental, _ = _snapshot(lake)
    # When a fresh lake holding the same rows builds its first snapshot
    fresh = MemoryLake()
    live = [r for i, r in enumerate(rows) if i != 3]
    for r in live:
        _write(fresh, r)
    CocoSnapshotBuilder(fresh, encord_compatible=False).refresh(
        _project(), _changes([r["label_hash"] for r in live]), run_id="20261123T130000Z-d", now=NOW
    )
    full, _ = _snapshot(fresh)
    # Then both hold the same images and annotations, only numbered differently
    assert _normalised(incremental) == _normalised(full)
    assert len(incremental["annotations"]) == len(full["annotations"]) > 0


def _indexed(lake: ObjectStore, stage: str = ANNOTATE) -> dict[str, str]:
    """The partition's rows as the row index has them: label hash -> the object's sha256."""
    prefix = label_key(PROJECT, "main", stage, "")[: -len(".json")]
    return {
        key[len(prefix) : -len(".json")]: orjson.loads(lake.get(key).body)["mirror"]["sha256"]  # type: ignore[union-attr]
        for key in lake.list_keys(prefix)
    }


def test_drift_names_what_the_snapshot_lacks_and_a_refresh_with_it_catches_up_keeping_ids() -> None:
    # Given a partition of 10 rows with a snapshot
    lake = MemoryLake()
    rows = _rows(12)
    hashes = [_write(lake, r) for r in rows[:10]]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-a", now=NOW)
    before, _ = _snapshot(lake)
    part = Partition(PROJECT, "main", ANNOTATE)
    assert builder.drift(part, _indexed(lake), recover=False) == (_changes(), None)
    # and changes whose refresh never happened (one edited, one removed, one added: a run that died)
    _move_box(rows[0])
    _write(lake, rows[0])
    lake.delete(label_key(PROJECT, "main", ANNOTATE, rows[3]["label_hash"]))
    _write(lake, rows[10])
    # When the snapshot is compared with the rows the index holds
    drift, event = builder.drift(part, _indexed(lake), recover=False)
    # Then it names exactly them, and a refresh with them gives what a full rebuild would
    assert event is None
    assert drift == _changes(sorted([rows[0]["label_hash"], rows[10]["label_hash"]]), [rows[3]["label_hash"]])
    assert builder.refresh(_project(), drift, run_id="20261123T121500Z-b", now=NOW) is not None
    after, manifest = _snapshot(lake)
    live = [r for i, r in enumerate(rows[:11]) if i != 3]
    assert _normalised(after) == _normalised(_full_rebuild(live))
    changes = manifest["changes"]
    assert (changes["added"], changes["changed"], changes["removed"]) == (
        [rows[10]["label_hash"]],
        [rows[0]["label_hash"]],
        [rows[3]["label_hash"]],
    )
    # and the rows it did not change keep their image ids
    assert _image_ids(after, rows[5]) == _image_ids(before, rows[5])
    assert builder.drift(part, _indexed(lake), recover=False) == (_changes(), None)


def test_drift_finishes_a_snapshot_whose_finalizer_died_before_moving_latest_and_returns_its_event() -> None:
    # Given a partition's snapshot, then a second one written by a finalizer that died before latest.json
    lake = MemoryLake()
    rows = _rows(3)
    hashes = [_write(lake, r) for r in rows[:2]]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-a", now=NOW)
    first = lake.get(latest_key(PROJECT, "main", ANNOTATE))
    _write(lake, rows[2])
    second = builder.refresh(
        _project(), _changes([rows[2]["label_hash"]]), run_id="20261123T121500Z-b", now=NOW
    )
    assert second is not None and first is not None
    lake.put(latest_key(PROJECT, "main", ANNOTATE), first.body)  # as if latest.json never moved
    part = Partition(PROJECT, "main", ANNOTATE)
    # When a finalizer that may follow a dead run checks the partition
    drift, event = builder.drift(part, _indexed(lake), recover=True)
    # Then the dead run's snapshot is made the latest, it is exact, and its event is returned again
    assert drift == _changes() and event == second
    assert _snapshot(lake)[1]["snapshot_id"] == second.snapshot_id
    # and a check that recovers nothing returns the latest snapshot's event only when recovering
    assert builder.drift(part, _indexed(lake), recover=False) == (_changes(), None)
    assert builder.partitions(PROJECT) == {part}


def test_drift_rebuilds_everything_when_latest_json_is_unreadable() -> None:
    # Given a partition whose latest.json was overwritten with garbage
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(2)]
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    builder.refresh(_project(), _changes(hashes), run_id="20261123T120000Z-a", now=NOW)
    lake.put(latest_key(PROJECT, "main", ANNOTATE), b"{not json")
    # When it is checked / Then every row is to be written again
    drift, _ = builder.drift(Partition(PROJECT, "main", ANNOTATE), _indexed(lake), recover=False)
    assert drift == _changes(sorted(hashes))


def test_a_row_that_does_not_match_the_ontology_is_left_out_and_named() -> None:
    # Given three rows, one of them holding an object whose feature hash the ontology lacks
    lake = MemoryLake()
    rows = _rows(3)
    bad = rows[0]
    bad["data_units"]["d-row-street"]["labels"]["objects"][0]["featureHash"] = "f-unknown"
    hashes = [_write(lake, r) for r in rows]
    # When the partition is refreshed
    event = CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-a", now=NOW
    )
    # Then the snapshot holds the other rows and the manifest names the bad one and the feature hash
    coco, manifest = _snapshot(lake)
    assert sorted(manifest["rows"]) == sorted(hashes[1:])
    assert "f-unknown" in manifest["changes"]["skipped"][bad["label_hash"]]
    assert not any("d-row-street" in i["file_name"] for i in coco["images"])
    assert event is not None and event.detail["changes"]["rows_skipped"] == 1


# -- the compacted form: what a refresh reads, and snapshots it cannot carry over -------------------


def _snapshot_file(lake: MemoryLake, name: str) -> str:
    latest = orjson.loads(lake.objects[latest_key(PROJECT, "main", ANNOTATE)][0])
    return str(latest["manifest"]).replace("manifest.json", name)


def _as_written_by_the_previous_format(lake: MemoryLake) -> None:
    """Strips the format version from the latest snapshot's latest.json, manifest and rows.tsv, as the
    version before snapshot format 2 wrote them."""
    latest_k = latest_key(PROJECT, "main", ANNOTATE)
    for key in (latest_k, _snapshot_file(lake, "manifest.json")):
        doc = orjson.loads(lake.objects[key][0])
        doc.pop("format_version")
        lake.objects[key] = (orjson.dumps(doc), '"old"')
    rows_key = _snapshot_file(lake, "rows.tsv")
    header, rest = lake.objects[rows_key][0].split(b"\n", 1)
    head = orjson.loads(header.split(b"\t", 1)[1])
    head.pop("format_version")
    lake.objects[rows_key] = (b"#v2\t" + orjson.dumps(head) + b"\n" + rest, '"old"')


def _edit_one_and_refresh(lake: MemoryLake, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    _move_box(rows[0])
    _write(lake, rows[0])
    lake.gets.clear()
    event = CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes([rows[0]["label_hash"]]), run_id="20261123T121500Z-bbbb", now=NOW
    )
    return rows[0], event


def _full_rebuild(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fresh = MemoryLake()
    hashes = [_write(fresh, r) for r in rows]
    CocoSnapshotBuilder(fresh, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T130000Z-dddd", now=NOW
    )
    return _snapshot(fresh)[0]


def test_a_refresh_reads_the_previous_rows_tsv_and_coco_json_but_not_its_manifest() -> None:
    # Given a partition of 12 rows with a snapshot
    lake = MemoryLake()
    rows = _rows(12)
    hashes = [_write(lake, r) for r in rows]
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    previous = {name: _snapshot_file(lake, name) for name in ("manifest.json", "rows.tsv", "coco.json")}
    # When one row is edited and the partition refreshed
    edited, _ = _edit_one_and_refresh(lake, rows)
    # Then the previous snapshot's per-row bytes come from rows.tsv and coco.json, never its manifest
    assert previous["rows.tsv"] in lake.opened and previous["coco.json"] in lake.opened
    assert previous["manifest.json"] not in lake.gets
    # and all three files are streamed both ways: read through open(), written through put_stream(), never
    # whole
    assert not set(previous.values()) & set(lake.gets)
    assert {_snapshot_file(lake, name) for name in ("coco.json", "rows.tsv", "manifest.json")} <= set(
        lake.streamed
    )
    # and the new manifest still lists every row, the counts match the COCO file, and only the edit changed
    coco, manifest = _snapshot(lake)
    assert manifest["incremental"] is True and sorted(manifest["rows"]) == sorted(hashes)
    assert manifest["counts"] == {
        "rows": 12,
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
    }
    assert manifest["changes"]["changed"] == [edited["label_hash"]]
    assert _normalised(coco) == _normalised(_full_rebuild(rows))


def test_a_snapshot_of_an_older_format_is_named_outdated_and_rebuilt_from_all_rows() -> None:
    # Given a partition whose latest snapshot was written in the format before version 2
    lake = MemoryLake()
    rows = _rows(12)
    hashes = [_write(lake, r) for r in rows]
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    _as_written_by_the_previous_format(lake)
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    # When the next run asks which partitions are outdated
    outdated = builder.outdated(PROJECT)
    # Then that partition is, once per builder (the format changes only with the code)
    assert outdated == [Partition(PROJECT, "main", ANNOTATE)]
    assert builder.outdated(PROJECT) == []
    # When the finalizer rebuilds it though none of its rows changed
    lake.gets.clear()
    event = builder.refresh(
        _project(),
        PartitionChanges(outdated[0], (), (), rescan=True),
        run_id="20261123T121500Z-bbbb",
        now=NOW,
    )
    # Then every row is read again, the snapshot is the current format's full rebuild, and nothing is outdated
    assert len([k for k in lake.gets if k.startswith("labels/")]) == 12
    coco, manifest = _snapshot(lake)
    assert event is not None and manifest["incremental"] is False
    assert manifest["format_version"] == SNAPSHOT_FORMAT_VERSION
    assert _normalised(coco) == _normalised(_full_rebuild(rows))
    latest = orjson.loads(lake.objects[latest_key(PROJECT, "main", ANNOTATE)][0])
    assert latest["format_version"] == SNAPSHOT_FORMAT_VERSION
    assert CocoSnapshotBuilder(lake, encord_compatible=False).outdated(PROJECT) == []
    # And a builder of the other COCO mode finds it outdated
    assert CocoSnapshotBuilder(lake, encord_compatible=True).outdated(PROJECT) == outdated


def test_lake_documents_are_one_json_object_on_one_newline_terminated_line() -> None:
    # Given a partition's snapshot
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(5)]
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    # Then coco.json, manifest.json and latest.json each are one JSON object on one line ending in a newline
    keys = [_snapshot_file(lake, n) for n in ("coco.json", "manifest.json")]
    for key in [*keys, latest_key(PROJECT, "main", ANNOTATE)]:
        body = lake.objects[key][0]
        assert body.endswith(b"\n") and body.count(b"\n") == 1, key
        assert isinstance(orjson.loads(body), dict)


@pytest.mark.parametrize(
    "damage",
    ["rows.tsv unreadable", "rows.tsv missing", "coco.json does not fit rows.tsv", "coco.json missing"],
)
def test_a_previous_snapshot_that_cannot_be_carried_over_makes_the_refresh_rebuild_cleanly(
    damage: str,
) -> None:
    # Given a partition of 8 rows whose latest snapshot's compacted form is damaged
    lake = MemoryLake()
    rows = _rows(8)
    hashes = [_write(lake, r) for r in rows]
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    rows_key, coco_key = _snapshot_file(lake, "rows.tsv"), _snapshot_file(lake, "coco.json")
    if damage == "rows.tsv unreadable":
        lake.objects[rows_key] = (b"#v2\t{not json\nx\t1\n", '"bad"')
    elif damage == "rows.tsv missing":
        del lake.objects[rows_key]
    elif damage == "coco.json does not fit rows.tsv":
        lake.objects[coco_key] = (lake.objects[coco_key][0].replace(b'"id":', b'"id": '), '"bad"')
    else:
        del lake.objects[coco_key]
    # When one row is edited and the partition refreshed
    edited, event = _edit_one_and_refresh(lake, rows)
    # Then every row was read again and the snapshot is a full rebuild's, ids numbered afresh
    assert len([k for k in lake.gets if k.startswith("labels/")]) == 8
    coco, manifest = _snapshot(lake)
    assert manifest["incremental"] is False and event is not None
    assert coco == _full_rebuild(rows)
    # and the manifest still compares the rows with the previous snapshot's (from its manifest)
    assert manifest["changes"]["changed"] == [edited["label_hash"]] and manifest["changes"]["added"] == []


def test_masks_are_computed_in_batches_across_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 40 rows, 10 of them with masks (a bitmask and a polygon with holes each)
    import encord_mirror.coco.convert as convert

    calls: list[int] = []
    real = convert.coco_rle_counts

    def counting(masks: Any) -> Any:
        calls.append(len(masks))
        return real(masks)

    monkeypatch.setattr(convert, "coco_rle_counts", counting)
    lake = MemoryLake()
    rows = _rows(40)
    hashes = [_write(lake, r) for r in rows]
    # When the partition's first snapshot is built
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    # Then the masks of many rows went through one numpy call, not one call per row
    assert sum(calls) >= 20 and len(calls) <= 2
    # and the snapshot has every mask, as a conversion row by row gives it
    coco, _ = _snapshot(lake)
    assert sum(1 for a in coco["annotations"] if isinstance(a["segmentation"], dict)) == sum(calls)
    monkeypatch.setattr(convert, "coco_rle_counts", real)
    assert _normalised(coco) == _normalised(_full_rebuild(rows))


def test_a_row_whose_mask_cannot_be_computed_is_left_out_and_the_rows_batched_with_it_are_not() -> None:
    # Given 12 rows with masks computed in one batch, one of them with a bitmask without a width
    lake = MemoryLake()
    rows = _rows(12)
    bad = rows[4]
    [unit] = bad["data_units"].values()
    [bitmask] = [o for o in unit["labels"]["objects"] if o["shape"] == "bitmask"]
    bitmask["bitmask"]["width"] = None
    hashes = [_write(lake, r) for r in rows]
    # When the partition's first snapshot is built
    event = CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        _project(), _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    # Then the bad row is left out and named, and the other rows are all there with their masks
    coco, manifest = _snapshot(lake)
    assert list(manifest["changes"]["skipped"]) == [bad["label_hash"]]
    assert "TypeError" in manifest["changes"]["skipped"][bad["label_hash"]]
    assert event is not None and event.detail["changes"]["rows_skipped"] == 1
    others = [r for r in rows if r is not bad]
    assert sorted(manifest["rows"]) == sorted(r["label_hash"] for r in others)
    assert _normalised(coco) == _normalised(_full_rebuild(others))


def test_the_images_array_is_found_in_the_previous_coco_json_across_block_boundaries() -> None:
    # Given files of up to three read blocks with the marker anywhere (straddling blocks too), or nowhere
    from encord_mirror.coco.snapshot import _BLOCK, _IMAGES_OPEN, _Source

    rng = random.Random(7)
    for _ in range(100):
        body = bytearray(b"x" * rng.randint(0, 3 * _BLOCK))
        if rng.random() < 0.8:
            at = rng.choice([rng.randint(0, len(body)), max(0, _BLOCK - 3), 2 * _BLOCK - 5])
            body[at:at] = _IMAGES_OPEN
        # When it is searched block by block / Then it is where a whole-file search finds it
        assert _Source(io.BytesIO(bytes(body))).find_head(_IMAGES_OPEN) == bytes(body).find(_IMAGES_OPEN)


@pytest.mark.parametrize(
    ("stages", "named"),
    [
        ((Stage("1a2b3c4d-0000-4000-8000-000000000001", "Annotate", "ANNOTATION"),), "Annotate"),
        ((Stage("1a2b3c4d-0000-4000-8000-000000000001", "Label it", "ANNOTATION"),), "Label it"),
        ((Stage("99999999-0000-4000-8000-000000000001", "Review", "REVIEW"),), None),
    ],
    ids=["its-stage", "renamed-since", "gone-from-the-workflow"],
)
def test_the_manifest_and_the_event_name_the_workflow_stage(
    stages: tuple[Stage, ...], named: str | None
) -> None:
    # Given a partition of the stage `Annotate` (uuid 1a2b3c4d-...), and the project's workflow stages
    lake = MemoryLake()
    hashes = [_write(lake, r) for r in _rows(2)]
    project = replace(_project(), stages=stages)
    # When its snapshot is made
    event = CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        project, _changes(hashes), run_id="20261123T120000Z-aaaa", now=NOW
    )
    # Then the manifest and the event carry the uuid and title of the stage the partition is (found by
    # uuid once renamed), or null for a stage the workflow no longer has
    _, manifest = _snapshot(lake)
    uuid = stages[0].uuid if named else None
    assert (manifest["stage_uuid"], manifest["stage_title"]) == (uuid, named)
    assert event is not None and (event.detail["stage_uuid"], event.detail["stage_title"]) == (uuid, named)
