"""`encord-mirror sync`, `encord-mirror status` and `encord-mirror demo`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    sync = sub.add_parser("sync", help="bring a lake in step with one or more Encord projects")
    sync.add_argument("--project", action="append", required=True, metavar="HASH", help="repeatable")
    sync.add_argument("--lake", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    sync.add_argument("--ssh-key", required=True, metavar="FILE", help="Encord ed25519 private key file")
    sync.add_argument("--encord-domain", default=None, metavar="URL", help="Encord API domain")
    sync.add_argument(
        "--state",
        default=None,
        metavar="PATH",
        help="SQLite state file (default: LAKE/.mirror-state.sqlite; for S3: ~/.cache/encord-mirror/)",
    )
    sync.add_argument("--full", action="store_true", help="reconcile: list all rows and diff with the index")
    sync.add_argument(
        "--reconcile-every",
        type=int,
        default=None,
        metavar="N",
        help="every Nth run of a project reconciles (lists all rows and diffs with the index; the first "
        "run always does). Stage moves, task-status changes and deletions in Encord do not change a row's "
        "edit time, so they are seen on reconciling runs only. 1 = every run (default: 12)",
    )
    sync.add_argument("--workers", type=int, default=4)
    sync.add_argument("--bundle-size", type=int, default=100)
    branches = sync.add_mutually_exclusive_group()
    branches.add_argument("--branch", default=None, metavar="NAME", help="this branch only")
    branches.add_argument("--all-branches", action="store_true", help="mirror every consensus branch")
    filters = sync.add_argument_group(
        "filters", "what is mirrored; changing them makes the next run sync every selected row again"
    )
    filters.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="STAGE",
        help="only this workflow stage (title or uuid); repeatable",
    )
    filters.add_argument(
        "--exclude-stage", action="append", default=[], metavar="STAGE", help="never this stage; repeatable"
    )
    filters.add_argument(
        "--task-status",
        action="append",
        default=[],
        metavar="STATUS",
        help="only rows with this task status (QUEUED, ASSIGNED, IN_REVIEW, RETURNED, COMPLETED); repeatable",
    )
    filters.add_argument(
        "--object-feature",
        action="append",
        default=None,
        metavar="HASH",
        help="keep only objects of this ontology feature hash in each row (repeatable; default: all)",
    )
    filters.add_argument(
        "--classification-feature",
        action="append",
        default=None,
        metavar="HASH",
        help="keep only classifications of this feature hash (repeatable; default: all)",
    )
    sync.add_argument(
        "--coco",
        choices=("corrected", "encord-compatible", "off"),
        default="corrected",
        help="COCO snapshots per branch and stage: with the converter's corrections (default), exactly as "
        "Encord's CocoExporter, or none",
    )
    sync.set_defaults(func=_sync)

    status = sub.add_parser(
        "status",
        help="is the lake in step? watermark, gaps, owed snapshots, last run, snapshots (exit 1 if not)",
    )
    status.add_argument("--project", action="append", required=True, metavar="HASH", help="repeatable")
    status.add_argument("--lake", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    status.add_argument("--state", default=None, metavar="PATH", help="SQLite state file (as for sync)")
    status.add_argument(
        "--max-lag", type=float, default=None, metavar="SECONDS", help="also not OK when a watermark is older"
    )
    status.add_argument("--json", action="store_true", help="print JSON, for scripts")
    status.set_defaults(func=_status)

    demo = sub.add_parser("demo", help="end-to-end demo on an emulated project and a local lake")
    demo.add_argument("--rows", type=int, default=300)
    demo.add_argument("--lake", default=None, help="lake directory (default: a fresh temporary one)")
    demo.set_defaults(func=_demo)


def _sync(args: argparse.Namespace) -> int:
    from encord_mirror.app.sync_command import sync_main

    return sync_main(args)


def _status(args: argparse.Namespace) -> int:
    from encord_mirror.app.status_command import status_main

    return status_main(args)


def _demo(args: argparse.Namespace) -> int:
    from encord_mirror.app.demo import demo_main

    return demo_main(args)
