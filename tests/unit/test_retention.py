"""Snapshot retention on its own: which snapshots of a partition a finalizer deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from encord_mirror.domain.retention import prunable, snapshot_time

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _id(days_ago: float) -> str:
    start = NOW - timedelta(days=days_ago)
    return f"{start:%Y%m%dT%H%M%S}.{start.microsecond // 1000:03d}Z-0a1b2c3d"


IDS = [_id(d) for d in (40, 30, 20, 10, 5, 1)]  # oldest first; the last is the latest


def test_by_default_every_snapshot_is_kept() -> None:
    assert prunable(IDS, IDS[-1], keep=None, keep_days=None, now=NOW) == []


def test_keep_n_keeps_the_newest_n_counting_the_latest() -> None:
    assert prunable(IDS, IDS[-1], keep=2, keep_days=None, now=NOW) == IDS[:4]
    assert prunable(IDS, IDS[-1], keep=1, keep_days=None, now=NOW) == IDS[:5]


def test_keep_days_keeps_every_snapshot_younger_than_d_days() -> None:
    assert prunable(IDS, IDS[-1], keep=None, keep_days=15, now=NOW) == IDS[:3]


def test_both_keep_the_union_and_the_latest_is_kept_whatever_its_age() -> None:
    # Given the newest 2 or those younger than 25 days
    assert prunable(IDS, IDS[-1], keep=2, keep_days=25, now=NOW) == IDS[:2]
    # And a latest snapshot older than the age limit
    old = IDS[:3]
    assert prunable(old, old[-1], keep=None, keep_days=1, now=NOW) == old[:2]


def test_a_snapshot_newer_than_the_latest_or_not_made_by_the_mirror_is_kept() -> None:
    # Given the latest is IDS[3] (IDS[4:] are being committed) and a foreign folder
    ids = [*IDS, "my-backup"]
    # Then only snapshots older than the latest, with a run id, go
    assert prunable(ids, IDS[3], keep=1, keep_days=None, now=NOW) == IDS[:3]


def test_a_snapshots_time_is_its_run_ids_start() -> None:
    assert snapshot_time("20261123T182200.123Z-0a1b2c3d") == datetime(
        2026, 11, 23, 18, 22, 0, 123000, tzinfo=UTC
    )
    assert snapshot_time("20261123T182200Z-0a1b2c3d") == datetime(2026, 11, 23, 18, 22, tzinfo=UTC)
    assert snapshot_time("latest") is None
