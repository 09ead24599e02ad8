"""A reconciling run's check of the lake's row objects against the row index, pure (`domain.lakecheck`)."""

from __future__ import annotations

from datetime import timedelta

import orjson
from fakes import ANNOTATE, PROJECT, REVIEW, T0, FakeRow

from encord_mirror.domain.lake import label_key, stage_value
from encord_mirror.domain.lakecheck import check_lake
from encord_mirror.domain.models import IndexEntry, LoadedRow, Stage, StoredObject
from encord_mirror.domain.rowdoc import build_document, encode_document


def _object(label_hash: str, stage: Stage = ANNOTATE, *, edited_min: int = 0) -> tuple[str, bytes, str]:
    meta = FakeRow(f"data-{label_hash}", "main", label_hash, T0 + timedelta(minutes=edited_min), stage).meta(
        PROJECT
    )
    document, sha = build_document(
        LoadedRow(meta, {"label_hash": label_hash}), {"label_hash": label_hash}, synced_at=T0
    )
    key = label_key(PROJECT, "main", stage_value(stage.uuid, stage.title), label_hash)
    return key, encode_document(document), sha


def _entry(key: str, sha: str, etag: str, label_hash: str) -> IndexEntry:
    stage = key.split("/")[3].partition("=")[2]
    return IndexEntry(PROJECT, label_hash, f"data-{label_hash}", "main", key, stage, T0, sha, etag, T0)


class Lake:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []

    def listed(self) -> list[tuple[str, str]]:
        return [(k, f"etag-{hash(v)}") for k, v in sorted(self.objects.items())]

    def get(self, key: str) -> StoredObject | None:
        self.reads.append(key)
        body = self.objects.get(key)
        return None if body is None else StoredObject(body, f"etag-{hash(body)}")


def test_intact_objects_with_the_index_etag_are_not_read() -> None:
    lake = Lake()
    key, body, sha = _object("a")
    lake.objects[key] = body
    index = {"a": _entry(key, sha, f"etag-{hash(body)}", "a")}

    check = check_lake(PROJECT, index, lake.listed(), {"a": key}, lake.get)

    assert (check.dropped, check.adopted, check.strays, check.reads) == ((), (), (), 0)
    assert lake.reads == []


def test_missing_truncated_and_edited_objects_are_dropped_and_counted_damaged() -> None:
    lake = Lake()
    index = {}
    for label_hash in ("gone", "cut", "edited"):
        key, body, sha = _object(label_hash)
        index[label_hash] = _entry(key, sha, f"etag-{hash(body)}", label_hash)
        lake.objects[key] = body
    del lake.objects[index["gone"].key]
    lake.objects[index["cut"].key] = lake.objects[index["cut"].key][:20]
    doc = orjson.loads(lake.objects[index["edited"].key])
    doc["label_hash"] = "changed by hand"
    lake.objects[index["edited"].key] = orjson.dumps(doc)

    check = check_lake(PROJECT, index, lake.listed(), {h: e.key for h, e in index.items()}, lake.get)

    assert check.dropped == ("cut", "edited", "gone") and check.damaged == 3
    assert check.index == {} and check.strays == ()  # the damaged objects are where the rows go: rewritten


def test_a_lost_state_adopts_the_copy_where_encord_puts_the_row_and_the_others_are_strays() -> None:
    lake = Lake()
    old_key, old_body, _ = _object("a", ANNOTATE)
    new_key, new_body, new_sha = _object("a", REVIEW)
    gone_key, gone_body, _ = _object("deleted")
    lake.objects.update({old_key: old_body, new_key: new_body, gone_key: gone_body})
    lake.objects[f"labels/project={PROJECT}/branch=main/stage=none/foreign.json"] = b'{"not": "ours"}'

    check = check_lake(PROJECT, {}, lake.listed(), {"a": new_key}, lake.get)

    assert check.index["a"].key == new_key and check.index["a"].sha256 == new_sha
    assert {e.label_hash for e in check.adopted} == {"a", "deleted"}  # the diff removes a deleted row
    assert check.strays == tuple(
        sorted([old_key, f"labels/project={PROJECT}/branch=main/stage=none/foreign.json"])
    )
    assert old_key not in lake.reads  # the expected copy was intact: the other one is not read


def test_an_index_entry_whose_object_another_machine_moved_adopts_the_moved_copy() -> None:
    lake = Lake()
    old_key, old_body, old_sha = _object("a", ANNOTATE)
    new_key, new_body, _ = _object("a", REVIEW)
    lake.objects[new_key] = new_body
    index = {"a": _entry(old_key, old_sha, f"etag-{hash(old_body)}", "a")}

    check = check_lake(PROJECT, index, lake.listed(), {"a": new_key}, lake.get)

    assert check.dropped == ("a",) and check.damaged == 0
    assert check.index["a"].key == new_key and check.strays == ()
