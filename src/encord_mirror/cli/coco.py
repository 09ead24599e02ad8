"""`encord-mirror coco convert` (offline, an Encord JSON export to COCO) and `coco latest` (for scripts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from encord_mirror.cli.errors import CliError
from encord_mirror.cli.target import open_lake
from encord_mirror.coco.convert import RowOntologyMismatchError, convert
from encord_mirror.domain.history import HistoryError, parse_time
from encord_mirror.domain.lake import latest_key, media_key, partition_prefix, snapshot_key
from encord_mirror.domain.models import JsonDict, Partition
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.reader import LakeReadError, SnapshotPrunedError, snapshot_as_of, snapshot_by_id


def _load_json(path: str, what: str) -> Any:
    try:
        return orjson.loads(Path(path).expanduser().read_bytes())
    except FileNotFoundError:
        raise CliError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise CliError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    except orjson.JSONDecodeError as exc:
        raise CliError(f"{what} {path}: not valid JSON ({exc})") from None


def convert_main(args: argparse.Namespace) -> int:
    rows = _load_json(args.rows, "ROWS.json")
    ontology = _load_json(args.ontology, "--ontology")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CliError(
            f"ROWS.json {args.rows}: expected a JSON list of label rows (to_encord_dict() objects)"
        )
    if not isinstance(ontology, dict) or not isinstance(ontology.get("objects"), list):
        raise CliError(
            f"--ontology {args.ontology}: expected OntologyStructure.to_dict() (with an 'objects' list)"
        )
    for index, row in enumerate(rows):
        missing = [k for k in ("data_type", "data_units", "object_answers") if k not in row]
        if missing:
            name = row.get("label_hash") or f"#{index}"
            raise CliError(
                f"ROWS.json: row {name} is not a to_encord_dict() label row (no {', '.join(missing)})"
            )
    try:
        coco = convert(rows, ontology, encord_compatible=args.encord_compatible)
    except RowOntologyMismatchError as exc:
        raise CliError(str(exc)) from None
    out = Path(args.out).expanduser()
    try:
        out.write_bytes(orjson.dumps(coco))
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write it ({exc.strerror or exc})") from None
    print(
        f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{len(coco['categories'])} categories from {len(rows)} rows",
        file=sys.stderr,
    )
    return 0


def latest_main(args: argparse.Namespace) -> int:
    lake = open_lake(args.lake)
    if args.stage is not None:
        stages = [args.stage]
    else:
        prefix = partition_prefix("coco", args.project, args.branch, "x").removesuffix("stage=x/")
        stages = sorted(
            {k[len(prefix) :].split("/", 1)[0].removeprefix("stage=") for k in lake.list_keys(prefix)} - {""}
        )
    if args.as_of is not None:
        try:
            parse_time(args.as_of)
        except HistoryError as exc:
            raise CliError(str(exc)) from None
    found = []
    for stage in stages:
        if args.as_of is not None:
            latest = _latest_as_of(lake, Partition(args.project, args.branch, stage), args.as_of, args.stage)
            if latest is None:
                continue
        else:
            pointer = _read_latest(lake, latest_key(args.project, args.branch, stage))
            if pointer is None:
                continue
            latest = pointer
        manifest_obj = lake.get(latest["manifest"])
        manifest = orjson.loads(manifest_obj.body) if manifest_obj else {}
        found.append(
            {
                "project_hash": args.project,
                "branch": args.branch,
                "stage": stage,
                "snapshot_id": latest["snapshot_id"],
                "created_at": latest["created_at"],
                "coco_uri": lake.uri(latest["coco"]),
                "manifest_uri": lake.uri(latest["manifest"]),
                "coco_sha256": (manifest.get("coco") or {}).get("sha256"),
                "counts": latest["counts"],
                "changes": {
                    k: v if isinstance(v, int) else len(v) for k, v in (manifest.get("changes") or {}).items()
                },
            }
        )
    if not found:
        where = f"stage {args.stage!r}" if args.stage else "any stage"
        when = f" as of {args.as_of}" if args.as_of else ""
        raise CliError(f"no COCO snapshot for project {args.project} branch {args.branch!r} in {where}{when}")
    sys.stdout.write(
        orjson.dumps(found[0] if args.stage else found, option=orjson.OPT_INDENT_2).decode() + "\n"
    )
    return 0


def _read_latest(lake: ObjectStore, key: str) -> JsonDict | None:
    """A partition's `latest.json`; None when there is none; a damaged one is named (CliError)."""
    stored = lake.get(key)
    if stored is None:
        return None
    try:
        latest = orjson.loads(stored.body)
    except orjson.JSONDecodeError:
        latest = None
    if not isinstance(latest, dict) or not {"snapshot_id", "manifest", "coco"} <= set(latest):
        raise CliError(
            f"{lake.uri(key)} is damaged (not a latest.json pointer): the next `encord-mirror sync` rebuilds "
            "it (meanwhile `coco export --snapshot ID` reads a snapshot of the snapshots/ folder beside it)"
        )
    return latest


