"""`encord-mirror sync` end to end: the CLI, the real SDK, the emulator on loopback and a local lake.

After every scenario the lake's current view must equal the emulator's state (`assert_lake_matches`), and
the request log must hold no write: the mirror is read-only toward Encord.
"""

from __future__ import annotations

import contextlib
import copy
import io
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import (
    CONSENSUS_BRANCH,
    Fixture,
    build_fixture,
    clone_row,
    corrupt_row,
    user_client,
    without_objects,
)
from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.cli.main import main
from encord_mirror.domain.lake import pruned_key, run_manifest_key
from encord_mirror.domain.models import BranchSelection
from encord_mirror.reader import SnapshotPrunedError, open_lake
from encord_mirror.verify import assert_lake_matches, lake_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ALL = BranchSelection("all")
MAIN = BranchSelection()


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@dataclass
class Mirror:
    emu: Emulator
    fixture: Fixture
    key_path: Path
    dest: str  # --lake: a directory, or s3://bucket/prefix

    @property
    def project(self) -> str:
        return self.fixture.project_hash

    def sync(self, *extra: str) -> Run:
        argv = [
            "sync",
            "--project",
            self.project,
            "--lake",
            self.dest,
            "--ssh-key",
            str(self.key_path),
        ]
        return self.cli(*argv, "--encord-domain", self.emu.url, *extra)

    def cli(self, *argv: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return Run(code, out.getvalue(), err.getvalue())

    def status(self, *extra: str) -> Run:
        return self.cli("status", "--project", self.project, "--lake", self.dest, *extra)

    @property
    def lake(self) -> LocalLake:
        return LocalLake(Path(self.dest))

    def state(self) -> SqliteStateStore:
        return SqliteStateStore(Path(self.dest) / ".mirror-state.sqlite")

    def truth(self) -> list[dict[str, Any]]:
        return self.emu.state(self.project)

    def assert_in_step(self, branches: BranchSelection = MAIN) -> None:
        assert_lake_matches(self.lake, self.truth(), self.project, branches)
        assert self.emu.writes() == [], "the mirror must never write to Encord"

    def initialised(self) -> int:
        """Label rows initialised since the log was last cleared (uids over every labelrow GET)."""
        log = self.emu.request_log()
        return sum(e["uids"] for e in log if e["query_type"] == "labelrow" and e["query_method"] == "GET")

    def main_hashes(self) -> list[str]:
        return [row.label_hash for row in self.fixture.main_rows()]

    def manifest(self, run: Run) -> dict[str, Any]:
        run_ids = [line.split(" run ")[1].split(":")[0] for line in run.err.splitlines() if " run " in line]
        body = self.lake.get(run_manifest_key(self.project, run_ids[-1]))
        assert body is not None
        loaded: dict[str, Any] = orjson.loads(body.body)
        return loaded


@contextlib.contextmanager
def serve_mirror(tmp_path: Path, *, extra_images: int) -> Iterator[Mirror]:
    """A fixture project served by the emulator, and a lake directory (not created) to mirror it to."""
    fixture = build_fixture(tmp_path / "fixture", extra_images=extra_images)
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        yield Mirror(emu, fixture, key_path, str(tmp_path / "lake"))


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    with serve_mirror(tmp_path, extra_images=24) as served:
        yield served


def _first_sync(mirror: Mirror, *extra: str) -> Run:
    run = mirror.sync(*extra)
    assert run.code == 0, run.out + run.err
    mirror.emu.clear_log()
    return run


def test_first_sync_mirrors_every_main_row_into_its_stage_partition(mirror: Mirror) -> None:
    # Given a project with rows in three stages, a consensus branch and an unlabelled data unit
    # When the first sync runs
    run = mirror.sync()

    # Then it exits 0 with a summary, and the lake equals Encord's main branch, one object per row
    assert run.code == 0, run.out + run.err
    assert "OK: in step" in run.out and "written" in run.out
    assert "full run" in run.err, "progress goes to stderr"
    mirror.assert_in_step()
    stages = {key.split("/")[3] for key in mirror.lake.list_keys("labels/")}
    assert stages == {"stage=annotate-1-5a5a0000", "stage=review-1-5a5a0000", "stage=complete-5a5a0000"}


def test_second_run_with_nothing_changed_initialises_no_row(mirror: Mirror) -> None:
    # Given a lake in step
    _first_sync(mirror)
    before = {key: mirror.lake.get(key) for key in mirror.lake.list_keys("labels/")}

    # When sync runs again with nothing changed in Encord
    run = mirror.sync()

    # Then it exits 0, initialises no row, and leaves every object byte-identical
    assert run.code == 0, run.out + run.err
    assert mirror.initialised() == 0
    assert {key: mirror.lake.get(key) for key in mirror.lake.list_keys("labels/")} == before
    mirror.assert_in_step()


@pytest.mark.parametrize("date_mode", ["strict", "inclusive"])
def test_edits_saved_through_the_sdk_are_mirrored_by_the_next_sync(mirror: Mirror, date_mode: str) -> None:
    # Given Encord comparing edit dates strictly or inclusively, a lake in step, then two rows edited and
    # saved through the SDK (as an annotator would)
    mirror.emu.set_date_mode(date_mode)  # type: ignore[arg-type]
    _first_sync(mirror)
    project = user_client(mirror.emu.url, mirror.key_path).get_project(mirror.project)
    edited = mirror.main_hashes()[:2]
    for row in project.list_label_rows_v2(label_hashes=edited):
        row.initialise_labels()
        for instance in row.get_object_instances():
            row.remove_object(instance)
        row.save()
    mirror.emu.clear_log()

    # When sync runs (at once: no built-in delay)
    run = mirror.sync()

    # Then exactly the edited rows were initialised, and the lake has their new content
    assert run.code == 0, run.out + run.err
    assert mirror.initialised() == 2
    mirror.assert_in_step()


@pytest.mark.parametrize(("host_ahead_s", "says"), [(300, "300s ahead of Encord's"), (-300, "300s behind")])
def test_an_edit_reaches_the_next_incremental_sync_when_the_hosts_clock_is_5_minutes_off(
    mirror: Mirror, host_ahead_s: int, says: str
) -> None:
    # Given this host's clock 5 minutes ahead of Encord's (or behind it), and a lake in step
    mirror.emu.set_clock_offset(-host_ahead_s)
    _first_sync(mirror)
    # When a row is edited in Encord (stamped by Encord's clock) and a plain sync runs at once
    edited = mirror.fixture.by_title("img2.jpg")
    mirror.emu.edit_row(mirror.project, edited.label_hash, without_objects(edited.row))
    run = mirror.sync()

    # Then that incremental run picks the edit up, and stderr says how far off the host's clock is
    assert run.code == 0, run.out + run.err
    assert "incremental run" in run.err
    assert mirror.initialised() == 1
    mirror.assert_in_step()
    assert f"warning: this host's clock is {says}" in run.err


def test_snapshots_keep_prunes_old_coco_snapshots_and_a_pruned_one_is_named_when_asked_for(
    mirror: Mirror,
) -> None:
    # Given three syncs without a retention setting, each after an edit in the same partition
    edited = mirror.fixture.by_title("img2.jpg")
    row = edited.row
    for _ in range(3):
        row = without_objects(row) if row is edited.row else edited.row
        assert mirror.sync().code == 0
        time.sleep(1)  # Encord stamps whole seconds: two edits in one second are one version
        mirror.emu.edit_row(mirror.project, edited.label_hash, row)
    lake = open_lake(mirror.dest)
    [part] = [
        p for p in lake.partitions(mirror.project) if len(lake.snapshots(mirror.project, stage=p.stage)) > 1
    ]
    kept_all = lake.snapshots(mirror.project, stage=part.stage)
    first = lake.snapshot(mirror.project, stage=part.stage, snapshot_id=kept_all[0])

    # When the next sync keeps the newest 2 snapshots
    run = mirror.sync("--snapshots-keep", "2")

    # Then every snapshot was kept until then, and now only the newest 2 of each partition are, the
    # latest among them; the run manifest names what was deleted
    assert run.code == 0, run.out + run.err
    assert len(kept_all) == 3
    kept = lake.snapshots(mirror.project, stage=part.stage)
    assert kept == [*kept_all[2:], lake.snapshot(mirror.project, stage=part.stage).snapshot_id]
    pruned = mirror.manifest(run)["snapshots_pruned"]
    assert {(p["stage"], p["snapshot_id"]) for p in pruned} >= {(part.stage, s) for s in kept_all[:2]}
    # and the partition's pruned.json says so, in its schema
    record = orjson.loads((Path(mirror.dest) / pruned_key(mirror.project, "main", part.stage)).read_bytes())
    schema = orjson.loads(
        (Path(__file__).resolve().parents[2] / "schemas/snapshot-pruned.schema.json").read_bytes()
    )
    assert list(Draft202012Validator(schema).iter_errors(record)) == []
    assert (record["first"], record["through"], record["keep"]) == (kept_all[0], kept_all[1], 2)
    mirror.assert_in_step()
    # And asking for a deleted snapshot, by id or by time, names retention and the oldest kept (exit 2)
    with pytest.raises(SnapshotPrunedError, match=f"oldest kept is {kept[0]}"):
        lake.snapshot(mirror.project, stage=part.stage, snapshot_id=kept_all[0])
    asked = mirror.cli(
        "coco", "latest", "--lake", mirror.dest, "--project", mirror.project, "--as-of", first.created_at
    )
    assert asked.code == 2 and "deleted by snapshot retention (it keeps the newest 2)" in asked.err
    assert "Traceback" not in asked.err
    # And a retention setting below 1 is refused naming its flag
    bad = mirror.sync("--snapshots-keep", "0")
    assert bad.code == 2 and "--snapshots-keep" in bad.err


def test_a_stage_move_moves_the_object_to_its_new_partition_and_removes_the_old_copy(mirror: Mirror) -> None:
    # Given a lake in step, then a data unit moved from "Annotate 1" to "Complete" (labels untouched)
    _first_sync(mirror)
    moved = mirror.fixture.by_title("img1.jpg")
    old_keys = [k for k in mirror.lake.list_keys("labels/") if moved.label_hash in k]
    mirror.emu.move_stage(mirror.project, moved.data_hash, "Complete")

    # When a reconciling sync runs
    run = mirror.sync("--full")

    # Then the object lives in the Complete partition only
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step()
    new_keys = [k for k in mirror.lake.list_keys("labels/") if moved.label_hash in k]
    assert len(old_keys) == 1 and len(new_keys) == 1
    assert "stage=annotate-1" in old_keys[0] and "stage=complete" in new_keys[0]


def test_a_task_status_change_alone_is_mirrored_by_the_next_reconciling_sync(mirror: Mirror) -> None:
    # Given a lake in step, then one data unit's task status changed in Encord (labels and stage untouched)
    _first_sync(mirror)
    changed = mirror.fixture.by_title("img1.jpg")
    before = mirror.truth()
    mirror.emu.set_task_status(mirror.project, changed.data_hash, "COMPLETED")
    assert [r for r in mirror.truth() if r.get("task_status") == "COMPLETED"] != [
        r for r in before if r.get("task_status") == "COMPLETED"
    ]

    # When a reconciling sync runs
    run = mirror.sync("--full")

    # Then exactly that row was initialised again, and its lake object carries the new status
    assert run.code == 0, run.out + run.err
    assert mirror.initialised() == 1
    mirror.assert_in_step()
    [key] = [k for k in mirror.lake.list_keys("labels/") if changed.label_hash in k]
    stored = mirror.lake.get(key)
    assert stored is not None and orjson.loads(stored.body)["mirror"]["task_status"] == "COMPLETED"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_sync_exits_130_and_frees_the_project_for_the_next_sync(
    mirror: Mirror, sig: signal.Signals
) -> None:
    # Given an Encord that answers slowly, and a first sync running in its own process
    mirror.emu.latency_s = 0.2
    argv = [sys.executable, "-m", "encord_mirror", "sync", "--project", mirror.project, "--lake", mirror.dest]
    argv += ["--ssh-key", str(mirror.key_path), "--encord-domain", mirror.emu.url, "--bundle-size", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    planned: list[str] = []
    for line in iter(proc.stderr.readline, ""):
        if " chunks" in line:
            planned.append(line)
            break

    # When it is interrupted once its run is planned and its workers are busy
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)

    # Then it exits 130, saying what it did; the lease is free and the watermark where it was (none)
    assert planned, err
    assert proc.returncode == 130, out + err
    assert f"sync interrupted ({sig.name})" in err and "released the project's lease" in err, err
    assert "watermark stays at none" in err
    state = mirror.state()
    assert state.get_lease(mirror.project) is None and state.get_watermark(mirror.project) is None
    state.close()
    # and the next sync starts at once and brings the lake in step
    mirror.emu.latency_s = 0.0
    run = mirror.sync()
    assert run.code == 0 and "skipped" not in run.out + run.err, run.out + run.err
    mirror.assert_in_step()


def test_a_sync_that_finds_the_lease_held_names_the_run_since_when_and_expiry(mirror: Mirror) -> None:
    # Given another sync's run holding the project's lease
    state = mirror.state()
    state.acquire_lease(mirror.project, "20261123T182200.123Z-0badc0de", datetime.now(UTC), 900)
    lease = state.get_lease(mirror.project)
    state.close()
    assert lease is not None and lease.acquired_at is not None

    # When a sync runs
    run = mirror.sync()

    # Then it skips the project, naming the holding run, since when and when the lease expires
    assert run.code == 1
    since, expires = (t.isoformat(timespec="seconds") for t in (lease.acquired_at, lease.expires_at))
    expected = (
        f"run 20261123T182200.123Z-0badc0de holds the project's lease since {since}; it expires at {expires}"
    )
    assert expected in run.err and expected in run.out


def test_reconcile_every_1_sees_a_stage_move_on_the_next_plain_sync(mirror: Mirror) -> None:
    # Given a lake in step, then a data unit moved to "Complete" (its edit time unchanged)
    _first_sync(mirror)
    moved = mirror.fixture.by_title("img1.jpg")
    mirror.emu.move_stage(mirror.project, moved.data_hash, "Complete")

    # When the next sync runs without --full but with --reconcile-every 1
    run = mirror.sync("--reconcile-every", "1")

    # Then that run reconciled and the lake follows the move
    assert run.code == 0, run.out + run.err
    assert "full run" in run.err
    mirror.assert_in_step()


def test_deleted_rows_and_data_units_leave_the_current_view(mirror: Mirror) -> None:
    # Given a lake in step, then one label row and one whole data unit deleted in Encord
    _first_sync(mirror)
    row_gone = mirror.fixture.by_title("img2.jpg")
    unit_gone = mirror.fixture.by_title("vid1.mp4")
    mirror.emu.delete_row(mirror.project, row_gone.label_hash)
    mirror.emu.delete_data_unit(mirror.project, unit_gone.data_hash)

    # When a reconciling sync runs
    run = mirror.sync("--full")

    # Then both objects are gone from the lake, and the run says so
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step()
    keys = list(mirror.lake.list_keys("labels/"))
    assert not any(row_gone.label_hash in k or unit_gone.label_hash in k for k in keys)
    assert mirror.manifest(run)["counts"]["removed"] == 2


def test_all_branches_mirrors_consensus_branches_including_a_new_one(mirror: Mirror) -> None:
    # Given a lake in step on every branch
    _first_sync(mirror, "--all-branches")
    mirror.assert_in_step(ALL)
    assert any(f"branch={CONSENSUS_BRANCH}/" in k for k in mirror.lake.list_keys("labels/"))

    # When a second consensus branch appears on a data unit and a reconciling sync runs
    base = mirror.fixture.by_title("img2.jpg")
    extra = clone_row(
        base.row, data_title="img2.jpg", edited=datetime(2025, 9, 1, tzinfo=UTC), branch="consensus-2"
    )
    extra["data_hash"] = base.data_hash
    extra["data_units"] = {base.data_hash: next(iter(copy.deepcopy(base.row["data_units"]).values()))}
    mirror.emu.add_row(mirror.project, extra, stamp=False)
    run = mirror.sync("--all-branches", "--full")

    # Then the new branch's row is mirrored in its own partition, even with an old edit time
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step(ALL)
    assert any("branch=consensus-2/" in k for k in mirror.lake.list_keys("labels/"))


def test_a_named_branch_mirrors_only_that_branch(mirror: Mirror) -> None:
    # When sync mirrors the consensus branch alone
    run = mirror.sync("--branch", CONSENSUS_BRANCH)

    # Then the lake holds that branch's rows and nothing of main
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step(BranchSelection("named", CONSENSUS_BRANCH))
    assert not any("branch=main/" in k for k in mirror.lake.list_keys("labels/"))


def test_a_stage_filter_change_brings_the_lake_in_line_on_the_next_sync(mirror: Mirror) -> None:
    # Given a lake in step with every stage
    _first_sync(mirror)

    # When the next sync mirrors one stage (nothing changed in Encord), which takes most rows out
    run = mirror.sync("--stage", "Review 1", "--allow-shrink")

    # Then it reconciles at once: the lake is exactly Encord's Review rows, and no row was sent again
    assert run.code == 0, run.out + run.err
    assert "take 26 of the 27 rows out of the current view" in run.err
    assert_lake_matches(
        mirror.lake, mirror.truth(), mirror.project, include=lambda r: r["stage"] == "Review 1"
    )
    assert mirror.initialised() == 0
    # When every stage is mirrored again / Then the other stages' rows come back
    assert mirror.sync().code == 0
    mirror.assert_in_step()


def test_a_feature_hash_the_ontology_lacks_exits_2_naming_setting_flag_and_hash(mirror: Mirror) -> None:
    # Given a lake in step
    _first_sync(mirror)
    before = {key: mirror.lake.get(key) for key in mirror.lake.list_keys("labels/")}
    # When a sync is asked to keep an object feature the project's ontology does not have (a typo)
    run = mirror.sync("--object-feature", "aaaa0009")
    # Then it refuses before any work, naming the setting, the flag and the hash, and the lake is as it was
    assert run.code == 2, run.out + run.err
    assert "object_feature_hashes" in run.err and "--object-feature" in run.err and "aaaa0009" in run.err
    assert {key: mirror.lake.get(key) for key in mirror.lake.list_keys("labels/")} == before
    assert mirror.initialised() == 0


def test_unlabelled_rows_are_recorded_in_the_manifest_and_never_initialised(mirror: Mirror) -> None:
    # Given a data unit without a label row on main
    unlabelled = mirror.emu.unlabelled(mirror.project)
    assert unlabelled

    # When the first sync runs
    run = mirror.sync()

    # Then the manifest lists it, nothing created a label row, and the lake holds no object for it
    assert run.code == 0, run.out + run.err
    assert set(mirror.manifest(run)["unlabelled"]) == set(unlabelled)
    assert mirror.emu.writes() == []
    mirror.assert_in_step()


def test_a_429_storm_within_the_sdks_retries_still_syncs_everything(mirror: Mirror) -> None:
    # Given Encord answering 429 to the first bundle twice (Retry-After: 1)
    mirror.emu.inject_fault("status", status=429, retry_after=1, count=2, query_type="labelrow")

    # When the first sync runs
    run = mirror.sync()

    # Then the SDK's retries absorb it
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step()


def test_a_sustained_rate_limit_slows_the_sync_but_loses_nothing(mirror: Mirror) -> None:
    # Given Encord admitting 4 requests a second (429 + Retry-After: 1 beyond that) and 4 workers
    mirror.emu.set_rate_limit(4.0, burst=2, retry_after=1)

    # When the first sync runs in chunks of 5 rows
    run = mirror.sync("--bundle-size", "5", "--workers", "4")

    # Then Encord did refuse requests, and the lake is complete anyway
    assert run.code == 0, run.out + run.err
    assert any(e["status"] == 429 for e in mirror.emu.request_log())
    mirror.emu.set_rate_limit(None)
    mirror.assert_in_step()


def test_a_429_storm_past_every_retry_leaves_a_gap_that_the_next_run_closes(mirror: Mirror) -> None:
    # Given a lake in step, an edit, then a 429 on every request of every redelivery of the chunk
    _first_sync(mirror)
    state = mirror.state()
    watermark = state.get_watermark(mirror.project)
    edited = mirror.fixture.by_title("img2.jpg")
    mirror.emu.edit_row(mirror.project, edited.label_hash, without_objects(edited.row))
    mirror.emu.inject_fault("status", status=429, retry_after=1, count=12, query_type="labelrow")

    # When sync runs
    run = mirror.sync("--bundle-size", "10")

    # Then it exits 1, names the gap, and the watermark holds
    assert run.code == 1, run.out + run.err
    assert "RateLimitExceededError" in run.out and "NOT IN STEP" in run.out
    assert state.get_watermark(mirror.project) == watermark
    assert lake_differences(mirror.lake, mirror.truth(), mirror.project)

    # And once Encord recovers, the next run closes the gap
    again = mirror.sync()
    assert again.code == 0, again.out + again.err
    mirror.assert_in_step()


def test_rows_dropped_from_a_bundle_response_are_gaps_not_skips(mirror: Mirror) -> None:
    # Given every bundle answer of the first sync leaving out one row (the SDK would not notice): each of
    # the chunk's three deliveries initialises it from the planner's listing, then once more after
    # listing it again
    mirror.emu.inject_fault("omit_rows", query_type="labelrow", query_method="GET", omit=1, count=6)

    # When the first sync runs
    run = mirror.sync()

    # Then the dropped row is a gap (exit 1), the rest is written
    assert run.code == 1, run.out + run.err
    assert "left the row out" in run.out
    missing = lake_differences(mirror.lake, mirror.truth(), mirror.project)
    assert len(missing) == 1 and missing[0].startswith("missing:")

    # And the next run fetches it
    again = mirror.sync()
    assert again.code == 0, again.out + again.err
    mirror.assert_in_step()


def test_a_poison_row_is_a_gap_that_holds_the_watermark_until_it_is_fixed(mirror: Mirror) -> None:
    # Given a lake in step, then one row corrupted in Encord and another edited normally
    _first_sync(mirror)
    state = mirror.state()
    watermark = state.get_watermark(mirror.project)
    poison = mirror.fixture.by_title("img1.jpg")
    healthy = mirror.fixture.by_title("img2.jpg")
    mirror.emu.edit_row(mirror.project, poison.label_hash, corrupt_row(poison.row))
    mirror.emu.edit_row(mirror.project, healthy.label_hash, without_objects(healthy.row))

    # When sync runs
    run = mirror.sync()

    # Then it exits 1 naming the poison row, the healthy edit is written anyway, and the watermark holds
    assert run.code == 1, run.out + run.err
    assert f"gap: {poison.label_hash}: corrupt label row" in run.out
    differences = lake_differences(mirror.lake, mirror.truth(), mirror.project)
    assert differences and all(poison.label_hash in d for d in differences)
    assert state.get_watermark(mirror.project) == watermark

    # And once the row is fixed in Encord, the next run closes the gap and moves the watermark
    mirror.emu.edit_row(mirror.project, poison.label_hash, poison.row)
    again = mirror.sync()
    assert again.code == 0, again.out + again.err
    mirror.assert_in_step()
    after = state.get_watermark(mirror.project)
    assert after is not None and watermark is not None and after > watermark


def test_status_says_what_holds_the_lake_back_and_exits_1_until_it_is_in_step(mirror: Mirror) -> None:
    # Given no lake, then an empty one / When status is asked / Then each is a usage error saying so
    missing = mirror.status()
    assert missing.code == 2 and "no such directory" in missing.err
    Path(mirror.dest).mkdir()
    never = mirror.status()
    assert never.code == 2 and "no state file" in never.err

    # Given a lake in step
    _first_sync(mirror)
    # When status is asked / Then it is OK, with the watermark, the last run and each COCO partition
    ok = mirror.status()
    assert ok.code == 0, ok.out + ok.err
    assert "gaps: 0" in ok.out and "COCO snapshots owed: 0" in ok.out and ok.out.rstrip().endswith("OK")
    assert "last run: " in ok.out and "COCO partitions: 3" in ok.out
    report = orjson.loads(mirror.status("--json").out)[0]
    assert report["watermark"] == mirror.state().get_watermark(mirror.project).isoformat()  # type: ignore[union-attr]
    assert report["problems"] == [] and len(report["snapshots"]) == 3 and report["last_run"]["mode"] == "full"
    # and with a lag limit the watermark's age is a problem
    late = mirror.status("--max-lag", "0")
    assert late.code == 1 and "more than --max-lag" in late.out

    # Given a row corrupted in Encord, so the next sync leaves a gap
    poison = mirror.fixture.by_title("img1.jpg")
    mirror.emu.edit_row(mirror.project, poison.label_hash, corrupt_row(poison.row))
    assert mirror.sync().code == 1
    # When status is asked / Then it names the gap and its reason, and exits 1
    held = mirror.status()
    assert held.code == 1, held.out + held.err
    assert f"{poison.label_hash}: corrupt label row" in held.out and "NOT OK: 1 row(s) failed" in held.out
    # and no Encord request was made by status (it reads the state and the lake only)
    mirror.emu.clear_log()
    mirror.status()
    assert mirror.emu.request_log() == []


@pytest.mark.parametrize("scheme", ["s3", "S3"])
def test_an_s3_lake_is_synced_through_boto3_with_state_in_the_user_cache(
    scheme: str,
    mirror: Mirror,
    aws_env: dict[str, str],
    aws_client: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given a bucket on a local S3 (moto), reached through boto3's usual environment
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    aws_client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    mirror.dest = f"{scheme}://{bucket}/mirror/v1"

    # When sync runs twice against s3://bucket/prefix (or S3://: the scheme's case does not matter)
    first = mirror.sync()
    mirror.emu.clear_log()
    second = mirror.sync()

    # Then the prefix holds the lake, the state sits in the user's cache, and run 2 initialised nothing
    assert first.code == 0 and second.code == 0, first.out + first.err + second.out + second.err
    lake = S3ObjectStore(bucket, "mirror/v1", aws_client("s3"))
    assert_lake_matches(lake, mirror.truth(), mirror.project)
    assert mirror.initialised() == 0
    assert list((tmp_path / "cache" / "encord-mirror").glob(f"{bucket}-*.sqlite"))
    assert mirror.emu.writes() == []


def test_several_projects_sync_in_one_run_each_into_its_own_prefix(tmp_path: Path) -> None:
    # Given two projects served by one Encord
    first = build_fixture(tmp_path / "fixture", extra_images=3)
    second = build_fixture(tmp_path / "fixture", extra_images=5)
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        mirror = Mirror(emu, first, key_path, str(tmp_path / "lake"))

        # When one sync names both
        run = mirror.sync("--project", second.project_hash)

        # Then each project's rows are mirrored under its own prefix, and the summary has a line for each
        assert run.code == 0, run.out + run.err
        for fixture in (first, second):
            assert_lake_matches(mirror.lake, emu.state(fixture.project_hash), fixture.project_hash)
            assert fixture.project_hash in run.out
        assert emu.writes() == []


def test_a_listing_that_fails_past_every_retry_stops_the_run_cleanly_and_the_next_run_recovers(
    mirror: Mirror,
) -> None:
    # Given a lake in step, an edit, then Encord answering 503 to every attempt at listing rows
    _first_sync(mirror)
    state = mirror.state()
    watermark = state.get_watermark(mirror.project)
    edited = mirror.fixture.by_title("img2.jpg")
    mirror.emu.edit_row(mirror.project, edited.label_hash, without_objects(edited.row))
    mirror.emu.inject_fault("status", status=503, retry_after=1, count=4, query_type="labelrowmetadata")

    # When sync runs
    run = mirror.sync()

    # Then it stops with a message (exit 1, no traceback) and the watermark did not move
    assert run.code == 1, run.out + run.err
    assert "sync stopped" in run.err and "Traceback" not in run.err
    assert state.get_watermark(mirror.project) == watermark

    # And the next run is not blocked by the failed run's lease, and catches up
    again = mirror.sync()
    assert again.code == 0, again.out + again.err
    mirror.assert_in_step()


def test_a_key_encord_does_not_know_exits_2_naming_the_key_file(mirror: Mirror, tmp_path: Path) -> None:
    # Given a valid key that is not registered
    stranger, _ = generate_keypair(tmp_path / "stranger")
    mirror.key_path = stranger

    # When sync runs
    run = mirror.sync()

    # Then it is a configuration error naming the key file, with no traceback
    assert run.code == 2
    assert str(stranger) in run.err and "Traceback" not in run.err


def test_a_bundle_size_above_encords_cap_exits_2_naming_the_setting(mirror: Mirror) -> None:
    # When sync runs with --bundle-size 5000
    run = mirror.sync("--bundle-size", "5000")

    # Then it fails before any Encord request, naming the setting
    assert run.code == 2
    assert "bundle_size" in run.err and "--bundle-size" in run.err
    assert mirror.emu.request_log() == []


def test_demo_runs_end_to_end_and_exits_0(tmp_path: Path) -> None:
    # When the demo runs on a small generated project
    done = subprocess.run(
        [sys.executable, "-m", "encord_mirror", "demo", "--rows", "40", "--lake", str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    # Then it exits 0, shows both syncs and where to look, without a traceback
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "second sync" in done.stdout.lower() and "labels/project=" in done.stdout
    assert any((tmp_path / "lake" / "labels").rglob("*.json"))


def test_status_opens_the_state_read_only_and_reports_a_failed_sync_until_a_run_completes(
    mirror: Mirror,
) -> None:
    # Given a lake in step, its state file as the sync left it
    _first_sync(mirror)
    state_file = Path(mirror.dest) / ".mirror-state.sqlite"
    before = state_file.read_bytes()
    # When status reads it
    ok = mirror.status()
    # Then it is OK, the file is unchanged and no -wal / -shm file is left beside it
    assert ok.code == 0, ok.out + ok.err
    assert state_file.read_bytes() == before
    assert sorted(p.name for p in Path(mirror.dest).glob(".mirror-state*")) == [".mirror-state.sqlite"]

    # Given a sync that stops: Encord answers 503 to every attempt at listing rows
    mirror.emu.inject_fault("status", status=503, retry_after=1, count=4, query_type="labelrowmetadata")
    assert mirror.sync("--full").code == 1
    # When status is asked (no --max-lag: the watermark is recent)
    failed = mirror.status()
    # Then it is NOT OK and says the last sync failed, when and why
    assert failed.code == 1, failed.out + failed.err
    assert "last sync FAILED at " in failed.out and "EncordApiError" in failed.out
    report = orjson.loads(mirror.status("--json").out)[0]
    assert report["last_failure"]["reason"].startswith("EncordApiError") and report["problems"]

    # When a sync completes / Then status is OK again
    assert mirror.sync().code == 0
    assert mirror.status().code == 0
