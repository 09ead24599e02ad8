"""Rows that change in Encord while their chunk waits in the queue: the real SDK against the emulator, a
local lake and SQLite state, the planner and the worker run one after the other by hand.

A chunk carries the planner's listing and the worker initialises its rows from it without listing them
again. What that can miss, and who settles it:
- a row deleted meanwhile: the worker finds it out (Encord refuses or leaves out the label hash, a
  listing by label hash says it is gone) and removes it in the same run;
- a stage move (or task status change) meanwhile: the worker writes the row where the planner saw it;
  the next reconciling run moves it, as for any move made after the chunk ran.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from encord_emulator.testing import EmulatorEnv, emulator_env, without_objects
from encord_mirror.adapters.encord_source import EncordLabelSource
from encord_mirror.adapters.local import LocalLake, SqliteStateStore
from encord_mirror.adapters.local.events import JsonlEventSink
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.deps import MirrorDeps
from encord_mirror.domain.finalizer import finalize
from encord_mirror.domain.models import ChunkMessage, SendReceipt
from encord_mirror.domain.planner import plan
from encord_mirror.domain.worker import process_chunk
from encord_mirror.local_sync import run_local_sync
from encord_mirror.verify import assert_lake_matches, lake_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@dataclass
class HeldQueue:
    """A WorkQueue that holds the chunks until the test runs them: "meanwhile, in Encord..."."""

    chunks: list[ChunkMessage] = field(default_factory=list)
    finalize_requests: list[tuple[str, str]] = field(default_factory=list)

    def send_chunks(self, chunks: Sequence[ChunkMessage]) -> SendReceipt:
        self.chunks.extend(chunks)
        return SendReceipt(sent=tuple(c.chunk_id for c in chunks), failed={})

    def request_finalize(self, project_hash: str, run_id: str) -> None:
        self.finalize_requests.append((project_hash, run_id))


@dataclass
class Setup:
    env: EmulatorEnv
    source: EncordLabelSource
    lake: LocalLake
    state: SqliteStateStore
    config: MirrorConfig

    def truth(self) -> list[dict[str, object]]:
        return self.env.emu.state(self.env.project_hash)

    def sync(self, *, full: bool = False) -> None:
        summary = run_local_sync(self.config, self.source, self.lake, self.state, workers=2, full=full)
        assert summary.ok, summary

    def deps(self, queue: HeldQueue) -> MirrorDeps:
        return MirrorDeps(
            source=self.source,
            lake=self.lake,
            state=self.state,
            queue=queue,
            events=JsonlEventSink(self.lake),
            snapshots=None,
            clock=lambda: datetime.now(UTC),
        )

    def plan_held(self) -> HeldQueue:
        """Plan a run whose chunks wait in the queue until `drain`."""
        queue = HeldQueue()
        assert plan(self.env.project_hash, self.config, self.deps(queue)).status == "planned"
        return queue

    def drain(self, queue: HeldQueue) -> None:
        """Run the held chunks, then the finalizer they asked for."""
        deps = self.deps(queue)
        for chunk in queue.chunks:
            result = process_chunk(chunk, self.config, deps, attempt=1, max_attempts=1)
            assert all(o.status != "failed" for o in result.outcomes), result
        assert queue.finalize_requests, "the last chunk asks for the finalizer"
        project, run_id = queue.finalize_requests[-1]
        assert finalize(project, run_id, self.config, deps).status == "finalized"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    with emulator_env(tmp_path, extra_images=4) as env:
        source = EncordLabelSource.from_key_file(env.key_path, domain=env.emu.url)
        config = MirrorConfig(projects=(env.project_hash,))
        lake = LocalLake(tmp_path / "lake")
        state = SqliteStateStore(tmp_path / "state.sqlite")
        yield Setup(env, source, lake, state, config)
        state.close()


def test_a_row_deleted_while_its_chunk_is_queued_leaves_the_lake_in_the_same_run(setup: Setup) -> None:
    # Given a lake in step, and an edit of img1 that the next run plans to sync
    setup.sync()
    img1 = setup.env.fixture.by_title("img1.jpg")
    setup.env.emu.edit_row(setup.env.project_hash, img1.label_hash, without_objects(img1.row))
    queue = setup.plan_held()
    assert any(img1.label_hash in c.label_hashes for c in queue.chunks)

    # When img1's label row is deleted in Encord before the chunk runs
    setup.env.emu.delete_row(setup.env.project_hash, img1.label_hash)
    setup.drain(queue)

    # Then the run removed it: the lake equals Encord, with no gap, and nothing was written to Encord
    assert_lake_matches(setup.lake, setup.truth(), setup.env.project_hash)
    assert setup.state.list_gaps(setup.env.project_hash) == []
    assert not setup.env.emu.writes()


def test_a_stage_move_while_its_chunk_is_queued_is_settled_by_the_next_reconciling_run(
    setup: Setup,
) -> None:
    # Given a lake in step, and an edit of img2 (Review 1) that the next run plans to sync
    setup.sync()
    img2 = setup.env.fixture.by_title("img2.jpg")
    setup.env.emu.edit_row(setup.env.project_hash, img2.label_hash, without_objects(img2.row))
    queue = setup.plan_held()

    # When img2 moves to Complete before the chunk runs
    setup.env.emu.move_stage(setup.env.project_hash, img2.data_hash, "Complete")
    setup.drain(queue)

    # Then the run wrote the new content where the planner saw the row (Review 1): only its stage is behind
    differences = lake_differences(setup.lake, setup.truth(), setup.env.project_hash)
    assert len(differences) == 2 and all(img2.label_hash in d for d in differences), differences
    review_keys = [k for k in setup.lake.list_keys("labels/") if img2.label_hash in k]
    assert len(review_keys) == 1 and "stage=review-1" in review_keys[0].lower()

    # And the next reconciling run moves it to Complete and removes the old copy: exactly one object
    setup.sync(full=True)
    assert_lake_matches(setup.lake, setup.truth(), setup.env.project_hash)
    keys = [k for k in setup.lake.list_keys("labels/") if img2.label_hash in k]
    assert len(keys) == 1 and "complete" in keys[0].lower()
    assert not setup.env.emu.writes()
