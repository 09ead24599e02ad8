"""The annotations table: one record per object / classification instance per frame, per partition, kept
current by every run (replaced, moved, dropped) from the changed rows only."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pytest
from conftest import Mirror
from fakes import ANNOTATE, CAR, COMPLETE, PERSON, PROJECT, FakeSource

from encord_mirror.adapters.local import LocalLake
from encord_mirror.domain.lake import stage_value
from encord_mirror.domain.models import Partition, StoredObject
from encord_mirror.reader.sdk import label_row
from encord_mirror.tables.annotations import (
    MEMBER_ROWS,
    AnnotationsTable,
    index_key,
    marker_key,
    read_table,
    table_key,
)
from encord_mirror.tables.records import COLUMNS, annotation_records

A = Partition(PROJECT, "main", stage_value(ANNOTATE.uuid, ANNOTATE.title))
C = Partition(PROJECT, "main", stage_value(COMPLETE.uuid, COMPLETE.title))


def by_row(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(r["label_hash"]) for r in records)


def test_each_object_and_classification_instance_is_one_record_with_typed_geometry(
    mirror: Mirror, source: FakeSource
) -> None:
    # Given three rows of one car, one person and one weather classification each
    source.add(3)
    # When they are synced
    mirror.sync()
    # Then the partition's table holds nine records, the boxes normalised, and every column present
    records = read_table(mirror.lake, A)
    assert by_row(records) == {"label-0000": 3, "label-0001": 3, "label-0002": 3}
    kinds = Counter((r["kind"], r["feature_hash"]) for r in records)
    assert kinds == {("object", CAR): 3, ("object", PERSON): 3, ("classification", "feat-weather"): 3}
    car = next(r for r in records if r["feature_hash"] == CAR and r["label_hash"] == "label-0001")
    assert (car["bbox_x"], car["bbox_w"], car["shape"], car["stage"]) == (0.1, 0.01, "bounding_box", A.stage)
    assert list(car) == COLUMNS
    row = orjson.loads(
        mirror.lake.get(f"labels/project={PROJECT}/branch=main/stage={A.stage}/label-0001.json").body
    )  # type: ignore[union-attr]
    assert car["sha256"] == row["mirror"]["sha256"]


def test_an_edited_row_has_its_records_replaced_and_the_others_are_copied_not_reread(
    mirror: Mirror, source: FakeSource, lake: LocalLake
) -> None:
    # Given ten synced rows
    source.add(10)
    mirror.sync()
    before = read_table(lake, A)
    # When one row is edited (its car grows) and synced
    mirror.clock.advance(60)
    source.edit("label-0004")
    mirror.clock.advance(60)
    mirror.sync()
    # Then its car has the new width, every other record is unchanged, and the count per row holds
    after = read_table(lake, A)
    assert by_row(after) == by_row(before)
    changed = [r for r in after if r not in before]
    assert {r["label_hash"] for r in changed} == {"label-0004"}
    assert [r["bbox_w"] for r in changed if r["feature_hash"] == CAR] == [0.02]
    # And a refresh for that one row reads that one row object and copies the rest
    counting = CountingLake(lake)
    stats = AnnotationsTable(counting).refresh(A, ["label-0004"], [])
    assert (stats.rows_read, stats.lines_copied, stats.records_written) == (1, 27, 3)
    assert counting.label_reads == 1


def test_a_moved_row_takes_its_records_to_its_new_partition_and_a_deleted_rows_go(
    mirror: Mirror, source: FakeSource, lake: LocalLake
) -> None:
    # Given three synced rows in Annotate
    source.add(3)
    mirror.sync()
    # When one moves to Complete and another is deleted, seen by a reconciling run
    source.move("label-0001", COMPLETE)
    source.delete("label-0002")
    mirror.clock.advance(60)
    mirror.sync(full=True)
    # Then Annotate keeps only label-0000's records and Complete holds label-0001's, with its stage
    assert by_row(read_table(lake, A)) == {"label-0000": 3}
    moved = read_table(lake, C)
    assert by_row(moved) == {"label-0001": 3}
    assert {r["stage"] for r in moved} == {C.stage}
    # And a partition whose rows all left has no table file
    source.move("label-0000", COMPLETE)
    mirror.clock.advance(60)
    mirror.sync(full=True)
    assert lake.get(table_key(A)) is None
    assert by_row(read_table(lake, C)) == {"label-0000": 3, "label-0001": 3}


def test_a_lake_without_tables_is_rebuilt_from_its_rows_on_the_next_run(
    mirror: Mirror, source: FakeSource, lake: LocalLake
) -> None:
    # Given a lake synced before the annotations table existed (simulated: the tables removed)
    source.add(4)
    mirror.sync()
    for key in list(lake.list_keys("tables/")):
        lake.delete(key)
    # When a run changes nothing
    mirror.clock.advance(60)
    mirror.sync()
    # Then every partition's table is there again, whole
    assert by_row(read_table(lake, A)) == {f"label-{i:04d}": 3 for i in range(4)}


def test_a_table_marker_without_its_final_newline_is_rewritten_not_rebuilt(
    mirror: Mirror, source: FakeSource, lake: LocalLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a lake whose _table.json an older release wrote (no final newline)
    source.add(4)
    mirror.sync()
    lake.put(marker_key(PROJECT), b'{"format_version":1}')
    rebuilt: list[str] = []
    monkeypatch.setattr(AnnotationsTable, "rebuild_project", lambda _, project: rebuilt.append(project))
    # When a run changes nothing
    mirror.clock.advance(60)
    mirror.sync()
    # Then the marker ends with a newline now, and the tables were not rebuilt
    assert lake.get(marker_key(PROJECT)).body == b'{"format_version":1}\n'  # type: ignore[union-attr]
    assert rebuilt == [] and by_row(read_table(lake, A)) == {f"label-{i:04d}": 3 for i in range(4)}


def test_records_match_what_the_sdk_parses_from_every_generated_data_type(tmp_path: Path) -> None:
    # Given a generated project with every data type and shape the SDK can build
    from encord_emulator.generate import generate

    (project,) = generate(tmp_path / "fx", 60, seed=7)
    folder = tmp_path / "fx" / project
    ontology = json.loads((folder / "project.json").read_text())["ontology"]
    ontology = ontology.get("editor", ontology)
    rows = [json.loads(line)["row"] for line in (folder / "rows.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r]
    assert {str(r["data_type"]).lower() for r in rows} >= {"image", "video", "audio", "img_group"}
    for row in rows:
        # When a row is flattened, and the SDK parses the same row offline
        records = annotation_records(row)
        parsed = label_row(row, ontology)
        # Then there is one object record per object instance per frame (one per audio/text object)
        expected = sum(len(o.get_annotations()) or 1 for o in parsed.get_object_instances())
        assert sum(r["kind"] == "object" for r in records) == expected, row["data_title"]
        assert {r["object_hash"] for r in records if r["kind"] == "object"} == {
            o.object_hash for o in parsed.get_object_instances()
        }


class CountingLake:
    """A lake that counts the row objects read through it."""

    def __init__(self, inner: LocalLake) -> None:
        self.inner = inner
        self.label_reads = 0

    def get(self, key: str) -> StoredObject | None:
        if key.startswith("labels/"):
            self.label_reads += 1
        return self.inner.get(key)

    def put(self, key: str, body: bytes, **kwargs: Any) -> str:
        return self.inner.put(key, body, **kwargs)

    def open(self, key: str) -> BinaryIO | None:
        return self.inner.open(key)

    def put_stream(self, key: str, chunks: Iterable[bytes], **kwargs: Any) -> str:
        return self.inner.put_stream(key, chunks, **kwargs)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        return self.inner.list_keys(prefix)

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        return self.inner.list_etags(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


def test_a_refresh_rewrites_only_the_gzip_members_holding_a_changed_row_and_readers_see_one_table(
    mirror: Mirror, source: FakeSource, lake: LocalLake
) -> None:
    # Given 40 synced rows: their table is gzip members of MEMBER_ROWS rows each
    source.add(40)
    mirror.sync()
    index = orjson.loads(lake.get(index_key(A)).body)  # type: ignore[union-attr]
    assert len(index["members"]) == -(-40 // MEMBER_ROWS)
    before = lake.get(table_key(A)).body  # type: ignore[union-attr]
    # When one row in the last member changes and the partition is refreshed
    source.edit("label-0039")
    stats = AnnotationsTable(lake).refresh(A, ["label-0039"], [])
    after = lake.get(table_key(A)).body  # type: ignore[union-attr]
    # Then only that member was decompressed: the others' bytes are copied as they were
    first_members = sum(n for _, n in index["members"][:-1])
    assert after[:first_members] == before[:first_members]
    assert stats.lines_copied == 3 * (40 - 2 * MEMBER_ROWS - 1)
    # And DuckDB reads the multi-member file as one table, all 120 records
    import duckdb

    count = duckdb.sql(f"SELECT count(*) FROM read_json('{lake.root / table_key(A)}')").fetchall()
    assert count == [(120,)]


def test_a_table_whose_member_index_is_stale_is_read_whole_and_indexed_again(
    mirror: Mirror, source: FakeSource, lake: LocalLake
) -> None:
    # Given a synced table whose member index is lost (a finalizer died between the two writes)
    source.add(20)
    mirror.sync()
    lake.delete(index_key(A))
    # When a row is removed from the partition
    stats = AnnotationsTable(lake).refresh(A, [], ["label-0003"])
    # Then every other record is kept, and the index is back
    assert by_row(read_table(lake, A)) == {f"label-{i:04d}": 3 for i in range(20) if i != 3}
    assert stats.lines_copied == 57 and lake.get(index_key(A)) is not None
