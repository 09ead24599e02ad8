"""`encord-mirror status`: is the lake in step with Encord, and if not, what holds it back?

```
encord-mirror status --project HASH [--project HASH]... --lake DEST [--state PATH] [--max-lag SECONDS]
                     [--json]
```
Reads the state (read-only: no `-wal`/`-shm` files left beside it) and the lake only (no Encord call,
nothing written): per project the watermark and its age, the lease (a run in flight, or one that died and
left it to expire), the last sync that failed before its run finished, the open gaps and the COCO
snapshots owed with their reasons, the last run's manifest, and each partition's latest snapshot.
Exit status: 0 healthy, 1 when the last sync failed, a gap is open, a snapshot is owed, a project was never
synced, or (with `--max-lag`) a watermark is older than that; 2 for a usage error. Light: it imports
neither the SDK nor numpy, so a monitoring check can run it every minute.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from encord_mirror.adapters.local.state import holder_gone
from encord_mirror.cli.target import open_existing, open_state
from encord_mirror.domain.lake import partition_of
from encord_mirror.domain.models import SnapshotDebt
from encord_mirror.domain.ports import ObjectStore, StateStore
from encord_mirror.domain.watermark import iso_utc

_SHOWN = 5  # gaps and debts listed per project in the text report (--json has them all)


@dataclass
class ProjectStatus:
    project_hash: str
    watermark: str | None
    lag_seconds: float | None
    lease: dict[str, Any] | None  # owner, acquired_at, expires_at, expired, holder, holder_gone
    gaps: list[dict[str, Any]] = field(default_factory=list)  # label_hash, last_edited_at, run_id, reason
    snapshots_owed: list[dict[str, Any]] = field(default_factory=list)  # branch, stage, run_id, reason
    # Partitions whose rows the sync in flight is changing (its finalizer refreshes them): not a problem.
    snapshots_pending: list[dict[str, Any]] = field(default_factory=list)
    last_run: dict[str, Any] | None = None  # key, uri, run_id, mode, finished_at, counts, errors
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # branch, stage, snapshot_id, counts, uri
    # the last sync that stopped before its run was finalized (run_id, at, reason), until a run completes
    last_failure: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def project_status(
    project_hash: str, lake: ObjectStore, state: StateStore, now: datetime, max_lag: float | None = None
) -> ProjectStatus:
    watermark = state.get_watermark(project_hash)
    lag = (now - watermark).total_seconds() if watermark is not None else None
    lease = state.get_lease(project_hash)
    running = lease.owner if lease and lease.expires_at > now and not holder_gone(lease.holder) else None
    debts = state.owed_snapshots(project_hash)
    status = ProjectStatus(
        project_hash,
        iso_utc(watermark),
        lag,
        None
        if lease is None
        else {
            "owner": lease.owner,
            "acquired_at": iso_utc(lease.acquired_at),
            "expires_at": iso_utc(lease.expires_at),
            "expired": lease.expires_at <= now,
            "holder": lease.holder,
            "holder_gone": holder_gone(lease.holder),
        },
        gaps=[
            {
                "label_hash": g.label_hash,
                "last_edited_at": iso_utc(g.last_edited_at),
                "run_id": g.run_id,
                "reason": g.reason,
            }
            for g in state.list_gaps(project_hash)
        ],
        snapshots_owed=[_debt(d) for d in debts if not (d.writing_only and d.run_id == running)],
        snapshots_pending=[_debt(d) for d in debts if d.writing_only and d.run_id == running],
        last_run=_last_run(project_hash, lake),
        snapshots=_latest_snapshots(project_hash, lake),
    )
    for snap in status.snapshots:
        if snap.get("damaged"):
            status.problems.append(f"{snap['latest_uri']} is missing or damaged: the next sync rebuilds it")
    failure = state.get_failure(project_hash)
    if failure is not None:
        status.last_failure = {"run_id": failure.run_id, "at": iso_utc(failure.at), "reason": failure.reason}
        status.problems.append(f"the last sync failed at {iso_utc(failure.at)}: {failure.reason}")
    if watermark is None:
        status.problems.append("never synced (no watermark)")
    elif max_lag is not None and lag is not None and lag > max_lag:
        status.problems.append(f"watermark is {lag:.0f}s old, more than --max-lag {max_lag:g}s")
    if status.gaps:
        status.problems.append(f"{len(status.gaps)} row(s) failed and hold the watermark")
    if status.snapshots_owed:
        status.problems.append(
            f"{len(status.snapshots_owed)} COCO snapshot(s) are stale (a refresh failed, or its run died)"
        )
    return status


def _debt(debt: SnapshotDebt) -> dict[str, Any]:
    reason = debt.reason
    if debt.writing_only:
        reason = f"run {debt.run_id} changed its rows and died before refreshing it; the next sync does"
    return {
        "branch": debt.partition.branch,
        "stage": debt.partition.stage,
        "run_id": debt.run_id,
        "reason": reason,
    }


def _last_run(project_hash: str, lake: ObjectStore) -> dict[str, Any] | None:
    # Run ids sort by start time, so the last key is the newest run that wrote its manifest.
    key = max(lake.list_keys(f"runs/project={project_hash}/"), default=None)
    stored = lake.get(key) if key is not None else None
    if key is None or stored is None:
        return None
    manifest = orjson.loads(stored.body)
    return {
        "key": key,
        "uri": lake.uri(key),
        "run_id": manifest.get("run_id"),
        "mode": manifest.get("mode"),
        "finished_at": manifest.get("finished_at"),
        "counts": manifest.get("counts"),
        "errors": manifest.get("errors") or [],
    }


def _latest_snapshots(project_hash: str, lake: ObjectStore) -> list[dict[str, Any]]:
    """Each partition's latest snapshot; a `latest.json` that is not a pointer, or missing while the
    partition has snapshots, is listed as `damaged` (the next sync rebuilds it)."""
    out = []
    keys = list(lake.list_keys(f"coco/project={project_hash}/"))
    pointers = {k for k in keys if k.endswith("/latest.json") and k.count("/") == 4}
    snapshotted = {"/".join([*k.split("/")[:4], "latest.json"]) for k in keys if k.endswith("/manifest.json")}
    for key in sorted(pointers | snapshotted):
        stored = lake.get(key)
        part = partition_of(key)
        try:
            latest = orjson.loads(stored.body) if stored is not None else None
        except orjson.JSONDecodeError:
            latest = None
        if not isinstance(latest, dict):
            where = {"branch": part.branch, "stage": part.stage, "latest_uri": lake.uri(key)}
            out.append({**where, "snapshot_id": None, "counts": None, "damaged": True})
            continue
        out.append(
            {
                "branch": part.branch,
                "stage": part.stage,
                "snapshot_id": latest.get("snapshot_id"),
                "created_at": latest.get("created_at"),
                "counts": latest.get("counts"),
                "coco_uri": lake.uri(str(latest.get("coco"))),
            }
        )
    return out


def format_status(statuses: list[ProjectStatus]) -> str:
    out: list[str] = []
    for s in statuses:
        age = f" ({s.lag_seconds:.0f}s ago)" if s.lag_seconds is not None else ""
        out.append(f"{s.project_hash}: watermark {s.watermark or 'none'}{age}")
        if s.lease is not None:
            if s.lease["expired"]:
                state = "expired (its run died; the next sync takes over)"
            elif s.lease["holder_gone"]:
                state = f"left by a run that died ({s.lease['holder']} is gone; the next sync takes over)"
            else:
                state = "held" + (f" by {s.lease['holder']}" if s.lease["holder"] else "")
            out.append(f"  lease: {state}: run {s.lease['owner']} since {s.lease['acquired_at']}")
        if s.last_failure is not None:
            f = s.last_failure
            out.append(f"  last sync FAILED at {f['at']} (run {f['run_id'] or 'not started'}): {f['reason']}")
        out.append(f"  gaps: {len(s.gaps)}")
        out.extend(f"    {g['label_hash']}: {g['reason']}" for g in s.gaps[:_SHOWN])
        out.append(f"  COCO snapshots owed: {len(s.snapshots_owed)}")
        out.extend(f"    {d['branch']}/{d['stage']}: {d['reason']}" for d in s.snapshots_owed[:_SHOWN])
        if s.last_run is not None:
            run = s.last_run
            counts = ", ".join(f"{v} {k}" for k, v in (run["counts"] or {}).items() if v)
            out.append(
                f"  last run: {run['run_id']} ({run['mode']}, finished {run['finished_at']}): "
                f"{counts or 'nothing changed'}; {len(run['errors'])} error(s)"
            )
            out.append(f"    {run['uri']}")
        else:
            out.append("  last run: none written")
        out.append(f"  COCO partitions: {len(s.snapshots)}")
        for snap in s.snapshots:
            if snap.get("damaged"):
                out.append(f"    {snap['branch']}/{snap['stage']}: MISSING OR DAMAGED {snap['latest_uri']}")
                continue
            c = snap["counts"] or {}
            out.append(
                f"    {snap['branch']}/{snap['stage']}: {snap['snapshot_id']} ({c.get('rows', 0)} rows, "
                f"{c.get('images', 0)} images, {c.get('annotations', 0)} annotations)"
            )
        out.append(f"  {'NOT OK: ' + '; '.join(s.problems) if s.problems else 'OK'}")
    return "\n".join(out)


def status_main(args: argparse.Namespace) -> int:
    target = open_existing(args.lake, args.state)
    state = open_state(target, args.project, write=False)
    now = datetime.now(UTC)
    try:
        statuses = [project_status(p, target.lake, state, now, args.max_lag) for p in args.project]
    finally:
        state.close()
    if args.json:
        print(orjson.dumps([asdict(s) for s in statuses], option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(statuses))
    return 1 if any(s.problems for s in statuses) else 0
