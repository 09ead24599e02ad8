"""The Lambda handlers themselves, end to end: real boto3 against moto's server, the real encord SDK
against the Encord emulator, the Encord key in (emulated) Secrets Manager, the settings from the
environment template.yaml sets. A local event-source poller feeds the SQS queues to the handlers the
way Lambda's event source mapping does (batches of up to 10, partial batch failures, visibility
timeout, redrive to the DLQ). After each scenario the S3 lake's current view must equal the emulator's
state, and the emulator must have seen no write.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from awsenv import REGION, AwsResources, boto_environment, create_resources
from lambda_support import FakeLambdaContext, load_event, load_handler

from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import (
    BASE_TIME,
    CONSENSUS_BRANCH,
    Fixture,
    FixtureRow,
    build_fixture,
    clone_row,
    corrupt_row,
    user_client,
    without_objects,
)
from encord_mirror.adapters.aws import DynamoStateStore, S3ObjectStore
from encord_mirror.aws_lambda import wiring
from encord_mirror.domain.lake import label_key, snapshot_key
from encord_mirror.domain.models import BranchSelection
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.reader import Lake, SnapshotPrunedError
from encord_mirror.verify import MAIN_ONLY, assert_lake_matches, assert_snapshots_match, lake_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LAKE_PREFIX = "mirror"
BUNDLE_SIZE = 4
ALL_BRANCHES = BranchSelection("all")


class WorkerKilledError(BaseException):
    """The Lambda process dying mid-invocation: not an Exception, so nothing in the handler catches it."""


@dataclass
class CrashingLake:
    """The lake, until the `after`-th write: then the worker process 'dies'."""

    inner: ObjectStore
    after: int
    puts: int = 0

    def get(self, key: str) -> Any:
        return self.inner.get(key)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        if self.puts >= self.after:
            raise WorkerKilledError(f"killed before writing {key}")
        self.puts += 1
        return self.inner.put(
            key, body, if_match=if_match, if_none_match=if_none_match, content_type=content_type
        )

    def open(self, key: str) -> Any:
        return self.inner.open(key)

    def put_stream(self, key: str, chunks: Iterable[bytes], **kwargs: Any) -> str:
        return self.put(key, b"".join(chunks), **kwargs)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        return self.inner.list_keys(prefix)

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        return self.inner.list_etags(prefix)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)


@dataclass
class Poller:
    """A local SQS event source mapping for one queue and one handler."""

    sqs: Any
    queue_url: str
    handler: str
    batch_size: int = 10
    invocations: int = 0
    crashes: int = 0
    # Records left on the queue for redelivery: reported in batchItemFailures, or in a failed invocation
    # (Powertools fails the whole invocation when every record of the batch failed).
    failed_records: int = 0

    def poll(self, runtime: wiring.Runtime | None = None) -> int:
        """One receive + invoke + delete cycle; returns how many records were delivered."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            AttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not messages:
            return 0
        self.deliver(messages, runtime)
        return len(messages)

    def deliver(self, messages: list[dict[str, Any]], runtime: wiring.Runtime | None = None) -> None:
        event = {"Records": [self._record(m) for m in messages]}
        self.invocations += 1
        handler = load_handler(self.handler).lambda_handler
        try:
            kwargs = {} if runtime is None else {"runtime": runtime}
            response = handler(event, FakeLambdaContext(), **kwargs)
        except (Exception, WorkerKilledError):
            # A failed invocation: Lambda deletes nothing; every record reappears after the visibility
            # timeout.
            self.crashes += 1
            self.failed_records += len(messages)
            return
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        self.failed_records += len(failed)
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _record(self, message: dict[str, Any]) -> dict[str, Any]:
        attributes = message.get("Attributes", {})
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": {
                "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
                "SentTimestamp": attributes.get("SentTimestamp", "0"),
                "SenderId": attributes.get("SenderId", "AIDAEXAMPLE"),
                "ApproximateFirstReceiveTimestamp": attributes.get("ApproximateFirstReceiveTimestamp", "0"),
            },
            "messageAttributes": {},
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:{self.queue_url.rsplit('/', 1)[1]}",
            "awsRegion": REGION,
        }


