"""`encord-mirror verify`: is the lake what Encord and the row index say it should be? Writes nothing.

```
encord-mirror verify --project HASH [--project HASH]... --lake DEST [--state PATH] [--ssh-key FILE]
                     [--encord-domain URL] [--branch NAME | --all-branches] [--stage S]...
                     [--exclude-stage S]... [--task-status T]... [--coco MODE] [--json]
```
Per project: Encord's listing (metadata only, one request: no row is initialised), every row object of the
lake (one GET each), the row index when a state file is there, and each partition's latest COCO snapshot
against a fresh conversion of its rows (`--coco off` skips that). Reports objects missing, extra (a
duplicate, a copy in another partition, a row Encord no longer has or the filters exclude), damaged (the
content does not hash to `mirror.sha256`), of another version or stage than Encord lists, index entries
without their object (or objects the index lacks), and stale snapshots. Exit status: 0 in step, 1 not (a
`sync --full` repairs it), 2 for bad input. The filters must be the ones the lake is synced with.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from encord_mirror.adapters.encord_source import EncordAuthError, EncordProjectAccessError
from encord_mirror.cli.errors import CliError
from encord_mirror.cli.sync import config_from_args, open_source
from encord_mirror.cli.target import LakeTarget, default_state_path, is_s3, open_lake, open_state, state_table
from encord_mirror.coco.snapshot import snapshot_builder
from encord_mirror.domain.models import RowQuery
from encord_mirror.verify import Difference, lake_report, snapshot_differences

_SHOWN = 50  # differences listed per project in the text report (--json has them all)


def verify_main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    is_s3(args.lake)
    source = open_source(args.ssh_key, args.encord_domain)
    lake = open_lake(args.lake)
    table = state_table(args.state)
    state_path = (
        None if table else Path(args.state).expanduser() if args.state else default_state_path(args.lake)
    )
    if state_path is not None and args.state and not state_path.is_file():
        raise CliError(f"--state {args.state}: no such state file")
    target = LakeTarget(lake, args.lake, state_path, table)
    found_state = table is not None or (state_path is not None and state_path.is_file())
    state = open_state(target, config.projects, write=False) if found_state else None
    compatible = None if snapshot_builder(lake, args.coco) is None else args.coco == "encord-compatible"
    reports: list[dict[str, Any]] = []
    try:
        for project_hash in config.projects:
            try:
                info = source.project_info(project_hash)
                listed = source.list_rows(project_hash, RowQuery(branches=config.branches))
            except (EncordAuthError, EncordProjectAccessError) as exc:
                raise CliError(str(exc)) from None
            index = list(state.scan_index(project_hash)) if state is not None else None
            found = lake_report(
                lake, listed, project_hash, config.branches, include=config.selects, index=index
            )
            if compatible is not None:
                found += [
                    Difference("snapshot", d)
                    for d in snapshot_differences(
                        lake, project_hash, info.ontology, encord_compatible=compatible
                    )
                ]
            reports.append(
                {
                    "project_hash": project_hash,
                    "state": target.state_location if state else None,
                    "differences": [asdict(d) for d in found],
                }
            )
    finally:
        if state is not None:
            state.close()
    print(orjson.dumps(reports, option=orjson.OPT_INDENT_2).decode() if args.json else _text(reports))
    return 1 if any(r["differences"] for r in reports) else 0


def _text(reports: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for report in reports:
        differences = report["differences"]
        state = report["state"] or "no state file: the row index is not checked"
        out.append(f"{report['project_hash']}: {len(differences)} difference(s) (state: {state})")
        out.extend(f"  {d['detail']}" for d in differences[:_SHOWN])
        if len(differences) > _SHOWN:
            out.append(f"  ... and {len(differences) - _SHOWN} more (--json lists them all)")
        out.append(
            "  OK: in step" if not differences else "  NOT IN STEP: `encord-mirror sync --full` repairs it"
        )
    return "\n".join(out)
