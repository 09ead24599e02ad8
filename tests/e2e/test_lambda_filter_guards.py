"""The planner Lambda with filters that would empty the lake: a stage Encord does not have is refused,
and a filter change that takes more than FilterShrinkLimit percent of the current view out waits for
the parameter to allow it; both are logged with what to change. Real boto3 against moto's server and the
real SDK against the emulator, through the `Deployment` of test_lambda_e2e.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_lambda_e2e import Deployment, _first_sync, _redeploy
from test_lambda_e2e import deployment as deployment  # the fixture

from encord_mirror.aws_lambda.results import PlanningFailedError
from encord_mirror.verify import assert_lake_matches

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAIN_ROWS = 11  # img1, img2, vid1 and eight bulk images; "Review 1" holds img2 alone


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    return [r.__dict__ for r in caplog.records if r.getMessage() == message]


def _as_synced(deployment: Deployment) -> tuple[object, ...]:
    """The lake's objects (with etags) and what the state says it was synced with."""
    lake = deployment.lake
    objects = {key: stored.etag for key in lake.list_keys("") if (stored := lake.get(key)) is not None}
    state = deployment.state
    return objects, state.get_watermark(deployment.project), state.get_filters(deployment.project)


def _in_step_then_redeployed(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, **variables: str
) -> tuple[object, ...]:
    """A first sync, then a stack update with `variables`: what the lake was synced with before it."""
    _first_sync(deployment)
    before = _as_synced(deployment)
    _redeploy(monkeypatch, **variables)
    return before


def test_a_filter_change_past_the_shrink_limit_waits_for_the_parameter_and_is_logged_both_times(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a lake in step with every stage, then the stack updated to mirror one stage (1 of the 11 rows)
    before = _in_step_then_redeployed(deployment, monkeypatch, STAGE_INCLUDE="Review 1")
    # When the schedule fires
    with pytest.raises(PlanningFailedError, match="filter_shrink_limit"):
        deployment.schedule()
    deployment.drain()
    # Then the run is refused with the counts and the variable to change, and nothing was written
    [refused] = _logged(caplog, "planning refused")
    counts = (refused["removing"], refused["lake_rows"], refused["limit_percent"])
    assert counts == (MAIN_ROWS - 1, MAIN_ROWS, 50)
    assert refused["variable"] == "FILTER_SHRINK_LIMIT" and refused["levelname"] == "ERROR"
    assert _as_synced(deployment) == before
    assert deployment.initialised() == 0

    # When FilterShrinkLimit is raised to 100 and the schedule fires again
    _redeploy(monkeypatch, FILTER_SHRINK_LIMIT="100")
    deployment.schedule()
    deployment.drain()
    # Then the lake holds the Review rows alone, and a warning says how many rows the change took out
    assert_lake_matches(
        deployment.lake,
        deployment.emu.state(deployment.project),
        deployment.project,
        include=lambda r: r["stage"] == "Review 1",
    )
    [allowed] = _logged(caplog, "filter change takes rows out of the current view")
    assert (allowed["removing"], allowed["lake_rows"], allowed["levelname"]) == (
        MAIN_ROWS - 1,
        MAIN_ROWS,
        "WARNING",
    )
    assert deployment.emu.writes() == []


def test_a_stage_the_workflow_lacks_is_refused_on_a_sync_request_and_on_the_schedule(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a lake in step, then the stack updated with a stage in the wrong case
    before = _in_step_then_redeployed(deployment, monkeypatch, STAGE_INCLUDE="review 1")
    # When a sync request arrives
    deployment.request_sync(full=True)
    deployment.drain()
    # Then it is refused and dropped (asking again cannot succeed), naming the variable and the stage
    [refused] = _logged(caplog, "sync request refused")
    assert refused["variable"] == "STAGE_INCLUDE" and "did you mean 'Review 1'?" in refused["reason"]
    assert deployment.sync_requests.failed_records == 0
    # When the schedule fires / Then the invocation fails, naming the stage; the lake is as it was
    with pytest.raises(PlanningFailedError, match="no stage 'review 1'"):
        deployment.schedule()
    assert _as_synced(deployment) == before
    deployment.assert_in_step()
