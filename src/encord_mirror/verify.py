"""Compare a lake's current view with the emulator's truth (tests, demo and benchmarks), and with Encord's
listing and the row index (`lake_report`, the `encord-mirror verify` command).

The contract checked, for one project: every live label row on a mirrored branch is in the lake exactly
once, at `labels/project=<p>/branch=<b>/stage=<s>/<label_hash>.json` for its current workflow stage; its
body holds every key of the row's `to_encord_dict()` with the same value, plus the added `mirror` key
naming the stage and task status; and nothing else lives under the project's `labels/` prefix.

`snapshot_differences` checks the COCO side of the contract against the lake itself: each partition's
latest snapshot equals a fresh conversion of the partition's current rows, with a right manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from encord_mirror.coco.convert import Ontology, RowOntologyMismatchError, convert
from encord_mirror.domain.lake import (
    label_key,
    latest_key,
    partition_of,
    pruned_key,
    snapshot_key,
    stage_value,
)
from encord_mirror.domain.models import BranchSelection, IndexEntry, JsonDict, Partition, RowMeta
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.domain.rowdoc import MIRROR_KEY, ROW_FORMAT_VERSION, intact_sha256
from encord_mirror.domain.watermark import is_newer, iso_utc

MAIN_ONLY = BranchSelection()
TruthRow = Mapping[str, Any]
_SORTED = orjson.OPT_SORT_KEYS
# What the snapshot builder catches when it leaves a row out of a snapshot.
_REFUSALS = (RowOntologyMismatchError, KeyError, TypeError, ValueError)


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
    differences = [text for _kind, _key, text in _placement_differences(expected, present)]
    for key, item in sorted(expected.items()):
        if key in present:
            differences.extend(_content_differences(lake, key, item))
    return differences


def _placement_differences(
    expected: Mapping[str, TruthRow], present: Iterable[str]
) -> list[tuple[str, str, str]]:
    """(kind, key, text) for each object where no truth row puts it ("extra": a duplicate, a stale or
    misplaced copy) and each truth row without its object ("missing")."""
    out: list[tuple[str, str, str]] = []
    seen_hashes: dict[str, str] = {}
    held = sorted(present)
    holds = set(held)
    for key in held:
        label_hash = key.rsplit("/", 1)[-1].removesuffix(".json")
        if label_hash in seen_hashes:
            out.append(("extra", key, f"duplicate: {label_hash} at {seen_hashes[label_hash]} and {key}"))
        seen_hashes[label_hash] = key
        if key not in expected:
            out.append(("extra", key, f"stale or misplaced: {key}"))
    for key, item in sorted(expected.items()):
        if key not in holds:
            out.append(("missing", key, f"missing: {key} (last edited {item.get('last_edited_at')})"))
    return out


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a lake is not in step (`lake_report`): `kind` is missing, extra, damaged, differs (an
    intact object of another version or stage than Encord lists), index (the row index and the lake
    disagree) or snapshot (`snapshot_differences`)."""

    kind: str
    detail: str
    key: str | None = None


def listed_truth(rows: Iterable[RowMeta]) -> list[dict[str, Any]]:
    """Encord's listing as truth rows for `expected_keys` (the latest version of each label row)."""
    latest: dict[str, RowMeta] = {}
    for meta in rows:
        held = latest.get(meta.label_hash or "")
        if meta.label_hash and (held is None or is_newer(meta.last_edited_at, held.last_edited_at)):
            latest[meta.label_hash] = meta
    return [
        {
            "label_hash": m.label_hash,
            "branch_name": m.branch,
            "stage_uuid": m.stage_uuid,
            "stage": m.stage_title,
            "task_status": m.task_status,
            "last_edited_at": iso_utc(m.last_edited_at),
            "meta": m,
        }
        for m in latest.values()
    ]


