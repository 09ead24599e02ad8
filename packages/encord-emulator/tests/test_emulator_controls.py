"""The `/__emulator/` control endpoints (over HTTP) and the data changes the SDK cannot make."""

from __future__ import annotations

import email.utils
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from encord_emulator.testing import CONSENSUS_BRANCH, EmulatorEnv, emulator_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[EmulatorEnv]:
    with emulator_env(tmp_path) as env:
        yield env


def control(env: EmulatorEnv, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{env.emu.url}/__emulator{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_moving_a_stage_changes_the_listing_but_not_last_edited_at(env: EmulatorEnv) -> None:
    # Given img1 in "Annotate 1", last edited 2025-09-01 10:00
    img1 = env.fixture.by_title("img1.jpg")

    # When it is moved to "Complete" through the control endpoint
    status, _ = control(
        env, "POST", f"/projects/{env.project_hash}/data-units/{img1.data_hash}/stage", {"stage": "Complete"}
    )

    # Then listings see the new stage, the edit time is unchanged, and an edited_after listing misses it
    assert status == 200
    project = env.project()
    (row,) = project.list_label_rows_v2(data_title_eq="img1.jpg")
    assert row.workflow_graph_node.title == "Complete"
    assert row.last_edited_at == datetime(2025, 9, 1, 10, 0, tzinfo=UTC)
    recent = project.list_label_rows_v2(edited_after=datetime(2025, 9, 2, tzinfo=UTC))
    assert "img1.jpg" not in {r.data_title for r in recent}
    stages = {
        (i["branch_name"], i["stage"])
        for i in env.emu.state(env.project_hash)
        if i["data_hash"] == img1.data_hash
    }
    assert stages == {("main", "Complete"), (CONSENSUS_BRANCH, "Complete")}


def test_setting_the_task_status_feeds_the_label_statuses_filter(env: EmulatorEnv) -> None:
    # Given img1 QUEUED
    img1 = env.fixture.by_title("img1.jpg")

    # When its task status is set to COMPLETED
    status, _ = control(
        env,
        "POST",
        f"/projects/{env.project_hash}/data-units/{img1.data_hash}/task-status",
        {"status": "COMPLETED"},
    )

    # Then the label_statuses filter and the truth follow, and last_edited_at does not move
    from encord.orm.label_row import AnnotationTaskStatus

    assert status == 200
    rows = env.project().list_label_rows_v2(label_statuses=[AnnotationTaskStatus.COMPLETED])
    assert sorted(r.data_title for r in rows) == ["img1.jpg", "vid1.mp4"]
    (truth,) = [i for i in env.emu.state(env.project_hash) if i["label_hash"] == img1.label_hash]
    assert truth["task_status"] == "COMPLETED" and truth["row"]["annotation_task_status"] == "COMPLETED"
    assert truth["last_edited_at"] == img1.row["last_edited_at"]


def test_deleting_a_main_row_leaves_the_data_unit_uninitialised(env: EmulatorEnv) -> None:
    # Given img2 labelled on main
    img2 = env.fixture.by_title("img2.jpg")

    # When its label row is deleted
    status, _ = control(env, "DELETE", f"/projects/{env.project_hash}/label-rows/{img2.label_hash}")

    # Then it lists without a label hash and is gone from the truth
    assert status == 200
    (row,) = env.project().list_label_rows_v2(data_title_eq="img2.jpg")
    assert row.label_hash is None
    assert img2.label_hash not in {i["label_hash"] for i in env.emu.state(env.project_hash)}


def test_deleting_a_data_unit_removes_it_and_all_its_branches(env: EmulatorEnv) -> None:
    # Given img1 on main and on the consensus branch
    img1 = env.fixture.by_title("img1.jpg")

    # When the data unit is deleted
    status, _ = control(env, "DELETE", f"/projects/{env.project_hash}/data-units/{img1.data_hash}")

    # Then no listing returns it, on any branch
    assert status == 200
    rows = env.project().list_label_rows_v2(include_all_label_branches=True)
    assert "img1.jpg" not in {r.data_title for r in rows}
    assert all(i["data_hash"] != img1.data_hash for i in env.emu.state(env.project_hash))


def test_adding_a_consensus_branch_row_stamps_it_with_the_clock(env: EmulatorEnv) -> None:
    # Given a fixed clock and a new branch row for vid1
    control(env, "POST", "/clock", {"time": "2025-12-24T18:00:00Z"})
    vid1 = env.fixture.by_title("vid1.mp4")
    new_row = dict(vid1.row, label_hash=str(uuid.uuid4()), branch_name="consensus-annotator-2")

    # When it is added through the control endpoint
    status, _ = control(env, "POST", f"/projects/{env.project_hash}/label-rows", {"row": new_row})

    # Then the branch exists, lists with the clock's edit time, and a second add is a conflict
    assert status == 200
    project = env.project()
    assert "consensus-annotator-2" in list(project.list_branches())
    (row,) = project.list_label_rows_v2(
        branch_name="consensus-annotator-2", label_hashes=[new_row["label_hash"]]
    )
    assert row.last_edited_at == datetime(2025, 12, 24, 18, 0, tzinfo=UTC)
    again, body = control(env, "POST", f"/projects/{env.project_hash}/label-rows", {"row": new_row})
    assert again == 409 and body["error"] == "ConflictError"


def test_edit_row_is_like_an_sdk_save(env: EmulatorEnv) -> None:
    # Given a fixed clock and img2's row without its objects
    env.emu.set_clock(datetime(2025, 10, 10, 10, 10, 10, tzinfo=UTC))
    img2 = env.fixture.by_title("img2.jpg")
    edited = dict(img2.row, object_answers={})
    for unit in edited["data_units"].values():
        unit["labels"] = {"objects": [], "classifications": []}

    # When the row is edited through the Python API
    env.emu.edit_row(env.project_hash, img2.label_hash, edited)

    # Then a listing with edited_after sees it and the SDK reads the new labels
    (row,) = env.project().list_label_rows_v2(edited_after=datetime(2025, 10, 1, tzinfo=UTC))
    row.initialise_labels()
    assert row.label_hash == img2.label_hash
    assert row.get_object_instances() == []
    assert row.to_encord_dict()["last_edited_at"] == "Fri, 10 Oct 2025 10:10:10 UTC"


def test_state_log_writes_and_reload_over_http(env: EmulatorEnv) -> None:
    # Given one read and one write (creating img3's row) by the SDK
    project = env.project()
    (img3,) = project.list_label_rows_v2(data_title_eq="img3.jpg")
    img3.initialise_labels()

    # When the state, the log and the writes are read over HTTP, then the fixture is reloaded
    _, state = control(env, "GET", f"/projects/{env.project_hash}/state")
    _, log = control(env, "GET", "/log?clear=1")
    _, writes = control(env, "GET", "/writes")
    _, after_clear = control(env, "GET", "/log")
    _, reloaded = control(env, "POST", "/reload")

    # Then the state had the created row, the log every request, writes only the create; reload undid it
    assert state["unlabelled"] == [] and len(state["rows"]) == 5
    assert [e["query_type"] for e in log["requests"]][-2:] == ["labelrowmetadata", "labelrow"]
    assert writes["requests"] == [] and after_clear["requests"] == []
    assert any(e["write"] for e in log["requests"])
    assert reloaded["projects"] == [env.project_hash]
    assert env.emu.unlabelled(env.project_hash) == [env.fixture.unlabelled[0]["data_hash"]]


def test_every_answer_is_dated_by_the_emulators_clock(env: EmulatorEnv) -> None:
    # Given the emulator's clock an hour behind real time
    env.emu.set_clock_offset(-3600)
    # When anything is asked (a HEAD the emulator does not serve, an API request)
    head = urllib.request.Request(env.emu.url + "/", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(head, timeout=10)
    api = urllib.request.Request(env.emu.url + "/v2/public/projects/nope")
    with pytest.raises(urllib.error.HTTPError) as unauthorised:
        urllib.request.urlopen(api, timeout=10)
    # Then the `Date` header of each says the emulator's time, to the second, as Encord's would its own
    for answer in (refused.value, unauthorised.value):
        dated = email.utils.parsedate_to_datetime(answer.headers["Date"])
        assert abs((dated - env.emu.now()).total_seconds()) < 5
        assert (datetime.now(UTC) - dated).total_seconds() > 3500


def test_clock_date_mode_faults_and_rate_limit_endpoints(env: EmulatorEnv) -> None:
    # Given a fresh emulator
    # When each control is set over HTTP
    _, clock = control(env, "POST", "/clock", {"offset_s": -3600})
    _, mode = control(env, "POST", "/date-mode", {"mode": "inclusive"})
    bad_mode, _ = control(env, "POST", "/date-mode", {"mode": "sometimes"})
    _, faults = control(env, "POST", "/faults", {"kind": "drop", "count": 2, "query_type": "labelrow"})
    bad_fault, bad_body = control(env, "POST", "/faults", {"kind": "explode"})
    _, limit = control(env, "POST", "/rate-limit", {"rate_per_s": 5, "burst": 3, "retry_after": 2})
    _, cleared = control(env, "DELETE", "/faults")

    # Then each took effect (or was refused with a reason)
    assert clock["offset_s"] == -3600 and clock["fixed"] is None
    assert mode == {"mode": "inclusive"} and env.emu.date_mode == "inclusive"
    assert bad_mode == 400
    assert faults["faults"][0]["kind"] == "drop" and faults["faults"][0]["remaining"] == 2
    assert bad_fault == 400 and "kind" in bad_body["message"]
    assert limit == {"rate_per_s": 5.0, "burst": 3, "retry_after": "2"}
    assert cleared == {"faults": []}


def test_unknown_control_paths_and_unknown_data_units_are_404(env: EmulatorEnv) -> None:
    # Given a fresh emulator
    # When asking for things it does not have
    unknown_path, _ = control(env, "GET", "/nothing-here")
    unknown_unit, body = control(
        env, "POST", f"/projects/{env.project_hash}/data-units/{uuid.uuid4()}/stage", {"stage": "Complete"}
    )
    unknown_stage, _ = control(
        env,
        "POST",
        f"/projects/{env.project_hash}/data-units/{env.fixture.rows[0].data_hash}/stage",
        {"stage": "No such stage"},
    )

    # Then each is a 404 naming what is missing
    assert unknown_path == 404
    assert unknown_unit == 404 and "data unit" in body["message"]
    assert unknown_stage == 404
