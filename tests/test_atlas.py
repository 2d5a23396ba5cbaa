"""Atlas: bounded per-channel heaps (oracle: a full sort in numpy), exact merges, crops."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featuremaps._errors import OptionError
from featuremaps.atlas import cell_box, control_heap, crop_box, top_heap
from featuremaps.commands.atlas import build_atlas


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


# -- the planted-pattern oracle: a hand-set filter, patterns planted at known places -------------

PATTERN = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float32)  # a plus sign
MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


class _Planted(nn.Module):
    """conv1 matches the plus sign exactly (zero-mean filter); pool + conv2 widen the field."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(2, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv1.weight[0, 0] = torch.from_numpy(PATTERN - PATTERN.mean())
            self.conv1.weight[1, 0] = -torch.from_numpy(PATTERN - PATTERN.mean())
            self.conv2.weight.fill_(0.0)
            self.conv2.weight[0, 0, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.pool(self.conv1(x)))


#: (file, top, left) of the planted plus signs; the last is the strongest (full contrast).
PLANTS = [("a.png", 3, 5, 160), ("b.png", 9, 2, 200), ("c.png", 0, 10, 255)]


def _planted_data(folder: Path) -> None:
    rng = np.random.default_rng(5)
    for name, top, left, level in PLANTS:
        image = rng.integers(0, 40, size=(16, 16)).astype(np.uint8)
        image[top : top + 3, left : left + 3] = np.maximum(
            image[top : top + 3, left : left + 3], (PATTERN * level).astype(np.uint8)
        )
        Image.fromarray(image, mode="L").save(folder / name)
    for i in range(3):  # plain noise, no pattern
        Image.fromarray(rng.integers(0, 40, size=(16, 16)).astype(np.uint8), mode="L").save(
            folder / f"noise{i}.png"
        )


def _formula_crop(picture: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The receptive field [top, top + size) x [left, left + size) cut by hand as RGBA: magenta
    and transparent outside the picture, opaque inside."""
    pad = size
    padded = np.zeros((picture.shape[0] + 2 * pad, picture.shape[1] + 2 * pad, 4), np.uint8)
    padded[..., :3] = MAGENTA
    padded[pad:-pad, pad:-pad, :3] = picture
    padded[pad:-pad, pad:-pad, 3] = 255
    return padded[top + pad : top + pad + size, left + pad : left + pad + size]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data = tmp_path_factory.mktemp("planted")
    _planted_data(data)
    out = data.parent / "atlas-out"
    torch.manual_seed(0)
    summary = build_atlas(
        _Planted(), [str(data)], out=out, k=3, controls=2, workers=0, batch_size=4
    )
    return out, summary


def test_the_top_patch_is_the_planted_place(planted: tuple[Path, dict[str, Any]]) -> None:
    out, summary = planted
    assert summary["inputs"]["read"] == 6
    written = json.loads((out / "atlas.json").read_text())
    top = written["layers"]["conv1"]["channels"]["0"]
    # Best first: the strongest plant, then the others, each at the plus sign's centre.
    expected = sorted(PLANTS, key=lambda p: -p[3])
    assert [Path(e["input"]).name for e in top] == [p[0] for p in expected]
    assert [e["cell"] for e in top] == [[p[1] + 1, p[2] + 1] for p in expected]
    assert [e["value"] for e in top] == sorted((e["value"] for e in top), reverse=True)


def test_every_crop_equals_the_receptive_field_formula(
    planted: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = planted
    written = json.loads((out / "atlas.json").read_text())
    # conv1: S=1, P=1, R=3; conv2 after a 2x2 pool: S=2, P=3, R=8 (worked out by hand).
    rules = {"conv1": (1, 1, 3), "conv2": (2, 3, 8)}
    checked = 0
    for layer, (stride, pad, size) in rules.items():
        entry = written["layers"][layer]
        for group in ("channels", "controls"):
            for cells in entry[group].values():
                for cell in cells:
                    r, c = cell["cell"]
                    top, left = r * stride - pad, c * stride - pad
                    assert cell["box"] == [top, left, top + size, left + size]
                    picture = np.asarray(Image.open(cell["input"]).convert("RGB"))
                    patch = np.asarray(Image.open(out / cell["patch"]))
                    np.testing.assert_array_equal(patch, _formula_crop(picture, top, left, size))
                    checked += 1
    assert checked >= 10
    beyond = [
        e
        for cells in written["layers"]["conv2"]["channels"].values()
        for e in cells
        if min(e["box"]) < 0 or max(e["box"][2:]) > 16
    ]
    assert beyond  # the check above covered fields that reach past the picture
    assert (out / "sheets").is_dir() and (out / "atlas.html").is_file()


def test_memory_does_not_grow_with_the_data() -> None:
    """20,000 fake images in batches of 100: the heaps keep their size and the peak traced
    allocation of each 2,000 images is the same (benchmarks/atlas_memory.py measures the RSS of
    the whole pass)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    batch = rng.normal(size=(100, 4, 6, 6)).astype(np.float32)
    top, controls = top_heap(4, (6, 6), 9), control_heap(4, (6, 6), 3)
    tracemalloc.start()
    try:
        peaks = []
        for start in range(0, 20_000, 100):
            values = batch + np.float32(start * 1e-6)  # later inputs win: the heap keeps moving
            top.update(values, np.arange(start, start + 100))
            controls.update(values, np.arange(start, start + 100))
            if (start + 100) % 2_000 == 0:
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.reset_peak()
    finally:
        tracemalloc.stop()
    assert top.values.shape == (4, 9) and controls.values.shape == (4, 3)
    assert (top.inputs[:, 0] >= 19_900).all()  # the best cell of each channel: the last batch
    # One peak per 2,000 images: data that grew the heaps would grow these tenfold.
    assert len(peaks) == 10 and max(peaks) <= 1.5 * min(peaks)


def test_cli_refuses_a_bad_top_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featuremaps.cli import main

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["atlas", str(tmp_path / "a.png"), "-m", "shapes_cnn", "--top", "0", "-q",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0
    assert "top-k of 0 is not valid; expected 1 or more, e.g. --top 9" in err
    assert len(err.strip().splitlines()) == 1


def test_a_token_layer_is_cropped_by_its_patches(tmp_path: Path) -> None:
    import torchvision

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
    torch.manual_seed(3)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    ).eval()
    out = tmp_path / "out"
    layer = "encoder.layers.encoder_layer_0"
    build_atlas(model, [str(data)], out=out, layers=layer, k=2, controls=1, workers=0)
    entry = json.loads((out / "atlas.json").read_text())["layers"][layer]
    assert entry["grid"] == [4, 4]  # 16 patch tokens, the class token left out
    assert entry["cells"] == "tokens on their 4x4 patch grid; 1 prefix token excluded"
    checked = 0
    for cells in (*entry["channels"].values(), *entry["controls"].values()):
        for cell in cells:
            r, c = cell["cell"]
            assert cell["box"] == [4 * r, 4 * c, 4 * r + 4, 4 * c + 4]  # the token's own patch
            picture = np.asarray(Image.open(cell["input"]).convert("RGB"))
            patch = np.asarray(Image.open(out / cell["patch"]))
            np.testing.assert_array_equal(patch, _formula_crop(picture, 4 * r, 4 * c, 4))
            checked += 1
    assert checked >= 16
