"""The opencv-free fillPoly against opencv itself (a dev-only dependency)."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from encord_mirror.coco.raster import _minor_steps, draw_line, fill_poly


def _opencv_fill(width: int, height: int, points: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.array(points, np.int32)], color=(255, 255, 255))
    return mask > 0


def _our_fill(width: int, height: int, points: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    fill_poly(mask, points, 1)
    return mask > 0


@pytest.mark.parametrize(
    ("where", "margin"),
    [("inside the image", None), ("on the right and bottom border", 0), ("partly outside", 8)],
)
def test_fill_poly_matches_opencv_pixel_for_pixel(where: str, margin: int | None) -> None:
    # Given random polygons (self-intersecting ones included) with vertices placed as described
    rng = random.Random(f"fill:{where}")
    mismatches = []
    for _ in range(1500):
        width, height = rng.randint(1, 30), rng.randint(1, 30)
        n = rng.randint(1, 8)
        if margin is None:
            points = [(rng.randint(0, width - 1), rng.randint(0, height - 1)) for _ in range(n)]
        else:
            points = [
                (rng.randint(-margin, width + margin), rng.randint(-margin, height + margin))
                for _ in range(n)
            ]
        # When both rasterise them
        ours, theirs = _our_fill(width, height, points), _opencv_fill(width, height, points)
        if not np.array_equal(ours, theirs):
            mismatches.append((width, height, points))
    # Then every mask is identical
    assert mismatches == []


def test_lines_match_opencv_including_clipping() -> None:
    # Given random segments, many of them leaving the image
    rng = random.Random("lines")
    for _ in range(1500):
        width, height = rng.randint(1, 25), rng.randint(1, 25)
        p1 = (rng.randint(-10, width + 10), rng.randint(-10, height + 10))
        p2 = (rng.randint(-10, width + 10), rng.randint(-10, height + 10))
        theirs = np.zeros((height, width), np.uint8)
        cv2.line(theirs, p1, p2, 255, 1, 8)
        ours = np.zeros((height, width), np.uint8)
        # When drawn by both
        draw_line(ours, p1, p2, 255)
        # Then the pixels agree
        assert np.array_equal(ours, theirs), (width, height, p1, p2)


def test_bresenham_closed_form_equals_the_error_loop() -> None:
    # Given every (major, minor) slope up to 80 pixels
    for major in range(1, 81):
        for minor in range(major + 1):
            # When the loop opencv runs is replayed step by step
            err, steps, expected = major - 2 * minor, 0, []
            for _ in range(major + 1):
                expected.append(steps)
                if err < 0:
                    steps += 1
                    err += 2 * major - 2 * minor
                else:
                    err -= 2 * minor
            # Then the closed form gives the same minor-axis steps
            assert _minor_steps(major, minor, major + 1).tolist() == expected


def test_converter_and_snapshots_import_neither_encord_nor_opencv_nor_shapely() -> None:
    import subprocess
    import sys

    # Given a fresh interpreter, like a Lambda cold start
    code = (
        "import sys, encord_mirror.coco.convert, encord_mirror.coco.snapshot;"
        "print(sorted(m for m in ('encord', 'cv2', 'shapely') if m in sys.modules))"
    )
    # When the converter and the snapshot builder are imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # Then none of the heavy packages came with them
    assert out.strip() == "[]"