def lake_report(
    lake: ObjectStore,
    listed: Iterable[RowMeta],
    project_hash: str,
    branches: BranchSelection = MAIN_ONLY,
    *,
    include: Callable[[RowMeta], bool] | None = None,
    index: Iterable[IndexEntry] | None = None,
) -> list[Difference]:
    """The lake against Encord's listing (metadata only: no row is initialised) and, when given, the row
    index: where each row must be, that its object is intact (its content hashes to `mirror.sha256`) and
    of the listed version, stage and task status, and that the index points at it. Reads each row object
    once (one GET per row); writes nothing. `include`: the configuration's stage and task-status filter."""
    truth = listed_truth(listed)
    expected = expected_keys(
        truth, project_hash, branches, None if include is None else lambda item: include(item["meta"])
    )
    present = [key for key in lake.list_keys(f"labels/project={project_hash}/") if key.endswith(".json")]
    out = [Difference(kind, text, key) for kind, key, text in _placement_differences(expected, present)]
    entries = {e.label_hash: e for e in index} if index is not None else None
    shas: dict[str, str | None] = {}
    for key in sorted(present):
        stored = lake.get(key)
        if stored is None:
            continue
        sha = shas[key] = intact_sha256(stored.body)
        if sha is None:
            out.append(
                Difference("damaged", f"damaged: {key} (its content does not hash to mirror.sha256)", key)
            )
            continue
        item = expected.get(key)
        mirror = orjson.loads(stored.body)[MIRROR_KEY]
        if item is not None:
            for name in ("last_edited_at", "stage_uuid", "task_status"):
                if mirror.get(name) != item.get(name):
                    got, want = mirror.get(name), item.get(name)
                    out.append(
                        Difference("differs", f"differs: {key} ({name} {got!r}, Encord {want!r})", key)
                    )
    if entries is not None:
        for label_hash, entry in sorted(entries.items()):
            if entry.key not in shas:
                out.append(
                    Difference(
                        "index", f"index: {label_hash} points at {entry.key}, not in the lake", entry.key
                    )
                )
            elif shas[entry.key] is not None and shas[entry.key] != entry.sha256:
                out.append(
                    Difference("index", f"index: {label_hash} has another sha256 than {entry.key}", entry.key)
                )
        indexed = {e.key for e in entries.values()}
        out.extend(
            Difference("index", f"index: {key} is not in the row index", key)
            for key in sorted(set(shas) - indexed)
        )
    return out


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
        if mirror.get("format_version") != ROW_FORMAT_VERSION:
            out.append(f"row format {mirror.get('format_version')} != {ROW_FORMAT_VERSION}: {key}")
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


# -- COCO snapshots ------------------------------------------------------------------------------------


def snapshot_differences(
    lake: ObjectStore, project_hash: str, ontology: Mapping[str, Any], *, encord_compatible: bool
) -> list[str]:
    """Every way a project's latest COCO snapshots differ from a fresh conversion of the lake's rows.

    For each partition with live rows under `labels/` or a `latest.json` under `coco/`:
    - its latest snapshot's coco.json equals `convert(rows, ontology, encord_compatible=...)` of the
      partition's rows (in label-hash order, as the builder orders them), up to ids and order: images are
      matched by file name, annotations by content with their image's file name in place of `image_id`
      and their object hash in place of `track_id` (a track id must never join two objects);
    - a partition whose rows all left keeps a latest snapshot that is empty (the product writes one when
      its last row leaves; a partition that never had a row has none);
    - `latest.json` and `manifest.json` agree, and the manifest is right: partition, mode, counts, the
      sha256 and size of coco.json's bytes, one entry per live row with the object's `mirror.sha256` and
      `mirror.last_edited_at`, and rows added, changed and removed since the previous snapshot;
    - pycocotools' `COCO` indexes it, and `annToMask` gives an image-sized mask for every annotation that
      has an area (with pixels set, unless the area is under one pixel).

    A row the converter refuses (an object the ontology lacks) is expected to be left out of the snapshot.
    In compatible mode the reference takes dynamic attribute answers from each row's own frames, as the
    snapshot builder does by design (see `coco/snapshot.py`: CocoExporter's cross-row quirk is not
    reproduced), and everything else from the compatible conversion.
    """
    rows_by_partition: dict[Partition, dict[str, JsonDict]] = defaultdict(dict)
    for key in lake.list_keys(f"labels/project={project_hash}/"):
        if key.count("/") != 4 or not key.endswith(".json"):
            continue  # not a row of a partition: `lake_differences` reports it as misplaced
        stored = lake.get(key)
        if stored is not None:
            label_hash = key.rsplit("/", 1)[-1].removesuffix(".json")
            try:
                rows_by_partition[partition_of(key)][label_hash] = orjson.loads(stored.body)
            except orjson.JSONDecodeError:
                continue  # a damaged object: `lake_report` names it
    partitions = set(rows_by_partition)
    for key in lake.list_keys(f"coco/project={project_hash}/"):
        if key.count("/") == 4 and key.endswith("/latest.json"):
            partitions.add(partition_of(key))
    differences: list[str] = []
    for part in sorted(partitions):
        found = _partition_differences(
            lake, part, rows_by_partition.get(part, {}), ontology, encord_compatible
        )
        where = f"{part.branch}/{part.stage}"
        differences.extend(f"snapshot {where}: {d}" for d in found)
    return differences


