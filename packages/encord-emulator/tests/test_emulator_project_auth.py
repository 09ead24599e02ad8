"""Project, ontology and branches over v2, and authentication on both transports, through the real SDK."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from encord.exceptions import AuthenticationError, AuthorisationError, ResourceNotFoundError
from encord.user_client import EncordUserClient

from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import (
    CONSENSUS_BRANCH,
    EmulatorEnv,
    build_fixture,
    emulator_env,
    user_client,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[EmulatorEnv]:
    with emulator_env(tmp_path) as env:
        yield env


def test_get_project_gives_title_ontology_and_workflow_stages(env: EmulatorEnv) -> None:
    # Given the fixture project with three stages
    # When the SDK fetches it
    project = env.project()

    # Then title, stages (uuid, title, type) and the ontology structure are the fixture's
    assert project.title == "Emulated project"
    stages = [(str(s.uuid), s.title, s.stage_type.value) for s in project.workflow.stages]
    assert stages == [(s["uuid"], s["title"], s["stageType"]) for s in env.fixture.stages]
    assert project.ontology_structure.to_dict() == env.fixture.ontology
    log = env.emu.request_log()
    assert [(e["transport"], e["method"]) for e in log] == [("v2", "GET"), ("v2", "GET")]
    assert log[0]["path"] == f"/v2/public/projects/{env.project_hash}"


def test_list_branches_follows_next_page_tokens(env: EmulatorEnv) -> None:
    # Given three branches (main, the fixture's consensus branch, one more) and pages of two
    img2 = dict(env.fixture.by_title("img2.jpg").row, label_hash=str(uuid.uuid4()), branch_name="zz-extra")
    env.emu.add_row(env.project_hash, img2)
    project = env.project()
    env.emu.clear_log()

    # When the SDK lists branches
    branches = list(project.list_branches())

    # Then it pages through both pages with pageToken
    assert branches == ["main", CONSENSUS_BRANCH, "zz-extra"]
    queries = [e["query"] for e in env.emu.request_log()]
    assert queries == ["", "pageToken=2"]


def test_unknown_project_is_the_sdks_resource_not_found_over_v2(env: EmulatorEnv) -> None:
    # Given a project hash the emulator does not hold
    # When the SDK asks for it
    # Then v2 answers 404 and the SDK raises ResourceNotFoundError
    with pytest.raises(ResourceNotFoundError):
        env.client().get_project(str(uuid.uuid4()))
    assert env.emu.request_log()[-1]["status"] == 404


def test_a_project_gone_from_the_server_is_authorisation_error_over_legacy(env: EmulatorEnv) -> None:
    # Given a Project object, then the project removed from the fixture and reloaded
    project = env.project()
    shutil.rmtree(env.fixture.data_dir / env.project_hash)
    env.emu.reload()

    # When the SDK lists its label rows (legacy RPC with ResourceID)
    # Then the envelope says AUTHORISATION_ERROR and the SDK raises AuthorisationError
    with pytest.raises(AuthorisationError):
        project.list_label_rows_v2()
    assert env.emu.request_log()[-1]["error"] == "AUTHORISATION_ERROR"


def test_an_unregistered_key_is_authentication_error_on_v2(env: EmulatorEnv, tmp_path: Path) -> None:
    # Given a key the emulator does not know
    stranger, _ = generate_keypair(tmp_path / "stranger")

    # When it asks for the project
    # Then v2 answers 401 and the SDK raises AuthenticationError
    with pytest.raises(AuthenticationError):
        user_client(env.emu.url, stranger).get_project(env.project_hash)
    assert env.emu.request_log()[-1]["status"] == 401


def test_an_unregistered_key_is_authentication_error_on_legacy(env: EmulatorEnv, tmp_path: Path) -> None:
    # Given a Project object obtained by an unknown key while checks were off, then checks back on
    stranger, _ = generate_keypair(tmp_path / "stranger")
    env.emu.no_auth = True
    project = user_client(env.emu.url, stranger).get_project(env.project_hash)
    env.emu.no_auth = False

    # When it lists label rows over the legacy transport
    # Then the envelope says AUTHENTICATION_ERROR and the SDK raises AuthenticationError
    with pytest.raises(AuthenticationError):
        project.list_label_rows_v2()
    assert env.emu.request_log()[-1]["error"] == "AUTHENTICATION_ERROR"


def test_bearer_tokens_are_rejected_unless_configured(tmp_path: Path) -> None:
    # Given an emulator that accepts one bearer token
    fixture = build_fixture(tmp_path / "fixture")
    with Emulator(tmp_path / "fixture", bearer_tokens=["good-token"]) as emu:
        # When clients present a wrong and the configured token
        wrong = EncordUserClient.create_with_bearer_token("bad-token", domain=emu.url)
        right = EncordUserClient.create_with_bearer_token("good-token", domain=emu.url)

        # Then the wrong one is AuthenticationError and the right one reads labels on both transports
        with pytest.raises(AuthenticationError):
            wrong.get_project(fixture.project_hash)
        rows = right.get_project(fixture.project_hash).list_label_rows_v2()
        assert len(rows) == 4


def test_no_auth_accepts_any_key(tmp_path: Path) -> None:
    # Given an emulator started with no_auth and no authorized keys
    fixture = build_fixture(tmp_path / "fixture")
    stranger, _ = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", no_auth=True) as emu:
        # When an arbitrary key lists rows
        rows = user_client(emu.url, stranger).get_project(fixture.project_hash).list_label_rows_v2()

        # Then it is served
        assert len(rows) == 4
