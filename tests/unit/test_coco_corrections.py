"""Without `--encord-compatible` the converter corrects CocoExporter in its documented places only.

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
    video_frames = {i["id"]: i["encord_frame"] for i in corrected["images"] if "video_title" in i}
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
    # Then the nested answer is there (CocoExporter drops it) and no other answer differs
    assert ours["attributes"]["classifications"].pop("Shade") == "crimson"
    assert "Shade" not in theirs["attributes"]["classifications"]
    assert ours["attributes"] == theirs["attributes"]


def test_corrections_change_nothing_else() -> None:
    # Given both outputs of the fixture
    compatible, corrected = _both()
    # Then categories differ only by the keypoint lists, images by their file name, ids and Encord keys
    for ours, theirs in zip(corrected["categories"], compatible["categories"], strict=True):
        assert {k: v for k, v in ours.items() if k not in ("keypoints", "skeleton")} == {
            k: v for k, v in theirs.items() if k not in ("keypoints", "skeleton")
        }
    for ours, theirs in zip(corrected["images"], compatible["images"], strict=True):
        assert ours["id"] == theirs["id"] + 1
        own = ("id", "file_name", "encord_data_hash", "encord_frame", "encord_data_link", "encord_label_hash")
        assert {k: v for k, v in ours.items() if k not in own} == {
            k: v for k, v in theirs.items() if k not in own
        }
    # And annotations keep their order, image, category and, for boxes and single polygons, geometry
    shapes = {c["id"]: c["supercategory"] for c in compatible["categories"]}
    for ours, theirs in zip(corrected["annotations"], compatible["annotations"], strict=True):
        assert (ours["id"], ours["image_id"]) == (theirs["id"] + 1, theirs["image_id"] + 1)
        assert ours["category_id"] == theirs["category_id"]
        shape = shapes[theirs["category_id"]]
        simple = shape == "bounding_box" or (shape == "polygon" and not theirs["iscrowd"])
        if simple and theirs["bbox"][2] >= 1 and theirs["bbox"][3] >= 1:
            for key in ("area", "bbox", "segmentation"):
                assert ours[key] == theirs[key]
        assert ours["keypoints"] is None or len(ours["keypoints"]) == len(theirs["keypoints"])


def test_no_annotation_is_a_crowd_and_every_box_has_a_size() -> None:
    # Given the fixture's bitmask, holed multi-part polygon, sub-pixel polygon, point, polyline and skeleton
    compatible, corrected = _both()
    # Then CocoExporter marks crowds and writes empty boxes, and the corrected output does neither
    assert {a["iscrowd"] for a in compatible["annotations"]} == {0, 1}
    assert any(a["bbox"][2] == 0 for a in compatible["annotations"])
    assert {a["iscrowd"] for a in corrected["annotations"]} == {0}
    assert all(a["bbox"][2] >= 1 and a["bbox"][3] >= 1 for a in corrected["annotations"])
    assert min(a["id"] for a in corrected["annotations"]) == 1
    assert min(i["id"] for i in corrected["images"]) == 1


def test_points_and_skeletons_are_coco_keypoints() -> None:
    # Given the fixture's point category and its three-point skeleton template head-hand-foot
    _, corrected = _both()
    categories = {c["name"]: c for c in corrected["categories"]}
    # Then their categories list the keypoint names and the template's edges, 1-based
    assert categories["Spot"]["keypoints"] == ["Spot"] and categories["Spot"]["skeleton"] == []
    assert categories["Pose"]["keypoints"] == ["head", "hand", "foot"]
    assert categories["Pose"]["skeleton"] == [[1, 2], [2, 3]]
    # And a point is the pixel it falls in (the last one for a point on the right or bottom edge)
    spot = next(a for a in corrected["annotations"] if a["category_id"] == categories["Spot"]["id"])
    x, y, v = spot["keypoints"]
    bx, by, bw, bh = spot["bbox"]
    assert v == 2.0 and spot["num_keypoints"] == 1 and spot["area"] == 1.0
    assert (bw, bh) == (1.0, 1.0) and bx <= x <= bx + 1 and by <= y <= by + 1
    # And the skeleton's box holds its labelled points (the invisible one is not labelled)
    (pose,) = _by_track(corrected, "o-pose")
    bx, by, bw, bh = pose["bbox"]
    assert pose["num_keypoints"] == 2
    for px, py, pv in zip(
        pose["keypoints"][::3], pose["keypoints"][1::3], pose["keypoints"][2::3], strict=True
    ):
        assert not pv or (bx <= px <= bx + bw and by <= py <= by + bh)


def test_file_names_are_unique_and_carry_the_encord_data_unit() -> None:
    # Given the fixture's images, video frames and a title without an extension
    compatible, corrected = _both()
    # Then each file name is `<data_hash>/<frame>.<ext>` and each image names its data unit, frame and link
    names = [i["file_name"] for i in corrected["images"]]
    assert len(set(names)) == len(names)
    for image in corrected["images"]:
        assert image["file_name"].startswith(f"{image['encord_data_hash']}/{image['encord_frame']}.")
        assert image["encord_data_link"] == image["coco_url"]
        assert image["encord_label_hash"]
    assert any(i["file_name"].endswith(".scan_0001") for i in compatible["images"])
    assert not any(i["file_name"].endswith(".scan_0001") for i in corrected["images"])


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
