"""Every command's arguments, declared without importing the SDK, boto3 or numpy.

A flag that sets a `MirrorConfig` field is declared with `config_flag`: its `dest` is the field's name,
so `cli.sync.config_from_args` passes it on without a second list, and a `ConfigError` about the field
names the flag (`FLAG_OF_SETTING`). Adding such a flag is one call here (and the field in MirrorConfig,
which the Lambda reads from the variable of its name in capitals: see `aws_lambda.settings`). The flags
are declared here, not from MirrorConfig's fields, so that --help imports no pydantic.
Each command's `func` is a "module:function" path that `main` imports only when that command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from encord_mirror.coco.modes import COCO_MODES, DEFAULT_COCO_MODE
from encord_mirror.domain.limits import DEFAULT_BUNDLE_SIZE, MAX_BUNDLE_SIZE

# MirrorConfig field -> the flag that sets it (filled by config_flag; "branches" is set by two flags).
FLAG_OF_SETTING: dict[str, str] = {"branches": "--branch"}


def config_flag(group: Any, flag: str, *, setting: str, **kwargs: Any) -> None:
    """Declare a flag whose value becomes `MirrorConfig(<setting>=...)`. Lists become tuples; a flag left
    unset (None) leaves MirrorConfig's default, so defaults live in one place."""
    FLAG_OF_SETTING[setting] = flag
    group.add_argument(flag, dest=setting, **kwargs)


def _lake_and_state(parser: Any) -> None:
    parser.add_argument("--lake", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    parser.add_argument(
        "--state",
        default=None,
        metavar="PATH",
        help="SQLite state file (default: LAKE/.mirror-state.sqlite; for S3: ~/.cache/encord-mirror/), or "
        "dynamodb://TABLE: a state shared by every machine (and a Lambda deployment) naming that table",
    )


def _encord(parser: Any) -> None:
    parser.add_argument(
        "--ssh-key",
        default=None,
        metavar="FILE",
        help="Encord ed25519 private key file (default: $ENCORD_SSH_KEY_FILE, else the key's text in "
        "$ENCORD_SSH_KEY)",
    )
    parser.add_argument("--encord-domain", default=None, metavar="URL", help="Encord API domain")


def add_sync(sub: Any) -> None:
    sync = sub.add_parser("sync", help="bring a lake in step with one or more Encord projects")
    config_flag(
        sync,
        "--project",
        setting="projects",
        action="append",
        required=True,
        metavar="HASH",
        help="repeatable",
    )
    _lake_and_state(sync)
    _encord(sync)
    sync.add_argument("--full", action="store_true", help="reconcile: list all rows and diff with the index")
    config_flag(
        sync,
        "--reconcile-every",
        setting="reconcile_every",
        type=int,
        default=None,
        metavar="N",
        help="every Nth run of a project reconciles (lists all rows and diffs with the index; the first "
        "run always does). Stage moves, task-status changes and deletions in Encord do not change a row's "
        "edit time, so they are seen on reconciling runs only. 1 = every run (default: 12)",
    )
    sync.add_argument("--workers", type=int, default=4)
    config_flag(
        sync,
        "--bundle-size",
        setting="bundle_size",
        type=int,
        default=None,
        help=f"rows per SDK bundle (default {DEFAULT_BUNDLE_SIZE}, at most {MAX_BUNDLE_SIZE})",
    )
    branches = sync.add_mutually_exclusive_group()
    branches.add_argument("--branch", default=None, metavar="NAME", help="this branch only")
    branches.add_argument("--all-branches", action="store_true", help="mirror every consensus branch")
    filters = sync.add_argument_group(
        "filters", "what is mirrored; changing them makes the next run sync every selected row again"
    )
    config_flag(
        filters,
        "--stage",
        setting="stage_include",
        action="append",
        default=None,
        metavar="STAGE",
        help="only this workflow stage (title or uuid); repeatable",
    )
    config_flag(
        filters,
        "--exclude-stage",
        setting="stage_exclude",
        action="append",
        default=None,
        metavar="STAGE",
        help="never this stage; repeatable",
    )
    config_flag(
        filters,
        "--task-status",
        setting="task_statuses",
        action="append",
        default=None,
        metavar="STATUS",
        help="only rows with this task status (QUEUED, ASSIGNED, IN_REVIEW, RETURNED, COMPLETED); repeatable",
    )
    config_flag(
        filters,
        "--object-feature",
        setting="object_feature_hashes",
        action="append",
        default=None,
        metavar="HASH",
        help="keep only objects of this ontology feature hash in each row (repeatable; default: all)",
    )
    config_flag(
        filters,
        "--classification-feature",
        setting="classification_feature_hashes",
        action="append",
        default=None,
        metavar="HASH",
        help="keep only classifications of this feature hash (repeatable; default: all)",
    )
    config_flag(
        filters,
        "--allow-shrink",
        setting="filter_shrink_limit",
        action="store_const",
        const=100,
        default=None,
        help="let a filter change take more than half of the lake's current view out of it (refused "
        "otherwise: a typo in a filter would empty the lake)",
    )
    config_flag(
        sync,
        "--history-keep-runs",
        setting="history_keep_runs",
        type=int,
        default=None,
        metavar="N",
        help="keep the change log (history/) of the newest N runs per project, folding older ones into a "
        "base of what was current then (default: keep every run)",
    )
    config_flag(
        sync,
        "--snapshots-keep",
        setting="snapshots_keep",
        type=int,
        default=None,
        metavar="N",
        help="keep the newest N COCO snapshots of each partition and delete older ones (with "
        "--snapshots-keep-days: also every one younger than that; the latest is always kept; default: "
        "keep every snapshot)",
    )
    config_flag(
        sync,
        "--snapshots-keep-days",
        setting="snapshots_keep_days",
        type=int,
        default=None,
        metavar="D",
        help="keep every COCO snapshot younger than D days and delete older ones (with --snapshots-keep: "
        "also the newest N; the latest is always kept; default: keep every snapshot)",
    )
    sync.add_argument(
        "--coco",
        choices=COCO_MODES,
        default=DEFAULT_COCO_MODE,
        help="COCO snapshots per branch and stage: with the converter's corrections (default), exactly as "
        "Encord's CocoExporter, or none",
    )
    sync.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as JSON on stdout (progress stays on stderr)",
    )
    sync.set_defaults(func="encord_mirror.cli.sync:sync_main")


