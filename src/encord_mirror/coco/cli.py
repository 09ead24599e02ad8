"""`encord-mirror coco convert|latest`."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
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
    conv.set_defaults(func=_convert)

    latest = coco_sub.add_parser("latest", help="print the latest snapshot's location and summary (JSON)")
    latest.add_argument("--lake", required=True, help="directory or s3://bucket/prefix")
    latest.add_argument("--project", required=True)
    latest.add_argument("--branch", default="main")
    latest.add_argument("--stage", default=None, help="stage partition value; all stages when omitted")
    latest.set_defaults(func=_latest)


def _convert(args: argparse.Namespace) -> int:
    from encord_mirror.coco.command import convert_main

    return convert_main(args)


def _latest(args: argparse.Namespace) -> int:
    from encord_mirror.coco.command import latest_main

    return latest_main(args)
