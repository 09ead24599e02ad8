"""The lake's key layout: a public contract (documented in the README).

```
labels/project=<p>/branch=<b>/stage=<s>/<label_hash>.json
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/coco.json
coco/project=<p>/branch=<b>/stage=<s>/snapshots/<snapshot_id>/manifest.json
coco/project=<p>/branch=<b>/stage=<s>/latest.json
coco/project=<p>/branch=<b>/stage=<s>/pruned.json     only once snapshot retention deleted a snapshot
runs/project=<p>/<run_id>.json
```

Partition values must be safe both in an S3 key and as a Hive partition value. Branch names are
kept as they are where they only use `[A-Za-z0-9._-]`, and percent-encoded (Hive's own escaping)
otherwise. A stage value is `<slug of the title>-<first 8 hex of the stage uuid>`: readable in Athena,
yet unique and stable when two stages share a title. Rows outside any workflow stage use `none`.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from encord_mirror.domain.models import Partition

NO_STAGE = "none"
_SLUG_MAX = 40
_NON_SLUG = re.compile(r"[^a-z0-9]+")


def stage_value(stage_uuid: str | None, stage_title: str | None) -> str:
    """The partition value of a workflow stage: deterministic, key-safe, Hive-safe."""
    if not stage_uuid:
        return NO_STAGE
    slug = _NON_SLUG.sub("-", (stage_title or "").lower()).strip("-")[:_SLUG_MAX].rstrip("-")
    short = stage_uuid.replace("-", "").lower()[:8]
    return f"{slug}-{short}" if slug else f"stage-{short}"


def branch_value(branch: str) -> str:
    """The partition value of a consensus branch name (percent-encoded where needed)."""
    if not branch:
        raise ValueError("empty branch name")
    return quote(branch, safe="")


def partition_prefix(kind: str, project_hash: str, branch: str, stage: str) -> str:
    return f"{kind}/project={project_hash}/branch={branch_value(branch)}/stage={stage}/"


def label_key(project_hash: str, branch: str, stage: str, label_hash: str) -> str:
    return f"{partition_prefix('labels', project_hash, branch, stage)}{label_hash}.json"


def snapshot_key(project_hash: str, branch: str, stage: str, snapshot_id: str, name: str) -> str:
    return f"{partition_prefix('coco', project_hash, branch, stage)}snapshots/{snapshot_id}/{name}"


def latest_key(project_hash: str, branch: str, stage: str) -> str:
    return f"{partition_prefix('coco', project_hash, branch, stage)}latest.json"


def pruned_key(project_hash: str, branch: str, stage: str) -> str:
    """What snapshot retention deleted in the partition (see `coco.snapshot.CocoSnapshotBuilder.prune`)."""
    return f"{partition_prefix('coco', project_hash, branch, stage)}pruned.json"


def run_manifest_key(project_hash: str, run_id: str) -> str:
    return f"runs/project={project_hash}/{run_id}.json"


def partition_of(key: str) -> Partition:
    """The partition of a label object (`labels/project=<p>/branch=<b>/stage=<s>/<x>.json`) or of a
    partition's `coco/.../latest.json`, branch decoded."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] not in ("labels", "coco"):
        raise ValueError(f"not a label key or a latest.json key: {key!r}")
    values = [p.partition("=")[2] for p in parts[1:4]]
    return Partition(project_hash=values[0], branch=unquote(values[1]), stage=values[2])


def media_prefix(project_hash: str) -> str:
    """Where the `media` step puts a project's images: a snapshot's `file_name` is relative to it."""
    return f"media/project={project_hash}/"


def media_key(project_hash: str, file_name: str) -> str:
    return f"{media_prefix(project_hash)}{file_name}"


def media_index_key(project_hash: str) -> str:
    """The `media` step's record of what it fetched (a `_` name: Hive and Athena skip it)."""
    return f"{media_prefix(project_hash)}_index.jsonl"
