"""A reconciling run's look at the lake itself: its row objects (`labels/project=<p>/`) against the row index.

Encord's listing against the row index (`planner.diff_rows`) cannot see what happened to the lake behind
the index's back: an object deleted, truncated or edited by hand, a state file lost (a second machine, a
fresh container) while rows moved and were deleted, so that old copies stay. `check_lake` compares the
lake's listing (key and etag of every row object: on S3 one LIST per 1000 keys) with the index:

- an entry whose object has the index's etag is taken as intact without reading it (no GET);
- an entry whose object is missing, or has another etag and another content (`mirror.sha256` recomputed,
  see `rowdoc`), is dropped (one GET to find out); the row is then treated as one the index lacks:
- an object of a row the index lacks (a lost or new state, or another machine's run moved it) is read
  and, when it is an intact object of this project at the key its `mirror` block names, adopted into the
  index (the copy where Encord's listing puts the row first, else the newest), so a run without state
  does not send every row again; a row left without an intact copy is sent again and rewritten;
- every other object of the project is a stray, deleted by the workers: a copy in a partition that is not
  the row's (where the index or Encord's listing puts it), a row's damaged copy elsewhere, the object of a
  row Encord no longer lists or the filters exclude.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

import orjson

from encord_mirror.domain.lake import label_key
from encord_mirror.domain.models import IndexEntry, StoredObject
from encord_mirror.domain.rowdoc import MIRROR_KEY, intact_sha256


@dataclass(frozen=True, slots=True)
class LakeCheck:
    index: dict[str, IndexEntry]  # the row index as the lake bears it out (dropped out, adopted in)
    # Entries the lake does not bear out (the object missing or damaged): taken out of the state store
    # before `adopted` is stored.
    dropped: tuple[str, ...] = ()
    adopted: tuple[IndexEntry, ...] = ()  # entries to store: read from an intact object, or a new etag
    damaged: int = 0  # rows of `dropped` without an intact copy in the lake: sent again
    strays: tuple[str, ...] = ()  # keys to delete, sorted
    reads: int = 0  # objects read (GETs)


def labels_prefix(project_hash: str) -> str:
    return f"labels/project={project_hash}/"


def check_lake(
    project_hash: str,
    index: Mapping[str, IndexEntry],
    listed: Iterable[tuple[str, str]],
    expected: Mapping[str, str],
    read: Callable[[str], StoredObject | None],
) -> LakeCheck:
    """`listed`: (key, etag) of the lake's objects under `labels_prefix`; `expected`: label hash -> the key
    Encord's listing puts each selected row at; `read`: a GET."""
    # Only what the index does not bear out is held (a 1M-row lake that is in step holds nothing here).
    copies: dict[str, dict[str, str]] = defaultdict(dict)
    unseen = dict(index)
    for listed_key, listed_etag in listed:
        if listed_key.count("/") != 4 or not listed_key.endswith(".json"):
            continue
        label_hash = listed_key.rsplit("/", 1)[1].removesuffix(".json")
        entry = index.get(label_hash)
        if entry is not None and entry.key == listed_key and entry.etag == listed_etag:
            del unseen[label_hash]
        else:
            copies[label_hash][listed_key] = listed_etag
    kept = dict(index)
    dropped: list[str] = []
    adopted: list[IndexEntry] = []
    reads = 0
    for label_hash, entry in unseen.items():
        etag = copies.get(label_hash, {}).get(entry.key)
        if etag is not None:
            reads += 1
            stored = read(entry.key)
            if stored is not None and intact_sha256(stored.body) == entry.sha256:
                # The same content under another etag (copied back, restored from a version): keep it.
                kept[label_hash] = replace(entry, etag=stored.etag)
                adopted.append(kept[label_hash])
                continue
        del kept[label_hash]
        dropped.append(label_hash)
    for label_hash, found in copies.items():
        if label_hash in kept:
            continue
        # The copy where Encord puts the row first; else the newest intact one. (A dropped entry's own
        # object was found damaged: not read again.)
        gone = index[label_hash].key if label_hash in index else None
        order = sorted((k for k in found if k != gone), key=lambda k: (k != expected.get(label_hash), k))
        best: IndexEntry | None = None
        for key in order:
            reads += 1
            candidate = _adopt(project_hash, label_hash, key, read(key))
            if candidate is not None and (best is None or _newer(candidate, best)):
                best = candidate
            if best is not None and key == expected.get(label_hash):
                break
        if best is not None:
            kept[label_hash] = best
            adopted.append(best)
    strays: list[str] = []
    for label_hash, found in copies.items():
        keep = {kept[label_hash].key} if label_hash in kept else set()
        if label_hash in expected:
            keep.add(expected[label_hash])
        strays.extend(k for k in found if k not in keep)
    damaged = sum(1 for h in dropped if h not in kept)
    return LakeCheck(kept, tuple(sorted(dropped)), tuple(adopted), damaged, tuple(sorted(strays)), reads)


def _adopt(project_hash: str, label_hash: str, key: str, stored: StoredObject | None) -> IndexEntry | None:
    """The index entry an intact object of this project stands for, where it is its own key."""
    if stored is None or intact_sha256(stored.body) is None:
        return None
    mirror = orjson.loads(stored.body)[MIRROR_KEY]
    try:
        branch, stage = str(mirror["branch"]), str(mirror["stage"])
        if (
            mirror.get("project_hash") != project_hash
            or mirror.get("label_hash") != label_hash
            or label_key(project_hash, branch, stage, label_hash) != key
        ):
            return None
        edited = mirror.get("last_edited_at")
        return IndexEntry(
            project_hash=project_hash,
            label_hash=label_hash,
            data_hash=str(mirror["data_hash"]),
            branch=branch,
            key=key,
            partition_stage=stage,
            last_edited_at=datetime.fromisoformat(edited) if isinstance(edited, str) else None,
            sha256=str(mirror["sha256"]),
            etag=stored.etag,
            synced_at=datetime.fromisoformat(str(mirror["synced_at"])),
            task_status=mirror.get("task_status"),
            stage_uuid=mirror.get("stage_uuid"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _newer(a: IndexEntry, b: IndexEntry) -> bool:
    if a.last_edited_at is None:
        return False
    return b.last_edited_at is None or a.last_edited_at > b.last_edited_at
