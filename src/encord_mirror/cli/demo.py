"""`encord-mirror demo [--rows N] [--lake DIR]`: the whole mirror on one machine, in under a minute.

It generates a synthetic Encord project, serves it with the emulator (the real `encord` SDK talks to it over
signed HTTP), syncs everything into a local lake through the same code path as `encord-mirror sync`, then
changes things in "Encord" (edits saved through the SDK, workflow stage moves, deletions), syncs again, and
shows what changed, how long each sync took, and where to look in the lake.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from encord_mirror.adapters.encord_source import EncordLabelSource
from encord_mirror.cli.errors import CliError
from encord_mirror.cli.sync import execute_sync, format_summary
from encord_mirror.cli.target import LakeTarget, open_state, open_target
from encord_mirror.coco.snapshot import snapshot_builder
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.ports import ObjectStore, StateStore
from encord_mirror.local_sync import ProjectSummary, SyncSummary

EDITS = 5
MOVES = 4
DELETES = 3
_RULE = "=" * 78


def demo_main(args: argparse.Namespace) -> int:
    if args.rows < 10:
        raise CliError(f"--rows must be at least 10 (got {args.rows})")
    lake_dir = _lake_dir(args.lake)
    with warnings.catch_warnings():
        # The SDK's own deprecation notices are noise in a demo.
        warnings.simplefilter("ignore")
        try:
            return _run(args.rows, lake_dir)
        except CliError:
            raise
        except Exception as exc:  # the demo's promise: a readable message at 3 a.m., not a traceback
            print(f"\nThe demo stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
            if os.environ.get("ENCORD_MIRROR_DEBUG"):
                traceback.print_exc()
            else:
                print("Set ENCORD_MIRROR_DEBUG=1 to see the traceback.", file=sys.stderr)
            return 1


def _lake_dir(requested: str | None) -> Path:
    if requested is None:
        return Path(tempfile.mkdtemp(prefix="encord-mirror-demo-")) / "lake"
    lake = Path(requested).expanduser()
    if lake.exists() and (not lake.is_dir() or any(lake.iterdir())):
        raise CliError(f"--lake {lake}: the demo needs a new or empty directory")
    return lake


def _section(title: str) -> None:
    print(f"\n{_RULE}\n{title}\n{_RULE}", flush=True)


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


def _run(rows: int, lake_dir: Path) -> int:
    from encord_emulator.generate import generate
    from encord_emulator.keys import generate_keypair
    from encord_emulator.server import Emulator

    work = lake_dir.parent / "encord-demo-workdir"
    fixture_dir = work / "emulated-encord"
    started = time.perf_counter()

    _section(f"1. A synthetic Encord project with {rows} label rows")
    t0 = time.perf_counter()
    (project_hash,) = generate(fixture_dir, rows, seed=int(time.time()) % 100_000)
    key_path, public_line = generate_keypair(work / "keys")
    _say(f"generated in {time.perf_counter() - t0:.1f}s: {fixture_dir / project_hash}")

    with Emulator(fixture_dir, authorized_keys=[public_line]) as emu:
        _say(f"Encord emulator at {emu.url} (the real encord SDK talks to it, with signed requests)")
        truth = emu.state(project_hash)
        branches = Counter(item["branch_name"] for item in truth)
        stages = Counter(item["stage"] for item in truth if item["branch_name"] == "main")
        _say(f"project {project_hash}")
        _say(f"branches: {_counts(branches)}")
        _say(f"main rows by workflow stage: {_counts(stages)}")
        _say(f"data units without a label row on main: {len(emu.unlabelled(project_hash))}")

        source = EncordLabelSource.from_key_file(key_path, domain=emu.url)
        config = MirrorConfig(projects=(project_hash,))
        target = open_target(str(lake_dir), None)
        state = open_state(target, config.projects)

        def sync(full: bool) -> tuple[ProjectSummary, float]:
            return _sync(config, source, target, state, full=full)

        _section("2. First sync: everything, into a local lake (encord-mirror sync)")
        first, first_s = sync(full=False)

        _section("3. Meanwhile, in Encord")
        changes = _change_things(emu, project_hash, key_path, truth)

        _section("4. Second sync: only what changed (reconciling, so moves and deletions show)")
        emu.clear_log()
        second, second_s = sync(full=True)
        initialised = _initialised(emu.request_log())

        _section("5. Third sync, nothing changed: incremental")
        emu.clear_log()
        third, third_s = sync(full=False)
        third_initialised = _initialised(emu.request_log())

        _section("What changed, and how long it took")
        _say(f"first sync:  {first.written} rows written in {first_s:.2f}s (full listing, all initialised)")
        _say(
            f"second sync: {second.written} written, {second.moved} moved to a new stage partition, "
            f"{second.removed} removed, {second.unchanged} unchanged, {initialised} rows initialised, "
            f"in {second_s:.2f}s"
        )
        _say(f"             (in Encord: {changes})")
        _say(f"third sync:  {third_initialised} rows initialised, in {third_s:.2f}s")
        from encord_mirror.verify import lake_differences

        differences = lake_differences(target.lake, emu.state(project_hash), project_hash)
        writes = emu.writes()
        if differences:
            _say(f"lake vs Encord: {len(differences)} DIFFERENCES, e.g. {differences[0]}")
        else:
            _say("lake vs Encord: identical (every live main row once, in its stage partition, same content)")
        _say(f"writes the mirror sent to Encord: {len(writes)}")

    _section("The lake")
    _show_layout(target, project_hash)
    _section("Where to look")
    _where_to_look(target, project_hash)
    _say(f"demo finished in {time.perf_counter() - started:.1f}s")
    ok = not differences and not writes and first.gaps_open == second.gaps_open == third.gaps_open == 0
    return 0 if ok else 1


def _sync(
    config: MirrorConfig,
    source: EncordLabelSource,
    target: LakeTarget,
    state: StateStore,
    *,
    full: bool,
) -> tuple[ProjectSummary, float]:
    t0 = time.perf_counter()
    summary: SyncSummary = execute_sync(
        config,
        source,
        target,
        state,
        workers=4,
        full=full,
        snapshots=snapshot_builder(target.lake),
        progress=lambda message: _say(f"... {message}"),
    )
    seconds = time.perf_counter() - t0
    print()
    for line in format_summary(summary, target, state).splitlines():
        _say(line)
    return summary.projects[0], seconds


def _change_things(emu: Any, project_hash: str, key_path: Path, truth: list[dict[str, Any]]) -> str:
    from encord_emulator.testing import user_client

    main_rows = sorted((i for i in truth if i["branch_name"] == "main"), key=lambda i: str(i["label_hash"]))
    project = user_client(emu.url, key_path).get_project(project_hash)
    edited = 0
    candidates = project.list_label_rows_v2(label_hashes=[i["label_hash"] for i in main_rows[: EDITS * 4]])
    with project.create_bundle() as bundle:
        for row in candidates:
            row.initialise_labels(bundle=bundle)
    for row in candidates:
        objects = row.get_object_instances()
        if objects and edited < EDITS:
            row.remove_object(objects[0])
            row.save()
            edited += 1
            _say(f"edited {row.data_title}: removed one object, saved through the SDK (LabelRowV2.save())")

    stage_titles = [s.title for s in project.workflow.stages]
    final_stage = stage_titles[-1]
    movable = [i for i in main_rows[EDITS * 4 :] if i["stage"] != final_stage][:MOVES]
    for item in movable:
        emu.move_stage(project_hash, item["data_hash"], final_stage)
        _say(f"moved {item['data_title']}: {item['stage']} -> {final_stage} (labels untouched)")

    doomed = main_rows[EDITS * 4 + MOVES * 4 :][:DELETES]
    for item in doomed:
        emu.delete_row(project_hash, item["label_hash"])
        _say(f"deleted the label row of {item['data_title']}")
    return f"{edited} edited, {len(movable)} moved, {len(doomed)} deleted"


def _initialised(log: list[dict[str, Any]]) -> int:
    return sum(int(e["uids"]) for e in log if e["query_type"] == "labelrow" and e["query_method"] == "GET")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common())


def _show_layout(target: LakeTarget, project_hash: str) -> None:
    lake = target.lake
    partitions: Counter[str] = Counter()
    example: dict[str, str] = {}
    prefix = f"labels/project={project_hash}/"
    for key in lake.list_keys(prefix):
        partition = key.removeprefix(prefix).rsplit("/", 1)[0]
        partitions[partition] += 1
        example.setdefault(partition, key)
    _say(f"{target.location}/")
    _say(f"  {prefix}")
    for partition in sorted(partitions):
        sample = example[partition].rsplit("/", 1)[1]
        _say(f"    {partition}/   {partitions[partition]} objects, e.g. {sample}")
    runs = sorted(lake.list_keys(f"runs/project={project_hash}/"))
    _say(f"  runs/project={project_hash}/   {len(runs)} run manifests (written last, one per run)")
    coco = [k for k in lake.list_keys(f"coco/project={project_hash}/") if k.endswith("latest.json")]
    if coco:
        _say(f"  coco/...   {len(coco)} COCO partitions, each with latest.json and immutable snapshots")
    if any(True for _ in lake.list_keys("events/")):
        _say("  events/events.jsonl   one line per committed COCO snapshot (for a retraining job)")


def _where_to_look(target: LakeTarget, project_hash: str) -> None:
    lake = target.lake
    first_key = next(iter(sorted(lake.list_keys(f"labels/project={project_hash}/branch=main/"))), None)
    if first_key:
        _say(f"a row, as Encord's to_encord_dict() plus a 'mirror' key: {lake.uri(first_key)}")
    runs = sorted(lake.list_keys(f"runs/project={project_hash}/"))
    if runs:
        _say(f"the last run's manifest (counts, every row's key and sha256): {lake.uri(runs[-1])}")
    _say(f"the mirror's state (watermark, row index, gaps): {target.state_path}")
    tables = lake.uri(f"tables/annotations/project={project_hash}/_table.json").removesuffix("_table.json")
    _say(f"the annotations table (one record per object / classification per frame): {tables}")
    if first_key:
        label_hash = _edited_row(lake, runs) or first_key.rsplit("/", 1)[1].removesuffix(".json")
        _say("a row's versions, and the row as the first run left it (from the change log, history/):")
        _say(f"  encord-mirror history --lake {target.location} --label-hash {label_hash}")
        as_of = _first_run(runs)
        _say(f"  encord-mirror show --lake {target.location} --label-hash {label_hash} --as-of {as_of}")
    _say("mirror a real project (your Encord ed25519 key; add --encord-domain for another region):")
    _say("  encord-mirror sync --project <PROJECT_HASH> --lake ./lake --ssh-key ~/.ssh/encord_ed25519")
    _say("  encord-mirror sync --project <PROJECT_HASH> --lake s3://bucket/prefix --ssh-key ...")


def _first_run(run_keys: list[str]) -> str:
    return run_keys[0].rsplit("/", 1)[1].removesuffix(".json") if run_keys else "<RUN_ID>"


def _edited_row(lake: ObjectStore, run_keys: list[str]) -> str | None:
    """A row the second run rewrote in place (an edit), so its history has two versions."""
    stored = lake.get(run_keys[1]) if len(run_keys) > 1 else None
    rows = orjson.loads(stored.body).get("rows", []) if stored else []
    return next((r["label_hash"] for r in rows if r["status"] == "written" and not r.get("old_key")), None)
