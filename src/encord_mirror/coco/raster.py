"""Polygon rasterisation that reproduces opencv's `fillPoly` (8-connected, no shift) without opencv.

CocoExporter turns polygons with holes or several parts into RLE masks with `cv2.fillPoly` on
integer-truncated vertices. fillPoly paints the polygon's edges as 8-connected Bresenham lines (clipped
to the image) and then fills the inside scanline by scanline with the even-odd rule, from edges kept in
16.16 fixed point; an edge that leaves the image is rebuilt from its clipped segment (opencv 5's
CollectPolyEdges), which matters for the common vertex at x == width (a shape touching the right border).
This module follows the same integer arithmetic, so the masks match pixel for pixel, inside the image and on
its border; tests/unit/test_coco_raster.py fuzzes it against opencv itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT

Mask = npt.NDArray[np.uint8]
IntArray = npt.NDArray[np.int64]


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero); Python's `//` floors."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def clip_line(
    width: int, height: int, p1: tuple[int, int], p2: tuple[int, int]
) -> tuple[bool, int, int, int, int]:
    """Clip a segment to the image (Cohen-Sutherland, as opencv's `clipLine` does it, integer maths)."""
    x1, y1 = p1
    x2, y2 = p2
    right, bottom = width - 1, height - 1
    if width <= 0 or height <= 0:
        return False, x1, y1, x2, y2
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += _cdiv((a - y1) * (x2 - x1), y2 - y1)
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += _cdiv((a - y2) * (x2 - x1), y2 - y1)
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += _cdiv((a - x1) * (y2 - y1), x2 - x1)
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += _cdiv((a - x2) * (y2 - y1), x2 - x1)
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, x1, y1, x2, y2


def draw_line(mask: Mask, p1: tuple[int, int], p2: tuple[int, int], value: int) -> None:
    """An 8-connected Bresenham line, clipped to the mask, drawn left to right (opencv's LineIterator)."""
    height, width = mask.shape
    x1, y1 = p1
    x2, y2 = p2
    if not (0 <= x1 < width and 0 <= x2 < width and 0 <= y1 < height and 0 <= y2 < height):
        inside, x1, y1, x2, y2 = clip_line(width, height, (x1, y1), (x2, y2))
        if not inside:
            return
    dx, dy = x2 - x1, y2 - y1
    if dx < 0:
        dx, dy = -dx, -dy
        x1, y1, x2, y2 = x2, y2, x1, y1
    step_y = 1
    if dy < 0:
        dy, step_y = -dy, -1
    count_major = max(dx, dy) + 1
    if count_major == 1:
        mask[y1, x1] = value
        return
    vertical = dy > dx
    major, minor = (dy, dx) if vertical else (dx, dy)
    k = np.arange(count_major, dtype=np.int64)
    minor_steps = _minor_steps(major, minor, count_major)
    if vertical:
        xs = x1 + minor_steps
        ys = y1 + step_y * k
    else:
        xs = x1 + k
        ys = y1 + step_y * minor_steps
    mask[ys, xs] = value


def _minor_steps(major: int, minor: int, count: int) -> npt.NDArray[np.int64]:
    """How many minor-axis steps opencv's Bresenham iterator has taken at each of its `count` points:
    the closed form of its error-term loop (checked exhaustively against the loop in the tests)."""
    i = np.arange(count, dtype=np.int64)
    return (2 * minor * i + major - 1) // (2 * major)


Spans = tuple[IntArray, IntArray, IntArray, IntArray]  # ring index, row, first column, column after the last


def fill_poly(mask: Mask, points: Sequence[tuple[int, int]], value: int) -> None:
    """`cv2.fillPoly(mask, [points], value)` for one contour of integer points (lineType 8, shift 0)."""
    height, width = mask.shape
    _, ys, starts, ends = ring_spans([points], np.array([width]), np.array([height]))
    for y, a, b in zip(ys.tolist(), starts.tolist(), ends.tolist(), strict=True):
        mask[y, a:b] = value


@dataclass(frozen=True, slots=True)
class Painting:
    """An empty (height, width) mask, then `fill_poly(mask, ring, value)` for each ring in order (values
    0 or 1)."""

    rings: Sequence[Sequence[tuple[int, int]]]
    values: Sequence[int]
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class RowMajorRuns:
    """A mask given as run lengths over its pixels row by row, zeros first (Encord's bitmask order)."""

    runs: IntArray
    width: int
    height: int


class Rles(NamedTuple):
    """COCO RLE counts (column-major, zeros first) of masks, with what `pycocotools.mask.toBbox` and
    `area` give for them (one row per mask)."""

    counts: list[npt.NDArray[np.uint32]]
    boxes: npt.NDArray[np.float64]
    areas: npt.NDArray[np.float64]


def coco_rle_counts(masks: Sequence[Painting | RowMajorRuns]) -> Rles:
    """For each mask, the COCO RLE counts (column-major, zeros first) that `pycocotools.mask.encode`
    gives for it, without building any mask: rows are kept as spans, and the column runs come from
    where each column changes value, so the cost follows the outlines, not the areas. Many masks are
    done in one go because numpy's cost per call, not per element, dominates a single polygon."""
    widths = np.array([m.width for m in masks], dtype=np.int64)
    heights = np.array([m.height for m in masks], dtype=np.int64)
    sizes = widths * heights
    # Mask i's pixels are numbered row-major from i * slot; one spare pixel keeps masks' ranges apart.
    slot = int(widths.max(initial=1)) * int(heights.max(initial=1)) + 1
    bases = np.arange(len(masks), dtype=np.int64) * slot
    paintings = [(i, m) for i, m in enumerate(masks) if isinstance(m, Painting)]
    starts: list[IntArray] = []
    ends: list[IntArray] = []
    if paintings:
        ring_mask = np.array([i for i, m in paintings for _ in m.rings], dtype=np.int64)
        rings = [ring for _, m in paintings for ring in m.rings]
        layer = np.array([j for _, m in paintings for j in range(len(m.rings))], dtype=np.int64)
        values = np.zeros((len(masks), max(len(m.rings) for _, m in paintings)), dtype=np.int8)
        for i, m in paintings:
            values[i, : len(m.values)] = m.values
        ring_ids, ys, a, b = ring_spans(rings, widths[ring_mask], heights[ring_mask])
        owner = ring_mask[ring_ids]
        offset = bases[owner] + ys * widths[owner]
        bits = _COUNTER_BITS if max((len(r) for r in rings), default=0) <= _MAX_SMALL_RING else 32
        painted = _compose(layer[ring_ids], offset + a, offset + b, slot, values, bits)
        starts.append(painted[0])
        ends.append(painted[1])
    for i, given in enumerate(masks):
        if isinstance(given, RowMajorRuns):
            s, e = runs_to_ranges(given.runs, int(sizes[i]))
            starts.append(s + bases[i])
            ends.append(e + bases[i])
    all_starts = np.concatenate([_EMPTY, *starts])
    order = np.argsort(all_starts, kind="stable")
    return _column_runs(all_starts[order], np.concatenate([_EMPTY, *ends])[order], slot, widths, heights)


def ring_spans(rings: Sequence[Sequence[tuple[int, int]]], widths: IntArray, heights: IntArray) -> Spans:
    """Every row span fillPoly paints for each ring (on an image of its own size), clipped to the image;
    spans may overlap: the outline's Bresenham runs and the even-odd fill, for all rings' edges at once.
    An outline run that touches the fill span it bounds is merged into it (most of them do), so that
    there are about as many spans as rows."""
    sizes = np.array([len(r) for r in rings], dtype=np.int64)
    if not sizes.sum():
        return _EMPTY_SPANS
    points = np.array([p for r in rings for p in r], dtype=np.int64).reshape(-1, 2)
    ring = np.repeat(np.arange(len(rings), dtype=np.int64), sizes)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    index = np.arange(points.shape[0], dtype=np.int64)
    previous = first + (index - first - 1) % sizes[ring]  # edge i runs from point i-1 to point i
    px0, py0 = points[previous, 0], points[previous, 1]
    px1, py1 = points[:, 0], points[:, 1]
    width, height = widths[ring], heights[ring]
    # Edges that leave the image are clipped one by one (rare); the rest stay as they are.
    lx0, ly0, lx1, ly1 = px0.copy(), py0.copy(), px1.copy(), py1.copy()
    fx0, fy0, fx1, fy1 = px0.copy(), py0.copy(), px1.copy(), py1.copy()
    visible = np.ones(points.shape[0], dtype=bool)
    inside = (
        (px0 >= 0) & (px0 < width) & (px1 >= 0) & (px1 < width)
        & (py0 >= 0) & (py0 < height) & (py1 >= 0) & (py1 < height)
    )  # fmt: skip
    for i in np.flatnonzero(~inside).tolist():
        p0 = (int(px0[i]), int(py0[i]))
        p1 = (int(px1[i]), int(py1[i]))
        ok, cx0, cy0, cx1, cy1 = clip_line(int(width[i]), int(height[i]), p0, p1)
        visible[i] = ok
        lx0[i], ly0[i], lx1[i], ly1[i] = cx0, cy0, cx1, cy1
        # opencv builds the fill edge from the clipped segment: its x always, its rows unless the
        # clipped segment is horizontal.
        fx0[i], fx1[i] = cx0, cx1
        if cy0 != cy1:
            fy0[i], fy1[i] = cy0, cy1
    sloped = py0 != py1
    # A sloped edge inside the image crosses every row of its line but the last: its runs on those rows
    # go with its crossings. Other edges' lines are drawn whole.
    merged = inside & sloped
    whole = visible & ~merged
    line = _line_spans(ring[whole], lx0[whole], ly0[whole], lx1[whole], ly1[whole])
    segments = _segments(px0[merged], py0[merged], px1[merged], py1[merged])
    last_row = np.maximum(py0[merged], py1[merged])
    last = _runs(segments, np.arange(last_row.size, dtype=np.int64), (last_row - segments.y0) * segments.step)
    merged_ring = ring[merged]
    # The fill takes the merged edges first, steep ones before flat ones, so that their crossings come in
    # three blocks (their runs are computed on slices).
    kind = np.where(merged, np.where(np.abs(py1 - py0) > np.abs(px1 - px0), 0, 1), 2)[sloped]
    e = np.flatnonzero(sloped)[np.argsort(kind, kind="stable")]
    fill = _fill_spans(
        ring[e], px0[e], py0[e], px1[e], py1[e], fx0[e], fy0[e], fx1[e], fy1[e], width[e], height[e],
        int((kind == 0).sum()), int((kind == 1).sum()),
    )  # fmt: skip
    parts = [line, (merged_ring, *last), fill]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
    )