def add_status(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="is the lake in step? watermark, gaps, owed snapshots, last run, snapshots (exit 1 if not)",
    )
    status.add_argument("--project", action="append", required=True, metavar="HASH", help="repeatable")
    _lake_and_state(status)
    status.add_argument(
        "--max-lag", type=float, default=None, metavar="SECONDS", help="also not OK when a watermark is older"
    )
    status.add_argument("--json", action="store_true", help="print JSON, for scripts")
    status.set_defaults(func="encord_mirror.cli.status:status_main")


def add_verify(sub: Any) -> None:
    verify = sub.add_parser(
        "verify",
        help="compare the lake with Encord's listing and the row index; writes nothing (exit 1: not in step)",
    )
    verify.add_argument("--project", dest="projects", action="append", required=True, metavar="HASH")
    _lake_and_state(verify)
    _encord(verify)
    branches = verify.add_mutually_exclusive_group()
    branches.add_argument("--branch", default=None, metavar="NAME", help="this branch only")
    branches.add_argument("--all-branches", action="store_true", help="every consensus branch")
    filters = verify.add_argument_group("filters", "the ones the lake is synced with")
    filters.add_argument("--stage", dest="stage_include", action="append", default=None, metavar="STAGE")
    filters.add_argument(
        "--exclude-stage", dest="stage_exclude", action="append", default=None, metavar="STAGE"
    )
    filters.add_argument(
        "--task-status", dest="task_statuses", action="append", default=None, metavar="STATUS"
    )
    verify.add_argument(
        "--coco", choices=COCO_MODES, default="corrected", help="the lake's COCO mode (off: skip)"
    )
    verify.add_argument("--json", action="store_true", help="print JSON, for scripts")
    verify.set_defaults(func="encord_mirror.cli.verify:verify_main")


def add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="end-to-end demo on an emulated project and a local lake")
    demo.add_argument("--rows", type=int, default=300)
    demo.add_argument("--lake", default=None, help="lake directory (default: a fresh temporary one)")
    demo.set_defaults(func="encord_mirror.cli.demo:demo_main")


