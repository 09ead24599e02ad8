"""The watermark rules on their own: listing window, dedupe key, and how far a run may move the mark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from encord_mirror.domain.models import Gap
from encord_mirror.domain.watermark import (
    NaiveDatetimeError,
    clock_skew,
    dedupe_key,
    encord_signpost,
    is_newer,
    listing_window,
    next_watermark,
    require_utc,
)

T = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
OVERLAP = timedelta(seconds=120)


def _gap(label_hash: str, edited: datetime | None) -> Gap:
    return Gap("p", label_hash, edited, "run-1", "boom")


def test_window_reaches_back_by_the_overlap_and_stops_at_the_signpost() -> None:
    # Given a watermark and a signpost
    # When the listing window is computed
    after, before = listing_window(T, T + timedelta(minutes=5), OVERLAP)
    # Then it re-lists the overlap before the mark and ends exactly at the signpost (no built-in delay)
    assert after == T - OVERLAP
    assert before == T + timedelta(minutes=5)


def test_window_without_a_watermark_has_no_lower_bound() -> None:
    assert listing_window(None, T, OVERLAP) == (None, T)


def test_window_is_expressed_in_utc_whatever_offset_came_in() -> None:
    # Given a watermark carrying a +02:00 offset
    paris = T.astimezone(timezone(timedelta(hours=2)))
    # When the window is computed
    after, _ = listing_window(paris, T, OVERLAP)
    # Then the bound is the same instant, in UTC
    assert after is not None and after.utcoffset() == timedelta(0) and after == T - OVERLAP


def test_naive_datetimes_are_refused_with_their_name() -> None:
    with pytest.raises(NaiveDatetimeError, match="watermark"):
        listing_window(datetime(2026, 1, 1), T, OVERLAP)
    with pytest.raises(NaiveDatetimeError, match="signpost"):
        require_utc(datetime(2026, 1, 1), "signpost")


def test_dedupe_key_is_the_same_for_one_version_written_in_two_offsets() -> None:
    other = T.astimezone(timezone(timedelta(hours=-5)))
    assert dedupe_key("l1", "main", T) == dedupe_key("l1", "main", other)
    assert dedupe_key("l1", "main", T) != dedupe_key("l1", "main", T + timedelta(microseconds=1))
    assert dedupe_key("l1", "main", T) != dedupe_key("l1", "review", T)


def test_a_clean_run_moves_the_mark_to_its_signpost() -> None:
    assert next_watermark(T, T + timedelta(minutes=5), []) == T + timedelta(minutes=5)
    assert next_watermark(None, T, []) == T


def test_a_gap_holds_the_mark_at_the_oldest_failed_version() -> None:
    # Given two open gaps, edited 3 and 1 minutes after the previous mark
    gaps = [_gap("a", T + timedelta(minutes=3)), _gap("b", T + timedelta(minutes=1))]
    # When a run with signpost T+5min finishes
    # Then the mark stops at the oldest gap, not the signpost
    assert next_watermark(T, T + timedelta(minutes=5), gaps) == T + timedelta(minutes=1)


def test_a_gap_edited_after_the_signpost_does_not_pull_the_mark_past_the_signpost() -> None:
    assert next_watermark(T, T + timedelta(minutes=5), [_gap("a", T + timedelta(hours=1))]) == T + timedelta(
        minutes=5
    )


def test_a_gap_of_unknown_version_holds_the_mark_where_it_was() -> None:
    gaps = [_gap("a", T + timedelta(minutes=3)), _gap("b", None)]
    assert next_watermark(T, T + timedelta(minutes=5), gaps) == T
    assert next_watermark(None, T + timedelta(minutes=5), gaps) is None


def test_the_mark_never_moves_backwards() -> None:
    # Given an old gap from long before the current mark
    gaps = [_gap("a", T - timedelta(days=1))]
    # Then the mark stays where it is
    assert next_watermark(T, T + timedelta(minutes=5), gaps) == T


def test_a_mark_in_encords_future_comes_back_to_the_signpost() -> None:
    # Given a mark an hour after the run's signpost (Encord's clock): set by a host clock ahead of Encord's
    # Then a clean run moves it back to its signpost, and a run with gaps to the oldest gap
    assert next_watermark(T + timedelta(hours=1), T, []) == T
    assert next_watermark(T + timedelta(hours=1), T, [_gap("a", T - timedelta(minutes=2))]) == T - timedelta(
        minutes=2
    )


def test_the_signpost_is_the_end_of_the_second_encord_dated_its_answer() -> None:
    # Given Encord's answer dated 12:00:07 (whole seconds, truncated) while our clock said 12:05:07.5
    date = datetime(2026, 11, 1, 12, 0, 7, tzinfo=UTC)
    # Then no edit saved before that answer is stamped after the signpost, and our clock is 5 min ahead
    assert encord_signpost(date) == date + timedelta(seconds=1)
    assert clock_skew(date, date + timedelta(minutes=5, seconds=0.5)) == -timedelta(minutes=5)


def test_an_unknown_version_time_counts_as_the_oldest() -> None:
    assert is_newer(T, None) and not is_newer(None, T) and not is_newer(None, None)
    assert is_newer(T + timedelta(microseconds=1), T) and not is_newer(T, T)
