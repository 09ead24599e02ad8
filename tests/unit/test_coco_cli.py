"""`encord-mirror coco convert` and `encord-mirror coco latest`, through the real command line entry point."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from coco_fixtures import fixture

from encord_mirror.cli.main import main
from encord_mirror.coco.snapshot import CocoSnapshotBuilder
from encord_mirror.domain.lake import label_key
from encord_mirror.domain.models import Partition, PartitionChanges, ProjectInfo

GOLDEN = Path(__file__).parent.parent / "golden" / "coco"


def _inputs(tmp_path: Path, rows: list[dict[str, Any]], ontology: dict[str, Any]) -> tuple[str, str]:
    rows_path, ontology_path = tmp_path / "rows.json", tmp_path / "ontology.json"
    rows_path.write_bytes(orjson.dumps(rows))
    ontology_path.write_bytes(orjson.dumps(ontology))
    return str(rows_path), str(ontology_path)


@pytest.mark.parametrize(
    ("flags", "golden"),
    [([], "fixture_corrected.json"), (["--encord-compatible"], "fixture_compatible.json")],
)
def test_convert_writes_the_coco_file(tmp_path: Path, flags: list[str], golden: str) -> None:
    # Given an Encord JSON export (a list of to_encord_dict() rows) and its ontology
    f = fixture()
    rows_path, ontology_path = _inputs(tmp_path, f.rows(), f.ontology())
    out = tmp_path / "coco.json"
    # When converted on the command line
    status = main(["coco", "convert", *flags, "--ontology", ontology_path, "--out", str(out), rows_path])
    # Then it succeeds and writes the reviewed golden output
    assert status == 0
    assert orjson.loads(out.read_bytes()) == orjson.loads((GOLDEN / golden).read_bytes())


def test_a_row_that_does_not_match_the_ontology_is_named_with_its_feature_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an ontology without the "Region" object the street row uses
    f = fixture()
    ontology = f.ontology()
    ontology["objects"] = [o for o in ontology["objects"] if o["featureNodeHash"] != "f-region"]
    rows_path, ontology_path = _inputs(tmp_path, f.rows(), ontology)
    # When converted
    status = main(
        ["coco", "convert", "--ontology", ontology_path, "--out", str(tmp_path / "c.json"), rows_path]
    )
    # Then a user error names the row and the feature hash, and no file is written
    err = capsys.readouterr().err
    assert status == 2
    assert "row-street" in err and "f-region" in err
    assert not (tmp_path / "c.json").exists()


def test_input_that_is_not_a_list_of_rows_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a rows file holding one object instead of a list, and a missing ontology file
    rows_path, ontology_path = _inputs(tmp_path, [], fixture().ontology())
    Path(rows_path).write_bytes(b'{"label_hash": "x"}')
    # When converted, then both mistakes are explained without a traceback
    assert (
        main(["coco", "convert", "--ontology", ontology_path, "--out", str(tmp_path / "o"), rows_path]) == 2
    )
    assert "expected a JSON list" in capsys.readouterr().err
    missing = str(tmp_path / "nope.json")
    assert main(["coco", "convert", "--ontology", missing, "--out", str(tmp_path / "o"), rows_path]) == 2
    assert "no such file" in capsys.readouterr().err


def test_latest_prints_the_snapshot_location_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a local lake with a committed snapshot in one stage partition
    from encord_mirror.adapters.local import LocalLake

    f = fixture()
    lake = LocalLake(tmp_path / "lake")
    stage = "annotate-1a2b3c4d"
    rows = f.rows()
    for row in rows:
        lake.put(label_key("p-1", "main", stage, row["label_hash"]), orjson.dumps(row))
    project = ProjectInfo("p-1", "P", "ont-1", f.ontology(), ())
    changes = PartitionChanges(Partition("p-1", "main", stage), tuple(r["label_hash"] for r in rows), ())
    CocoSnapshotBuilder(lake, encord_compatible=False).refresh(
        project, changes, run_id="20261123T120000Z-aaaa", now=datetime(2026, 11, 23, tzinfo=UTC)
    )
    # When a script asks for the latest snapshot of that stage, and of every stage
    assert (
        main(["coco", "latest", "--lake", str(tmp_path / "lake"), "--project", "p-1", "--stage", stage]) == 0
    )
    one = orjson.loads(capsys.readouterr().out)
    assert main(["coco", "latest", "--lake", str(tmp_path / "lake"), "--project", "p-1"]) == 0
    every = orjson.loads(capsys.readouterr().out)
    # Then it prints where the COCO file is and what it holds
    assert one["snapshot_id"] == "20261123T120000Z-aaaa" and one["stage"] == stage
    assert Path(one["coco_uri"].removeprefix("file://")).exists()
    assert one["counts"]["rows"] == 4 and one["changes"]["added"] == 4
    assert every == [one]


def test_latest_without_a_snapshot_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an empty lake directory
    (tmp_path / "lake").mkdir()
    # When asked for the latest snapshot, then it says there is none
    assert main(["coco", "latest", "--lake", str(tmp_path / "lake"), "--project", "p-1"]) == 2
    assert "no COCO snapshot" in capsys.readouterr().err