def _depth(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@dataclass
class Deployment:
    """One stack: its AWS resources, the Encord emulator, and pollers for its three queues."""

    aws: AwsResources
    client: Callable[[str], Any]
    emu: Emulator
    fixture: Fixture
    key_path: Path
    sync_requests: Poller = field(init=False)
    work: Poller = field(init=False)
    finalize: Poller = field(init=False)

    def __post_init__(self) -> None:
        sqs = self.client("sqs")
        self.sync_requests = Poller(sqs, self.aws.sync_queue_url, "planner", batch_size=1)
        self.work = Poller(sqs, self.aws.work_queue_url, "worker")
        self.finalize = Poller(sqs, self.aws.finalize_queue_url, "finalizer", batch_size=1)

    @property
    def project(self) -> str:
        return self.fixture.project_hash

    @property
    def lake(self) -> S3ObjectStore:
        return S3ObjectStore(self.aws.bucket, LAKE_PREFIX, self.client("s3"))

    @property
    def state(self) -> DynamoStateStore:
        return DynamoStateStore(self.aws.table, self.client("dynamodb"))

    def schedule(self) -> dict[str, Any]:
        response: dict[str, Any] = load_handler("planner").lambda_handler(
            load_event("schedule"), FakeLambdaContext()
        )
        return response

    def request_sync(self, *, full: bool) -> None:
        body = orjson.dumps({"project_hash": self.project, "full": full}).decode()
        self.client("sqs").send_message(QueueUrl=self.aws.sync_queue_url, MessageBody=body)

    def drain(self, *, timeout_s: float = 60.0, work_runtime: wiring.Runtime | None = None) -> None:
        """Poll every queue until all are empty with nothing in flight (failed records come back after
        the 1 s visibility timeout, and are redriven to the DLQ after maxReceiveCount deliveries)."""
        sqs = self.client("sqs")
        deadline = time.monotonic() + timeout_s
        queues = (self.aws.sync_queue_url, self.aws.work_queue_url, self.aws.finalize_queue_url)
        while time.monotonic() < deadline:
            delivered = self.sync_requests.poll() + self.work.poll(work_runtime) + self.finalize.poll()
            if delivered:
                continue
            if all(_depth(sqs, url) == (0, 0) for url in queues):
                return
            time.sleep(0.25)
        raise AssertionError("queues did not drain in time")

    def dlq_depth(self) -> int:
        return _depth(self.client("sqs"), self.aws.work_dlq_url)[0]

    def manifests(self) -> list[dict[str, Any]]:
        """The run manifests, oldest run first (run ids only sort by time to the second)."""
        out = []
        for key in sorted(self.lake.list_keys(f"runs/project={self.project}/")):
            stored = self.lake.get(key)
            assert stored is not None
            out.append(orjson.loads(stored.body))
        return sorted(out, key=lambda m: m["signpost"])

    def initialised(self) -> int:
        log = self.emu.request_log()
        return sum(e["uids"] for e in log if e["query_type"] == "labelrow" and e["query_method"] == "GET")

    def refused(self) -> int:
        """How many API requests Encord answered 429."""
        return sum(1 for e in self.emu.request_log() if e["status"] == 429)

    def assert_in_step(self, branches: BranchSelection = MAIN_ONLY) -> None:
        assert_lake_matches(self.lake, self.emu.state(self.project), self.project, branches)
        assert self.emu.writes() == [], "the mirror must never write to Encord"
        assert self.dlq_depth() == 0


@pytest.fixture()
def deployment(
    tmp_path: Path, aws_endpoint: str, aws_client: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    resources = create_resources(aws_endpoint, aws_client)
    fixture = build_fixture(tmp_path / "fixture", extra_images=8)
    key_path, public_line = generate_keypair(tmp_path / "keys")
    secret_arn = aws_client("secretsmanager").create_secret(
        Name=f"encord-key-{resources.bucket}", SecretString=key_path.read_text()
    )["ARN"]
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        # The environment template.yaml gives the functions, pointed at the emulators.
        environment = {
            **boto_environment(aws_endpoint),
            "AWS_REGION": REGION,
            "LAKE_BUCKET": resources.bucket,
            "LAKE_PREFIX": LAKE_PREFIX,
            "STATE_TABLE": resources.table,
            "WORK_QUEUE_URL": resources.work_queue_url,
            "FINALIZE_QUEUE_URL": resources.finalize_queue_url,
            "EVENT_BUS_NAME": resources.bus,
            "ENCORD_KEY_SECRET_ARN": secret_arn,
            "ENCORD_DOMAIN": emu.url,
            "SECRET_MAX_AGE_SECONDS": "300",
            "PROJECTS": fixture.project_hash,
            "BRANCH_MODE": "main",
            "BRANCH_NAME": "",
            "BUNDLE_SIZE": str(BUNDLE_SIZE),
            "OVERLAP_SECONDS": "120",
            "RECONCILE_EVERY": "100",
            "STAGE_INCLUDE": "",
            "STAGE_EXCLUDE": "",
            "TASK_STATUSES": "",
            "OBJECT_FEATURE_HASHES": "",
            "CLASSIFICATION_FEATURE_HASHES": "",
            "MAX_ATTEMPTS": str(resources.max_receive_count),
            "LEASE_TTL_SECONDS": "900",
            "HISTORY_KEEP_RUNS": "0",
            "FILTER_SHRINK_LIMIT": "50",
            "SNAPSHOTS_KEEP": "0",
            "SNAPSHOTS_KEEP_DAYS": "0",
            "COCO_MODE": "corrected",
            "ANNOUNCE_MIN_ANNOTATIONS": "0",
            "POWERTOOLS_SERVICE_NAME": "encord-mirror",
            "POWERTOOLS_METRICS_NAMESPACE": "EncordMirrorTest",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        wiring.reset_caches()
        yield Deployment(resources, aws_client, emu, fixture, key_path)
    wiring.reset_caches()


def _first_sync(deployment: Deployment, branches: BranchSelection = MAIN_ONLY) -> None:
    deployment.schedule()
    deployment.drain()
    deployment.assert_in_step(branches)
    deployment.emu.clear_log()


def _redeploy(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """Change the functions' environment, as a stack update does: the next invocation is a cold start."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    wiring.reset_caches()


def _on_branch(base: FixtureRow, branch: str) -> dict[str, Any]:
    """A new row of `base`'s data unit on another (consensus) branch, with its own label hash."""
    row = clone_row(base.row, data_title=base.row["data_title"], edited=BASE_TIME, branch=branch)
    row["data_hash"] = base.data_hash
    row["data_units"] = copy.deepcopy(base.row["data_units"])
    return row


def test_first_sync_through_the_lambdas_mirrors_the_project(deployment: Deployment) -> None:
    # Given a project and an empty lake / When the schedule fires and the queues drain
    response = deployment.schedule()
    deployment.drain()

    # Then the lake equals Encord's main branch, the run manifest was written once, the watermark is
    # the run's signpost, and every chunk went through the work queue in batches
    [run] = response["runs"]
    assert run["status"] == "planned" and run["full"] and run["chunks"] >= 2
    deployment.assert_in_step()
    [manifest] = deployment.manifests()
    assert manifest["run_id"] == run["run_id"]
    watermark = deployment.state.get_watermark(deployment.project)
    assert watermark is not None and watermark.isoformat() == run["signpost"]
    assert deployment.state.list_gaps(deployment.project) == []


def test_edits_saved_through_the_sdk_reach_the_lake_on_the_next_schedule(deployment: Deployment) -> None:
    # Given a lake in step, then two rows edited and saved through the SDK
    _first_sync(deployment)
    project = user_client(deployment.emu.url, deployment.key_path).get_project(deployment.project)
    edited = [row.label_hash for row in deployment.fixture.main_rows()[:2]]
    for row in project.list_label_rows_v2(label_hashes=edited):
        row.initialise_labels()
        for instance in row.get_object_instances():
            row.remove_object(instance)
        row.save()
    deployment.emu.clear_log()

    # When the schedule fires at once (no built-in delay)
    deployment.schedule()
    deployment.drain()

    # Then exactly those two rows were initialised and the lake holds their new content
    assert deployment.initialised() == 2
    deployment.assert_in_step()


def test_an_edit_reaches_the_next_schedule_when_the_functions_clock_is_5_minutes_ahead_of_encords(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given Encord's clock 5 minutes behind the functions' clock, and a lake in step
    deployment.emu.set_clock_offset(-300)
    _first_sync(deployment)
    # When a row is edited in Encord (stamped by its clock) and the schedule fires at once
    edited = deployment.fixture.main_rows()[0]
    deployment.emu.edit_row(deployment.project, edited.label_hash, without_objects(edited.row))
    capsys.readouterr()
    caplog.clear()
    [run] = deployment.schedule()["runs"]
    deployment.drain()

    # Then that incremental run picks the edit up, and the planner logged a warning and emitted the skew
    assert not run["full"] and -302 < run["clock_skew_s"] < -298
    assert deployment.initialised() == 1
    deployment.assert_in_step()
    [warning] = [r for r in caplog.records if r.getMessage() == "clock"]
    assert warning.levelname == "WARNING" and "300s ahead of Encord's" in str(warning.__dict__["reason"])
    emitted = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(-302 < m.get("ClockSkewSeconds", [0])[0] < -298 for m in emitted)


def test_the_finalizer_prunes_old_snapshots_on_s3_leaving_delete_markers_and_never_the_latest(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment keeping the newest snapshot of each partition only, and a lake in step
    _redeploy(monkeypatch, SNAPSHOTS_KEEP="1")
    _first_sync(deployment)
    lake = Lake(deployment.lake)
    edited = deployment.fixture.main_rows()[0]
    [part] = [p for p in lake.partitions(deployment.project) if deployment.lake.get(label_key(
        p.project_hash, p.branch, p.stage, edited.label_hash)) is not None]  # fmt: skip
    [first] = lake.snapshots(deployment.project, stage=part.stage)

    # When a row of that partition is edited and the schedule fires
    deployment.emu.advance_clock(1)
    deployment.emu.edit_row(deployment.project, edited.label_hash, without_objects(edited.row))
    [run] = deployment.schedule()["runs"]
    deployment.drain()

    # Then the partition keeps only its new latest snapshot; the old one's objects are delete markers
    # over noncurrent versions (what the stack's lifecycle rule expires), and the manifest names it
    [latest] = lake.snapshots(deployment.project, stage=part.stage)
    assert latest != first and lake.snapshot(deployment.project, stage=part.stage).snapshot_id == latest
    deployment.assert_in_step()
    assert_snapshots_match(
        deployment.lake, deployment.project, deployment.fixture.ontology, encord_compatible=False
    )
    prefix = f"{LAKE_PREFIX}/{snapshot_key(part.project_hash, part.branch, part.stage, first, '')}"
    versions = deployment.client("s3").list_object_versions(Bucket=deployment.aws.bucket, Prefix=prefix)
    markers = {m["Key"].rsplit("/", 1)[1] for m in versions.get("DeleteMarkers", [])}
    assert {"coco.json", "manifest.json"} <= markers
    assert all(not v["IsLatest"] for v in versions.get("Versions", []))
    [manifest] = [m for m in deployment.manifests() if m["run_id"] == run["run_id"]]
    assert {"snapshot_id": first, "branch": part.branch, "stage": part.stage} in manifest["snapshots_pruned"]
    # And the reader names the deleted snapshot as pruned
    with pytest.raises(SnapshotPrunedError, match="it keeps the newest 1"):
        lake.snapshot(deployment.project, stage=part.stage, snapshot_id=first)


def test_a_full_sync_request_moves_staged_rows_and_removes_deleted_ones(deployment: Deployment) -> None:
    # Given a lake in step, then a stage move, a deleted label row and a deleted data unit
    _first_sync(deployment)
    moved = deployment.fixture.by_title("img1.jpg")
    deployment.emu.move_stage(deployment.project, moved.data_hash, "Complete")
    deployment.emu.delete_row(deployment.project, deployment.fixture.by_title("img2.jpg").label_hash)
    deployment.emu.delete_data_unit(deployment.project, deployment.fixture.by_title("vid1.mp4").data_hash)

    # When a user asks for a full sync on the sync-request queue
    deployment.request_sync(full=True)
    deployment.drain()

    # Then the lake holds the moved row in its new partition only, and the deleted ones nowhere
    deployment.assert_in_step()
    keys = [k for k in deployment.lake.list_keys("labels/") if moved.label_hash in k]
    assert len(keys) == 1 and "stage=complete" in keys[0]
    assert deployment.manifests()[-1]["counts"]["removed"] == 2


def test_duplicated_and_reordered_chunks_leave_the_lake_as_one_delivery_would(deployment: Deployment) -> None:
    # Given the first run's chunk messages on the work queue
    deployment.schedule()
    sqs = deployment.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=deployment.aws.work_queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
    )["Messages"]
    assert len(messages) >= 3

    # When they are delivered in reverse order, then all again (at-least-once delivery), then finalized
    deployment.work.deliver(list(reversed(messages)))
    deployment.work.deliver(messages)
    deployment.drain()

    # Then the lake is in step, with one object per row and one run manifest
    deployment.assert_in_step()
    assert len(deployment.manifests()) == 1
    assert deployment.state.get_watermark(deployment.project) is not None


def test_manifest_counts_what_the_run_wrote_despite_a_duplicate_delivery(deployment: Deployment) -> None:
    # Given the first run's chunks delivered twice
    response = deployment.schedule()
    sqs = deployment.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=deployment.aws.work_queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
    )["Messages"]
    deployment.work.deliver(messages)
    deployment.work.deliver(messages)
    # When the run is finalized
    deployment.drain()
    # Then the manifest counts every row as written (each was, once)
    [manifest] = deployment.manifests()
    assert manifest["counts"]["written"] == response["runs"][0]["to_sync"]


def test_a_worker_killed_mid_chunk_is_redelivered_and_finishes_the_run(deployment: Deployment) -> None:
    # Given the first run planned, and a worker that dies after writing two rows
    deployment.schedule()
    real = wiring.runtime()
    crashing = replace(real, deps=replace(real.deps, lake=CrashingLake(real.deps.lake, after=2)))
    assert deployment.work.poll(crashing) > 0
    assert deployment.work.crashes == 1
    half_done = lake_differences(
        deployment.lake, deployment.emu.state(deployment.project), deployment.project
    )
    assert half_done, "the crash left the lake incomplete"

    # When the messages reappear after the visibility timeout and a healthy worker takes them
    deployment.drain()

    # Then the run completes: lake in step, nothing duplicated, one manifest
    deployment.assert_in_step()
    assert len(deployment.manifests()) == 1


def test_a_poison_row_goes_to_the_dlq_as_a_gap_that_holds_the_watermark(deployment: Deployment) -> None:
    # Given a lake in step, then one row corrupted in Encord and another edited normally
    _first_sync(deployment)
    state = deployment.state
    watermark = state.get_watermark(deployment.project)
    poison = deployment.fixture.by_title("img1.jpg")
    healthy = deployment.fixture.by_title("img2.jpg")
    deployment.emu.edit_row(deployment.project, poison.label_hash, corrupt_row(poison.row))
    deployment.emu.edit_row(deployment.project, healthy.label_hash, without_objects(healthy.row))

    # When the schedule fires and the queues drain (the chunk fails on each of its deliveries)
    deployment.schedule()
    deployment.drain()

    # Then its message is in the DLQ, the row is a gap, the healthy edit is in the lake, the watermark held
    assert deployment.dlq_depth() == 1
    assert [g.label_hash for g in state.list_gaps(deployment.project)] == [poison.label_hash]
    differences = lake_differences(
        deployment.lake, deployment.emu.state(deployment.project), deployment.project
    )
    assert differences and all(poison.label_hash in d for d in differences)
    assert state.get_watermark(deployment.project) == watermark
    assert deployment.manifests()[-1]["counts"]["failed"] == 1

    # And once the row is fixed in Encord, the next scheduled run retries the gap and closes it
    deployment.emu.edit_row(deployment.project, poison.label_hash, poison.row)
    deployment.client("sqs").purge_queue(QueueUrl=deployment.aws.work_dlq_url)
    deployment.schedule()
    deployment.drain()
    deployment.assert_in_step()
    assert state.list_gaps(deployment.project) == []
    after = state.get_watermark(deployment.project)
    assert after is not None and watermark is not None and after > watermark


def test_a_row_dropped_from_a_bundle_is_retried_by_redelivery_not_skipped(deployment: Deployment) -> None:
    # Given Encord's first two bundle answers leaving one row out (the SDK does not notice): the worker
    # initialises from the planner's listing, then once more after listing the missing row again
    deployment.emu.inject_fault("omit_rows", query_type="labelrow", query_method="GET", omit=1, count=2)

    # When the first sync runs through the queues
    deployment.schedule()
    deployment.drain()

    # Then that chunk's record was reported failed and redelivered, and the run finished complete:
    # lake in step, no gap, nothing dead-lettered
    assert deployment.work.invocations > 1
    deployment.assert_in_step()
    assert deployment.state.list_gaps(deployment.project) == []
    assert deployment.manifests()[-1]["counts"]["failed"] == 0


def test_all_branches_mirrors_every_consensus_branch_and_a_new_one_after_a_full_sync_request(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment that mirrors every branch, in step after its first sync
    _redeploy(monkeypatch, BRANCH_MODE="all")
    _first_sync(deployment, ALL_BRANCHES)
    assert any(f"branch={CONSENSUS_BRANCH}/" in k for k in deployment.lake.list_keys("labels/"))

    # When a second annotator's branch appears on img2 in Encord, the first annotator's branch row is
    # deleted, and a user asks for a full sync
    base = deployment.fixture.by_title("img2.jpg")
    added = _on_branch(base, "consensus-annotator-2")
    deployment.emu.add_row(deployment.project, added, stamp=True)
    dropped = deployment.fixture.by_title("img1.jpg", branch=CONSENSUS_BRANCH)
    deployment.emu.delete_row(deployment.project, dropped.label_hash)
    deployment.request_sync(full=True)
    deployment.drain()

    # Then the new row alone was initialised, it lives in its own branch partition at img2's stage next
    # to img2's main copy, the deleted branch row is gone, and the lake equals every branch of Encord
    assert deployment.initialised() == 1
    keys = list(deployment.lake.list_keys("labels/"))
    [new_key] = [k for k in keys if added["label_hash"] in k]
    [main_key] = [k for k in keys if base.label_hash in k]
    assert "/branch=consensus-annotator-2/" in new_key and "/branch=main/" in main_key
    assert new_key.split("/stage=")[1].split("/")[0] == main_key.split("/stage=")[1].split("/")[0]
    assert not any(f"branch={CONSENSUS_BRANCH}/" in k for k in keys)
    deployment.assert_in_step(ALL_BRANCHES)
    manifest = deployment.manifests()[-1]
    assert (manifest["counts"]["written"], manifest["counts"]["removed"]) == (1, 1)
    assert sorted(manifest["unlabelled"]) == sorted(deployment.emu.unlabelled(deployment.project))


def test_unlabelled_data_units_are_recorded_in_the_manifest_and_never_initialised(
    deployment: Deployment,
) -> None:
    # Given a data unit with no label row (initialising it through the SDK would create one)
    unlabelled = deployment.emu.unlabelled(deployment.project)
    assert unlabelled

    # When the first sync runs, then a user asks for another full sync (each lists the unit again)
    response = deployment.schedule()
    deployment.drain()
    deployment.request_sync(full=True)
    deployment.drain()

    # Then both runs recorded it as unlabelled, no label row was created (no labelrow PUT, no write at
    # all), Encord still has it unlabelled, and the lake holds the labelled rows only
    assert response["runs"][0]["unlabelled"] == len(unlabelled)
    manifests = deployment.manifests()
    assert len(manifests) == 2
    assert all(sorted(m["unlabelled"]) == sorted(unlabelled) for m in manifests)
    log = deployment.emu.request_log()
    assert not [e for e in log if e["query_type"] == "labelrow" and e["query_method"] == "PUT"]
    assert deployment.emu.unlabelled(deployment.project) == unlabelled
    deployment.assert_in_step()


def test_a_short_429_storm_is_absorbed_by_the_sdks_retries_without_a_redelivery(
    deployment: Deployment,
) -> None:
    # Given Encord answering 429 (Retry-After: 1) to the next two bundle requests
    deployment.emu.inject_fault("status", status=429, retry_after=1, count=2, query_type="labelrow")

    # When the first sync runs through the queues
    response = deployment.schedule()
    deployment.drain()

    # Then Encord did refuse twice, yet no chunk failed: every row was initialised once, by an answered
    # bundle, and the run finished in step with the watermark at its signpost
    [run] = response["runs"]
    assert deployment.refused() == 2
    assert deployment.work.failed_records == 0 and deployment.work.crashes == 0
    answered = [
        e
        for e in deployment.emu.request_log()
        if e["query_type"] == "labelrow" and e["query_method"] == "GET" and e["status"] == 200
    ]
    assert sum(e["uids"] for e in answered) == run["to_sync"]
    deployment.assert_in_step()
    watermark = deployment.state.get_watermark(deployment.project)
    assert watermark is not None and watermark.isoformat() == run["signpost"]


def test_a_429_storm_past_the_sdks_retries_fails_the_chunk_and_its_redelivery_completes_the_run(
    deployment: Deployment,
) -> None:
    # Given a lake in step, two rows edited in Encord, then a 429 (Retry-After: 1) storm on the next five
    # bundle requests: one more than the SDK's four attempts
    _first_sync(deployment)
    state = deployment.state
    watermark = state.get_watermark(deployment.project)
    for title in ("img1.jpg", "img2.jpg"):
        edited = deployment.fixture.by_title(title)
        deployment.emu.edit_row(deployment.project, edited.label_hash, without_objects(edited.row))
    deployment.emu.inject_fault("status", status=429, retry_after=1, count=5, query_type="labelrow")

    # When the schedule fires and the worker takes the run's one chunk during the storm
    [run] = deployment.schedule()["runs"]
    assert run["chunks"] == 1
    assert deployment.work.poll() == 1

    # Then the chunk is reported failed for redelivery, no gap is recorded, nothing was finalized, the
    # watermark held and the lake still lacks the edits
    assert deployment.work.failed_records == 1 and deployment.refused() == 4
    assert state.list_gaps(deployment.project) == []
    assert len(deployment.manifests()) == 1
    assert state.get_watermark(deployment.project) == watermark
    assert lake_differences(deployment.lake, deployment.emu.state(deployment.project), deployment.project)

    # When SQS redelivers it after the visibility timeout, while the storm ends
    deployment.drain()

    # Then the run completes: lake in step, no gap, both rows written, the watermark at this run's signpost
    assert deployment.work.failed_records == 1 and deployment.refused() == 5
    deployment.assert_in_step()
    assert state.list_gaps(deployment.project) == []
    counts = deployment.manifests()[-1]["counts"]
    assert counts["failed"] == 0 and counts["written"] == 2
    after = state.get_watermark(deployment.project)
    assert after is not None and after.isoformat() == run["signpost"]


def test_a_sustained_rate_limit_slows_the_lambdas_but_loses_nothing(deployment: Deployment) -> None:
    # Given Encord admitting 4 requests a second, 2 at once (429 + Retry-After: 1 beyond that)
    deployment.emu.set_rate_limit(4.0, burst=2, retry_after=1)

    # When the first sync runs through the queues
    deployment.schedule()
    deployment.drain()

    # Then Encord did refuse requests, yet every refusal was retried within the SDK: no chunk failed and
    # the lake is complete
    assert deployment.refused() > 0
    assert deployment.work.failed_records == 0
    deployment.emu.set_rate_limit(None)
    deployment.assert_in_step()
    assert deployment.manifests()[-1]["counts"]["failed"] == 0


def test_an_early_finalize_request_waits_for_the_last_chunk(deployment: Deployment) -> None:
    # Given the first run planned (its chunks on the work queue), and a finalize request sent for it at
    # once, before any chunk is done
    [run] = deployment.schedule()["runs"]
    body = orjson.dumps({"project_hash": deployment.project, "run_id": run["run_id"]}).decode()
    deployment.client("sqs").send_message(QueueUrl=deployment.aws.finalize_queue_url, MessageBody=body)

    # When the finalizer takes it before the workers run
    assert deployment.finalize.poll() == 1

    # Then the run is not closed: no manifest, no watermark, the request consumed
    assert deployment.manifests() == []
    assert deployment.state.get_watermark(deployment.project) is None
    assert deployment.finalize.failed_records == 0

    # When the chunks are done and the last one asks for the finalizer
    deployment.drain()

    # Then the run is closed once with every row: in step, one manifest counting them all
    deployment.assert_in_step()
    [manifest] = deployment.manifests()
    assert manifest["counts"]["written"] == run["to_sync"]


def test_a_sync_request_for_a_project_not_configured_is_refused(deployment: Deployment) -> None:
    # Given a project the emulator serves but the stack does not configure
    other = build_fixture(deployment.emu.data_dir, extra_images=1)
    deployment.emu.reload()
    body = orjson.dumps({"project_hash": other.project_hash, "full": True}).decode()
    deployment.client("sqs").send_message(QueueUrl=deployment.aws.sync_queue_url, MessageBody=body)

    # When the planner takes the request
    deployment.drain()

    # Then nothing of it is mirrored, no run is recorded, and the request was not redelivered
    assert list(deployment.lake.list_keys(f"labels/project={other.project_hash}/")) == []
    assert deployment.state.get_watermark(other.project_hash) is None
    assert deployment.sync_requests.failed_records == 0
