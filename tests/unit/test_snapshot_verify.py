"""`snapshot_differences`: a latest COCO snapshot must equal a fresh conversion of its partition's rows,
with a right manifest, and load in pycocotools. It is the e2e suites' oracle, so it must also see every
way a snapshot can be wrong."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from coco_fixtures import fixture

from encord_mirror.adapters.local import LocalLake
from encord_mirror.coco.snapshot import CocoSnapshotBuilder
from encord_mirror.domain.lake import label_key, latest_key
from encord_mirror.domain.models import Partition, PartitionChanges, ProjectInfo
from encord_mirror.domain.rowdoc import content_sha256
from encord_mirror.verify import snapshot_differences

PROJECT = "p-0001"
STAGE = "annotate-1a2b3c4d"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
MODES = pytest.mark.parametrize("compatible", [False, True], ids=["corrected", "encord-compatible"])


def _ontology() -> dict[str, Any]:
    return fixture().ontology()


def _write(lake: LocalLake, row: dict[str, Any], stage: str = STAGE) -> str:
    """A lake object as the worker writes it: the row plus a `mirror` block with its content hash."""
    doc = {**row, "mirror": {"stage": stage, "last_edited_at": "2026-01-02T03:04:05+00:00"}}
    doc["mirror"]["sha256"] = content_sha256(doc)
    lake.put(label_key(PROJECT, "main", stage, row["label_hash"]), orjson.dumps(doc))
    return str(row["label_hash"])


def _refresh(
    lake: LocalLake,
    compatible: bool,
    run_id: str,
    upserted: list[str],
    removed: list[str] = [],  # noqa: B006
) -> None:
    project = ProjectInfo(PROJECT, "Project", "ont-1", _ontology(), ())
    changes = PartitionChanges(Partition(PROJECT, "main", STAGE), tuple(upserted), tuple(removed))
    CocoSnapshotBuilder(lake, encord_compatible=compatible).refresh(project, changes, run_id=run_id, now=NOW)


def _differences(lake: LocalLake, compatible: bool) -> list[str]:
    return snapshot_differences(lake, PROJECT, _ontology(), encord_compatible=compatible)


def _synced(tmp_path: Path, compatible: bool) -> tuple[LocalLake, list[dict[str, Any]]]:
    """A partition of the fixture's four rows (boxes, polygons, masks, skeletons, videos with dynamic
    answers) and its first snapshot."""
    lake = LocalLake(tmp_path / "lake")
    rows = fixture().rows()
    _refresh(lake, compatible, "20261123T120000.000Z-a", [_write(lake, r) for r in rows])
    return lake, rows


def _latest(lake: LocalLake) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    stored = lake.get(latest_key(PROJECT, "main", STAGE))
    assert stored is not None
    latest = orjson.loads(stored.body)
    manifest, coco = (orjson.loads(lake.get(latest[k]).body) for k in ("manifest", "coco"))  # type: ignore[union-attr]
    return latest, manifest, coco


def _tamper(lake: LocalLake, coco: dict[str, Any]) -> None:
    """Overwrite the latest coco.json and fix up the manifest's hash, so only the content is wrong."""
    latest, manifest, _ = _latest(lake)
    body = orjson.dumps(coco)
    lake.put(latest["coco"], body)
    manifest["coco"].update(sha256=hashlib.sha256(body).hexdigest(), bytes=len(body))
    lake.put(latest["manifest"], orjson.dumps(manifest))


@MODES
def test_a_snapshot_built_by_the_product_has_no_difference(tmp_path: Path, compatible: bool) -> None:
    # Given a partition snapshotted, then refreshed incrementally after an edit, a removal and an addition
    lake, rows = _synced(tmp_path, compatible)
    _, _, first = _latest(lake)
    assert len(first["annotations"]) >= 8
    edited = orjson.loads(orjson.dumps(rows[0]))
    for obj in next(iter(edited["data_units"].values()))["labels"]["objects"]:
        if obj["shape"] == "bounding_box":
            obj["boundingBox"]["x"] = 0.25
    _write(lake, edited)
    lake.delete(label_key(PROJECT, "main", STAGE, rows[1]["label_hash"]))
    _refresh(lake, compatible, "20261123T121500.000Z-b", [edited["label_hash"]], [rows[1]["label_hash"]])
    # When the helper compares the lake's snapshots with a fresh conversion
    differences = _differences(lake, compatible)
    # Then there is none
    assert differences == []


@MODES
def test_a_dropped_annotation_is_a_difference(tmp_path: Path, compatible: bool) -> None:
    # Given a snapshot missing one annotation
    lake, _ = _synced(tmp_path, compatible)
    _, _, coco = _latest(lake)
    dropped = coco["annotations"].pop(3)
    _tamper(lake, coco)
    # When it is checked
    differences = _differences(lake, compatible)
    # Then the missing annotation is named, and the manifest's counts no longer match
    assert any(d.startswith(f"snapshot main/{STAGE}: annotation missing:") for d in differences)
    assert any(dropped["attributes"]["encord_track_uuid"] in d for d in differences)
    assert any("manifest counts" in d for d in differences)


def test_a_row_edited_after_the_snapshot_makes_it_stale(tmp_path: Path) -> None:
    # Given a row whose box moved in the lake after the snapshot was built
    lake, rows = _synced(tmp_path, False)
    edited = orjson.loads(orjson.dumps(rows[0]))
    for obj in next(iter(edited["data_units"].values()))["labels"]["objects"]:
        if obj["shape"] == "bounding_box":
            obj["boundingBox"]["x"] = 0.25
    _write(lake, edited)
    # When it is checked
    differences = _differences(lake, False)
    # Then the row's hash is stale, and the moved box differs from a fresh conversion
    assert any(f"stale: row {edited['label_hash']} sha256" in d for d in differences)
    assert any("annotation missing" in d for d in differences)
    assert any("annotation not in a fresh conversion" in d for d in differences)


