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

import numpy as np
import numpy.typing as npt

_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT

Mask = npt.NDArray[np.uint8]


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


def fill_poly(mask: Mask, points: Sequence[tuple[int, int]], value: int) -> None:
    """`cv2.fillPoly(mask, [points], value)` for one contour of integer points (lineType 8, shift 0)."""
    n = len(points)
    if n == 0:
        return
    height, width = mask.shape
    edges: list[tuple[int, int, int, int]] = []  # (y0, y1, x at y0 in 16.16, dx per row in 16.16)
    px0, py0 = points[-1]
    for px1, py1 in points:
        draw_line(mask, (px0, py0), (px1, py1), value)
        if py0 != py1:
            fx0, fy0, fx1, fy1 = px0 << _XY_SHIFT, py0, px1 << _XY_SHIFT, py1
            if not (0 <= px0 < width and 0 <= px1 < width and 0 <= py0 < height and 0 <= py1 < height):
                # opencv builds the edge from the clipped segment: its x always, its rows unless the clipped
                # segment is horizontal.
                _, cx0, cy0, cx1, cy1 = clip_line(width, height, (px0, py0), (px1, py1))
                fx0, fx1 = cx0 << _XY_SHIFT, cx1 << _XY_SHIFT
                if cy0 != cy1:
                    fy0, fy1 = cy0, cy1
            dx = _cdiv(fx1 - fx0, fy1 - fy0)
            if py0 < py1:
                edges.append((py0, py1, fx0 + (py0 - fy0) * dx, dx))
            else:
                edges.append((py1, py0, fx1 + (py1 - fy1) * dx, dx))
        px0, py0 = px1, py1
    _fill_edges(mask, edges, value)


def _fill_edges(mask: Mask, edges: list[tuple[int, int, int, int]], value: int) -> None:
    """Even-odd scanline fill: on each row, the edges' crossings sorted by x pair up into spans."""
    height, width = mask.shape
    if len(edges) < 2:
        return
    table = np.array(edges, dtype=np.int64)
    y0, y1, x0, dx = table[:, 0], table[:, 1], table[:, 2], table[:, 3]
    x_ends = np.concatenate([x0, x0 + (y1 - y0) * dx])
    if y1.max() < 0 or y0.min() >= height or x_ends.max() < 0 or x_ends.min() >= (width << _XY_SHIFT):
        return
    # Each edge covers rows [y0, y1); rows outside the mask are never painted.
    first = np.maximum(y0, 0)
    counts = np.clip(np.minimum(y1, height) - first, 0, None)
    total = int(counts.sum())
    if total == 0:
        return
    owner = np.repeat(np.arange(len(edges)), counts)
    starts = np.cumsum(counts) - counts
    ys = first[owner] + (np.arange(total) - starts[owner])
    xs = x0[owner] + (ys - y0[owner]) * dx[owner]
    order = np.lexsort((xs, ys))
    ys, xs = ys[order], xs[order]
    per_row = np.bincount(ys - ys[0])
    if np.any(per_row % 2):
        _fill_rows_slowly(mask, ys, xs, value)
        return
    left = (xs[0::2] + _XY_ONE - 1) >> _XY_SHIFT  # ceil of the left crossing, floor of the right one
    right = xs[1::2] >> _XY_SHIFT
    rows = ys[0::2]
    keep = (left < width) & (right >= 0)
    left = np.maximum(left[keep], 0)
    right = np.minimum(right[keep], width - 1) + 1
    for y, a, b in zip(rows[keep].tolist(), left.tolist(), right.tolist(), strict=True):
        mask[y, a:b] = value


def _fill_rows_slowly(mask: Mask, ys: npt.NDArray[np.int64], xs: npt.NDArray[np.int64], value: int) -> None:
    """A row with an odd number of crossings (a degenerate contour): pair within the row, drop the odd one."""
    width = mask.shape[1]
    for y in np.unique(ys).tolist():
        row_xs = xs[ys == y].tolist()
        for i in range(0, len(row_xs) - 1, 2):
            a = (row_xs[i] + _XY_ONE - 1) >> _XY_SHIFT
            b = row_xs[i + 1] >> _XY_SHIFT
            if a < width and b >= 0:
                mask[y, max(a, 0) : min(b, width - 1) + 1] = value
