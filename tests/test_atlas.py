"""Atlas: bounded per-channel heaps (oracle: a full sort in numpy), exact merges, crops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featuremaps._errors import OptionError
from featuremaps.atlas import cell_box, control_heap, crop_box, top_heap


def _brute_top(values: np.ndarray, k: int) -> list[list[tuple[float, int, int]]]:
    """Per channel, the k largest (value, input, flat cell), ties by input then cell."""
    n, c = values.shape[:2]
    flat = values.reshape(n, c, -1)
    out = []
    for ch in range(c):
        items = [(-float(flat[i, ch, j]), i, j) for i in range(n) for j in range(flat.shape[2])]
        items.sort()
        out.append([(-v, i, j) for v, i, j in items[:k]])
    return out


def _as_list(heap, channel):  # type: ignore[no-untyped-def]
    return [
        (v, i, int(np.ravel_multi_index(cell, heap.grid))) for v, i, cell in heap.entries(channel)
    ]


def test_top_heap_equals_a_full_sort_with_ties_broken_by_input_then_cell() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(7, 3, 4, 5)).astype(np.float32)  # many ties
    heap = top_heap(3, (4, 5), 6)
    heap.update(values, np.arange(7))
    expected = _brute_top(values, 6)
    for c in range(3):
        assert _as_list(heap, c) == expected[c]


@pytest.mark.parametrize("kind", ["top", "control"])
def test_merge_is_exact_whatever_the_batching_and_order(kind: str) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(12, 4, 3, 3))
    values[3] = values[5]  # equal values at different inputs
    make = (
        (lambda: top_heap(4, (3, 3), 5))
        if kind == "top"
        else (lambda: control_heap(4, (3, 3), 5, seed=7))
    )
    whole = make()
    whole.update(values, np.arange(12))
    for cuts in ([0, 4, 12], [0, 1, 2, 9, 12], [0, 6, 12]):
        parts = []
        for a, b in itertools.pairwise(cuts):
            part = make()
            part.update(values[a:b], np.arange(a, b))
            parts.append(part)
        merged = make()
        for part in reversed(parts):
            merged.merge(part)
        for c in range(4):
            assert merged.entries(c) == whole.entries(c)


def test_controls_are_positive_cells_and_a_uniform_sample() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=(50, 1, 4, 4))
    counts = np.zeros(50 * 16)
    for seed in range(300):
        heap = control_heap(1, (4, 4), 4, seed=seed)
        heap.update(values, np.arange(50))
        for v, i, cell in heap.entries(0):
            assert v > 0 and v == values[i, 0][cell]
            counts[i * 16 + int(np.ravel_multi_index(cell, (4, 4)))] += 1
    positive = (values[:, 0] > 0).reshape(-1)
    assert counts[~positive].sum() == 0
    # Each positive cell is drawn with probability 4/P; a chi-square-sized bound on the spread.
    expected = 300 * 4 / positive.sum()
    assert abs(counts[positive].mean() - expected) < 1e-9
    assert counts[positive].std() < 3 * np.sqrt(expected)


def test_heap_memory_is_bounded_by_k() -> None:
    heap = top_heap(2, (8, 8), 3)
    for start in range(0, 400, 20):
        heap.update(
            np.random.default_rng(start).normal(size=(20, 2, 8, 8)), np.arange(start, start + 20)
        )
    assert heap.values.shape == (2, 3)


def test_bad_k_is_one_line() -> None:
    with pytest.raises(OptionError, match="top-k of 0 is not valid"):
        top_heap(1, (1,), 0)
    with pytest.raises(OptionError, match="-1 controls is not valid"):
        control_heap(1, (1,), -1)


def test_crop_box_marks_the_part_beyond_the_picture() -> None:
    picture = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    before = picture.copy()
    crop, inside = crop_box(picture, (-2, 3, 2, 8), fill=(255, 0, 255))
    np.testing.assert_array_equal(picture, before)
    assert crop.shape == (4, 5, 3)
    np.testing.assert_array_equal(crop[2:, :3], picture[0:2, 3:6])
    assert inside.sum() == 6 and not inside[:2].any() and not inside[:, 3:].any()
    assert (crop[~inside] == (255, 0, 255)).all()


def test_cell_box_of_an_integral_field() -> None:
    assert cell_box((-1.0, 2.0, 1.0, 4.0)) == (-1, 2, 2, 5)
