"""Compare a lake's current view with the emulator's truth (tests, demo and benchmarks).

The contract checked, for one project: every live label row on a mirrored branch is in the lake exactly
once, at `labels/project=<p>/branch=<b>/stage=<s>/<label_hash>.json` for its current workflow stage; its
body holds every key of the row's `to_encord_dict()` with the same value, plus the added `mirror` key
naming the stage and task status; and nothing else lives under the project's `labels/` prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from encord_mirror.domain.lake import label_key, stage_value
from encord_mirror.domain.models import BranchSelection
from encord_mirror.domain.ports import ObjectStore

MIRROR_KEY = "mirror"
MAIN_ONLY = BranchSelection()
TruthRow = Mapping[str, Any]


class LakeMismatchError(AssertionError):
    """The lake differs from the emulator's state; `differences` lists each difference, one per line."""

    def __init__(self, project_hash: str, differences: list[str]) -> None:
        shown = "\n  ".join(differences[:25])
        more = f"\n  ... and {len(differences) - 25} more" if len(differences) > 25 else ""
        super().__init__(f"lake differs from Encord for project {project_hash}:\n  {shown}{more}")
        self.project_hash = project_hash
        self.differences = differences


def _mirrored(branches: BranchSelection, branch: str) -> bool:
    if branches.all_branches:
        return True
    return branch == (branches.name if branches.mode == "named" else "main")


def expected_keys(
    truth: Iterable[TruthRow],
    project_hash: str,
    branches: BranchSelection = MAIN_ONLY,
    include: Callable[[TruthRow], bool] | None = None,
) -> dict[str, TruthRow]:
    """The lake key every mirrored truth row must live at."""
    out: dict[str, TruthRow] = {}
    for item in truth:
        if not _mirrored(branches, item["branch_name"]) or (include is not None and not include(item)):
            continue
        stage = stage_value(item.get("stage_uuid"), item.get("stage"))
        out[label_key(project_hash, item["branch_name"], stage, item["label_hash"])] = item
    return out


def lake_differences(
    lake: ObjectStore,
    truth: Iterable[TruthRow],
    project_hash: str,
    branches: BranchSelection = MAIN_ONLY,
    *,
    include: Callable[[TruthRow], bool] | None = None,
) -> list[str]:
    """Every way the lake's current view differs from `truth` (`Emulator.state(project)`); empty when equal.

    `include` narrows the truth to the rows a configuration mirrors (stage or task status filters).
    """
    expected = expected_keys(truth, project_hash, branches, include)
    present = [key for key in lake.list_keys(f"labels/project={project_hash}/") if key.endswith(".json")]
    differences: list[str] = []
    seen_hashes: dict[str, str] = {}
    for key in sorted(present):
        label_hash = key.rsplit("/", 1)[-1].removesuffix(".json")
        if label_hash in seen_hashes:
            differences.append(f"duplicate: {label_hash} at {seen_hashes[label_hash]} and {key}")
        seen_hashes[label_hash] = key
        if key not in expected:
            differences.append(f"stale or misplaced: {key}")
    for key, item in sorted(expected.items()):
        if key not in present:
            differences.append(f"missing: {key} (last edited {item.get('last_edited_at')})")
            continue
        differences.extend(_content_differences(lake, key, item))
    return differences


def _content_differences(lake: ObjectStore, key: str, item: TruthRow) -> list[str]:
    stored = lake.get(key)
    if stored is None:
        return [f"missing: {key} (listed but unreadable)"]
    body = orjson.loads(stored.body)
    if not isinstance(body, dict):
        return [f"not a JSON object: {key}"]
    mirror = body.pop(MIRROR_KEY, None)
    out: list[str] = []
    row = dict(item["row"])
    if body != row:
        changed = sorted(k for k in set(body) | set(row) if body.get(k) != row.get(k))
        out.append(f"content differs: {key} (keys {', '.join(changed)})")
    if not isinstance(mirror, dict):
        out.append(f"no '{MIRROR_KEY}' metadata: {key}")
    else:
        if mirror.get("stage_uuid") != item.get("stage_uuid"):
            out.append(f"stage uuid differs: {key} ({mirror.get('stage_uuid')} != {item.get('stage_uuid')})")
        if item.get("task_status") is not None and mirror.get("task_status") != item.get("task_status"):
            out.append(
                f"task status differs: {key} ({mirror.get('task_status')} != {item.get('task_status')})"
            )
    return out


def assert_lake_matches(
    lake: ObjectStore,
    truth: Iterable[TruthRow],
    project_hash: str,
    branches: BranchSelection = MAIN_ONLY,
    *,
    include: Callable[[TruthRow], bool] | None = None,
) -> None:
    """Raise `LakeMismatchError` (an AssertionError, so pytest shows it) listing every difference."""
    differences = lake_differences(lake, truth, project_hash, branches, include=include)
    if differences:
        raise LakeMismatchError(project_hash, differences)