def assert_snapshots_match(
    lake: ObjectStore, project_hash: str, ontology: Mapping[str, Any], *, encord_compatible: bool
) -> None:
    """Raise `LakeMismatchError` listing every difference `snapshot_differences` finds."""
    differences = snapshot_differences(lake, project_hash, ontology, encord_compatible=encord_compatible)
    if differences:
        raise LakeMismatchError(project_hash, differences)


def _read(lake: ObjectStore, key: str) -> tuple[bytes, Any] | None:
    stored = lake.get(key)
    return None if stored is None else (stored.body, orjson.loads(stored.body))


def _partition_differences(
    lake: ObjectStore,
    part: Partition,
    rows: Mapping[str, JsonDict],
    ontology: Mapping[str, Any],
    compatible: bool,
) -> list[str]:
    latest_obj = _read(lake, latest_key(part.project_hash, part.branch, part.stage))
    if latest_obj is None:
        return [f"no latest.json, but {len(rows)} live rows"]
    latest = latest_obj[1]
    manifest_obj = _read(lake, str(latest.get("manifest")))
    coco_obj = _read(lake, str(latest.get("coco")))
    if manifest_obj is None or coco_obj is None:
        return [f"latest.json points at a missing manifest or coco.json: {latest}"]
    manifest, (coco_body, coco) = manifest_obj[1], coco_obj
    live: Mapping[str, JsonDict] = rows
    refused: dict[str, str] = {}
    try:
        expected = _reference(sorted(live.items()), ontology, compatible)
    except _REFUSALS:
        live, refused = _convertible(live, ontology, compatible)
        expected = _reference(sorted(live.items()), ontology, compatible)
    out = [
        f"row {h} cannot be converted: {why}" for h, why in sorted(refused.items()) if h in manifest["rows"]
    ]
    if manifest.get("encord_compatible") is not compatible:
        out.append(f"manifest says encord_compatible={manifest.get('encord_compatible')!r}")
    out += _manifest_differences(lake, part, latest, manifest, coco_body, coco, live)
    out += _coco_differences(expected, coco)
    if not live and (coco["images"] or coco["annotations"]):
        out.append("the partition has no live rows, but its latest snapshot is not empty")
    out += _pycocotools_differences(coco)
    return out


def _convertible(
    rows: Mapping[str, JsonDict], ontology: Mapping[str, Any], compatible: bool
) -> tuple[dict[str, JsonDict], dict[str, str]]:
    """The rows the converter accepts on their own, and why it refuses the others (as the builder does)."""
    live: dict[str, JsonDict] = {}
    refused: dict[str, str] = {}
    for label_hash, doc in rows.items():
        try:
            convert([doc], ontology, encord_compatible=compatible)
            live[label_hash] = doc
        except _REFUSALS as exc:
            refused[label_hash] = f"{type(exc).__name__}: {exc}"
    return live, refused


