"""A sync killed (SIGKILL) at many points, then run once more: the lake must be exact.

First, incremental and reconciling runs of `encord-mirror sync` (the real SDK against the emulator) are
killed at steps chosen by a seeded RNG among named points of the pipeline (label object writes, index
writes, old-copy deletes, snapshot files, `latest.json`, the events file, the outbox, the run manifest),
on a local lake and on S3 (moto's server, through boto3). After one more plain `sync`:
- the rows equal Encord's (`assert_lake_matches`) and the row index equals the lake (key, sha256, etag);
- every partition's latest COCO snapshot equals a fresh conversion of its rows (`snapshot_differences`);
- every committed snapshot is announced exactly once in `events/events.jsonl`.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
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
from snapshot_checks import one_event_per_snapshot_differences

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import without_objects
from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.adapters.local import EVENTS_KEY, LocalLake, SqliteStateStore
from encord_mirror.cli.main import main
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.verify import lake_differences, snapshot_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROWS = 30  # every data type the generator builds, in four stages
CRASHING_CLI = Path(__file__).with_name("crashing_cli.py")
SEED = int(os.environ.get("CRASH_SEED", "20261203"))  # another seed explores other kill points


@dataclass(frozen=True)
class Point:
    """Kill the sync at the `nth` call of `step`, `before` or `after` it (see crashing_cli.py)."""

    step: str
    nth: int
    when: str

    def __str__(self) -> str:
        return f"{self.step} #{self.nth} {self.when}"


# (step, highest nth that every run of the phase reaches, whens): the named points of the pipeline.
WRITES = [("lake.put:labels/", 3, ("before", "after")), ("state.put_index", 3, ("before", "after"))]
SNAPSHOTS = [
    ("lake.put_stream:/coco.json", 1, ("after",)),
    ("lake.put:/manifest.json", 1, ("before", "after")),
    ("lake.put:/latest.json", 1, ("before", "after")),
    ("state.settle_snapshots", 1, ("before",)),
    ("lake.put:events/", 1, ("before", "after")),
    ("state.mark_events_sent", 1, ("before", "after")),
    ("lake.put:runs/", 1, ("before", "after")),
]
REMOVALS = [("lake.delete:labels/", 2, ("after",)), ("state.delete_index", 1, ("before", "after"))]
PHASES = {
    "first": [("lake.put:labels/", 15, ("before", "after")), ("state.put_index", 15, ("after",)), *SNAPSHOTS],
    "incremental": [*WRITES, *SNAPSHOTS],
    "reconciling": [*WRITES, *SNAPSHOTS, *REMOVALS],
}


def kill_points(rng: random.Random, phase: str, count: int) -> list[Point]:
    chosen = rng.sample(PHASES[phase], count)
    return [Point(step, rng.randint(1, top), rng.choice(whens)) for step, top, whens in chosen]


@dataclass
class Lake:
    dest: str  # --lake
    store: ObjectStore
    state_path: Path


@dataclass
class World:
    emu: Emulator
    project: str
    ontology: dict[str, Any]
    stages: list[str]
    key_path: Path
    env: dict[str, str]  # for the CLI: boto3's endpoint and credentials
    rng: random.Random

    def argv(self, lake: Lake, *extra: str) -> list[str]:
        return [
            "sync", "--project", self.project, "--lake", lake.dest, "--state", str(lake.state_path),
            "--ssh-key", str(self.key_path), "--encord-domain", self.emu.url, "--bundle-size", "4",
            "--workers", "2", *extra,
        ]  # fmt: skip

    def killed_sync(self, lake: Lake, point: Point, *extra: str) -> None:
        argv = [sys.executable, str(CRASHING_CLI), point.step, str(point.nth), point.when, "--"]
        done = subprocess.run(
            [*argv, *self.argv(lake, *extra)],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == -signal.SIGKILL and "crash point reached" in done.stderr, (
            f"the sync was not killed at {point} (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )

    def sync(self, lake: Lake, *extra: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(self.argv(lake, *extra))
        assert code == 0, out.getvalue() + err.getvalue()
        return err.getvalue()

    def main_rows(self) -> list[dict[str, Any]]:
        return sorted(
            (r for r in self.emu.state(self.project) if r["branch_name"] == "main"),
            key=lambda r: str(r["label_hash"]),
        )

    def edit(self, n: int) -> None:
        # Encord stamps edits in whole seconds: a row saved twice in one second, with a sync reading it
        # in between, keeps its last_edited_at, and the mirror cannot tell the second save (README,
        # Guarantees). Rounds can be under a second apart, so each starts in a second of its own.
        time.sleep(1 - datetime.now(UTC).microsecond / 1_000_000)
        for row in self.rng.sample(self.main_rows(), n):
            edited = without_objects(row["row"])
            edited["object_actions"] = {}  # the SDK drops the actions of objects that are gone
            self.emu.edit_row(self.project, row["label_hash"], edited)

    def move_and_delete(self, moves: int, deletions: int) -> None:
        rows = self.rng.sample(self.main_rows(), moves + deletions)
        for row in rows[:moves]:
            target = self.rng.choice([s for s in self.stages if s != row["stage"]])
            self.emu.move_stage(self.project, row["data_hash"], target)
        for row in rows[moves:]:
            self.emu.delete_row(self.project, row["label_hash"])

    def assert_exact(self, lake: Lake, after: str) -> None:
        truth = self.emu.state(self.project)
        store = lake.store
        problems = [f"rows: {d}" for d in lake_differences(store, truth, self.project)]
        state = SqliteStateStore(lake.state_path)
        problems += [f"index: {d}" for d in index_differences(store, state, self.project)]
        state.close()
        problems += snapshot_differences(store, self.project, self.ontology, encord_compatible=False)
        stored = store.get(EVENTS_KEY)
        events = [] if stored is None else [orjson.loads(line)["detail"] for line in stored.body.splitlines()]
        problems += [f"events: {d}" for d in one_event_per_snapshot_differences(events, store, self.project)]
        assert problems == [], f"after {after}:\n  " + "\n  ".join(problems[:40])
        assert self.emu.writes() == [], "the mirror must never write to Encord"


def index_differences(lake: ObjectStore, state: SqliteStateStore, project: str) -> list[str]:
    """Where the row index and the lake's label objects disagree (key, content sha256, etag)."""
    objects = {
        key.rsplit("/", 1)[-1].removesuffix(".json"): key
        for key in lake.list_keys(f"labels/project={project}/")
        if key.endswith(".json")
    }
    index = {e.label_hash: e for e in state.scan_index(project)}
    out = []
    for label_hash in sorted(set(objects) | set(index)):
        entry, key = index.get(label_hash), objects.get(label_hash)
        if entry is None or key is None:
            out.append(f"{label_hash}: index at {entry and entry.key}, lake at {key}")
            continue
        stored = lake.get(key)
        assert stored is not None
        sha = orjson.loads(stored.body)["mirror"]["sha256"]
        indexed, held = (entry.key, entry.sha256, entry.etag), (key, sha, stored.etag)
        if indexed != held:
            out.append(f"{label_hash}: index {indexed} != lake {held}")
    return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    [project] = generate(tmp_path / "fixture", ROWS, seed=7)
    spec = orjson.loads((tmp_path / "fixture" / project / "project.json").read_bytes())
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        stages = [s["title"] for s in spec["workflow"]["stages"]]
        yield World(emu, project, spec["ontology"], stages, key_path, {}, random.Random(SEED))


