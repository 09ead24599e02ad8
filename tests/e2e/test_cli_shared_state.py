"""`--state dynamodb://TABLE` (issue 13, finding 1): machines that name the same table share the state of an
S3 lake (watermark, row index, lease), through the CLI, the real SDK and emulator, and real boto3 to moto.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from awsenv import create_state_table
from test_cli_sync import Mirror, Run, serve_mirror

from encord_emulator.testing import without_objects
from encord_mirror.adapters.aws.dynamodb import DynamoStateStore
from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.verify import assert_lake_matches

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


class Shared:
    """A mirror of an S3 lake whose state is the DynamoDB table `table`; `sync_from(machine)` runs the CLI
    as one machine of several (each its own user cache, where a state file would go)."""

    def __init__(
        self, mirror: Mirror, bucket: str, table: str, client: Callable[[str], Any], tmp: Path
    ) -> None:
        self.mirror, self.bucket, self.table, self._client, self._tmp = mirror, bucket, table, client, tmp
        self.state_url = f"dynamodb://{table}"

    def sync_from(self, machine: str, monkeypatch: pytest.MonkeyPatch, *extra: str) -> Run:
        monkeypatch.setenv("XDG_CACHE_HOME", str(self._tmp / machine / "cache"))
        return self.mirror.sync("--state", self.state_url, "--json", *extra)

    @property
    def lake(self) -> S3ObjectStore:
        return S3ObjectStore(self.bucket, "lake", self._client("s3"))

    @property
    def state(self) -> DynamoStateStore:
        return DynamoStateStore(self.table, self._client("dynamodb"))

    def label_keys(self) -> list[str]:
        return sorted(self.lake.list_keys(f"labels/project={self.mirror.project}/"))


@pytest.fixture
def shared(
    tmp_path: Path,
    aws_env: dict[str, str],
    aws_client: Callable[[str], Any],
) -> Iterator[Shared]:
    suffix = uuid.uuid4().hex[:10]
    bucket, table = f"lake-{suffix}", f"state-{suffix}"
    aws_client("s3").create_bucket(Bucket=bucket)
    create_state_table(aws_client("dynamodb"), table)
    with serve_mirror(tmp_path, extra_images=8) as mirror:
        mirror.dest = f"s3://{bucket}/lake"
        yield Shared(mirror, bucket, table, aws_client, tmp_path)


def _project(run: Run) -> dict[str, Any]:
    assert run.code == 0, run.out + run.err
    (project,) = orjson.loads(run.out)["projects"]
    assert isinstance(project, dict)
    return project


def test_two_machines_naming_one_table_share_the_watermark_index_and_lake(
    shared: Shared, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    mirror = shared.mirror
    # Given machine A synced the S3 lake with its state in the table, then in Encord one row edited, five
    # data units moved to another stage and three rows deleted
    first = _project(shared.sync_from("a", monkeypatch))
    assert first["mode"] == "full"
    rows = mirror.fixture.main_rows()
    edited = mirror.fixture.by_title("img2.jpg")
    mirror.emu.edit_row(mirror.project, edited.label_hash, without_objects(edited.row))
    moved = [r for r in rows[4:] if r.row["data_title"].startswith("bulk-")][:5]
    for row in moved:
        mirror.emu.move_stage(mirror.project, row.data_hash, "Complete")
    deleted = [r for r in rows[:4] if r.label_hash != edited.label_hash][:3]
    for row in deleted:
        mirror.emu.delete_row(mirror.project, row.label_hash)
    assert len(moved) == 5 and len(deleted) == 3
    mirror.emu.clear_log()

    # When machine B (a cache of its own, no state file) syncs the same lake naming the same table
    second = _project(shared.sync_from("b", monkeypatch))

    # Then it carries on from A's watermark: an incremental run that initialised only the edited row
    assert second["mode"] == "incremental", second
    assert mirror.initialised() == 1

    # And B's next reconciling run applies the moves and deletions from A's row index: only the moved rows
    # are initialised, every row is once in its partition, the deleted rows are gone
    mirror.emu.clear_log()
    third = _project(shared.sync_from("b", monkeypatch, "--full"))
    assert third["mode"] == "full"
    assert mirror.initialised() == 5
    assert_lake_matches(shared.lake, mirror.truth(), mirror.project)
    keys = shared.label_keys()
    assert not any(r.label_hash in k for r in deleted for k in keys)
    names = [k.rsplit("/", 1)[1] for k in keys]
    assert len(names) == len(set(names)), "a row is in two partitions"
    assert sorted(f"{e.label_hash}.json" for e in shared.state.scan_index(mirror.project)) == sorted(names)

    # And no machine wrote a state file: the table is the state
    assert not list(tmp_path.glob("*/cache/encord-mirror/*"))
    assert mirror.emu.writes() == []

    # And `status` from a third machine reads the table
    status = mirror.status("--state", shared.state_url)
    assert status.code == 0, status.out + status.err
    assert mirror.project in status.out and "never synced" not in status.out

    # And `verify` compares the lake with the table's row index and Encord: no difference
    argv = ["verify", "--project", mirror.project, "--lake", mirror.dest, "--state", shared.state_url]
    verify = mirror.cli(*argv, "--ssh-key", str(mirror.key_path), "--encord-domain", mirror.emu.url, "--json")
    assert verify.code == 0, verify.out + verify.err
    assert orjson.loads(verify.out)[0]["state"] == shared.state_url


def test_a_run_of_another_machine_holding_the_lease_in_the_table_makes_a_second_run_skip(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = shared.mirror
    # Given a synced lake, then another machine's run holding the project's lease in the table; its
    # holder cannot be seen from here, so the lease is never taken over before it expires
    assert shared.sync_from("a", monkeypatch).code == 0
    owner = "20261203T193000.000Z-0ther0ne"
    assert shared.state.acquire_lease(mirror.project, owner, datetime.now(UTC), 900)
    mirror.emu.clear_log()

    # When this machine syncs
    run = shared.sync_from("b", monkeypatch)

    # Then it skips the project naming the holding run, and leaves the lease to it
    assert run.code == 1, run.out + run.err
    assert f"run {owner} holds the project's lease" in run.err
    lease = shared.state.get_lease(mirror.project)
    assert lease is not None and lease.owner == owner
    assert mirror.initialised() == 0

    # And once that run releases it, the next sync goes ahead
    shared.state.release_lease(mirror.project, owner)
    assert shared.sync_from("b", monkeypatch).code == 0


def test_a_table_bound_to_another_lake_is_refused_naming_both(
    shared: Shared, monkeypatch: pytest.MonkeyPatch, aws_client: Callable[[str], Any]
) -> None:
    # Given a table that holds the state of one lake
    assert shared.sync_from("a", monkeypatch).code == 0
    other = f"other-{uuid.uuid4().hex[:10]}"
    aws_client("s3").create_bucket(Bucket=other)

    # When a sync names it with another lake
    shared.mirror.dest = f"s3://{other}/lake"
    run = shared.sync_from("a", monkeypatch)

    # Then it is refused (exit 2), naming the table and both lakes, and the other lake stays empty
    assert run.code == 2, run.out + run.err
    assert f"--state {shared.state_url}: belongs to another lake" in run.err
    assert f"--lake s3://{other}/lake" in run.err
    assert not list(S3ObjectStore(other, "lake", aws_client("s3")).list_keys("labels/"))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("dynamodb://", "--state dynamodb://: name the table: --state dynamodb://TABLE"),
        ("dynamodb://no-such-table", "--state dynamodb://no-such-table: no such DynamoDB table in region"),
        ("dynamodb://a b", "is not a DynamoDB table name"),
    ],
)
def test_a_bad_dynamodb_state_exits_2_naming_the_flag(shared: Shared, state: str, expected: str) -> None:
    for run in (shared.mirror.sync("--state", state), shared.mirror.status("--state", state)):
        assert run.code == 2, run.out + run.err
        assert expected in run.err
        assert "Traceback" not in run.err
    assert not list(shared.lake.list_keys(""))
