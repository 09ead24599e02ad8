"""Corrected-mode COCO as the tools users train and evaluate with read it: pycocotools' COCO and COCOeval
(installed here), on every (project, branch, stage) partition of two generated projects.

`verify.training_differences` holds the checks: unique file names carrying their Encord data unit, no
crowd regions, ids from 1, no empty box, `annToMask` on every segmentation, and AP = 1.0 of the ground
truth scored against itself for boxes, masks and each keypoint category.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
import pytest

from encord_emulator.generate import generate
from encord_mirror.coco.convert import convert
from encord_mirror.verify import training_differences

Partitions = dict[tuple[str, str, str], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def partitions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Partitions, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gen")
    groups: Partitions = defaultdict(list)
    ontologies = {}
    for project in generate(out, 150, seed=12, projects=2):
        ontologies[project] = orjson.loads((out / project / "project.json").read_bytes())["ontology"]
        for line in (out / project / "rows.jsonl").read_bytes().splitlines():
            item = orjson.loads(line)
            groups[project, item["row"]["branch_name"], item["stage"]].append(item["row"])
    return groups, ontologies


def test_every_partition_scores_ap_1_against_itself_and_decodes_every_segmentation(
    partitions: tuple[Partitions, dict[str, Any]],
) -> None:
    # Given every partition of two generated projects (every data type and shape, consensus branches)
    groups, ontologies = partitions
    assert len(groups) >= 8
    shapes = set()
    for (project, branch, stage), rows in sorted(groups.items()):
        # When the partition's rows are converted in corrected mode
        coco = orjson.loads(orjson.dumps(convert(rows, ontologies[project], encord_compatible=False)))
        shapes |= {
            c["supercategory"]
            for c in coco["categories"]
            if any(a["category_id"] == c["id"] for a in coco["annotations"])
        }
        # Then pycocotools reads it whole and COCOeval gives AP 1.0 for boxes, masks and keypoints
        assert training_differences(coco) == [], f"{project}/{branch}/{stage}"
    assert shapes >= {"bounding_box", "polygon", "polyline", "point", "skeleton", "bitmask"}


def test_compatible_mode_fails_the_same_checks(partitions: tuple[Partitions, dict[str, Any]]) -> None:
    # Given the largest partition converted in encord-compatible mode (CocoExporter's output)
    groups, ontologies = partitions
    (project, _, _), rows = max(groups.items(), key=lambda item: len(item[1]))
    coco = orjson.loads(orjson.dumps(convert(rows, ontologies[project], encord_compatible=True)))
    # Then the checks find crowds, id 0 and empty boxes: they can fail
    found = "\n".join(training_differences(coco))
    assert "crowd region" in found and "id 0" in found and "empty box" in found