def _latest_as_of(lake: ObjectStore, part: Partition, as_of: str, one_stage: str | None) -> JsonDict | None:
    """What `latest.json` said at `as_of`. With one stage asked, a time before its first snapshot is an
    error naming it; over every stage, stages that had none yet are left out (and named if none had)."""
    try:
        snap = snapshot_as_of(lake, part, as_of)
    except LakeReadError as exc:
        # A stage whose snapshot of then was pruned is an error even over every stage: leaving it out
        # would say it had none.
        if one_stage is not None or isinstance(exc, SnapshotPrunedError):
            raise CliError(str(exc)) from None
        return None
    return {
        "snapshot_id": snap.snapshot_id,
        "created_at": snap.created_at,
        "coco": snap.coco_key,
        "manifest": snap.coco_key.removesuffix("coco.json") + "manifest.json",
        "counts": snap.manifest["counts"],
    }


def export_main(args: argparse.Namespace) -> int:
    from encord_mirror.coco.export import export_coco, export_yolo

    lake = open_lake(args.lake)
    where = f"project {args.project} branch {args.branch!r} stage {args.stage!r}"
    snapshot_id = args.snapshot
    if snapshot_id is None:
        latest = _read_latest(lake, latest_key(args.project, args.branch, args.stage))
        if latest is None:
            raise CliError(f"no COCO snapshot for {where} (see `encord-mirror coco latest`)")
        snapshot_id = latest["snapshot_id"]
    coco_obj = lake.get(snapshot_key(args.project, args.branch, args.stage, snapshot_id, "coco.json"))
    if coco_obj is None:
        try:
            snapshot_by_id(lake, Partition(args.project, args.branch, args.stage), snapshot_id)
        except SnapshotPrunedError as exc:
            raise CliError(f"--snapshot {snapshot_id}: {exc}") from None
        except LakeReadError:
            pass
        raise CliError(f"--snapshot {snapshot_id}: no such snapshot for {where}")
    coco = orjson.loads(coco_obj.body)
    out = Path(args.out).expanduser()

    def media(file_name: str) -> bytes | None:
        stored = lake.get(media_key(args.project, file_name))
        return None if stored is None else stored.body

    try:
        if args.export_format == "yolo":
            title = f"encord-mirror snapshot {snapshot_id} of {where}"
            summary = export_yolo(coco, out, media, title=title)
        else:
            summary = export_coco(coco, out, media)
    except OSError as exc:
        raise CliError(f"--out {args.out}: cannot write it ({exc.strerror or exc})") from None
    skipped = "".join(f"; {n} left out: {why}" for why, n in sorted(summary.skipped.items()))
    missing = ""
    if summary.missing_video:
        missing += (
            f"; {summary.missing_video} video frames without their image (`encord-mirror media` decodes "
            "them with PyAV: pip install 'encord-mirror[video]')"
        )
    if summary.missing_media > summary.missing_video:
        others = summary.missing_media - summary.missing_video
        missing += f"; {others} images not in the lake's media folder (run `encord-mirror media`)"

    counts = f"{summary.images} images, {summary.labels} labels"
    print(f"wrote {out} ({args.export_format}): {counts}{missing}{skipped}", file=sys.stderr)
    return 0
