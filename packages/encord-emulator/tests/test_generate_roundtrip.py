"""A generated fixture, served by the emulator, read back by the real SDK: every row initialises to itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from encord.user_client import EncordUserClient

from encord_emulator.generate import generate, iter_records
from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROWS = 240
BUNDLE = 100


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Any]]:
    root = tmp_path_factory.mktemp("generated")
    (project_hash,) = generate(root / "data", ROWS, seed=11)
    key_path, public_line = generate_keypair(root / "keys")
    with Emulator(root / "data", authorized_keys=[public_line]) as emu:
        client = EncordUserClient.create_with_ssh_private_key(key_path.read_text(), domain=emu.url)
        yield root / "data" / project_hash, project_hash, client


def test_every_generated_row_initialises_through_the_sdk_to_the_fixture_row(
    served: tuple[Path, str, Any],
) -> None:
    # Given a generated project served by the emulator (authenticated with a real ed25519 key)
    directory, project_hash, client = served
    fixture = {r["row"]["label_hash"]: r for r in iter_records(directory / "rows.jsonl")}
    project = client.get_project(project_hash)

    # When the SDK lists every branch and initialises every labelled row in bundles
    listed = [r for r in project.list_label_rows_v2(include_all_label_branches=True) if r.label_hash]
    for start in range(0, len(listed), BUNDLE):
        with project.create_bundle(bundle_size=BUNDLE) as bundle:
            for row in listed[start : start + BUNDLE]:
                row.initialise_labels(bundle=bundle)

    # Then each row's to_encord_dict() is the fixture row, listed with its branch and workflow stage
    assert sorted(r.label_hash for r in listed) == sorted(fixture)
    for row in listed:
        record = fixture[row.label_hash]
        assert row.to_encord_dict() == record["row"], (row.data_type, row.label_hash)
        assert row.branch_name == record["row"]["branch_name"]
        assert row.workflow_graph_node.title == record["stage"]


def test_generated_workflow_and_unlabelled_units_are_visible_through_the_sdk(
    served: tuple[Path, str, Any],
) -> None:
    # Given the same served project
    directory, project_hash, client = served
    unlabelled = {r["data_hash"]: r for r in iter_records(directory / "unlabelled.jsonl")}
    project = client.get_project(project_hash)

    # When its workflow and its main-branch listing are read
    stages = [(s.title, s.stage_type.value) for s in project.workflow.stages]
    uninitialised = [r for r in project.list_label_rows_v2() if r.label_hash is None]

    # Then the four generated stages come back, and the unlabelled units are listed without a label row
    assert stages == [
        ("Annotate", "ANNOTATION"),
        ("Review", "REVIEW"),
        ("Expert review / QA", "REVIEW"),
        ("Complete", "DONE"),
    ]
    assert unlabelled
    assert sorted(r.data_hash for r in uninitialised) == sorted(unlabelled)
    assert {r.data_title for r in uninitialised} == {u["data_title"] for u in unlabelled.values()}
