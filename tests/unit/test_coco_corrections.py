"""Without `--encord-compatible` the converter corrects CocoExporter in three documented places only.

Each test compares the corrected output with the compatible one (which test_coco_parity.py proves equal to
CocoExporter's), so a correction that leaks into other fields fails here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from coco_fixtures import fixture

from encord_mirror.coco.convert import convert

GOLDEN = Path(__file__).parent.parent / "golden" / "coco"


def _both() -> tuple[dict[str, Any], dict[str, Any]]:
    f = fixture()
    rows, ontology = f.rows(), f.ontology()
    compatible = orjson.loads(orjson.dumps(convert(rows, ontology, encord_compatible=True)))
    corrected = orjson.loads(orjson.dumps(convert(rows, ontology, encord_compatible=False)))
    return compatible, corrected


def _by_track(coco: dict[str, Any], object_hash: str) -> list[dict[str, Any]]:
    return [a for a in coco["annotations"] if a["attributes"]["encord_track_uuid"] == object_hash]


def test_dynamic_answers_come_from_the_annotations_own_row_and_frame() -> None:
    # Given two videos whose box has the dynamic checklist `Flags` answered "Moving" on one frame
    # (video a on frame 2, video b on frame 3), after an image row with no dynamic answers
    compatible, corrected = _both()
    video_frames = {
        i["id"]: int(i["file_name"].rsplit("/", 1)[1].removesuffix(".jpg"))
        for i in corrected["images"]
        if i["file_name"].startswith("videos/")
    }
    for object_hash, answered_frame in (("o-car-a", 2), ("o-car-b", 3)):
        # When converted without the compatible flag
        moving = {
            video_frames[a["image_id"]]: a["attributes"]["classifications"]["Moving"]
            for a in _by_track(corrected, object_hash)
        }
        # Then "Moving" is true exactly on the answered frame of each video
        assert moving == {0: False, 2: answered_frame == 2, 3: answered_frame == 3}
        # while CocoExporter (reading the first row's actions, by image id) never sees the answer
        assert all(
            not a["attributes"]["classifications"]["Moving"] for a in _by_track(compatible, object_hash)
        )


def test_skeleton_points_keep_their_visibility() -> None:
    # Given a skeleton whose points are visible, occluded and invisible (as the SDK writes `visibility`)
    compatible, corrected = _both()
    (ours,) = _by_track(corrected, "o-pose")
    (theirs,) = _by_track(compatible, "o-pose")
    # Then COCO visibility flags are 2, 1, 0 (CocoExporter marks every point visible)
    assert ours["keypoints"][2::3] == [2.0, 1.0, 0.0]
    assert theirs["keypoints"][2::3] == [2.0, 2.0, 2.0]
    assert ours["keypoints"][0::3] == theirs["keypoints"][0::3]


def test_nested_answers_are_kept() -> None:
    # Given a box answered Colour=Red with the nested text attribute Shade="crimson"
    compatible, corrected = _both()
    (ours,) = _by_track(corrected, "o-box")
    (theirs,) = _by_track(compatible, "o-box")
    # Then the nested answer is there (CocoExporter drops it) and nothing else differs
    assert ours["attributes"]["classifications"].pop("Shade") == "crimson"
    assert "Shade" not in theirs["attributes"]["classifications"]
    assert ours == theirs


def test_corrections_change_nothing_else() -> None:
    # Given both outputs of the fixture
    compatible, corrected = _both()
    # Then categories, images, geometry and ids are the same; only the three corrected fields may differ
    assert corrected["categories"] == compatible["categories"]
    assert corrected["images"] == compatible["images"]
    for ours, theirs in zip(corrected["annotations"], compatible["annotations"], strict=True):
        for key in ("area", "bbox", "segmentation", "category_id", "image_id", "id", "iscrowd"):
            assert ours[key] == theirs[key]
        assert ours["keypoints"] is None or ours["keypoints"][0::3] == theirs["keypoints"][0::3]


def test_golden_files_match() -> None:
    # Given the committed golden COCO files of the hand-written fixture (regenerate: UPDATE_GOLDEN=1)
    compatible, corrected = _both()
    for name, coco in (("fixture_compatible.json", compatible), ("fixture_corrected.json", corrected)):
        path = GOLDEN / name
        text = orjson.dumps(coco, option=orjson.OPT_INDENT_2).decode() + "\n"
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        # Then the output is byte for byte the reviewed one
        assert path.read_text() == text, f"{name} changed: review the diff, then UPDATE_GOLDEN=1"