@dataclass(frozen=True, slots=True)
class _Segments:
    """Segments as opencv draws them: from the left end (x0, y0), `step` rows down (1) or up (-1)."""

    x0: IntArray
    y0: IntArray
    step: IntArray
    steep: npt.NDArray[np.bool_]
    major: IntArray
    minor: IntArray
    dx: IntArray
    dy: IntArray


def _segments(x0: IntArray, y0: IntArray, x1: IntArray, y1: IntArray) -> _Segments:
    swap = x1 < x0  # opencv draws left to right
    x0, x1 = np.where(swap, x1, x0), np.where(swap, x0, x1)
    y0, y1 = np.where(swap, y1, y0), np.where(swap, y0, y1)
    dx, dy = x1 - x0, y1 - y0
    step = np.where(dy < 0, -1, 1)
    dy = np.abs(dy)
    return _Segments(x0, y0, step, dy > dx, np.maximum(dx, dy), np.minimum(dx, dy), dx, dy)


def _runs(seg: _Segments, edge: IntArray, j: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """The run of segment `edge` on its j-th row (row y0 + step * j): (row, first column, column after)."""
    a = np.empty_like(j)
    b = np.empty_like(j)
    x0 = seg.x0[edge]
    steep = seg.steep[edge]
    # Steep (major = dy >= 1): one pixel per row, `_minor_steps(j)` columns along.
    s = np.flatnonzero(steep)
    es, js = edge[s], j[s]
    major = seg.major[es]
    a[s] = x0[s] + (2 * seg.minor[es] * js + major - 1) // (2 * major)
    b[s] = a[s] + 1
    # Flat (major = dx, minor = dy): the row's first pixel is the least k with _minor_steps(k) >= j, i.e.
    # with 2*dy*k >= 2*dx*j - dx + 1; the row ends where the next one starts, the last one at dx.
    f = np.flatnonzero(~steep)
    ef, jf = edge[f], j[f]
    dx, dy = seg.dx[ef], seg.dy[ef]
    twice_dy = 2 * np.maximum(dy, 1)
    a[f] = x0[f] + np.where(jf > 0, -((dx - 1 - 2 * dx * jf) // twice_dy), 0)
    b[f] = x0[f] + np.where(jf < dy, -((dx - 1 - 2 * dx * (jf + 1)) // twice_dy), dx + 1)
    return seg.y0[edge] + seg.step[edge] * j, a, b


def _line_spans(ring: IntArray, x0: IntArray, y0: IntArray, x1: IntArray, y1: IntArray) -> Spans:
    """`draw_line` for many (already clipped) segments at once, as one run per (segment, row)."""
    if not ring.size:
        return _EMPTY_SPANS
    seg = _segments(x0, y0, x1, y1)
    rows = seg.dy + 1
    edge = np.repeat(np.arange(ring.size, dtype=np.int64), rows)
    j = np.arange(edge.size, dtype=np.int64) - np.repeat(np.cumsum(rows) - rows, rows)
    return (ring[edge], *_runs(seg, edge, j))


def _fill_spans(
    ring: IntArray,
    px0: IntArray,
    py0: IntArray,
    px1: IntArray,
    py1: IntArray,
    fx0: IntArray,
    fy0: IntArray,
    fx1: IntArray,
    fy1: IntArray,
    width: IntArray,
    height: IntArray,
    steep_edges: int,
    flat_edges: int,
) -> Spans:
    """Even-odd scanline fill of many rings at once: each edge's x in 16.16 fixed point on every row it
    covers, sorted by (ring, row, x); a row's crossings pair up into spans (an odd last one is dropped).
    The first `steep_edges` edges, then the next `flat_edges`, are inside the image and also owe their
    line's run on each of their crossing rows: joined to the span when they touch, a span of its own
    when not."""
    if not ring.size:
        return _EMPTY_SPANS
    sx0, sx1 = fx0 << _XY_SHIFT, fx1 << _XY_SHIFT
    num, den = sx1 - sx0, fy1 - fy0
    dx = np.abs(num) // np.abs(den)
    dx = np.where((num >= 0) == (den >= 0), dx, -dx)  # C division truncates toward zero
    down = py0 < py1
    top = np.where(down, py0, py1)
    bottom = np.where(down, py1, py0)
    x_top = np.where(down, sx0 + (py0 - fy0) * dx, sx1 + (py1 - fy1) * dx)
    # Each edge covers rows [top, bottom); rows outside the mask are never painted.
    first = np.maximum(top, 0)
    counts = np.clip(np.minimum(bottom, height) - first, 0, None)
    total = int(counts.sum())
    if total == 0:
        return _EMPTY_SPANS
    owner = np.repeat(np.arange(ring.size, dtype=np.int64), counts)
    ys = first[owner] + (np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts))
    xs = x_top[owner] + (ys - top[owner]) * dx[owner]

    # The line runs of the merged edges' crossings, in two slices.
    merged_edges = steep_edges + flat_edges
    steep_end = int(counts[:steep_edges].sum())
    flat_end = steep_end + int(counts[steep_edges:merged_edges].sum())
    seg = _segments(px0[:merged_edges], py0[:merged_edges], px1[:merged_edges], py1[:merged_edges])
    run_a = np.zeros(total, dtype=np.int64)
    run_b = np.zeros(total, dtype=np.int64)
    o = owner[:steep_end]
    j = (ys[:steep_end] - seg.y0[o]) * seg.step[o]
    major = seg.major[o]  # dy >= 1: one pixel per row, `_minor_steps(j)` columns along
    run_a[:steep_end] = seg.x0[o] + (2 * seg.minor[o] * j + major - 1) // (2 * major)
    run_b[:steep_end] = run_a[:steep_end] + 1
    o = owner[steep_end:flat_end]
    j = (ys[steep_end:flat_end] - seg.y0[o]) * seg.step[o]
    line_dx, line_dy, x0 = seg.dx[o], seg.dy[o], seg.x0[o]  # dy >= 1 and dx >= dy (flat)
    run_a[steep_end:flat_end] = x0 + np.where(j > 0, -((line_dx - 1 - 2 * line_dx * j) // (2 * line_dy)), 0)
    run_b[steep_end:flat_end] = x0 + np.where(
        j < line_dy, -((line_dx - 1 - 2 * line_dx * (j + 1)) // (2 * line_dy)), line_dx + 1
    )

    height_max = int(height.max()) + 1
    row = ring[owner] * height_max + ys
    low, high = int(xs.min()), int(xs.max())
    if (high - low) < (1 << 62) // (int(row.max()) + 1):
        order = np.argsort(row * (high - low + 1) + (xs - low))
    else:
        order = np.lexsort((xs, row))
    xs, row, owner, run_a, run_b = xs[order], row[order], owner[order], run_a[order], run_b[order]
    new = np.ones(total, dtype=bool)
    new[1:] = row[1:] != row[:-1]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, total))
    rank = np.arange(total, dtype=np.int64) - starts[group]
    lefts = np.flatnonzero((rank % 2 == 0) & (rank + 1 < sizes[group]))
    rights = lefts + 1
    left = (xs[lefts] + _XY_ONE - 1) >> _XY_SHIFT  # ceil of the left crossing, floor of the right one
    right = xs[rights] >> _XY_SHIFT
    width_at = width[owner[lefts]]
    keep = (left < width_at) & (right >= 0)
    left = np.maximum(left, 0)
    right = np.minimum(right, width_at - 1) + 1
    keep &= left < right
    has_run = owner < merged_edges
    joined = np.zeros(total, dtype=bool)
    for side in (lefts, rights):
        join = keep & has_run[side] & (run_a[side] <= right) & (run_b[side] >= left)
        left = np.where(join, np.minimum(left, run_a[side]), left)
        right = np.where(join, np.maximum(right, run_b[side]), right)
        joined[side] = join
    alone = np.flatnonzero(has_run & ~joined)
    span_rows = np.concatenate([row[lefts][keep], row[alone]])
    return (
        span_rows // height_max,
        span_rows % height_max,
        np.concatenate([left[keep], run_a[alone]]),
        np.concatenate([right[keep], run_b[alone]]),
    )


# The sweep keeps one counter per layer, packed in an int64: 16 bits each, so 4 layers (the first holds
# what earlier passes painted). A pixel is covered by at most 2 fill spans and one run per edge of a
# ring, so a counter overflows only for a ring of more than 65,000 points (those get 32 bits).
_INT32_LIMIT = 2**31 - 1  # positions below it are kept in 32 bits
_COUNTER_BITS = 16
_MAX_SMALL_RING = 65_000


def _compose(
    layer: IntArray,
    starts: IntArray,
    ends: IntArray,
    slot: int,
    values: npt.NDArray[np.int8],
    bits: int = _COUNTER_BITS,
) -> tuple[IntArray, IntArray]:
    """The pixels set after painting each ring's spans (flat [start, end) ranges, overlaps allowed; the
    ring's mask `m` starts at m * slot) with `values[mask, layer]`, layer by layer: a pixel takes the
    value of the last layer of its mask that covers it. Returns sorted, disjoint, non-touching ranges."""
    per_pass = 64 // bits - 1
    done_starts, done_ends = _EMPTY, _EMPTY
    for low in range(0, values.shape[1], per_pass):
        high = min(low + per_pass, values.shape[1])
        chosen = (layer >= low) & (layer < high)
        # What earlier passes painted is the bottom layer, value 1.
        layers = np.concatenate([np.zeros(done_starts.size, dtype=np.int64), layer[chosen] - low + 1])
        table = np.ones((values.shape[0], high - low + 2), np.int8)
        table[:, 0] = 0
        table[:, 2:] = values[:, low:high]
        done_starts, done_ends = _compose_layers(
            layers,
            np.concatenate([done_starts, starts[chosen]]),
            np.concatenate([done_ends, ends[chosen]]),
            slot,
            table,
            bits,
        )
    return done_starts, done_ends


def _compose_layers(
    layer: IntArray,
    starts: IntArray,
    ends: IntArray,
    slot: int,
    values: npt.NDArray[np.int8],
    bits: int,
) -> tuple[IntArray, IntArray]:
    """One pass of `_compose`: a sweep over the ranges' ends counting how many ranges of each layer cover
    each stretch; the topmost covering layer decides (`values[mask, 0]` is the value of no layer)."""
    if not layer.size:
        return _EMPTY, _EMPTY
    count = values.shape[1] - 1
    keys = np.concatenate([starts * (2 * count) + 2 * layer, ends * (2 * count) + 2 * layer + 1])
    keys.sort()  # at one position, a layer's starts come before its ends: no counter goes below zero
    positions = keys // (2 * count)
    delta = np.left_shift(np.int64(1), bits * ((keys % (2 * count)) >> 1))
    state = np.cumsum(np.where(keys & 1, -delta, delta))
    # The topmost layer with a non-zero counter: how many layer thresholds the packed counters reach.
    top = (state > 0).astype(np.int8)
    for index in range(1, count):
        top += state >= (1 << (bits * index))
    # Only the state after the last event at a position counts.
    last = np.ones(keys.size, dtype=bool)
    last[:-1] = positions[1:] != positions[:-1]
    positions, top = positions[last], top[last]
    painted = values[positions // slot, top]
    change = painted != np.concatenate([[0], painted[:-1]])
    edges = positions[change]
    return edges[0::2], edges[1::2]


def _column_runs(starts: IntArray, ends: IntArray, slot: int, widths: IntArray, heights: IntArray) -> Rles:
    """COCO RLE counts of masks whose set pixels are sorted, disjoint, non-touching flat ranges (mask m
    row-major from m * slot), from where each column changes value."""
    masks = widths.size
    stride = int(widths.max()) + 1
    toggle_slot = (int(heights.max()) + 2) * stride
    # Positions fit in 32 bits for most batches: half the memory traffic, and faster sorts.
    dt: Any = np.int32 if masks * max(slot, toggle_slot) < _INT32_LIMIT else np.int64
    starts, ends = starts.astype(dt), ends.astype(dt)
    widths, heights = widths.astype(dt), heights.astype(dt)
    mask = starts // slot
    width, local = widths[mask], starts - mask * slot
    local_end = ends - mask * slot
    # Ranges split into one span per row.
    first_row, last_row = local // width, (local_end - 1) // width
    rows = last_row - first_row + 1
    if bool((rows == 1).all()):
        ys, a, b = first_row, local - first_row * width, local_end - first_row * width
    else:
        owner = np.repeat(np.arange(starts.size, dtype=dt), rows)
        ys = (
            first_row[owner]
            + np.arange(owner.size, dtype=dt)
            - np.repeat(np.cumsum(rows, dtype=dt) - rows, rows)
        )
        width = width[owner]
        a = np.where(ys == first_row[owner], local[owner] - ys * width, 0)
        b = np.where(ys == last_row[owner], local_end[owner] - ys * width, width)
        mask = mask[owner]
    # A row's value toggles at its spans' ends; where row y differs from row y-1 (rows -1 and `height`
    # empty) toggles at the ends of both, pairs cancelling.
    row_key = mask * toggle_slot + ys * stride
    toggles = _cancel_pairs(
        np.concatenate([row_key + a, row_key + b, row_key + stride + a, row_key + stride + b]),
        sorted_runs=True,
    )
    change_rows, change_cols = toggles // stride, toggles % stride
    ranges_from, ranges_to, ranges_row = change_cols[0::2], change_cols[1::2], change_rows[0::2]
    lengths = ranges_to - ranges_from
    owner = np.repeat(np.arange(lengths.size, dtype=dt), lengths)
    xs = (
        ranges_from[owner]
        + np.arange(owner.size, dtype=dt)
        - np.repeat(np.cumsum(lengths, dtype=dt) - lengths, lengths)
    )
    row_of = ranges_row[owner]  # mask * (max height + 2) + row
    mask = row_of // (toggle_slot // stride)
    ys = row_of - mask * (toggle_slot // stride)
    # Column-major position of every change; a change below a column's last row is the same position as
    # one at the top of the next column, and the two cancel; one below the last column is the end.
    sizes = widths * heights
    changes = _cancel_pairs(mask * slot + xs * heights[mask] + ys)
    mask = changes // slot
    local = changes - mask * slot
    inside = local < sizes[mask]
    local, mask = local[inside], mask[inside]
    # Each mask's runs: from 0 to its first change, between its changes, from its last change to its end.
    per_mask = np.bincount(mask, minlength=masks)
    block = np.cumsum(per_mask + 1) - (per_mask + 1)
    runs = np.empty(int(per_mask.sum()) + masks, dtype=dt)
    ends_at = block + per_mask
    at = np.arange(local.size, dtype=dt) + mask  # each earlier mask adds its final run
    previous = np.empty_like(local)
    previous[1:] = local[:-1]
    first = np.ones(local.size, dtype=bool)
    first[1:] = mask[1:] != mask[:-1]
    previous[first] = 0
    runs[at] = local - previous
    last_change = np.zeros(masks, dtype=dt)
    if local.size:
        final = np.append(first[1:], True)
        last_change[mask[final]] = local[final]
    runs[ends_at] = sizes - last_change
    counts = runs.astype(np.uint32)
    boxes, areas = _boxes(local, mask, per_mask, sizes, heights)
    return Rles(
        [counts[start : end + 1] for start, end in zip(block.tolist(), ends_at.tolist(), strict=True)],
        boxes,
        areas,
    )


def _boxes(
    changes: IntArray, mask: IntArray, per_mask: IntArray, sizes: IntArray, heights: IntArray
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """`pycocotools.mask.toBbox` and `area` from the masks' column-major change positions (sorted by mask,
    then position), quirk included: a run of set pixels across two columns makes the box full height."""
    masks = sizes.size
    if not (per_mask % 2).any():
        # Every run of set pixels ends before its mask does (the usual case): changes pair up in order.
        run_mask, start, end = mask[0::2], changes[0::2], changes[1::2]
    else:
        rank = np.arange(changes.size, dtype=np.int64) - (np.cumsum(per_mask) - per_mask)[mask]
        opens = np.flatnonzero(rank % 2 == 0)  # a run of set pixels starts at every other change
        run_mask = mask[opens]
        start = changes[opens]
        has_close = rank[opens] + 1 < per_mask[run_mask]
        end = np.where(has_close, changes[np.minimum(opens + 1, max(changes.size - 1, 0))], sizes[run_mask])
    areas = np.bincount(run_mask, weights=end - start, minlength=masks).astype(np.float64)
    boxes = np.zeros((masks, 4), dtype=np.float64)
    if not start.size:
        return boxes, areas
    height = heights[run_mask]
    x_start, y_start = np.divmod(start, height)
    x_end, y_end = np.divmod(end - 1, height)
    across = x_start < x_end
    y_low = np.where(across, 0, np.minimum(y_start, y_end))
    y_high = np.where(across, height - 1, np.maximum(y_start, y_end))
    runs_per_mask = np.bincount(run_mask, minlength=masks)
    some = np.flatnonzero(runs_per_mask)
    first = (np.cumsum(runs_per_mask) - runs_per_mask)[some]
    last = first + runs_per_mask[some] - 1
    x_low, x_high = x_start[first], x_end[last]
    y_min = np.minimum.reduceat(y_low, first)
    y_max = np.maximum.reduceat(y_high, first)
    boxes[some, 0] = x_low
    boxes[some, 1] = y_min
    boxes[some, 2] = x_high - x_low + 1
    boxes[some, 3] = y_max - y_min + 1
    return boxes, areas


def _cancel_pairs(values: IntArray, *, sorted_runs: bool = False) -> IntArray:
    """`values` sorted, with every value that occurs twice removed (no value occurs more often).
    `sorted_runs`: `values` is a few sorted runs, which a stable sort merges faster than quicksort."""
    values = np.sort(values, kind="stable" if sorted_runs else "quicksort")
    twin = values[1:] == values[:-1]
    keep = np.ones(values.size, dtype=bool)
    keep[:-1] &= ~twin
    keep[1:] &= ~twin
    return values[keep]


def decode_rle_string(counts: str) -> IntArray:
    """The run lengths of a COCO compressed RLE string (pycocotools' `rleFrString`, vectorised)."""
    chars = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if not chars.size:
        return _EMPTY
    ends = np.flatnonzero((chars & 0x20) == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    digits = ends - starts + 1
    shift = 5 * (np.arange(chars.size, dtype=np.int64) - np.repeat(starts, digits))
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    values -= ((chars[ends] & 0x10) != 0) * (np.int64(1) << (5 * digits))  # sign of the last digit
    # From the fourth count on, each is stored as the difference to the count two before it.
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def runs_to_ranges(runs: IntArray, size: int) -> tuple[IntArray, IntArray]:
    """The set pixels of run lengths (zeros first) as sorted, disjoint, non-touching flat ranges within
    `size` pixels."""
    bounds = np.minimum(np.cumsum(runs), size)
    starts, ends = bounds[0::2], bounds[1::2]
    starts = starts[: ends.size]
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not starts.size:
        return starts, ends
    # A zero-length run of zeros joins two ranges.
    join = np.ones(starts.size, dtype=bool)
    join[1:] = starts[1:] != ends[:-1]
    last = np.append(join[1:], True)
    return starts[join], ends[last]


_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY_SPANS: Spans = (_EMPTY, _EMPTY, _EMPTY, _EMPTY)
