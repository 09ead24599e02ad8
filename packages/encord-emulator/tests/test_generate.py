"""The synthetic project generator: valid rows (SDK round trip, offline), determinism, coverage, CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from encord.common.time_parser import parse_datetime
from encord.objects import OntologyStructure
from encord.objects.ontology_labels_impl import LabelRowV2
from encord.ontology import Ontology
from encord.orm.label_row import LabelRowMetadata
from encord.orm.ontology import Ontology as OrmOntology

from encord_emulator.cli import main
from encord_emulator.generate import STAGES, generate, iter_records, label_row_metadata

ROWS = 200
SEED = 5
UNLABELLED_KEYS = {
    "data_hash",
    "data_title",
    "data_type",
    "dataset_hash",
    "dataset_title",
    "stage",
    "task_status",
    "width",
    "height",
}


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fixture")
    (project_hash,) = generate(out, ROWS, seed=SEED)
    return out / project_hash


@pytest.fixture(scope="module")
def records(project_dir: Path) -> list[dict[str, Any]]:
    return list(iter_records(project_dir / "rows.jsonl"))


@pytest.fixture(scope="module")
def project_json(project_dir: Path) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads((project_dir / "project.json").read_bytes())
    return result


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def frame_objects(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for unit in row["data_units"].values():
        labels = unit["labels"]
        for frame in [labels] if "objects" in labels else labels.values():
            yield from frame["objects"]


def test_every_row_round_trips_through_the_sdk_offline(
    records: list[dict[str, Any]], project_json: dict[str, Any]
) -> None:
    # Given the generated rows and the project's ontology, as a client would load it
    structure = OntologyStructure.from_dict(project_json["ontology"])
    ontology = Ontology(
        OrmOntology("t", structure, "o", parse_datetime("2025-01-01"), parse_datetime("2025-01-01")), None
    )  # type: ignore[arg-type]

    # When each row is parsed by a LabelRowV2 built from its listing metadata and serialised again
    mismatched = []
    for record in records:
        metadata = LabelRowMetadata.from_dict(label_row_metadata(record, stage_uuid="s"))
        label_row = LabelRowV2(metadata, None, ontology)  # type: ignore[arg-type]
        label_row.from_labels_dict(orjson.loads(orjson.dumps(record["row"])))
        if label_row.to_encord_dict() != record["row"]:
            mismatched.append(record["row"]["label_hash"])

    # Then every row is a fixed point of the SDK's own round trip
    assert len(records) == ROWS
    assert mismatched == []


def test_same_seed_writes_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    # Given two runs with the same arguments and one with another seed
    generate(tmp_path / "a", 60, seed=1, projects=2)
    generate(tmp_path / "b", 60, seed=1, projects=2)
    generate(tmp_path / "c", 60, seed=2, projects=2)

    # When their files are compared byte for byte
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")

    # Then the same seed gives the same project hashes and bytes; another seed changes every file
    assert a == b
    assert len(a) == 6
    assert set(a).isdisjoint(c)
    assert set(a.values()).isdisjoint(c.values())


def test_small_fixture_covers_every_data_type_shape_and_attribute_kind(
    records: list[dict[str, Any]], project_json: dict[str, Any]
) -> None:
    # Given a 200-row fixture
    rows = [r["row"] for r in records]

    # When its data types, shapes and answers are collected
    data_types = {row["data_type"] for row in rows}
    mimes = {unit["data_type"] for row in rows for unit in row["data_units"].values()}
    objects = [obj for row in rows for obj in frame_objects(row)]
    shapes = {obj["shape"] for obj in objects} | {
        a["shape"] for row in rows for a in row["object_answers"].values() if "shape" in a
    }
    answers = [
        answer
        for row in rows
        for group in (*row["object_answers"].values(), *row["classification_answers"].values())
        for answer in group["classifications"]
    ]
    answer_kinds = {type(a["answers"]).__name__ for a in answers}
    polygons = [obj["polygons"] for obj in objects if "polygons" in obj]
    actions = [a for row in rows for o in row["object_actions"].values() for a in o["actions"]]
    video_ranges = [
        c["range"]
        for row in rows
        if row["data_type"] == "video"
        for c in row["classification_answers"].values()
    ]

    # Then every type the SDK can build offline, every shape and every attribute kind appears
    assert data_types == {"image", "img_group", "video", "dicom", "nifti", "pdf", "audio", "plain_text"}
    assert {
        "image/jpeg",
        "image/png",
        "video/mp4",
        "application/dicom",
        "application/pdf",
        "text/plain",
    } <= mimes
    assert shapes == {
        "bounding_box",
        "rotatable_bounding_box",
        "polygon",
        "polyline",
        "point",
        "skeleton",
        "bitmask",
        "audio",
        "text",
    }
    assert {"list", "str", "float"} <= answer_kinds  # radio/checklist options, text, numeric
    nested = {a["name"] for a in answers} & {"Features", "Axles", "Company", "Intensity"}
    assert nested == {"Features", "Axles", "Company", "Intensity"}  # checklist, radio, text under options
    assert any(len(p) > 1 for p in polygons)  # several parts
    assert any(len(part) > 1 for p in polygons for part in p)  # a hole
    assert {a["name"] for a in actions} == {"Occluded", "Activity"}
    assert all(a["dynamic"] for a in actions)
    assert any(len(r) > 1 or r[0][1] > r[0][0] for r in video_ranges)  # frame-range classifications
    assert {t["template"]["name"] for t in project_json["ontology"]["skeleton_templates"]} == {"Person pose"}


def test_consensus_branches_sit_beside_main_with_their_own_label_hashes(
    records: list[dict[str, Any]],
) -> None:
    # Given the generated rows grouped by data unit
    by_unit: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_unit.setdefault(record["row"]["data_hash"], []).append(record)

    # When the units with more than one branch are picked out
    shared = {h: rs for h, rs in by_unit.items() if len(rs) > 1}

    # Then some units carry consensus rows, each beside a main row, with distinct label hashes
    # and the unit's stage and task status repeated on every branch
    assert shared
    branches = {r["row"]["branch_name"] for r in records}
    assert branches == {"main", "consensus-1", "consensus-2"}
    for rows in shared.values():
        assert {r["row"]["branch_name"] for r in rows} in (
            {"main", "consensus-1"},
            {"main", "consensus-1", "consensus-2"},
        )
        assert len({r["row"]["label_hash"] for r in rows}) == len(rows)
        assert len({(r["stage"], r["task_status"]) for r in rows}) == 1
    assert len({r["row"]["label_hash"] for r in records}) == len(records)
    shape_mixes = [
        {frozenset(o["shape"] for o in frame_objects(r["row"])) for r in rows} for rows in shared.values()
    ]
    assert any(len(mixes) > 1 for mixes in shape_mixes)  # annotators disagree on some units


def test_rows_sit_in_the_workflow_stages_with_matching_task_statuses(
    records: list[dict[str, Any]], project_json: dict[str, Any]
) -> None:
    # Given the project's workflow
    stages = project_json["workflow"]["stages"]

    # When the rows' stages and statuses are counted
    seen = Counter((r["stage"], r["task_status"]) for r in records)

    # Then four stages with deterministic uuids exist, every row is in one, with a status its stage allows,
    # and the row's own annotation_task_status agrees with the record
    assert [(s["title"], s["stageType"]) for s in stages] == [(s.title, s.stage_type) for s in STAGES]
    assert len({s["uuid"] for s in stages}) == 4
    allowed = {(s.title, status) for s in STAGES for status in s.task_statuses}
    assert set(seen) <= allowed
    assert {stage for stage, _ in seen} == {s.title for s in STAGES}
    assert len({status for _, status in seen}) >= 4
    assert all(r["row"]["annotation_task_status"] == r["task_status"] for r in records)


def test_unlabelled_units_are_listed_apart_with_upper_case_types(
    project_dir: Path, records: list[dict[str, Any]]
) -> None:
    # Given the unlabelled.jsonl file
    unlabelled = list(iter_records(project_dir / "unlabelled.jsonl"))

    # When it is compared with the labelled rows
    labelled_units = {r["row"]["data_hash"] for r in records}

    # Then it holds units without a label row, in exactly the documented shape
    assert unlabelled
    assert all(set(u) == UNLABELLED_KEYS for u in unlabelled)
    assert {u["data_type"] for u in unlabelled} <= {"IMAGE", "VIDEO"}
    assert all(u["width"] > 0 and u["height"] > 0 for u in unlabelled)
    assert labelled_units.isdisjoint(u["data_hash"] for u in unlabelled)


def test_edit_times_vary_and_some_rows_share_the_exact_same_second(records: list[dict[str, Any]]) -> None:
    # Given the rows' edit times
    edited = Counter(r["row"]["last_edited_at"] for r in records)

    # When they are parsed
    moments = [parse_datetime(t) for t in edited]

    # Then they spread over weeks, some are shared, and created_at never follows last_edited_at
    assert len(edited) > ROWS // 2
    assert max(edited.values()) >= 2
    assert max(moments) - min(moments) > parse_datetime("2025-02-01") - parse_datetime("2025-01-01")
    assert all(
        parse_datetime(r["row"]["created_at"]) <= parse_datetime(r["row"]["last_edited_at"]) for r in records
    )


def test_images_and_videos_carry_dimensions_and_links_for_coco(records: list[dict[str, Any]]) -> None:
    # Given the image and video rows
    visual = [r["row"] for r in records if r["row"]["data_type"] in ("image", "video", "img_group")]

    # When their data units are inspected
    units = [unit for row in visual for unit in row["data_units"].values()]

    # Then each has a positive size and an https link, and bitmasks match their unit's size
    assert units
    assert all(u["width"] > 0 and u["height"] > 0 for u in units)
    assert all(u["data_link"].startswith("https://") for u in units)
    for row in visual:
        for unit in row["data_units"].values():
            labels = unit["labels"]
            for frame in [labels] if "objects" in labels else labels.values():
                for obj in frame["objects"]:
                    if "bitmask" in obj:
                        assert (obj["bitmask"]["width"], obj["bitmask"]["height"]) == (
                            unit["width"],
                            unit["height"],
                        )


def test_rows_use_only_the_projects_own_feature_hashes(
    records: list[dict[str, Any]], project_json: dict[str, Any], tmp_path: Path
) -> None:
    # Given the ontology, read back by the SDK, and a second project from the same run
    structure = OntologyStructure.from_dict(project_json["ontology"])
    known = {node.feature_node_hash for node in structure.objects} | {
        node.feature_node_hash for node in structure.classifications
    }
    hashes = generate(tmp_path, 5, seed=SEED, projects=2)
    other = orjson.loads((tmp_path / hashes[1] / "project.json").read_bytes())

    # When the feature hashes the rows use are collected
    used = {obj["featureHash"] for r in records for obj in frame_objects(r["row"])} | {
        c["featureHash"] for r in records for c in r["row"]["classification_answers"].values()
    }

    # Then the SDK reproduces the ontology dict, the rows only use its hashes, and each project has its own
    assert structure.to_dict() == project_json["ontology"]
    assert used <= known
    assert other["ontology"] != project_json["ontology"]


def test_row_count_is_exact_per_project_and_progress_reaches_the_total(tmp_path: Path) -> None:
    # Given a progress callback
    seen: list[int] = []

    # When three projects of 37 rows are generated
    hashes = generate(tmp_path, 37, seed=3, projects=3, progress=seen.append)

    # Then each project has exactly 37 rows and progress counts up to 111
    assert len(set(hashes)) == 3
    assert [sum(1 for _ in iter_records(tmp_path / h / "rows.jsonl")) for h in hashes] == [37, 37, 37]
    assert seen == list(range(1, 112))


def test_cli_generate_writes_projects_and_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the command line
    out = tmp_path / "fixture"

    # When `encord-emulator generate` runs
    status = main(["generate", "--out", str(out), "--rows", "50", "--seed", "9", "--projects", "2"])

    # Then it succeeds, prints the project hashes, and reports progress on stderr up to 100%
    captured = capsys.readouterr()
    printed = captured.out.split()
    assert status == 0
    assert sorted(printed) == sorted(p.name for p in out.iterdir())
    assert len(printed) == 2
    assert "100/100 rows (100%)" in captured.err
    assert captured.err.count("generate:") >= 10


def test_cli_generate_rejects_a_non_positive_row_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a row count of zero
    # When the command runs
    status = main(["generate", "--out", str(tmp_path), "--rows", "0"])

    # Then it exits with status 2 and says which argument is wrong, writing nothing
    assert status == 2
    assert "rows must be at least 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_separate_processes_with_different_hash_seeds_write_identical_bytes(tmp_path: Path) -> None:
    # Given two interpreters whose string hashing (and so set order) differs
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}

        # When each runs the CLI with the same arguments
        subprocess.run(
            [
                sys.executable,
                "-m",
                "encord_emulator",
                "generate",
                "--out",
                str(out),
                "--rows",
                "40",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        outputs.append(digest(out))

    # Then the files are byte-identical
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 3