def test_a_live_row_left_out_and_a_deleted_row_kept_are_differences(tmp_path: Path) -> None:
    # Given a row added to the partition and another deleted from it, with no refresh
    lake, rows = _synced(tmp_path, False)
    extra = orjson.loads(orjson.dumps(rows[1]))
    extra["label_hash"] = "row-added-late"
    _write(lake, extra)
    lake.delete(label_key(PROJECT, "main", STAGE, rows[0]["label_hash"]))
    # When it is checked
    differences = _differences(lake, False)
    # Then both are named
    assert any("live row row-added-late is not in the snapshot's manifest" in d for d in differences)
    assert any(f"lists row {rows[0]['label_hash']}, which is not live" in d for d in differences)


def test_a_partition_with_rows_and_no_snapshot_is_a_difference(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path / "lake")
    _write(lake, fixture().rows()[0])
    assert _differences(lake, False) == [f"snapshot main/{STAGE}: no latest.json, but 1 live rows"]


def test_a_partition_whose_rows_all_left_has_an_empty_snapshot(tmp_path: Path) -> None:
    # Given every row of a snapshotted partition removed, and the partition refreshed
    lake, rows = _synced(tmp_path, False)
    for row in rows:
        lake.delete(label_key(PROJECT, "main", STAGE, row["label_hash"]))
    _refresh(lake, False, "20261123T121500.000Z-b", [], [r["label_hash"] for r in rows])
    # Then its latest snapshot is empty, and that is what the helper expects
    _, manifest, coco = _latest(lake)
    assert coco["images"] == [] and manifest["counts"] == {"rows": 0, "images": 0, "annotations": 0}
    assert _differences(lake, False) == []


def test_a_wrong_coco_sha256_in_the_manifest_is_a_difference(tmp_path: Path) -> None:
    lake, _ = _synced(tmp_path, False)
    latest, manifest, _ = _latest(lake)
    manifest["coco"]["sha256"] = "0" * 64
    lake.put(latest["manifest"], orjson.dumps(manifest))
    assert _differences(lake, False) == [
        f"snapshot main/{STAGE}: manifest's coco sha256 or size is not coco.json's"
    ]


def test_wrong_change_lists_in_the_manifest_are_a_difference(tmp_path: Path) -> None:
    lake, _ = _synced(tmp_path, False)
    latest, manifest, _ = _latest(lake)
    manifest["changes"]["added"] = manifest["changes"]["added"][1:]
    lake.put(latest["manifest"], orjson.dumps(manifest))
    [difference] = _differences(lake, False)
    assert "manifest changes.added" in difference


def test_a_track_id_shared_by_two_objects_is_a_difference(tmp_path: Path) -> None:
    lake, _ = _synced(tmp_path, False)
    _, _, coco = _latest(lake)
    for ann in coco["annotations"]:
        ann["attributes"]["track_id"] = 0
    _tamper(lake, coco)
    assert any("track id 0 joins objects" in d for d in _differences(lake, False))


def test_a_mask_pycocotools_cannot_paint_on_its_image_is_a_difference(tmp_path: Path) -> None:
    # Given an RLE annotation whose mask is sized for another image
    lake, _ = _synced(tmp_path, False)
    _, _, coco = _latest(lake)
    ann = next(a for a in coco["annotations"] if isinstance(a["segmentation"], dict) and a["area"] > 0)
    ann["segmentation"] = {"size": [2, 3], "counts": "06"}
    _tamper(lake, coco)
    # When it is checked / Then annToMask's result is named
    assert any(f"annToMask of annotation {ann['id']} is (2, 3)" in d for d in _differences(lake, False))


def test_compatible_snapshots_take_dynamic_answers_from_each_rows_own_frames(tmp_path: Path) -> None:
    # Given a compatible-mode snapshot of two videos with dynamic answers (CocoExporter would read the
    # first video's answers for both; the snapshot builder does not, by design)
    lake, _ = _synced(tmp_path, True)
    _, _, coco = _latest(lake)
    moving = [a for a in coco["annotations"] if a["attributes"]["classifications"].get("Moving")]
    # Then each video has its own dynamic answer, and the helper accepts it
    assert {a["attributes"]["encord_track_uuid"] for a in moving} == {"o-car-a", "o-car-b"}
    assert _differences(lake, True) == []


def test_a_row_the_converter_refuses_is_expected_to_be_left_out(tmp_path: Path) -> None:
    # Given a partition where one row holds an object of a feature the ontology lacks
    lake = LocalLake(tmp_path / "lake")
    rows = fixture().rows()
    bad = orjson.loads(orjson.dumps(rows[0]))
    next(iter(bad["data_units"].values()))["labels"]["objects"][0]["featureHash"] = "f-unknown"
    hashes = [_write(lake, r) for r in [bad, *rows[1:]]]
    # When the builder snapshots it (leaving that row out and naming it)
    _refresh(lake, False, "20261123T120000.000Z-a", hashes)
    _, manifest, _ = _latest(lake)
    assert list(manifest["changes"]["skipped"]) == [bad["label_hash"]]
    # Then the helper expects exactly that
    assert _differences(lake, False) == []
