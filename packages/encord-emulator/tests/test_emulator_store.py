"""The emulator's store: fixture loading, timestamp and LIKE parsing, and listing semantics (no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from encord_emulator.faults import FaultRule, FaultSpecError, RateLimiter
from encord_emulator.store import (
    FixtureError,
    InvalidArgumentsError,
    InvalidDateError,
    MetadataQuery,
    Store,
    like_to_regex,
    load_fixture_dir,
    parse_timestamp,
)
from encord_emulator.testing import Fixture, build_fixture


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return build_fixture(tmp_path_factory.mktemp("fixture"))


def store_of(fixture: Fixture) -> Store:
    return Store(load_fixture_dir(fixture.data_dir))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Tue, 02 Sep 2025 10:00:00 UTC", datetime(2025, 9, 2, 10, tzinfo=UTC)),
        ("2025-09-02T10:00:00", datetime(2025, 9, 2, 10, tzinfo=UTC)),
        ("2025-09-02 10:00:00", datetime(2025, 9, 2, 10, tzinfo=UTC)),
        ("2025-09-02T12:00:00+02:00", datetime(2025, 9, 2, 10, tzinfo=UTC)),
        ("2025-09-02T10:00:00Z", datetime(2025, 9, 2, 10, tzinfo=UTC)),
    ],
)
def test_timestamps_parse_naive_as_utc_and_keep_offsets(text: str, expected: datetime) -> None:
    # Given a timestamp in one of the formats rows and filters use
    # When parsed
    # Then it is the same instant
    assert parse_timestamp(text) == expected


def test_an_unparseable_timestamp_is_invalid_date() -> None:
    # Given garbage
    # When parsed
    # Then InvalidDateError (the envelope's INVALID_DATE_FORMAT_ERROR)
    with pytest.raises(InvalidDateError):
        parse_timestamp("yesterday")


def test_like_patterns_are_sql_like_and_ignore_case() -> None:
    # Given LIKE patterns with wildcards, an escape and regex metacharacters
    # When matched
    # Then % is any run, _ one character, \\ escapes, and . is literal
    assert like_to_regex("img_.JPG").fullmatch("img1.jpg")
    assert not like_to_regex("img_.jpg").fullmatch("img12.jpg")
    assert like_to_regex("%1%").fullmatch("Annotate 1")
    assert not like_to_regex("a.b").fullmatch("axb")
    assert like_to_regex(r"100\%").fullmatch("100%")
    assert not like_to_regex(r"100\%").fullmatch("1000")


def test_date_boundary_is_excluded_when_strict_and_included_when_inclusive(fixture: Fixture) -> None:
    # Given img2 edited at exactly 2025-09-02 10:00 UTC
    store = store_of(fixture)
    query = MetadataQuery(
        edited_after=datetime(2025, 9, 2, 10, tzinfo=UTC), include_uninitialised_labels=True
    )

    # When listing in each mode
    strict = [item["data_title"] for item in store.list_metadata(fixture.project_hash, query)]
    store.date_mode = "inclusive"
    inclusive = [item["data_title"] for item in store.list_metadata(fixture.project_hash, query)]

    # Then only the mode decides the boundary row
    assert strict == ["vid1.mp4"]
    assert inclusive == ["img2.jpg", "vid1.mp4"]


@pytest.mark.parametrize("all_branches", [False, True], ids=["main", "all branches"])
def test_a_listing_by_hashes_looks_units_up_and_keeps_the_full_listings_order(
    fixture: Fixture, all_branches: bool
) -> None:
    # Given a project where one data unit was deleted and added again (it lists last now)
    store = store_of(fixture)
    project = fixture.project_hash
    first = fixture.main_rows()[0]
    row = store.row_dict(store.row(project, first.label_hash))
    unit = store.data_unit(project, first.data_hash)
    stage, status = unit.stage, unit.task_status
    store.delete_data_unit(project, first.data_hash)
    store.add_row(project, row, None, stage=stage, task_status=status)
    everything = store.list_metadata(
        project, MetadataQuery(include_all_label_branches=all_branches, include_uninitialised_labels=True)
    )
    labelled = [item for item in everything if item["label_hash"]]
    assert labelled[-1]["label_hash"] == first.label_hash
    # When listing by label hashes (some unknown), by data hashes, and by both
    picked = [item["label_hash"] for item in labelled[::2]]
    by_label = MetadataQuery(
        include_all_label_branches=all_branches, label_hashes=frozenset([*picked, "no-such-label"])
    )
    datas = frozenset(item["data_hash"] for item in everything[1::2])
    by_data = MetadataQuery(
        include_all_label_branches=all_branches, data_hashes=datas, include_uninitialised_labels=True
    )
    both = MetadataQuery(
        include_all_label_branches=all_branches, label_hashes=frozenset(picked), data_hashes=datas
    )
    # Then each gives exactly the full listing's matching items, in the full listing's order
    assert store.list_metadata(project, by_label) == [i for i in labelled if i["label_hash"] in picked]
    assert store.list_metadata(project, by_data) == [i for i in everything if i["data_hash"] in datas]
    assert store.list_metadata(project, both) == [
        i for i in labelled if i["label_hash"] in picked and i["data_hash"] in datas
    ]


def test_metadata_query_refuses_all_branches_with_a_branch_name() -> None:
    # Given both branch selectors
    # When the payload is parsed
    # Then it is INVALID_ARGUMENTS
    with pytest.raises(InvalidArgumentsError):
        MetadataQuery.from_payload({"include_all_label_branches": True, "branch_name": "x"})


def test_save_keeps_the_servers_identity_and_stamps_the_time(fixture: Fixture) -> None:
    # Given img1 and a client dict that tries to change its identity
    store = store_of(fixture)
    img1 = fixture.by_title("img1.jpg")
    forged = dict(
        img1.row, label_hash="forged", branch_name="elsewhere", created_at="Mon, 01 Jan 2024 00:00:00 UTC"
    )
    now = datetime(2025, 12, 1, 8, 0, tzinfo=timezone(timedelta(hours=1)))

    # When it is saved
    record = store.save_row(fixture.project_hash, img1.label_hash, forged, now)

    # Then hash, branch and creation time are the server's, and last_edited_at is now in UTC
    saved = store.row_dict(record)
    assert (saved["label_hash"], saved["branch_name"]) == (img1.label_hash, "main")
    assert saved["created_at"] == img1.row["created_at"]
    assert saved["last_edited_at"] == "Mon, 01 Dec 2025 07:00:00 UTC"


def test_fixture_errors_name_the_file_and_line(fixture: Fixture, tmp_path: Path) -> None:
    # Given a copy of the fixture whose second row names an unknown stage
    project_dir = tmp_path / fixture.project_hash
    project_dir.mkdir()
    (project_dir / "project.json").write_bytes(
        (fixture.data_dir / fixture.project_hash / "project.json").read_bytes()
    )
    lines = [
        orjson.dumps({"row": r.row, "stage": r.stage, "task_status": r.task_status}) for r in fixture.rows
    ]
    lines[1] = orjson.dumps({"row": fixture.rows[1].row, "stage": "Nowhere", "task_status": "QUEUED"})
    (project_dir / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    # When it is loaded
    # Then the error points at rows.jsonl line 2
    with pytest.raises(FixtureError) as raised:
        load_fixture_dir(tmp_path)
    assert raised.value.line == 2 and raised.value.path.name == "rows.jsonl"


def test_fault_specs_are_validated_and_spent_in_order() -> None:
    # Given a fault spec with an unknown kind, and a valid one for two requests
    with pytest.raises(FaultSpecError):
        FaultRule.from_dict({"kind": "explode"})
    rule = FaultRule.from_dict(
        {"kind": "status", "count": 2, "path": "/v2/*", "status": 429, "retry_after": 0}
    )

    # When requests are matched against it
    # Then only matching paths match, and Retry-After is kept as header text
    assert rule.matches("/v2/public/projects/p", None, None)
    assert not rule.matches("/public", "labelrow", "GET")
    assert rule.retry_after == "0"


def test_rate_limiter_allows_a_burst_then_refuses() -> None:
    # Given a bucket of 2 that never refills
    limiter = RateLimiter()
    limiter.configure(0.0, burst=2, retry_after=1)

    # When three requests arrive
    # Then the third is refused
    assert [limiter.admit() for _ in range(3)] == [True, True, False]


def test_the_fast_line_scan_indexes_exactly_what_a_full_parse_does(tmp_path: Path) -> None:
    # Given fixture lines of every data type the generator writes, plus the testing fixture's
    from encord_emulator.generate import generate
    from encord_emulator.store import _index_row, _scan_line

    generate(tmp_path / "generated", 60, seed=7)
    build_fixture(tmp_path / "built")
    lines = [line for path in tmp_path.rglob("rows.jsonl") for line in path.read_bytes().splitlines() if line]

    # When each line is indexed both ways
    for line in lines:
        scanned = _scan_line(line)
        entry = orjson.loads(line)
        full = _index_row(entry["row"], entry["stage"], entry["task_status"])

        # Then the scan succeeded, found the same fields, and its byte span is exactly the row
        assert scanned is not None
        indexed, start, end = scanned
        assert orjson.loads(line[start:end]) == entry["row"]
        assert {k: full.top[k] for k in indexed.top} == indexed.top
        assert {k: full.unit.get(k) for k in indexed.unit} == indexed.unit
        assert (indexed.units, indexed.fps, indexed.duration, indexed.label_status) == (
            full.units,
            full.fps,
            full.duration,
            full.label_status,
        )
        assert (indexed.stage, indexed.task_status) == (full.stage, full.task_status)
    assert len(lines) > 60


def test_a_line_in_another_shape_is_parsed_whole_and_served_the_same(
    fixture: Fixture, tmp_path: Path
) -> None:
    # Given the fixture rewritten with sorted keys and spaces (not the canonical shape)
    import json

    project_dir = tmp_path / fixture.project_hash
    project_dir.mkdir()
    (project_dir / "project.json").write_bytes(
        (fixture.data_dir / fixture.project_hash / "project.json").read_bytes()
    )
    lines = [
        json.dumps({"task_status": r.task_status, "stage": r.stage, "row": r.row}, sort_keys=True)
        for r in fixture.rows
    ]
    (project_dir / "rows.jsonl").write_text("\n".join(lines) + "\n")

    # When it is loaded and its rows read back
    store = Store(load_fixture_dir(tmp_path))
    records = [store.row(fixture.project_hash, r.label_hash) for r in fixture.rows]

    # Then every row is served exactly as written, from memory
    assert [orjson.loads(raw) for raw in store.row_bytes(records)] == [r.row for r in fixture.rows]
    assert all(record.raw is not None for record in records)
