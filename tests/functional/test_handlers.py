"""The Lambda handlers, fed with the sample events in `events/`, over fakes of the ports (type-checked
against the Protocols in tests/fakes.py) plus the local lake and SQLite state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from fakes import ANNOTATE, Clock, FakeRow, FakeSource, RecordingEvents, RecordingQueue, RecordingSnapshots
from lambda_support import FakeLambdaContext, load_event, load_handler, with_bodies

from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.aws_lambda.results import PlanningFailedError
from encord_mirror.aws_lambda.wiring import Runtime
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.lake import run_manifest_key
from encord_mirror.domain.models import RunRecord

# What the sample events name.
PROJECT = "00000000-0000-4000-8000-0000000000aa"
RUN_ID = "20261123T182000Z-1a2b3c4d"
CHUNKS = (f"{RUN_ID}-00000", f"{RUN_ID}-00001")
LABELS = tuple(f"11111111-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))


@dataclass
class Env:
    source: FakeSource
    lake: LocalLake
    state: SqliteStateStore
    queue: RecordingQueue
    events: RecordingEvents
    clock: Clock
    runtime: Runtime

    def label_keys(self) -> list[str]:
        return sorted(self.lake.list_keys(f"labels/project={PROJECT}/"))

    def create_sample_run(self) -> None:
        self.state.create_run(
            RunRecord(
                PROJECT, RUN_ID, signpost=self.clock(), previous_watermark=None, full=True, chunk_ids=CHUNKS
            )
        )


def make_env(tmp_path: Path, *, projects: tuple[str, ...] = (PROJECT,)) -> Env:
    clock = Clock()
    source = FakeSource(clock=clock, project_hash=PROJECT)
    for n, label_hash in enumerate(LABELS):
        source.rows[(f"data-{n}", "main")] = FakeRow(f"data-{n}", "main", label_hash, clock(), ANNOTATE)
    clock.advance(60)
    lake, state = LocalLake(tmp_path / "lake"), SqliteStateStore(tmp_path / "state.db")
    queue, events = RecordingQueue(), RecordingEvents()
    deps = MirrorDeps(
        source=source,
        lake=lake,
        state=state,
        queue=queue,
        events=events,
        snapshots=RecordingSnapshots(),
        clock=clock,
    )
    runtime = Runtime(config=MirrorConfig(projects=projects, max_attempts=3), deps=deps)
    return Env(source, lake, state, queue, events, clock, runtime)


@pytest.fixture()
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def invoke(name: str, event: dict[str, Any], env: Env) -> Any:
    return load_handler(name).lambda_handler(event, FakeLambdaContext(), runtime=env.runtime)


def failed_ids(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


# -- planner ---------------------------------------------------------------------------------------------


def test_schedule_event_plans_every_configured_project(env: Env) -> None:
    # Given a project with three labelled rows and no watermark yet
    # When the schedule fires
    response = invoke("planner", load_event("schedule"), env)
    # Then one run is planned with all three rows sent as chunks
    [run] = response["runs"]
    assert run["status"] == "planned" and run["project_hash"] == PROJECT and run["to_sync"] == 3
    assert sorted(h for c in env.queue.chunks for h in c.label_hashes) == sorted(LABELS)


def test_schedule_plans_the_healthy_projects_when_one_fails(tmp_path: Path) -> None:
    # Given two configured projects, one of which the source cannot list
    env = make_env(tmp_path, projects=("no-such-project", PROJECT))
    # When the schedule fires / Then the failure names the project, and the other was planned anyway
    with pytest.raises(PlanningFailedError) as failure:
        invoke("planner", load_event("schedule"), env)
    assert set(failure.value.errors) == {"no-such-project"}
    assert {c.project_hash for c in env.queue.chunks} == {PROJECT}


def test_sync_request_plans_the_requested_project_in_full(env: Env) -> None:
    # Given a sync request for the project with full=true
    # When the planner takes it from the queue
    response = invoke("planner", load_event("sync_request"), env)
    # Then no record failed, and a full run was recorded and sent
    assert failed_ids(response) == []
    run_id = env.queue.chunks[0].run_id
    run = env.state.get_run(PROJECT, run_id)
    assert run is not None and run.full


def test_malformed_sync_request_is_reported_failed_alone(env: Env) -> None:
    # Given a batch with a sync request that lacks its project hash, and a good one
    event = with_bodies(load_event("sync_request"), [{"full": True}, {"project_hash": PROJECT}])
    # When the planner takes them
    response = invoke("planner", event, env)
    # Then only the malformed record is reported failed (retried, then dead-lettered); the other is planned
    assert failed_ids(response) == [event["Records"][0]["messageId"]]
    assert {c.project_hash for c in env.queue.chunks} == {PROJECT}


def test_a_sync_request_for_an_unconfigured_project_is_refused_and_logged(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a sync request naming a project that is not in PROJECTS
    other = "00000000-0000-4000-8000-0000000000bb"
    event = with_bodies(load_event("sync_request"), [{"project_hash": other, "full": True}])
    # When the planner takes it
    response = invoke("planner", event, env)
    # Then nothing is planned for it (no lease, no run, no chunk), the record is consumed (asking again
    # cannot succeed), and an error line names the project and the configured ones
    assert failed_ids(response) == []
    assert (
        env.queue.chunks == []
        and env.state.get_lease(other) is None
        and env.state.get_watermark(other) is None
    )
    [refusal] = [r for r in caplog.records if r.getMessage() == "sync request refused"]
    reason = str(refusal.__dict__["reason"])
    assert refusal.levelname == "ERROR" and other in reason and PROJECT in reason


# -- worker ----------------------------------------------------------------------------------------------


def test_worker_writes_each_chunk_and_asks_for_the_finalizer_once(env: Env) -> None:
    # Given the run the sample chunks belong to
    env.create_sample_run()
    # When the worker gets the batch of two chunks
    response = invoke("worker", load_event("worker_sqs"), env)
    # Then nothing failed, every row is in the lake, and the completed run goes to the finalizer
    assert failed_ids(response) == []
    assert [k.rsplit("/", 1)[1] for k in env.label_keys()] == [f"{h}.json" for h in LABELS]
    assert env.queue.finalize_requests == [(PROJECT, RUN_ID)]


def test_worker_reports_only_the_chunk_with_a_poison_row(env: Env) -> None:
    # Given a row that cannot be serialised, in the first chunk
    env.create_sample_run()
    env.source.poison.add(LABELS[0])
    event = load_event("worker_sqs")
    # When the worker gets the batch (first delivery of that chunk)
    response = invoke("worker", event, env)
    # Then only that record fails; its healthy row and the other chunk are written; no gap yet
    assert failed_ids(response) == [event["Records"][0]["messageId"]]
    assert [k.rsplit("/", 1)[1] for k in env.label_keys()] == [f"{h}.json" for h in LABELS[1:]]
    assert env.state.list_gaps(PROJECT) == []
    assert env.queue.finalize_requests == []


def test_last_delivery_records_the_gap_and_still_fails_the_record(env: Env) -> None:
    # Given a poison row on its chunk's last delivery (ApproximateReceiveCount = max attempts)
    env.create_sample_run()
    env.source.poison.add(LABELS[0])
    event = load_event("worker_sqs")
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "3"
    # When the worker gets it
    response = invoke("worker", event, env)
    # Then the record fails (so SQS moves it to the DLQ), the row is a gap, and the run can finalize
    assert failed_ids(response) == [event["Records"][0]["messageId"]]
    assert [g.label_hash for g in env.state.list_gaps(PROJECT)] == [LABELS[0]]
    assert env.queue.finalize_requests == [(PROJECT, RUN_ID)]


# -- finalizer -------------------------------------------------------------------------------------------


def test_finalize_commits_the_run_once_and_reports_watermark_lag(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a run whose chunks all succeeded
    env.create_sample_run()
    invoke("worker", load_event("worker_sqs"), env)
    capsys.readouterr()
    # When the finalize request arrives twice
    first = invoke("finalizer", load_event("finalize"), env)
    manifest = env.lake.get(run_manifest_key(PROJECT, RUN_ID))
    second = invoke("finalizer", load_event("finalize"), env)
    # Then both succeed, the watermark is the run's signpost, the manifest was written once, and the
    # watermark lag metric went out (EMF on stdout)
    assert failed_ids(first) == [] and failed_ids(second) == []
    assert manifest is not None and orjson.loads(manifest.body)["run_id"] == RUN_ID
    assert env.lake.get(run_manifest_key(PROJECT, RUN_ID)) == manifest
    assert env.state.get_watermark(PROJECT) == env.clock()
    emitted = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(m.get("WatermarkLagSeconds") == [0.0] for m in emitted)
    # and so did the count of partitions owed a snapshot (none), which an alarm watches
    assert any(m.get("SnapshotsOwed") == [0.0] for m in emitted)


def test_an_early_finalize_request_closes_nothing_until_the_last_chunk_is_done(env: Env) -> None:
    # Given a run of two chunks of which only the first is done
    env.create_sample_run()
    worker_event = load_event("worker_sqs")
    first, second = ({"Records": [record]} for record in worker_event["Records"])
    invoke("worker", first, env)
    assert env.queue.finalize_requests == []
    # When a finalize request arrives early (a stray or hand-sent message)
    early = invoke("finalizer", load_event("finalize"), env)
    # Then it is consumed without closing the run: no manifest, no watermark, no claim taken
    assert failed_ids(early) == []
    assert env.lake.get(run_manifest_key(PROJECT, RUN_ID)) is None
    assert env.state.get_watermark(PROJECT) is None
    assert env.state.begin_finalize(PROJECT, RUN_ID, "probe", env.clock(), 1) == "claimed"
    env.state.end_finalize(PROJECT, RUN_ID, "probe", finished=False)
    # When the last chunk is done, it asks for the finalizer, which closes the run with both chunks' rows
    invoke("worker", second, env)
    assert env.queue.finalize_requests == [(PROJECT, RUN_ID)]
    invoke("finalizer", load_event("finalize"), env)
    manifest = env.lake.get(run_manifest_key(PROJECT, RUN_ID))
    assert manifest is not None and len(orjson.loads(manifest.body)["rows"]) == 4


def test_finalize_of_an_unknown_run_is_not_retried(env: Env) -> None:
    # Given no such run in the ledger (expired, or never created)
    # When its finalize request arrives / Then the record is consumed, not failed forever
    response = invoke("finalizer", load_event("finalize"), env)
    assert failed_ids(response) == []
    assert env.lake.get(run_manifest_key(PROJECT, RUN_ID)) is None


def test_finalize_of_a_run_another_finalizer_holds_is_retried_later(env: Env) -> None:
    # Given a finished run whose finalizer is still at work (it holds the run's claim)
    env.create_sample_run()
    invoke("worker", load_event("worker_sqs"), env)
    env.state.begin_finalize(PROJECT, RUN_ID, "another-invocation", env.clock(), 900)
    # When a duplicate finalize request arrives
    # Then its record fails (Powertools fails a batch whose records all failed: SQS redelivers it later)
    with pytest.raises(BatchProcessingError, match="being finalized by another invocation"):
        invoke("finalizer", load_event("finalize"), env)
    # and the run is left to its finalizer
    assert env.lake.get(run_manifest_key(PROJECT, RUN_ID)) is None
