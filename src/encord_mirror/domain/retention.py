"""COCO snapshot retention, pure: which snapshots of a partition a finalizer deletes.

With `snapshots_keep` N and/or `snapshots_keep_days` D, a partition keeps its newest N snapshots (the
latest among them) and every snapshot younger than D days; the latest (the one `latest.json` names) and
any newer one (a snapshot a finalizer is still committing) are always kept. With neither, every snapshot
is kept. A snapshot's age is its id's time: the id is the run id of the run that made it, which starts with
the run's start time. An id that is not a run id is kept: the mirror did not write it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from encord_mirror.domain.watermark import require_utc

_RUN_TIME = re.compile(r"^(\d{8}T\d{6})(\.\d+)?Z-[0-9a-f]+$")


def snapshot_time(snapshot_id: str) -> datetime | None:
    """The start of the run that made the snapshot; None for an id that is not a run id."""
    match = _RUN_TIME.match(snapshot_id)
    if match is None:
        return None
    start = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return start + timedelta(seconds=float(match.group(2) or 0))


def prunable(
    snapshot_ids: Iterable[str],
    latest: str,
    *,
    keep: int | None,
    keep_days: int | None,
    now: datetime,
) -> list[str]:
    """The ids the policy lets go, oldest first (ids sort by time, so they are always the oldest)."""
    if keep is None and keep_days is None:
        return []
    committed = sorted(i for i in set(snapshot_ids) if i <= latest)
    newest = set(committed[-keep:]) if keep is not None else set()
    cutoff = require_utc(now, "now") - timedelta(days=keep_days) if keep_days is not None else None
    doomed = []
    for snapshot_id in committed:
        if snapshot_id == latest or snapshot_id in newest:
            continue
        made = snapshot_time(snapshot_id)
        if made is None or (cutoff is not None and made >= cutoff):
            continue
        doomed.append(snapshot_id)
    return doomed
