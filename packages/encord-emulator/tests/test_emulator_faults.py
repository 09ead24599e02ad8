"""Injected faults and rate limiting, answered (or not) by the real SDK's retry policy.

urllib3 treats `Retry-After: 0` as absent and falls back to the SDK's backoff (0 s, then 3 s, 6 s), so only a
single fault uses 0 here; storms use `Retry-After: 1`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from encord.exceptions import RateLimitExceededError, RequestException, UnknownException

from encord_emulator.testing import EmulatorEnv, emulator_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[EmulatorEnv]:
    with emulator_env(tmp_path) as env:
        yield env


def listings(env: EmulatorEnv) -> list[dict[str, Any]]:
    return [e for e in env.emu.request_log() if e["query_type"] == "labelrowmetadata"]


def test_a_429_storm_with_retry_after_is_ridden_out_by_the_sdks_retries(env: EmulatorEnv) -> None:
    # Given three 429s with Retry-After: 1 armed for the listing
    project = env.project()
    env.emu.inject_fault("status", status=429, retry_after=1, count=3, query_type="labelrowmetadata")
    started = time.monotonic()

    # When the SDK lists rows
    rows = project.list_label_rows_v2()

    # Then the call succeeds on the 4th attempt, after waiting as told, and the log shows every attempt
    assert len(rows) == 4
    assert time.monotonic() - started >= 3.0
    assert [(e["status"], e["fault"]) for e in listings(env)] == [(429, "status")] * 3 + [(200, None)]


def test_a_429_with_retry_after_zero_on_v2_is_retried_at_once(env: EmulatorEnv) -> None:
    # Given one 429 with Retry-After: 0 on the project endpoint
    env.emu.inject_fault("status", status=429, retry_after=0, path="/v2/public/projects/*")

    # When the SDK gets the project
    project = env.project()

    # Then it succeeded on the second attempt
    assert project.title == "Emulated project"
    assert [e["status"] for e in env.emu.request_log()][:2] == [429, 200]


def test_429s_beyond_the_retries_raise_rate_limit_exceeded_with_retry_after(env: EmulatorEnv) -> None:
    # Given four 429s (one more than the SDK retries)
    project = env.project()
    env.emu.inject_fault("status", status=429, retry_after=1, count=4, query_type="labelrowmetadata")

    # When the SDK lists rows
    # Then it gives up with RateLimitExceededError carrying the server's Retry-After
    with pytest.raises(RateLimitExceededError) as raised:
        project.list_label_rows_v2()
    assert raised.value.retry_after == 1
    assert len(listings(env)) == 4


def test_a_503_without_retry_after_is_retried_immediately_once(env: EmulatorEnv) -> None:
    # Given one 503 on the legacy endpoint
    project = env.project()
    env.emu.inject_fault("status", status=503, path="/public")

    # When the SDK lists rows
    rows = project.list_label_rows_v2()

    # Then the first retry (no backoff) succeeds
    assert len(rows) == 4
    assert [e["status"] for e in listings(env)] == [503, 200]


def test_a_504_is_not_retried_and_is_an_unknown_exception_on_v2(env: EmulatorEnv) -> None:
    # Given one 504 on the project endpoint
    env.emu.inject_fault("status", status=504, path="/v2/public/projects/*")

    # When the SDK gets the project
    # Then it raises UnknownException after a single attempt
    with pytest.raises(UnknownException):
        env.project()
    assert [e["status"] for e in env.emu.request_log()] == [504]


def test_added_latency_delays_the_matching_request(env: EmulatorEnv) -> None:
    # Given 0.3 s of latency on the next listing
    project = env.project()
    env.emu.inject_fault("latency", latency_s=0.3, query_type="labelrowmetadata")
    started = time.monotonic()

    # When the SDK lists rows
    rows = project.list_label_rows_v2()

    # Then the answer is right, and late
    assert len(rows) == 4
    assert time.monotonic() - started >= 0.3
    (entry,) = listings(env)
    assert entry["fault"] == "latency" and entry["duration_ms"] >= 300


def test_a_malformed_body_is_a_request_exception_on_both_transports(env: EmulatorEnv) -> None:
    # Given a non-JSON answer armed for the next v2 request and the next legacy request
    env.emu.inject_fault("malformed", path="/v2/public/projects/*")
    env.emu.inject_fault("malformed", path="/public")

    # When the SDK gets the project, then lists rows
    # Then both raise RequestException (JSON parse failure), and nothing was retried
    with pytest.raises(RequestException):
        env.project()
    project = env.project()
    with pytest.raises(RequestException):
        project.list_label_rows_v2()
    assert [e["fault"] for e in env.emu.request_log()].count("malformed") == 2


def test_a_dropped_connection_is_retried_by_the_sdk(env: EmulatorEnv) -> None:
    # Given the next listing's connection closed without an answer
    project = env.project()
    env.emu.inject_fault("drop", query_type="labelrowmetadata")

    # When the SDK lists rows
    rows = project.list_label_rows_v2()

    # Then it retried and succeeded; the dropped attempt is logged without a status
    assert len(rows) == 4
    assert [(e["fault"], e["status"]) for e in listings(env)] == [("drop", None), (None, 200)]


def test_faults_only_hit_matching_requests_and_are_spent(env: EmulatorEnv) -> None:
    # Given a fault for labelrow PUT (create) only
    env.emu.inject_fault("status", status=500, query_type="labelrow", query_method="PUT")

    # When reads happen
    project = env.project()
    project.list_label_rows_v2()

    # Then they are untouched and the fault is still armed
    assert all(e["fault"] is None for e in env.emu.request_log())
    assert len(env.emu.faults.armed()) == 1


def test_the_rate_limiter_answers_429_with_retry_after_until_tokens_refill(env: EmulatorEnv) -> None:
    # Given a bucket of 2 requests refilling at 1 per second, Retry-After: 1
    env.emu.set_rate_limit(1.0, burst=2, retry_after=1)

    # When the SDK makes three requests in a row (project, ontology, listing)
    project = env.project()
    rows = project.list_label_rows_v2()

    # Then the third was refused once with 429 and then served
    assert len(rows) == 4
    assert [(e["status"], e["fault"]) for e in listings(env)] == [(429, "rate_limit"), (200, None)]

    # And with the limiter off again, nothing is refused
    env.emu.set_rate_limit(None)
    env.emu.clear_log()
    project.list_label_rows_v2()
    project.list_label_rows_v2()
    assert [e["status"] for e in env.emu.request_log()] == [200, 200]


def test_emulator_wide_latency_applies_to_every_api_request(tmp_path: Path) -> None:
    # Given an emulator with 0.1 s latency on every request
    with emulator_env(tmp_path, latency_s=0.1) as env:
        started = time.monotonic()

        # When the SDK makes its two get_project requests
        env.project()

        # Then both were delayed
        assert time.monotonic() - started >= 0.2
        assert all(e["duration_ms"] >= 100 for e in env.emu.request_log())