def add_coco(sub: Any) -> None:
    coco = sub.add_parser("coco", help="COCO conversion and snapshots")
    coco_sub = coco.add_subparsers(dest="coco_command", required=True, metavar="SUBCOMMAND")

    conv = coco_sub.add_parser("convert", help="convert an Encord JSON export (a list of label rows)")
    conv.add_argument(
        "rows", metavar="ROWS.json", help="JSON list of label rows as to_encord_dict() gives them"
    )
    conv.add_argument("--ontology", required=True, help="ontology JSON (OntologyStructure.to_dict())")
    conv.add_argument("--out", required=True, help="where to write the COCO JSON")
    conv.add_argument(
        "--encord-compatible",
        action="store_true",
        help="reproduce Encord's CocoExporter output exactly, including its known quirks",
    )
    conv.set_defaults(func="encord_mirror.cli.coco:convert_main")

    latest = coco_sub.add_parser("latest", help="print the latest snapshot's location and summary (JSON)")
    latest.add_argument("--lake", required=True, help="directory or s3://bucket/prefix")
    latest.add_argument("--project", required=True)
    latest.add_argument("--branch", default="main")
    latest.add_argument("--stage", default=None, help="stage partition value; all stages when omitted")
    latest.add_argument(
        "--as-of",
        default=None,
        metavar="TIME",
        help="the snapshot that was latest then (ISO 8601, with a zone)",
    )
    latest.set_defaults(func="encord_mirror.cli.coco:latest_main")

    export = coco_sub.add_parser(
        "export", help="write a snapshot as a training folder: COCO or YOLO, with its images from the lake"
    )
    export.add_argument("--format", choices=("coco", "yolo"), required=True, dest="export_format")
    export.add_argument("--lake", required=True, help="directory or s3://bucket/prefix")
    export.add_argument("--project", required=True)
    export.add_argument("--branch", default="main")
    export.add_argument("--stage", required=True, help="stage partition value (see `coco latest`)")
    export.add_argument("--snapshot", default=None, help="snapshot id (default: the latest)")
    export.add_argument("--out", required=True, help="the folder to write (created)")
    export.set_defaults(func="encord_mirror.cli.coco:export_main")


def add_media(sub: Any) -> None:
    media = sub.add_parser(
        "media", help="fetch the images of the latest COCO snapshots into the lake (media/project=<p>/)"
    )
    media.add_argument("--lake", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    media.add_argument("--project", required=True, metavar="HASH")
    media.add_argument("--branch", default="main")
    media.add_argument(
        "--stage",
        action="append",
        default=None,
        metavar="STAGE",
        help="stage partition value (see `coco latest`); repeatable; default: every stage with a snapshot",
    )
    _encord(media)
    media.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    media.add_argument(
        "--bundle-size",
        type=int,
        default=DEFAULT_BUNDLE_SIZE,
        help=f"label rows signed per SDK bundle (default {DEFAULT_BUNDLE_SIZE}, at most {MAX_BUNDLE_SIZE})",
    )
    media.add_argument(
        "--verify",
        action="store_true",
        help="read the files already fetched and fetch again any that changed",
    )
    media.add_argument("--json", action="store_true", help="print a summary as JSON on stdout")
    media.set_defaults(func="encord_mirror.cli.media:media_main")


def add_history(sub: Any) -> None:
    history = sub.add_parser("history", help="a label row's versions in the lake's change log")
    history.add_argument("--lake", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    history.add_argument("--label-hash", required=True, metavar="H")
    history.add_argument("--project", default=None, metavar="HASH", help="default: every project")
    history.add_argument("--json", action="store_true", help="print JSON, for scripts")
    history.set_defaults(func="encord_mirror.cli.history:history_main")


def add_show(sub: Any) -> None:
    show = sub.add_parser("show", help="a label row exactly as the lake held it after a run or at a time")
    show.add_argument("--lake", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    show.add_argument("--label-hash", required=True, metavar="H")
    show.add_argument(
        "--as-of", required=True, metavar="RUN_ID|TIME", help="a run id, or an ISO 8601 time with a zone"
    )
    show.add_argument("--branch", default="main")
    show.add_argument("--project", default=None, metavar="HASH", help="default: every project")
    show.set_defaults(func="encord_mirror.cli.show:show_main")


def add_emulator(sub: Any) -> None:
    emulator = sub.add_parser(
        "emulator",
        help="the local Encord API emulator (tests, demo, bench): `encord-emulator`, from the workspace",
        add_help=False,
        prefix_chars="\0",  # every argument, --help included, is the emulator's to parse
    )
    emulator.add_argument("emulator_argv", nargs=argparse.REMAINDER)
    emulator.set_defaults(func="encord_mirror.cli.emulator:emulator_main")


COMMANDS = (
    add_sync,
    add_status,
    add_verify,
    add_demo,
    add_coco,
    add_media,
    add_history,
    add_show,
    add_emulator,
)
