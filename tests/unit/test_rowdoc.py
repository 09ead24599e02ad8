"""The lake object of a row: to_encord_dict() kept as it is, one added `mirror` key, a content sha256
that ignores the sync time, and feature-hash filtering."""

from __future__ import annotations

import copy
from datetime import timedelta

import orjson
import pytest
from fakes import CAR, PERSON, PROJECT, REVIEW, T0, WEATHER, FakeRow, labels_dict

from encord_mirror.domain.models import LoadedRow, Stage
from encord_mirror.domain.rowdoc import (
    ROW_FORMAT_VERSION,
    CorruptRowError,
    build_document,
    content_sha256,
    encode_document,
    filter_features,
    read_mirror,
)


def _row(status: str = "ASSIGNED", stage: Stage | None = REVIEW) -> LoadedRow:
    meta = FakeRow("d1", "main", "l1", T0, stage, task_status=status).meta(PROJECT)
    return LoadedRow(meta, labels_dict("l1", "d1", "main", T0, 1))


def test_every_to_encord_dict_key_is_kept_unchanged_and_mirror_is_added() -> None:
    # Given a loaded row
    row = _row()
    # When its lake object is built
    document, sha = build_document(row, row.labels, synced_at=T0)
    # Then every key of to_encord_dict() has the same value, and the only added key is `mirror`
    parsed = orjson.loads(encode_document(document))
    assert {k: v for k, v in parsed.items() if k != "mirror"} == row.labels
    assert set(parsed) - set(row.labels) == {"mirror"}
    assert parsed["mirror"] == {
        "format_version": ROW_FORMAT_VERSION,
        "project_hash": PROJECT,
        "label_hash": "l1",
        "data_hash": "d1",
        "branch": "main",
        "stage": "review-5a5a0002",
        "stage_uuid": REVIEW.uuid,
        "stage_title": "Review",
        "task_status": "ASSIGNED",
        "last_edited_at": T0.isoformat(),
        "sha256": sha,
        "synced_at": T0.isoformat(),
    }


def test_sha_ignores_the_sync_time_so_a_resync_is_unchanged() -> None:
    row = _row()
    _, first = build_document(row, row.labels, synced_at=T0)
    _, later = build_document(row, row.labels, synced_at=T0 + timedelta(hours=1))
    assert first == later


def test_sha_changes_with_labels_stage_or_task_status() -> None:
    row = _row()
    _, base = build_document(row, row.labels, synced_at=T0)
    edited = copy.deepcopy(row.labels)
    edited["data_units"]["d1"]["labels"]["objects"][0]["boundingBox"]["w"] = 0.9
    assert build_document(row, edited, synced_at=T0)[1] != base
    assert build_document(_row(status="COMPLETED"), row.labels, synced_at=T0)[1] != base
    assert build_document(_row(stage=None), row.labels, synced_at=T0)[1] != base


def test_anyone_can_verify_a_stored_object_by_recomputing_its_sha() -> None:
    row = _row()
    document, sha = build_document(row, row.labels, synced_at=T0)
    stored = orjson.loads(encode_document(document))
    assert content_sha256(stored) == sha == read_mirror(encode_document(document))["sha256"]  # type: ignore[index]


def test_a_row_that_is_not_json_is_a_corrupt_row_error_naming_it() -> None:
    row = _row()
    bad = dict(row.labels, object_answers={"x": object()})
    with pytest.raises(CorruptRowError, match="l1"):
        build_document(row, bad, synced_at=T0)


def test_no_feature_filter_keeps_the_labels_as_they_are() -> None:
    labels = labels_dict("l1", "d1", "main", T0, 1)
    assert filter_features(labels, None, None) is labels


def test_object_filter_drops_other_objects_with_their_answers() -> None:
    # Given a row with a car and a person
    labels = labels_dict("l1", "d1", "main", T0, 1)
    # When only cars are kept
    kept = filter_features(labels, {CAR}, None)
    # Then the person is gone from the frame and from object_answers; classifications are untouched
    objects = kept["data_units"]["d1"]["labels"]["objects"]
    assert [o["featureHash"] for o in objects] == [CAR]
    assert set(kept["object_answers"]) == {"obj-car-l1"}
    assert kept["classification_answers"] == labels["classification_answers"]
    assert [o["featureHash"] for o in labels["data_units"]["d1"]["labels"]["objects"]] == [CAR, PERSON]


def test_classification_filter_drops_other_classifications() -> None:
    labels = labels_dict("l1", "d1", "main", T0, 1)
    assert (
        filter_features(labels, None, {WEATHER})["classification_answers"] == labels["classification_answers"]
    )
    assert filter_features(labels, None, {"other"})["classification_answers"] == {}


def test_video_frames_are_filtered_and_a_track_stays_if_any_frame_keeps_it() -> None:
    # Given a video with a car on frames 0 and 1, and a person on frame 1
    car = {"objectHash": "o-car", "featureHash": CAR}
    person = {"objectHash": "o-person", "featureHash": PERSON}
    labels = {
        "data_units": {"d1": {"labels": {"0": {"objects": [car]}, "1": {"objects": [car, person]}}}},
        "object_answers": {"o-car": {}, "o-person": {}},
        "object_actions": {"o-person": {}},
        "classification_answers": {},
    }
    # When only cars are kept
    kept = filter_features(labels, [CAR], None)
    # Then both frames keep the car track, and the person's answers and actions are dropped
    frames = kept["data_units"]["d1"]["labels"]
    assert frames["0"]["objects"] == [car] and frames["1"]["objects"] == [car]
    assert set(kept["object_answers"]) == {"o-car"} and kept["object_actions"] == {}