def _manifest_differences(
    lake: ObjectStore,
    part: Partition,
    latest: Mapping[str, Any],
    manifest: Mapping[str, Any],
    coco_body: bytes,
    coco: Mapping[str, Any],
    live: Mapping[str, JsonDict],
) -> list[str]:
    out: list[str] = []
    sid = manifest.get("snapshot_id")
    for field_name in ("snapshot_id", "run_id", "created_at", "counts"):
        if latest.get(field_name) != manifest.get(field_name):
            out.append(f"latest.json {field_name} {latest.get(field_name)!r} != manifest's")
    expected_keys = {
        "manifest": snapshot_key(part.project_hash, part.branch, part.stage, str(sid), "manifest.json"),
        "coco": snapshot_key(part.project_hash, part.branch, part.stage, str(sid), "coco.json"),
    }
    out += [
        f"latest.json {k} is {latest.get(k)!r}, not {v!r}"
        for k, v in expected_keys.items()
        if latest.get(k) != v
    ]
    where = (manifest.get("project_hash"), manifest.get("branch"), manifest.get("stage"))
    if where != (part.project_hash, part.branch, part.stage):
        out.append(f"manifest names partition {where}")
    if not manifest.get("run_id") or not manifest.get("ontology_hash"):
        out.append("manifest lacks its run id or ontology hash")
    try:
        created = datetime.fromisoformat(str(manifest.get("created_at")))
        if created.utcoffset() is None:
            out.append(f"manifest created_at {manifest.get('created_at')!r} has no time zone")
    except ValueError:
        out.append(f"manifest created_at {manifest.get('created_at')!r} is not ISO 8601")
    counts = {"rows": len(live), "images": len(coco["images"]), "annotations": len(coco["annotations"])}
    if manifest.get("counts") != counts:
        out.append(f"manifest counts {manifest.get('counts')} != {counts}")
    blob = manifest.get("coco") or {}
    if blob.get("sha256") != hashlib.sha256(coco_body).hexdigest() or blob.get("bytes") != len(coco_body):
        out.append("manifest's coco sha256 or size is not coco.json's")
    if blob.get("uri") != lake.uri(expected_keys["coco"]):
        out.append(f"manifest's coco uri {blob.get('uri')!r} is not coco.json's")
    records: Mapping[str, Mapping[str, Any]] = manifest.get("rows") or {}
    for label_hash in sorted(set(live) - set(records)):
        out.append(f"stale: live row {label_hash} is not in the snapshot's manifest")
    for label_hash in sorted(set(records) - set(live)):
        out.append(f"stale: the manifest lists row {label_hash}, which is not live in the partition")
    for label_hash in sorted(set(records) & set(live)):
        mirror = live[label_hash].get(MIRROR_KEY) or {}
        record = records[label_hash]
        for name in ("sha256", "last_edited_at"):
            if record.get(name) != mirror.get(name):
                out.append(
                    f"stale: row {label_hash} {name} is {record.get(name)!r} in the manifest, "
                    f"{mirror.get(name)!r} in the lake"
                )
    out += _change_differences(lake, part, manifest, records)
    return out


