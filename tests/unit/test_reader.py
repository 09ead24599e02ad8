"""The read-only Python reader: rows, the annotations table, snapshots by id or as of a time, their diff;
and `coco latest --as-of`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from coco_fixtures import fixture
from conftest import Mirror
from fakes import ANNOTATE, PROJECT, FakeSource

from encord_mirror.adapters.local import LocalLake
from encord_mirror.cli.main import main
from encord_mirror.coco.snapshot import CocoSnapshotBuilder
from encord_mirror.domain.lake import label_key, stage_value
from encord_mirror.domain.models import Partition, PartitionChanges, ProjectInfo
from encord_mirror.reader import LakeReadError, ReadOnlyLakeError, open_lake

STAGE = "annotate-1a2b3c4d"
RUN1, RUN2 = "20261123T120000.000Z-aaaa", "20261124T120000.000Z-bbbb"
T1, T2 = datetime(2026, 11, 23, 12, 0, 5, tzinfo=UTC), datetime(2026, 11, 24, 12, 0, 5, tzinfo=UTC)


def two_snapshots(root: Path) -> list[str]:
    """A partition with a snapshot of four rows, then one where the first row is gone."""
    f = fixture()
    lake = LocalLake(root)
    rows = f.rows()
    for row in rows:
        lake.put(label_key("p-1", "main", STAGE, row["label_hash"]), orjson.dumps(row))
    project = ProjectInfo("p-1", "P", "ont-1", f.ontology(), ())
    builder = CocoSnapshotBuilder(lake, encord_compatible=False)
    hashes = [r["label_hash"] for r in rows]
    builder.refresh(
        project, PartitionChanges(Partition("p-1", "main", STAGE), tuple(hashes), ()), run_id=RUN1, now=T1
    )
    lake.delete(label_key("p-1", "main", STAGE, hashes[0]))
    builder.refresh(
        project, PartitionChanges(Partition("p-1", "main", STAGE), (), (hashes[0],)), run_id=RUN2, now=T2
    )
    return hashes


def test_snapshots_by_id_and_as_of_a_time_and_their_diff(tmp_path: Path) -> None:
    # Given two snapshots of a partition, the second without the first row
    hashes = two_snapshots(tmp_path / "lake")
    lake = open_lake(tmp_path / "lake")
    # When the reader asks for the latest, for one as of a time between them, and for their diff
    latest = lake.snapshot("p-1", stage=STAGE)
    then = lake.snapshot("p-1", stage=STAGE, as_of="2026-11-23T18:00:00Z")
    diff = lake.diff(then, latest)
    # Then each is the snapshot of that moment, and the diff names the removed row only
    assert (latest.snapshot_id, then.snapshot_id) == (RUN2, RUN1)
    assert len(then.coco()["images"]) > len(latest.coco()["images"])
    assert (diff.added, diff.changed, diff.removed) == ((), (), (hashes[0],))
    # And questions without an answer name what was asked
    with pytest.raises(LakeReadError, match="before the first snapshot"):
        lake.snapshot("p-1", stage=STAGE, as_of="2026-11-01T00:00:00Z")
    with pytest.raises(LakeReadError, match="no snapshot 20990101"):
        lake.snapshot("p-1", stage=STAGE, snapshot_id="20990101T000000.000Z-ffff")


def test_cli_coco_latest_as_of_a_time_gives_the_snapshot_latest_then(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two snapshots of a partition
    two_snapshots(tmp_path / "lake")
    lake = str(tmp_path / "lake")
    # When asked for the latest as of a time between them, and as of a time before the first
    assert (
        main(
            [
                "coco",
                "latest",
                "--lake",
                lake,
                "--project",
                "p-1",
                "--stage",
                STAGE,
                "--as-of",
                "2026-11-23T18:00:00Z",
            ]
        )
        == 0
    )
    then = orjson.loads(capsys.readouterr().out)
    # Then the first snapshot is given, and the early time is an error naming it
    assert then["snapshot_id"] == RUN1 and then["counts"]["rows"] == 4
    assert (
        main(["coco", "latest", "--lake", lake, "--project", "p-1", "--as-of", "2026-01-01T00:00:00Z"]) == 2
    )
    assert "as of 2026-01-01T00:00:00Z" in capsys.readouterr().err


def test_rows_and_annotations_of_a_partition_and_bad_partitions(mirror: Mirror, source: FakeSource) -> None:
    # Given a synced lake of three rows
    source.add(3)
    mirror.sync()
    lake = open_lake(mirror.lake.root)
    stage = stage_value(ANNOTATE.uuid, ANNOTATE.title)
    # When its rows and annotations are read
    rows = list(lake.rows(PROJECT, stage=stage))
    table = lake.annotations(project=PROJECT, stage=stage)
    # Then they are the lake's rows, and the table as pyarrow (installed in dev) with one record per instance
    assert [r["mirror"]["label_hash"] for r in rows] == ["label-0000", "label-0001", "label-0002"]
    assert table.num_rows == 9 and table.column("label_hash").to_pylist().count("label-0001") == 3
    # And an unknown partition is an error listing what the lake has; the reader never writes
    with pytest.raises(LakeReadError, match=f"no partition branch 'main' stage 'nope'.*{stage}"):
        list(lake.rows(PROJECT, stage="nope"))
    with pytest.raises(LakeReadError, match="stage 'nope'"):
        lake.annotations(project=PROJECT, stage="nope")
    with pytest.raises(ReadOnlyLakeError):
        lake.store.put("x", b"")
