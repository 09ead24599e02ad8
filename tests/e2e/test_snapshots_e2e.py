"""The COCO snapshot contract end to end: `encord-mirror sync` (the real SDK against the emulator, a local
lake) in both COCO modes, and a finalizer killed mid-way and retried through the domain API.

After every step each partition's latest snapshot must equal a fresh conversion of the partition's
current rows (`snapshot_differences`), the rows must equal Encord's (`assert_lake_matches`), and
`events/events.jsonl` must hold exactly one line per committed snapshot.
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from snapshot_checks import committed_snapshots, one_event_per_snapshot_differences, run_cli

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import user_client, without_objects
from encord_mirror.adapters.encord_source import EncordLabelSource
from encord_mirror.adapters.local import (
    EVENTS_KEY,
    JsonlEventSink,
    LocalLake,
    LocalWorkQueue,
    SqliteStateStore,
)
from encord_mirror.coco.snapshot import snapshot_builder
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.finalizer import finalize
from encord_mirror.domain.lake import latest_key, run_manifest_key, stage_value
from encord_mirror.domain.models import BranchSelection
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.local_sync import run_local_sync
from encord_mirror.verify import assert_lake_matches, snapshot_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAIN, ALL = BranchSelection(), BranchSelection("all")
ROWS = 40  # every data type and shape the generator builds, 4 stages, consensus branches
QA = "Expert review / QA"


@dataclass
class Mirror:
    emu: Emulator
    project: str
    ontology: dict[str, Any]
    key_path: Path
    root: Path
    stages: dict[str, str]  # stage title -> partition value

    @property
    def lake(self) -> LocalLake:
        return LocalLake(self.root)

    def cli(self, *argv: str) -> tuple[int, str, str]:
        return run_cli(*argv)

    def sync(self, mode: str, *extra: str) -> None:
        code, out, err = self.cli(
            "sync", "--project", self.project, "--lake", str(self.root), "--ssh-key", str(self.key_path),
            "--encord-domain", self.emu.url, "--coco", mode, *extra,
        )  # fmt: skip
        assert code == 0, out + err

    def truth(self, branch: str = "main") -> list[dict[str, Any]]:
        return [r for r in self.emu.state(self.project) if r["branch_name"] == branch]

    def events(self) -> list[dict[str, Any]]:
        stored = self.lake.get(EVENTS_KEY)
        return [] if stored is None else [orjson.loads(line)["detail"] for line in stored.body.splitlines()]

    def assert_contract(self, mode: str, branches: BranchSelection = MAIN) -> None:
        """Rows equal Encord's, every latest snapshot a fresh conversion of its rows, one event each."""
        assert_lake_matches(self.lake, self.emu.state(self.project), self.project, branches)
        compatible = mode == "encord-compatible"
        assert (
            snapshot_differences(self.lake, self.project, self.ontology, encord_compatible=compatible) == []
        )
        assert one_event_per_snapshot_differences(self.events(), self.lake, self.project) == []
        assert self.emu.writes() == [], "the mirror must never write to Encord"

    def latest(self, branch: str, stage_title: str) -> dict[str, Any]:
        """The manifest of a partition's latest snapshot, by stage title."""
        stored = self.lake.get(latest_key(self.project, branch, self.stages[stage_title]))
        assert stored is not None
        manifest = self.lake.get(orjson.loads(stored.body)["manifest"])
        assert manifest is not None
        loaded: dict[str, Any] = orjson.loads(manifest.body)
        return loaded


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    [project] = generate(tmp_path / "fixture", ROWS, seed=11)
    spec = orjson.loads((tmp_path / "fixture" / project / "project.json").read_bytes())
    stages = {s["title"]: stage_value(s["uuid"], s["title"]) for s in spec["workflow"]["stages"]}
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        yield Mirror(emu, project, spec["ontology"], key_path, tmp_path / "lake", stages)


def _objects(row: dict[str, Any]) -> list[Any]:
    [unit] = row["data_units"].values()
    return list(unit["labels"].get("objects") or [])


def _image_rows(mirror: Mirror, stage: str) -> list[dict[str, Any]]:
    """The main branch's labelled images in a stage, by label hash."""
    rows = [
        r
        for r in mirror.truth()
        if r["row"]["data_type"] == "image" and r["stage"] == stage and _objects(r["row"])
    ]
    return sorted(rows, key=lambda r: str(r["label_hash"]))