def _change_differences(
    lake: ObjectStore, part: Partition, manifest: Mapping[str, Any], records: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """added / changed / removed must be the difference of this manifest's rows and the previous one's."""
    previous_id = manifest.get("previous_snapshot_id")
    before: Mapping[str, Mapping[str, Any]] = {}
    if previous_id is not None:
        key = snapshot_key(part.project_hash, part.branch, part.stage, str(previous_id), "manifest.json")
        previous = _read(lake, key)
        if previous is None and _pruned_through(lake, part) >= str(previous_id):
            return []  # snapshot retention deleted it: there is nothing to compare with
        if previous is None:
            return [f"the previous snapshot {previous_id} has no manifest"]
        before = previous[1].get("rows") or {}
    changes = manifest.get("changes") or {}
    expected = {
        "added": sorted(set(records) - set(before)),
        "removed": sorted(set(before) - set(records)),
        "changed": sorted(
            h for h in set(records) & set(before) if records[h]["sha256"] != before[h]["sha256"]
        ),
    }
    return [
        f"manifest changes.{name} {changes.get(name)} != {want} (against snapshot {previous_id})"
        for name, want in expected.items()
        if changes.get(name) != want
    ]


def _pruned_through(lake: ObjectStore, part: Partition) -> str:
    """The newest snapshot id snapshot retention deleted in the partition ("" if none)."""
    stored = lake.get(pruned_key(part.project_hash, part.branch, part.stage))
    return "" if stored is None else str(orjson.loads(stored.body).get("through") or "")


def _reference(rows: list[tuple[str, JsonDict]], ontology: Mapping[str, Any], compatible: bool) -> JsonDict:
    docs = [doc for _h, doc in rows]
    expected = convert(docs, ontology, encord_compatible=compatible)
    if not compatible:
        return expected
    own_frames = convert(docs, ontology, encord_compatible=False)["annotations"]
    index = Ontology.from_dict(ontology)
    feature_of = {category: feature for feature, category in index.category_ids.items()}
    for ann, own in zip(expected["annotations"], own_frames, strict=True):
        attributes = index.object_attributes.get(feature_of[ann["category_id"]], [])
        for attr in attributes:
            if attr.dynamic:
                for name in attr.option_labels if attr.kind == "checklist" else (attr.name,):
                    ann["attributes"]["classifications"][name] = own["attributes"]["classifications"][name]
    return expected


def _normalised(coco: Mapping[str, Any]) -> tuple[list[bytes], list[bytes], list[str]]:
    """Images and annotations without ids, sorted; plus any track id shared by two objects."""
    names = {image["id"]: image.get("file_name") for image in coco["images"]}
    images = sorted(
        orjson.dumps({k: v for k, v in i.items() if k != "id"}, option=_SORTED) for i in coco["images"]
    )
    annotations = []
    track_objects: dict[Any, set[str]] = defaultdict(set)
    for ann in coco["annotations"]:
        body = {k: v for k, v in ann.items() if k != "id"}
        body["image_id"] = names.get(ann["image_id"], f"<no image {ann['image_id']}>")
        attributes = dict(body["attributes"])
        track_objects[attributes.pop("track_id", None)].add(str(attributes.get("encord_track_uuid")))
        body["attributes"] = attributes
        annotations.append(orjson.dumps(body, option=_SORTED))
    shared = [f"track id {t} joins objects {sorted(o)}" for t, o in track_objects.items() if len(o) > 1]
    return images, sorted(annotations), shared


def _coco_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in ("info", "categories"):
        if expected[name] != actual.get(name):
            out.append(f"{name} differ: {actual.get(name)!r} != {expected[name]!r}")
    if len({i["id"] for i in actual["images"]}) != len(actual["images"]):
        out.append("image ids are not unique")
    if len({a["id"] for a in actual["annotations"]}) != len(actual["annotations"]):
        out.append("annotation ids are not unique")
    want_images, want_anns, _ = _normalised(expected)
    got_images, got_anns, shared = _normalised(actual)
    out += shared
    for what, want, got in (("image", want_images, got_images), ("annotation", want_anns, got_anns)):
        missing, extra = _multiset_minus(want, got), _multiset_minus(got, want)
        out += [f"{what} missing: {m[:300].decode()}" for m in missing[:5]]
        out += [f"{what} not in a fresh conversion: {e[:300].decode()}" for e in extra[:5]]
        if len(missing) > 5 or len(extra) > 5:
            out.append(f"... {len(missing)} {what}s missing and {len(extra)} extra in all")
    return out


def _multiset_minus(a: list[bytes], b: list[bytes]) -> list[bytes]:
    left = Counter(a)
    left.subtract(Counter(b))
    return sorted(item for item, n in left.items() for _ in range(n))


def _pycocotools_differences(coco: Mapping[str, Any]) -> list[str]:
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = orjson.loads(orjson.dumps(coco))  # a copy: COCO keeps references into it
    out: list[str] = []
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
            api.createIndex()
    except Exception as exc:
        return [f"pycocotools cannot index it: {type(exc).__name__}: {exc}"]
    for ann in api.dataset["annotations"]:
        if not ann.get("area"):
            continue
        try:
            mask = api.annToMask(ann)
        except Exception as exc:
            out.append(f"annToMask fails on annotation {ann['id']}: {type(exc).__name__}: {exc}")
            continue
        image = api.imgs[ann["image_id"]]
        if mask.shape != (image["height"], image["width"]):
            out.append(
                f"annToMask of annotation {ann['id']} is {mask.shape}, "
                f"its image {image['height']}x{image['width']}"
            )
        elif not mask.any() and ann["area"] >= 1:
            out.append(f"annToMask of annotation {ann['id']} (area {ann['area']}) sets no pixel")
    return out


def training_differences(coco: Mapping[str, Any]) -> list[str]:
    """Every way a corrected-mode COCO file fails the tools users train and evaluate with.

    - every image has a unique `file_name` and its `encord_data_hash`, `encord_frame` and `encord_data_link`;
    - no annotation is a crowd region (detectron2, Ultralytics' converter and COCOeval skip them), every id
      is at least 1 (COCOeval reads a matched id 0 as "unmatched"), every box has a size;
    - pycocotools' `annToMask` decodes every segmentation to a mask of its image's size;
    - COCOeval scores the ground truth against itself (score 1.0 each) with AP = 1.0 for boxes and
      segmentations, and for keypoints per keypoint category (OKS sigmas 0.1: COCOeval has one sigma list
      for all categories, so categories with other keypoint counts cannot share one evaluation).
    """
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out: list[str] = []
    names = Counter(str(image.get("file_name")) for image in coco["images"])
    out += [f"file_name {n!r} is used by {c} images" for n, c in names.items() if c > 1][:5]
    for image in coco["images"]:
        missing = [k for k in ("encord_data_hash", "encord_frame", "encord_data_link") if k not in image]
        if missing:
            out.append(f"image {image['id']} lacks {', '.join(missing)}")
    for ann in coco["annotations"]:
        if ann.get("iscrowd"):
            out.append(f"annotation {ann['id']} is a crowd region")
        if not isinstance(ann["id"], int) or ann["id"] < 1:
            out.append(f"annotation id {ann['id']!r} is not a positive integer")
        if len(ann["bbox"]) != 4 or ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
            out.append(f"annotation {ann['id']} has the empty box {ann['bbox']}")
    out += _pycocotools_differences(coco)
    if out or not coco["annotations"]:
        return out

    def index(dataset: Any) -> Any:
        api = COCO()
        api.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            api.createIndex()
        return api

    gt = index(orjson.loads(orjson.dumps(coco)))
    detections = orjson.loads(orjson.dumps(coco))
    for ann in detections["annotations"]:
        ann["score"] = 1.0
    dt = index(detections)
    most = max(Counter(a["image_id"] for a in coco["annotations"]).values())
    runs: list[tuple[str, str, list[int], int]] = [("bbox", "bbox", [], 0), ("segm", "segm", [], 0)]
    for category in coco["categories"]:
        if isinstance(category.get("keypoints"), list) and category["keypoints"]:
            runs.append(
                (
                    f"keypoints of {category['name']!r}",
                    "keypoints",
                    [category["id"]],
                    len(category["keypoints"]),
                )
            )
    for label, iou_type, categories, n_keypoints in runs:
        evaluation = COCOeval(gt, dt, iou_type)
        evaluation.params.maxDets = [1, 10, max(100, most)]
        if categories:
            evaluation.params.catIds = categories
            evaluation.params.kpt_oks_sigmas = np.full(n_keypoints, 0.1)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        ap = float(evaluation.stats[0])
        if ap != -1.0 and abs(ap - 1.0) > 1e-9:  # -1: nothing of the kind to score (no visible keypoint)
            out.append(f"COCOeval {label}: AP {ap:.4f} of the ground truth against itself, not 1.0")
    return out
