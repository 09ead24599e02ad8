"""The mask-free RLE path (`coco_rle_counts`, `decode_rle_string`) against painting a dense mask with
`fill_poly` (itself checked against opencv in test_coco_raster.py) and encoding it with pycocotools."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocotools import mask as cocomask

from encord_mirror.coco import raster
from encord_mirror.coco.raster import Painting, RowMajorRuns, coco_rle_counts, decode_rle_string, fill_poly


def _coco_counts(mask: np.ndarray) -> list[int]:
    height, width = mask.shape
    encoded = cocomask.encode(np.asfortranarray(mask))
    runs = decode_rle_string(encoded["counts"].decode("ascii")).tolist()
    # The decoder itself: re-encoding its runs gives pycocotools' string back.
    again = cocomask.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    assert again["counts"] == encoded["counts"]
    return list(runs)


def _random_painting(rng: random.Random, rings: int) -> tuple[Painting, np.ndarray]:
    width, height = rng.randint(1, 40), rng.randint(1, 40)
    shapes, values = [], []
    for _ in range(rings):
        margin = rng.choice([0, 0, 6])
        n = rng.randint(1, 7)
        shapes.append(
            [(rng.randint(-margin, width + margin), rng.randint(-margin, height + margin)) for _ in range(n)]
        )
        values.append(rng.choice([0, 1, 1]))
    dense = np.zeros((height, width), np.uint8)
    for ring, value in zip(shapes, values, strict=True):
        fill_poly(dense, ring, value)
    return Painting(shapes, values, width, height), dense


def _random_runs(rng: random.Random) -> tuple[RowMajorRuns, np.ndarray]:
    width, height = rng.randint(1, 30), rng.randint(1, 30)
    density = rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])
    dense = np.array([rng.random() < density for _ in range(width * height)], np.uint8).reshape(height, width)
    # Encord's bitmask order: row by row, i.e. COCO's string of the transposed mask.
    row_major = cocomask.encode(np.asfortranarray(dense.T))["counts"].decode("ascii")
    return RowMajorRuns(decode_rle_string(row_major), width, height), dense


def test_painting_rings_in_order_gives_the_rle_of_the_painted_mask() -> None:
    # Given random shells and holes (self-intersecting, degenerate, partly outside the image) in order
    rng = random.Random("paint")
    mismatches = []
    for _ in range(1200):
        painting, dense = _random_painting(rng, rng.randint(1, 5))
        # When the RLE is computed from spans, without a mask
        (ours,) = coco_rle_counts([painting]).counts
        # Then it equals pycocotools' encoding of the dense mask
        if ours.tolist() != _coco_counts(dense):
            mismatches.append(painting)
    assert mismatches == []


def test_row_major_runs_turn_into_coco_column_runs() -> None:
    # Given random masks as Encord stores bitmasks: empty, full, rows that run into the next
    rng = random.Random("transpose")
    for _ in range(500):
        runs, dense = _random_runs(rng)
        # When turned column-major / Then they are pycocotools' runs of the mask
        assert coco_rle_counts([runs]).counts[0].tolist() == _coco_counts(dense)


@pytest.mark.parametrize("positions", ["32-bit", "64-bit"])
def test_a_batch_of_mixed_masks_gives_each_its_own_rle(
    positions: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one batch of paintings (one with more rings than one sweep takes) and bitmask runs, mixed,
    # with pixel positions in 32 bits (any batch of ordinary images) or 64 (huge ones)
    if positions == "64-bit":
        monkeypatch.setattr(raster, "_INT32_LIMIT", 0)
    rng = random.Random("batch")
    masks: list[Painting | RowMajorRuns] = []
    dense: list[np.ndarray] = []
    for i in range(300):
        mask, expected = _random_runs(rng) if i % 3 == 0 else _random_painting(rng, 40 if i == 7 else 3)
        masks.append(mask)
        dense.append(expected)
    # When computed together
    ours = coco_rle_counts(masks)
    # Then every mask's counts are those of its own dense mask, and so are its box and area
    assert [c.tolist() for c in ours.counts] == [_coco_counts(d) for d in dense]
    encoded = [cocomask.encode(np.asfortranarray(d)) for d in dense]
    assert ours.boxes.tolist() == cocomask.toBbox(encoded).tolist()
    assert ours.areas.tolist() == [float(cocomask.area(e)) for e in encoded]
    # And alone (a batch whose masks all end unset takes a shorter path to boxes and areas)
    alone = [coco_rle_counts([m]) for m in masks]
    assert [a.boxes[0].tolist() for a in alone] == ours.boxes.tolist()
    assert [a.areas[0] for a in alone] == ours.areas.tolist()


def test_masks_with_nothing_to_paint_are_empty() -> None:
    # Given a painting without rings, one with an empty ring, a one-point ring and an empty bitmask
    masks: list[Painting | RowMajorRuns] = [
        Painting([], [], 5, 4),
        Painting([[]], [1], 3, 3),
        Painting([[(1, 1)]], [1], 3, 3),
        RowMajorRuns(decode_rle_string(""), 2, 2),
    ]
    # When computed, together and the first alone
    together, alone = coco_rle_counts(masks), coco_rle_counts(masks[:1])
    # Then only the point is painted
    assert [c.tolist() for c in together.counts] == [[20], [9], [4, 1, 4], [4]]
    assert together.boxes.tolist()[2] == [1.0, 1.0, 1.0, 1.0]
    assert together.areas.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert alone.counts[0].tolist() == [20]