def _crash_rounds(world: World, new_lake: Callable[[], Lake], firsts: int, rounds: int) -> None:
    """Kill first runs on `firsts` new lakes; then, on the last lake, `rounds` incremental runs and
    `rounds` reconciling runs, each after changes in Encord; after each kill, one plain sync must leave
    the lake exact."""
    lake = None
    for point in kill_points(world.rng, "first", firsts):
        lake = new_lake()
        world.killed_sync(lake, point)
        world.sync(lake)
        world.assert_exact(lake, f"a first run killed at {point}")
    assert lake is not None
    for point in kill_points(world.rng, "incremental", rounds):
        world.edit(3)  # 10% of the rows
        world.killed_sync(lake, point)
        world.sync(lake)
        world.assert_exact(lake, f"an incremental run killed at {point}")
    for point in kill_points(world.rng, "reconciling", rounds):
        world.edit(2)
        world.move_and_delete(moves=2, deletions=1)
        world.killed_sync(lake, point, "--full")
        world.sync(lake)  # a plain run: it must finish the killed reconciliation's work
        world.assert_exact(lake, f"a reconciling run killed at {point}")


def test_a_sync_killed_at_any_point_on_a_local_lake_is_exact_after_one_more_run(
    world: World, tmp_path: Path
) -> None:
    # Given a project in four stages, and local lakes
    lakes = iter(range(100))

    def new_lake() -> Lake:
        root = tmp_path / f"lake-{next(lakes)}"
        return Lake(str(root), LocalLake(root), root / ".mirror-state.sqlite")

    # When syncs are killed at points chosen by a seeded RNG, each followed by one plain sync
    # Then after each the rows, the index, every latest snapshot and the events are exact
    _crash_rounds(world, new_lake, firsts=3, rounds=3)


def test_a_sync_killed_at_any_point_on_an_s3_lake_is_exact_after_one_more_run(
    world: World,
    tmp_path: Path,
    aws_env: dict[str, str],
    aws_client: Callable[[str], Any],
) -> None:
    # Given a versioned bucket on moto, reached through boto3's usual environment
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    aws_client("s3").create_bucket(Bucket=bucket)
    aws_client("s3").put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    world.env = aws_env  # for the killed CLI's process; this one has it already
    prefixes = iter(range(100))

    def new_lake() -> Lake:
        prefix = f"mirror-{next(prefixes)}"
        store = S3ObjectStore(bucket, prefix, aws_client("s3"))
        return Lake(f"s3://{bucket}/{prefix}", store, tmp_path / f"{prefix}.sqlite")

    # When syncs are killed at points chosen by a seeded RNG, each followed by one plain sync
    # Then after each the rows, the index, every latest snapshot and the events are exact
    world.rng.seed(SEED + 1)
    _crash_rounds(world, new_lake, firsts=1, rounds=2)