@pytest.mark.parametrize("mode", ["corrected", "encord-compatible"])
def test_each_sync_leaves_every_latest_snapshot_equal_to_a_fresh_conversion_with_one_event_each(
    mirror: Mirror, mode: str
) -> None:
    # Given a project with every data type and shape in four stages, and consensus branches
    # When the first sync runs
    mirror.sync(mode)
    # Then each main partition has a snapshot equal to a fresh conversion of its rows, announced once
    mirror.assert_contract(mode)
    first = committed_snapshots(mirror.lake, mirror.project)
    assert len(first) == 4 and all(not m["changes"]["changed"] for m in first.values())

    # When two rows are edited through the SDK (all objects removed from one, one object from the other)
    # and a reconciling sync runs
    cleared, trimmed = (r["label_hash"] for r in _image_rows(mirror, "Review")[:2])
    project = user_client(mirror.emu.url, mirror.key_path).get_project(mirror.project)
    for row in project.list_label_rows_v2(label_hashes=[cleared, trimmed]):
        row.initialise_labels()
        instances = row.get_object_instances()
        assert instances, "the edit must change the row's annotations"
        for instance in instances if row.label_hash == cleared else instances[:1]:
            row.remove_object(instance)
        row.save()
    mirror.emu.clear_log()  # the edits were the test's writes, not the mirror's
    mirror.sync(mode, "--full")
    # Then the Review snapshot says both changed and equals a fresh conversion
    mirror.assert_contract(mode)
    review = mirror.latest("main", "Review")
    assert review["changes"]["changed"] == sorted([cleared, trimmed])
    assert review["changes"]["annotations_removed"] >= 2

    # When every data unit in "Expert review / QA" and one annotated image move to "Complete"
    moved = [r for r in mirror.truth() if r["stage"] == QA] + _image_rows(mirror, "Annotate")[:1]
    for item in moved:
        mirror.emu.move_stage(mirror.project, item["data_hash"], "Complete")
    mirror.sync(mode, "--full")
    # Then the emptied partition's latest snapshot is empty, and Complete holds the moved rows
    mirror.assert_contract(mode)
    assert mirror.latest("main", QA)["counts"] == {"rows": 0, "images": 0, "annotations": 0}
    assert set(mirror.latest("main", "Complete")["changes"]["added"]) == {r["label_hash"] for r in moved}

    # When a label row and a whole data unit are deleted in Encord
    gone_row, gone_unit = _image_rows(mirror, "Complete")[:2]
    mirror.emu.delete_row(mirror.project, gone_row["label_hash"])
    mirror.emu.delete_data_unit(mirror.project, gone_unit["data_hash"])
    mirror.sync(mode, "--full")
    # Then the Complete snapshot no longer holds them
    mirror.assert_contract(mode)
    assert mirror.latest("main", "Complete")["changes"]["removed"] == sorted(
        [gone_row["label_hash"], gone_unit["label_hash"]]
    )

    # When a new consensus branch appears on a data unit and all branches are mirrored
    base = _image_rows(mirror, "Annotate")[-1]
    extra = copy.deepcopy(base["row"])
    extra.update(label_hash=str(uuid.uuid4()), branch_name="consensus-new")
    mirror.emu.add_row(mirror.project, extra, stamp=False)
    mirror.sync(mode, "--all-branches", "--full")
    # Then every branch's partitions have snapshots equal to fresh conversions, each announced once
    mirror.assert_contract(mode, ALL)
    branches = {m["branch"] for m in committed_snapshots(mirror.lake, mirror.project).values()}
    assert {"main", "consensus-1", "consensus-new"} <= branches
    assert mirror.latest("consensus-new", "Annotate")["changes"]["added"] == [extra["label_hash"]]

    # And `coco latest` prints where each main partition's latest snapshot is, with its hash
    code, out, err = mirror.cli("coco", "latest", "--lake", str(mirror.root), "--project", mirror.project)
    assert code == 0, err
    printed = {entry["stage"]: entry for entry in orjson.loads(out)}
    assert set(printed) == set(mirror.stages.values())
    for title, stage in mirror.stages.items():
        manifest = mirror.latest("main", title)
        assert printed[stage]["snapshot_id"] == manifest["snapshot_id"]
        assert (
            printed[stage]["coco_uri"] == manifest["coco"]["uri"] == mirror.lake.uri(manifest["coco"]["key"])
        )
        assert printed[stage]["coco_sha256"] == manifest["coco"]["sha256"]
        assert printed[stage]["counts"] == manifest["counts"]
    code, out, err = mirror.cli(
        "coco", "latest", "--lake", str(mirror.root), "--project", mirror.project,
        "--branch", "consensus-new", "--stage", mirror.stages["Annotate"],
    )  # fmt: skip
    assert code == 0, err
    assert orjson.loads(out)["counts"] == mirror.latest("consensus-new", "Annotate")["counts"]


# -- a retried finalizer ---------------------------------------------------------------------------------


class FinalizerKilledError(BaseException):
    """The process dying mid-finalize: not an Exception, so nothing in the domain catches it."""


