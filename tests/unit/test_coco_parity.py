"""Parity is the contract: with `encord_compatible=True` the converter gives what Encord's CocoExporter gives.

CocoExporter (opencv + shapely, dev-only) runs on the very same rows: the hand-written edge cases of
coco_fixtures.py and the synthetic generator's rows of every data type and shape.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from coco_fixtures import coco_exporter, fixture

from encord_emulator.generate import generate
from encord_mirror.coco.convert import convert, polygon_area


def _ours(rows: list[dict[str, Any]], ontology: dict[str, Any]) -> dict[str, Any]:
    return dict(orjson.loads(orjson.dumps(convert(rows, ontology, encord_compatible=True))))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out = tmp_path_factory.mktemp("gen")
    (project,) = generate(out, 120, seed=3)
    meta = orjson.loads((out / project / "project.json").read_bytes())
    lines = (Path(out) / project / "rows.jsonl").read_bytes().splitlines()
    return [orjson.loads(line)["row"] for line in lines if line.strip()], meta["ontology"]


def test_hand_written_edge_cases_equal_coco_exporter() -> None:
    # Given shapes on the border, a sub-pixel polygon, an empty image, a title without extension, a holed
    # multi-part polygon, a bitmask, a skeleton, videos with dynamic answers and a classification-only frame
    f = fixture()
    rows, ontology = f.rows(), f.ontology()
    # When both convert them
    theirs, ours = coco_exporter(rows, ontology), _ours(rows, ontology)
    # Then the output is identical, ids and order included
    assert ours == theirs
    assert {a["iscrowd"] for a in ours["annotations"]} == {0, 1}
    assert any(i["file_name"].endswith(".scan_0001") for i in ours["images"])


def test_generated_rows_of_every_data_type_equal_coco_exporter(
    generated: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    # Given 120 SDK-built rows: image, image group, video, DICOM, NIFTI, PDF, audio and text
    rows, ontology = generated
    assert {r["data_type"] for r in rows} >= {"image", "img_group", "video", "dicom", "nifti", "pdf", "audio"}
    # When both convert them
    theirs, ours = coco_exporter(rows, ontology), _ours(rows, ontology)
    # Then the output is identical
    assert ours["categories"] == theirs["categories"]
    assert ours["images"] == theirs["images"]
    assert ours["annotations"] == theirs["annotations"]
    assert ours == theirs
    shapes = {c["supercategory"] for c in ours["categories"]}
    assert shapes >= {
        "bounding_box",
        "rotatable_bounding_box",
        "polygon",
        "polyline",
        "point",
        "skeleton",
        "bitmask",
    }


def test_each_row_alone_and_the_rows_reversed_equal_coco_exporter(
    generated: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    # Given the generated rows one at a time (each becomes the "first row" CocoExporter reads dynamic answers
    # from) and all of them in reverse order
    rows, ontology = generated
    for row in rows[:40]:
        # When converted alone, then identical
        assert _ours([row], ontology) == coco_exporter([row], ontology), row["label_hash"]
    reversed_rows = list(reversed(rows))
    assert _ours(reversed_rows, ontology) == coco_exporter(reversed_rows, ontology)


def test_two_branches_of_one_data_unit_reproduce_coco_exporters_shared_image_ids() -> None:
    # Given the same image labelled on two consensus branches (same data hash, two label rows)
    f = fixture()
    street = f.street()
    branch = copy.deepcopy(street)
    branch["label_hash"], branch["branch_name"] = "row-street-branch", "annotator-2"
    rows = [street, branch, f.empty()]
    # When both convert them, then CocoExporter's numbering (ids taken from the size of its image map) is kept
    assert _ours(rows, f.ontology()) == coco_exporter(rows, f.ontology())


def test_polygon_area_is_bit_for_bit_shapelys() -> None:
    from shapely.geometry import Polygon

    # Given random rings, holes and float coordinates like those of normalised vertices times image size
    rng = random.Random("area")
    for _ in range(2000):
        n = rng.randint(3, 12)
        shell = [(rng.random() * 1920, rng.random() * 1080) for _ in range(n)]
        hole = [(rng.random() * 1920, rng.random() * 1080) for _ in range(rng.randint(3, 5))]
        # When both compute the area, then the floats are identical (not merely close)
        assert polygon_area([shell]) == Polygon(shell).area
        assert polygon_area([shell, hole]) == Polygon(shell, [hole]).area
