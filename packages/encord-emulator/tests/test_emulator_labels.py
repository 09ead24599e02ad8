"""Initialising, creating and saving label rows through the real SDK against the emulator."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from encord.exceptions import LabelRowError, MultiLabelLimitError, ResourceNotFoundError

from encord_emulator.testing import EmulatorEnv, emulator_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[EmulatorEnv]:
    with emulator_env(tmp_path) as env:
        yield env


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorEnv]:
    # 1003 labelled rows on main: read-only tests share it (each clears the log first).
    with emulator_env(tmp_path_factory.mktemp("big"), extra_images=1000) as env:
        yield env


def labelrow_requests(env: EmulatorEnv, method: str) -> list[dict[str, Any]]:
    return [e for e in env.emu.request_log() if e["query_type"] == "labelrow" and e["query_method"] == method]


def test_every_fixture_row_round_trips_through_a_bundle(env: EmulatorEnv) -> None:
    # Given every labelled row of the fixture, on every branch
    project = env.project()
    rows = [r for r in project.list_label_rows_v2(include_all_label_branches=True) if r.label_hash]

    # When they are initialised in one bundle
    with project.create_bundle() as bundle:
        for row in rows:
            row.initialise_labels(bundle=bundle)

    # Then each row's to_encord_dict() equals the fixture's row exactly
    expected = {fixture_row.label_hash: fixture_row.row for fixture_row in env.fixture.rows}
    assert len(rows) == len(expected) == 4
    for row in rows:
        assert row.to_encord_dict() == expected[row.label_hash]


def test_unbundled_initialise_sends_one_uid_per_request(env: EmulatorEnv) -> None:
    # Given two labelled rows
    project = env.project()
    rows = [r for r in project.list_label_rows_v2() if r.label_hash][:2]
    env.emu.clear_log()

    # When each is initialised without a bundle
    for row in rows:
        row.initialise_labels()

    # Then each is its own labelrow GET with a single uid, and both rows are usable
    assert [e["uids"] for e in labelrow_requests(env, "GET")] == [1, 1]
    assert all(row.to_encord_dict()["label_hash"] == row.label_hash for row in rows)


@pytest.mark.parametrize("bundle_size", [100, 1000])
def test_bundles_split_into_chunks_of_bundle_size(big: EmulatorEnv, bundle_size: int) -> None:
    # Given 1003 labelled rows
    project = big.project()
    rows = [r for r in project.list_label_rows_v2() if r.label_hash]
    big.emu.clear_log()

    # When initialised in one bundle of the given size
    with project.create_bundle(bundle_size=bundle_size) as bundle:
        for row in rows:
            row.initialise_labels(bundle=bundle)

    # Then the server saw ceil(n / size) reads of at most `size` uids, and every row is initialised
    sizes = [e["uids"] for e in labelrow_requests(big, "GET")]
    assert len(rows) == 1003
    assert len(sizes) == math.ceil(1003 / bundle_size)
    assert max(sizes) == bundle_size and sum(sizes) == 1003
    assert all(row.is_labelling_initialised for row in rows)


def test_more_than_1000_uids_is_the_sdks_multi_label_limit_error(big: EmulatorEnv) -> None:
    # Given 1003 labelled rows and a bundle size above the server's limit
    project = big.project()
    rows = [r for r in project.list_label_rows_v2() if r.label_hash]

    # When they are initialised in one 1001-uid request
    # Then the server refuses and the SDK raises MultiLabelLimitError with the reported limit
    with pytest.raises(MultiLabelLimitError) as raised, project.create_bundle(bundle_size=1001) as bundle:
        for row in rows:
            row.initialise_labels(bundle=bundle)
    assert raised.value.maximum_labels_allowed == 1000


def test_initialising_an_uninitialised_row_creates_it_and_is_logged_as_a_write(env: EmulatorEnv) -> None:
    # Given img3 without a label row, and a fixed clock
    env.emu.set_clock(datetime(2025, 10, 1, 8, 30, tzinfo=UTC))
    project = env.project()
    (img3,) = project.list_label_rows_v2(data_title_eq="img3.jpg")
    assert img3.label_hash is None
    env.emu.clear_log()

    # When it is initialised
    img3.initialise_labels()

    # Then a labelrow PUT (a write) created it, with a new label hash stamped by the clock
    (create,) = labelrow_requests(env, "PUT")
    assert create["write"] is True and [e for e in env.emu.writes()] == [create]
    assert img3.label_hash is not None
    created = {item["label_hash"]: item for item in env.emu.state(env.project_hash)}[img3.label_hash]
    assert created["data_title"] == "img3.jpg"
    assert created["last_edited_at"] == "Wed, 01 Oct 2025 08:30:00 UTC"
    assert env.emu.unlabelled(env.project_hash) == []


def test_save_stores_the_row_and_stamps_last_edited_at_with_the_emulator_clock(env: EmulatorEnv) -> None:
    # Given img1 initialised and a fixed clock
    env.emu.set_clock(datetime(2025, 11, 5, 9, 15, 30))
    project = env.project()
    (img1,) = project.list_label_rows_v2(data_title_eq="img1.jpg")
    img1.initialise_labels()
    for instance in img1.get_object_instances():
        img1.remove_object(instance)
    env.emu.clear_log()

    # When it is saved
    img1.save()

    # Then one labelrow POST (a write) stored it, and a fresh read shows the edit and the clock's time
    assert [(e["query_method"], e["write"]) for e in env.emu.writes()] == [("POST", True)]
    (again,) = env.project().list_label_rows_v2(data_title_eq="img1.jpg")
    again.initialise_labels()
    assert again.get_object_instances() == []
    assert again.last_edited_at == datetime(2025, 11, 5, 9, 15, 30, tzinfo=UTC)
    saved = again.to_encord_dict()
    assert saved["last_edited_at"] == "Wed, 05 Nov 2025 09:15:30 UTC"
    assert saved["created_at"] == env.fixture.by_title("img1.jpg").row["created_at"]


def test_a_bundle_answer_that_leaves_out_rows_leaves_them_uninitialised_without_error(
    env: EmulatorEnv,
) -> None:
    # Given three labelled rows and a fault that drops the last row of the next labelrow read
    project = env.project()
    rows = [r for r in project.list_label_rows_v2() if r.label_hash]
    env.emu.inject_fault("omit_rows", query_type="labelrow", query_method="GET", omit=1)

    # When they are initialised in one bundle
    with project.create_bundle() as bundle:
        for row in rows:
            row.initialise_labels(bundle=bundle)

    # Then the SDK raises nothing, yet one row stays uninitialised (the SDK's silent trap)
    missing = [row for row in rows if not row.is_labelling_initialised]
    assert len(rows) == 3 and len(missing) == 1
    with pytest.raises(LabelRowError):
        missing[0].to_encord_dict()
    assert labelrow_requests(env, "GET")[-1]["fault"] == "omit_rows"


def test_an_unknown_label_hash_is_resource_not_found(env: EmulatorEnv) -> None:
    # Given a listed row that is deleted on the server before it is initialised
    project = env.project()
    (img2,) = project.list_label_rows_v2(data_title_eq="img2.jpg")
    env.emu.delete_row(env.project_hash, img2.label_hash)

    # When it is initialised
    # Then the server answers RESOURCE_NOT_FOUND_ERROR and the SDK raises ResourceNotFoundError
    with pytest.raises(ResourceNotFoundError):
        img2.initialise_labels()


def test_every_generated_row_of_every_data_type_round_trips(tmp_path: Path) -> None:
    # Given a generated fixture (every data type the generator writes, several branches) written here
    import orjson

    from encord_emulator.generate import generate
    from encord_emulator.keys import generate_keypair
    from encord_emulator.server import Emulator
    from encord_emulator.testing import user_client

    (project_hash,) = generate(tmp_path / "fixture", 120, seed=11)
    rows_file = tmp_path / "fixture" / project_hash / "rows.jsonl"
    expected = {
        row["label_hash"]: row for row in (orjson.loads(line)["row"] for line in rows_file.open("rb"))
    }
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        project = user_client(emu.url, key_path).get_project(project_hash)
        rows = [r for r in project.list_label_rows_v2(include_all_label_branches=True) if r.label_hash]

        # When all are initialised in one bundle
        with project.create_bundle() as bundle:
            for row in rows:
                row.initialise_labels(bundle=bundle)

    # Then every row's to_encord_dict() equals the generated row
    assert len(rows) == len(expected) == 120
    assert len({row["data_type"] for row in expected.values()}) >= 5
    mismatched = [row.label_hash for row in rows if row.to_encord_dict() != expected[row.label_hash]]
    assert mismatched == []