@dataclass
class KillingLake:
    """The lake, until the first write whose key `kill_at` picks: there the process 'dies', once. With
    `error`, every write `kill_at` picks fails with the exception it makes instead."""

    inner: ObjectStore
    kill_at: Callable[[str], bool]
    killed: bool = False
    error: Callable[[str], Exception] | None = None

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
        if self.error is not None and self.kill_at(key):
            raise self.error(key)
        if not self.killed and self.kill_at(key):
            self.killed = True
            raise FinalizerKilledError(f"killed before writing {key}")
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


def _nth(suffix: str, n: int) -> Callable[[str], bool]:
    """The n-th write of a key ending in `suffix` (1-based)."""
    seen: list[str] = []

    def pick(key: str) -> bool:
        if key.endswith(suffix):
            seen.append(key)
        return len(seen) == n and key.endswith(suffix)

    return pick


KILL_POINTS = {
    # the first partition committed; the second's coco.json written, its rows.tsv and manifest not
    "between-a-snapshots-files": lambda: _nth("/rows.tsv", 2),
    # the second partition's snapshot written but latest.json not moved yet
    "before-moving-latest": lambda: _nth("/latest.json", 2),
    # every snapshot committed, the events recorded in the outbox but not published
    "while-publishing": lambda: _nth(EVENTS_KEY, 1),
    # events published and marked sent, the run manifest (the finalizer's last step) not written
    "before-the-run-manifest": lambda: lambda key: key.startswith("runs/"),
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_a_finalizer_killed_mid_way_is_retried_to_fresh_snapshots_and_one_event_each(
    mirror: Mirror, kill_point: str
) -> None:
    # Given a project synced through the domain API on local adapters
    config = MirrorConfig(projects=(mirror.project,))
    source = EncordLabelSource.from_key_file(mirror.key_path, domain=mirror.emu.url)
    lake, state = mirror.lake, SqliteStateStore(mirror.root / ".mirror-state.sqlite")
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
    run_local_sync(config, source, lake, state, snapshots=snapshot_builder(lake), clock=clock)
    # and then rows moved between stages and one edited, so the next run touches three partitions
    for item in [r for r in mirror.truth() if r["stage"] == "Annotate"][:2]:
        mirror.emu.move_stage(mirror.project, item["data_hash"], "Review")
    edited = _image_rows(mirror, "Complete")[0]
    mirror.emu.edit_row(mirror.project, edited["label_hash"], without_objects(edited["row"]))

    # When that run's finalizer dies at the kill point
    dying = KillingLake(lake, KILL_POINTS[kill_point]())
    summary = run_local_sync(
        config, source, dying, state, full=True, snapshots=snapshot_builder(dying), clock=clock
    )
    [run] = summary.projects
    assert dying.killed and run.status == "unfinished"
    assert lake.get(run_manifest_key(mirror.project, run.run_id)) is None
    unmet = snapshot_differences(lake, mirror.project, mirror.ontology, encord_compatible=False)
    unmet += one_event_per_snapshot_differences(mirror.events(), lake, mirror.project)
    assert bool(unmet) is (kill_point != "before-the-run-manifest"), unmet
    # and its finalize request is delivered again
    queue = LocalWorkQueue(workers=1)
    deps = MirrorDeps(
        source, lake, state, queue, JsonlEventSink(lake, clock=clock), snapshot_builder(lake), clock
    )
    retry = finalize(mirror.project, run.run_id, config, deps)
    queue.close()

    # Then the retry closes the run: every latest snapshot equals a fresh conversion, each committed
    # snapshot is announced exactly once, and nothing is left in the outbox
    assert retry.status == "finalized" and retry.errors == ()
    assert len(retry.snapshots) == 3
    mirror.assert_contract("corrected")
    assert state.pending_events(mirror.project) == []
    assert finalize(mirror.project, run.run_id, config, deps).status == "already_finalized"
    state.close()


def test_a_failed_snapshot_is_owed_and_the_next_sync_rebuilds_it_though_nothing_changed(
    mirror: Mirror,
) -> None:
    # Given a synced project
    config = MirrorConfig(projects=(mirror.project,))
    source = EncordLabelSource.from_key_file(mirror.key_path, domain=mirror.emu.url)
    lake, state = mirror.lake, SqliteStateStore(mirror.root / ".mirror-state.sqlite")
    run_local_sync(config, source, lake, state, snapshots=snapshot_builder(lake))
    # When rows move from Annotate to Review and the sync's snapshot writes fail
    for item in [r for r in mirror.truth() if r["stage"] == "Annotate"][:2]:
        mirror.emu.move_stage(mirror.project, item["data_hash"], "Review")
    failing = KillingLake(
        lake,
        kill_at=lambda key: key.startswith("coco/") and "/snapshots/" in key,
        error=lambda key: OSError(f"disk full writing {key}"),
    )
    summary = run_local_sync(config, source, failing, state, full=True, snapshots=snapshot_builder(failing))
    state.close()
    # Then the rows are synced and the watermark moved, but the sync is not OK: two snapshots are owed,
    # the run manifest says why, and the two partitions' latest snapshots are stale
    [run] = summary.projects
    assert run.status == "synced" and run.gaps_open == 0 and run.moved == 2
    assert not summary.ok and run.snapshots_owed == 2
    assert all("disk full" in error for error in run.errors) and len(run.errors) == 2
    assert_lake_matches(lake, mirror.emu.state(mirror.project), mirror.project)
    stale = snapshot_differences(lake, mirror.project, mirror.ontology, encord_compatible=False)
    assert {d.split(":")[0] for d in stale} == {
        f"snapshot main/{mirror.stages['Annotate']}",
        f"snapshot main/{mirror.stages['Review']}",
    }

    # When the next `encord-mirror sync` runs with nothing changed in Encord (it must exit 0)
    mirror.sync("corrected")
    # Then it rebuilt both snapshots: every latest snapshot is fresh, announced once, and nothing is owed
    mirror.assert_contract("corrected")
    assert mirror.latest("main", "Review")["incremental"] is True
    check = SqliteStateStore(mirror.root / ".mirror-state.sqlite")
    assert check.owed_snapshots(mirror.project) == []
    check.close()


def _object_features(lake: LocalLake) -> dict[str, set[str]]:
    """The feature hashes of the objects in each label object (every frame of every data unit), by key."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "objectHash" in node and "featureHash" in node:
                yield node["featureHash"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    out = {}
    for key in lake.list_keys("labels/"):
        stored = lake.get(key)
        assert stored is not None
        out[key] = set(walk(orjson.loads(stored.body)["data_units"]))
    return out


def test_a_feature_filter_change_rewrites_every_row_and_snapshot_on_the_next_sync(mirror: Mirror) -> None:
    # Given a lake in step, its rows holding objects of several features
    mirror.sync("corrected")
    before = _object_features(mirror.lake)
    counts = Counter(f for found in before.values() for f in found)
    kept = counts.most_common(1)[0][0]
    assert len(counts) >= 3
    events = len(mirror.events())

    # When the next sync keeps objects of one feature only (nothing changed in Encord)
    mirror.sync("corrected", "--object-feature", kept)

    # Then every row, in the same key, holds only that feature's objects, and every snapshot follows
    assert _object_features(mirror.lake) == {key: found & {kept} for key, found in before.items()}
    assert snapshot_differences(mirror.lake, mirror.project, mirror.ontology, encord_compatible=False) == []
    assert one_event_per_snapshot_differences(mirror.events(), mirror.lake, mirror.project) == []
    assert len(mirror.events()) > events
    assert mirror.emu.writes() == []
    # When the filter is dropped / Then the lake and its snapshots are whole again
    mirror.sync("corrected")
    mirror.assert_contract("corrected")


def test_snapshots_below_the_announce_threshold_are_committed_fresh_but_not_announced(mirror: Mirror) -> None:
    # Given a mirror that announces only snapshots adding or changing at least one annotation, synced once
    config = MirrorConfig(projects=(mirror.project,))
    source = EncordLabelSource.from_key_file(mirror.key_path, domain=mirror.emu.url)
    lake, state = mirror.lake, SqliteStateStore(mirror.root / ".mirror-state.sqlite")
    builder = snapshot_builder(lake, announce_min_annotations=1)
    run_local_sync(config, source, lake, state, snapshots=builder)
    assert len(mirror.events()) == 4

    # When one row loses every object and a labelled image moves to another stage
    emptied = _image_rows(mirror, "Review")[0]
    mirror.emu.edit_row(mirror.project, emptied["label_hash"], without_objects(emptied["row"]))
    moved = _image_rows(mirror, "Annotate")[0]
    mirror.emu.move_stage(mirror.project, moved["data_hash"], "Complete")
    mirror.emu.clear_log()
    run_local_sync(config, source, lake, state, full=True, snapshots=builder)
    state.close()

    # Then all three touched partitions have fresh snapshots, but only the one that gained annotations
    # (Complete) is announced: the others only lost some
    assert_lake_matches(lake, mirror.emu.state(mirror.project), mirror.project)
    assert snapshot_differences(lake, mirror.project, mirror.ontology, encord_compatible=False) == []
    assert one_event_per_snapshot_differences(mirror.events(), lake, mirror.project, min_annotations=1) == []
    assert len(committed_snapshots(lake, mirror.project)) == 7
    assert [e["stage"] for e in mirror.events()[4:]] == [mirror.stages["Complete"]]
