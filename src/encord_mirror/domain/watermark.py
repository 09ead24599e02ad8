"""Watermark rules, pure: the listing window, the dedupe key, and how far a finished run may move the mark.

The watermark is the signpost (start time) of the last run that synced everything it listed. A run lists
`edited_after = watermark - overlap` and `edited_before = signpost`:
- the overlap re-lists the last few minutes, which catches commits Encord stamped before our signpost but
  made visible after our listing (clock skew, slow commits) and rows that share the watermark's timestamp
  whether Encord compares strictly or inclusively; the planner's dedupe against the row index makes the
  re-listing free;
- the signpost is Encord's clock at the start of the run (the `Date` of an answer it gave just before the
  listing, rounded up to the next second; our own start when the two clocks agree to within that
  second), with no built-in delay, so a sync started after an edit was
  saved includes it; an edit made while the run is in flight is stamped after the signpost and is listed by
  the next run. Encord stamps the edits, so only its clock can say which edits a window holds: a host
  clock 5 minutes ahead would put the mark 5 minutes into Encord's future and the next window would start
  after the edits in between. The host's clock is the fallback when Encord's cannot be read.
A run with failed rows (gaps) moves the mark no further than the oldest gap, and never backwards, except
from Encord's future to the signpost.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import overload

from encord_mirror.domain.models import Gap


class NaiveDatetimeError(ValueError):
    """A datetime without a timezone reached the mirror: `name` says which one."""

    def __init__(self, name: str, value: datetime) -> None:
        super().__init__(f"{name} must be timezone-aware UTC, got naive {value.isoformat()}")
        self.name = name


def utc_now() -> datetime:
    """The system clock, aware UTC: every clock the mirror is given defaults to it."""
    return datetime.now(UTC)


@overload
def require_utc(value: datetime, name: str) -> datetime: ...
@overload
def require_utc(value: None, name: str) -> None: ...
@overload
def require_utc(value: datetime | None, name: str) -> datetime | None: ...
def require_utc(value: datetime | None, name: str) -> datetime | None:
    """`value` converted to UTC; a naive datetime is refused (its meaning depends on the server). None
    stays None."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetimeError(name, value)
    return value.astimezone(UTC)


# A `Date` header has whole seconds, truncated: Encord's clock was in [date, date + 1 s) when it answered.
DATE_RESOLUTION = timedelta(seconds=1)


def encord_signpost(date: datetime) -> datetime:
    """The signpost from the `Date` Encord answered with: the end of that second, which no edit saved before
    the answer is stamped after. The listing window reaches back one resolution more than the overlap, so
    an edit saved in that second after the listing is listed by the next run."""
    return require_utc(date, "Date") + DATE_RESOLUTION


def clock_skew(date: datetime, local: datetime) -> timedelta:
    """How far Encord's clock (`date`, its `Date` header) is ahead of ours (`local`, when the answer
    came); negative: Encord is behind. Within about a second (the header's resolution)."""
    return require_utc(date, "Date") + DATE_RESOLUTION / 2 - require_utc(local, "local time")


@overload
def iso_utc(value: datetime) -> str: ...
@overload
def iso_utc(value: None) -> None: ...
@overload
def iso_utc(value: datetime | None) -> str | None: ...
def iso_utc(value: datetime | None) -> str | None:
    """How the lake writes a time: ISO 8601 in UTC (None stays None)."""
    return None if value is None else require_utc(value, "timestamp").isoformat()


def parse_time(value: str | None) -> datetime | None:
    """A time written by `iso_utc`, back as an aware UTC datetime (None stays None)."""
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def require_time(value: str) -> datetime:
    parsed = parse_time(value)
    assert parsed is not None
    return parsed


def listing_window(
    watermark: datetime | None, signpost: datetime, overlap: timedelta
) -> tuple[datetime | None, datetime]:
    """(edited_after, edited_before) for an incremental listing; `edited_after` is None without a mark."""
    before = require_utc(signpost, "signpost")
    if watermark is None:
        return None, before
    return require_utc(watermark, "watermark") - overlap, before


def dedupe_key(label_hash: str, branch: str, last_edited_at: datetime | None) -> tuple[str, str, str]:
    """Two listings of the same version of a row share this key."""
    return (label_hash, branch, iso_utc(last_edited_at) or "")


def is_newer(a: datetime | None, b: datetime | None) -> bool:
    """Version time `a` is later than `b`; an unknown time counts as the oldest."""
    return a is not None and (b is None or a > b)


def next_watermark(previous: datetime | None, signpost: datetime, gaps: Iterable[Gap]) -> datetime | None:
    """The mark a finished run commits, given every gap still open for the project.

    No gaps: the signpost. Gaps: the oldest gap's `last_edited_at` (capped at the signpost), so the next
    listing (`- overlap`) still covers it even if the planner's retry by label hash were lost; a gap whose
    version is unknown holds the mark where it was. The mark never moves backwards, except from after the
    signpost: that mark is in Encord's future (set by a host clock ahead of Encord's, before signposts were
    Encord's time), and keeping it would keep the next window after the edits in between.
    """
    before = require_utc(signpost, "signpost")
    candidate: datetime | None = before
    for gap in gaps:
        if gap.last_edited_at is None:
            candidate = None
            break
        stamp = require_utc(gap.last_edited_at, "gap.last_edited_at")
        if candidate is None or stamp < candidate:
            candidate = stamp
    if candidate is None:
        return previous
    if previous is not None and candidate <= require_utc(previous, "previous watermark") <= before:
        return previous
    return candidate
