"""Checks shared by the snapshot e2e suites: which snapshots a lake committed, and that the events a sink
delivered announce each of them exactly once."""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

from encord_mirror.cli.main import main
from encord_mirror.domain.models import SnapshotEvent
from encord_mirror.domain.ports import ObjectStore

# What Step Functions takes as an execution name, narrowed to what any key takes (README, "Events").
EXECUTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`encord-mirror ARGV...` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def committed_snapshots(lake: ObjectStore, project_hash: str) -> dict[str, dict[str, Any]]:
    """Every snapshot manifest of the project in the lake, by the event id that announces it."""
    out: dict[str, dict[str, Any]] = {}
    for key in lake.list_keys(f"coco/project={project_hash}/"):
        if not key.endswith("/manifest.json"):
            continue
        stored = lake.get(key)
        assert stored is not None
        manifest: dict[str, Any] = orjson.loads(stored.body)
        event = SnapshotEvent(
            manifest["snapshot_id"], project_hash, manifest["branch"], manifest["stage"], {}
        )
        out[event.event_id] = manifest
    return out


def announced(manifest: dict[str, Any], min_annotations: int = 0) -> bool:
    """Whether the builder announces this snapshot under an announce threshold of `min_annotations`."""
    changes = manifest["changes"]
    return bool(changes["annotations_added"] + changes["annotations_changed"] >= min_annotations)


def one_event_per_snapshot_differences(
    details: Iterable[dict[str, Any]], lake: ObjectStore, project_hash: str, min_annotations: int = 0
) -> list[str]:
    """How the delivered events' details differ from one event per committed (and announced) snapshot,
    each with the snapshot's coco sha256."""
    details = list(details)
    snapshots = committed_snapshots(lake, project_hash)
    counts = Counter(d["event_id"] for d in details)
    out = [f"event {e} delivered {n} times" for e, n in sorted(counts.items()) if n > 1]
    expected = {e for e, m in snapshots.items() if announced(m, min_annotations)}
    out += [f"snapshot {e} never announced" for e in sorted(expected - set(counts))]
    out += [f"event {e} announces no committed snapshot" for e in sorted(set(counts) - expected)]
    out += [
        f"event id {e} is not an execution name" for e in sorted(counts) if not EXECUTION_NAME.fullmatch(e)
    ]
    for detail in details:
        manifest = snapshots.get(detail["event_id"])
        if manifest is not None and detail.get("coco_sha256") != manifest["coco"]["sha256"]:
            out.append(f"event {detail['event_id']} names another coco.json")
    return out
