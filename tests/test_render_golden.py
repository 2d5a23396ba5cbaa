"""Golden pictures of whole grids (tiles, captions, legend), compared pixel for pixel.

Inputs are built from integer arithmetic only (no random streams, no libm), so they are the
same bits on every machine. See tests/gold/README.md for how to accept a changed picture.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import nn

import featuremaps as fm
from featuremaps.render import GridLabel, GridOptions, make_grid
from featuremaps.render.bars import make_bars
from featuremaps.render.signal import Placement, make_signal_picture
from featuremaps.render.tokens import make_token_picture
from featuremaps.render.volume import make_volume_picture
from goldtest import assert_matches_golden


def test_golden_unsigned_per_layer() -> None:
    maps = ((np.arange(4 * 5 * 6, dtype=np.float32) * 7) % 23).reshape(4, 5, 6) / 4
    label = GridLabel("features.3", "ReLU", (1, 4, 5, 6))
    grid = make_grid(maps, GridOptions(scale="layer"), label=label)
    assert grid.cmap == "viridis"
    assert_matches_golden("grid_unsigned_layer", grid.pixels)


def test_golden_signed_per_channel_with_nan_and_constant() -> None:
    base = (((np.arange(4 * 5 * 6) * 7) % 13) - 6).reshape(4, 5, 6).astype(np.float32)
    maps = base * np.array([1.0, 10.0, 0.0, 0.25], dtype=np.float32)[:, None, None]
    maps[2] = 0.5  # a constant channel
    maps[1, 2, 3] = np.nan
    label = GridLabel("layer1.0.conv1", "Conv2d", (1, 4, 5, 6), stamp="RANDOM WEIGHTS")
    grid = make_grid(maps, GridOptions(scale="channel", columns=2), label=label)
    assert grid.cmap == "RdBu_r"
    assert grid.nonfinite == 1
    assert grid.constant_channels == (2,)
    assert_matches_golden("grid_signed_channel", grid.pixels)


def test_golden_one_by_one_maps() -> None:
    maps = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], dtype=np.float32).reshape(6, 1, 1)
    label = GridLabel("avgpool", "AdaptiveAvgPool2d", (1, 6, 1, 1))
    grid = make_grid(maps, GridOptions(columns=3), label=label)
    assert_matches_golden("grid_1x1", grid.pixels)


def test_golden_fixed_scale_marks_clipped_ends() -> None:
    maps = ((((np.arange(3 * 6 * 6) * 5) % 17) - 8) / 4).reshape(3, 6, 6).astype(np.float32)
    label = GridLabel("layer2.0.conv1", "Conv2d", (1, 3, 6, 6))
    grid = make_grid(maps, GridOptions(scale="fixed", value_range=(-1.0, 1.5)), label=label)
    assert grid.clipped == (int((maps < -1).sum()), int((maps > 1.5).sum()))
    assert_matches_golden("grid_fixed_clipped", grid.pixels)


def test_golden_layer_without_finite_values() -> None:
    maps = np.full((2, 4, 4), np.nan, dtype=np.float32)
    maps[1] = np.inf
    label = GridLabel("head.relu", "ReLU", (1, 2, 4, 4))
    grid = make_grid(maps, GridOptions(), label=label)
    assert grid.nonfinite == maps.size
    assert_matches_golden("grid_all_nonfinite", grid.pixels)


def test_golden_bar_strip_with_every_value_and_nan() -> None:
    values = np.array([[-2.0, -0.5, 0.0, 0.25, 1.0, 3.0, np.nan, 1.5]], dtype=np.float32)
    picture = make_bars(values, ["sample 0"], title="head · Linear · (1, 8)")
    assert picture.warnings == ("1 NaN/Inf values drawn in magenta",)
    assert_matches_golden("bars_signed", picture.pixels)


def test_golden_tokens_with_norm_pca_and_prefix() -> None:
    # Patch tokens on a 3x4 grid: dims 0 and 1 are the row and the column, dim 2 their sum.
    rows, cols = np.mgrid[0:3, 0:4].astype(np.float32)
    patches = np.stack([rows, cols, rows + cols, (rows * cols) % 3])
    prefix = np.array([[-1.0, 0.5, 2.0, 0.0], [1.0, 1.0, -1.0, 0.25]], dtype=np.float32)
    label = GridLabel("blocks.0.mlp", "Linear", (1, 14, 4), stamp="RANDOM WEIGHTS")
    made = make_token_picture(patches, prefix, GridOptions(), label, ["class", "distillation"])
    assert made.grid.channels == (0, 1, 2, 3)
    assert_matches_golden("tokens_prefix2_grid3x4", made.picture.pixels)


def test_golden_signal_on_its_input_axis() -> None:
    # Input: two integer sawtooth/square waves of 120 samples; maps: 5 channels of 30 cells at
    # stride 4 (first centre 1.5), signed, with one NaN; integer arithmetic only.
    t = np.arange(120)
    signal = np.stack([(t % 20) - 10, np.where((t // 15) % 2 == 0, 3, -3)]).astype(np.float32)
    j = np.arange(30)
    maps = np.stack([(j % 6) - 2, j // 3, -(j % 5), (j % 4) * 2 - 3, np.zeros(30)]).astype(
        np.float32
    )
    maps[1, 7] = np.nan
    label = GridLabel("conv1", "Conv1d", (1, 5, 30), stamp="RANDOM WEIGHTS")
    made = make_signal_picture(
        maps, GridOptions(), label, signal=signal, placement=Placement(4.0, 1.5, 7.0)
    )
    assert made.channels == (0, 1, 2, 3, 4)
    assert made.picture.warnings == ("1 NaN/Inf values drawn in magenta",)
    assert_matches_golden("signal_stride4_nan", made.picture.pixels)


def test_golden_volume_montage() -> None:
    # (2, 10, 5, 6) signed volume from integer arithmetic: every 2nd slice, MIP, slice means.
    ramp = ((np.arange(2 * 10 * 5 * 6) * 7) % 19 - 9).reshape(2, 10, 5, 6).astype(np.float32)
    depth = np.arange(10, dtype=np.float32)[None, :, None, None]
    maps = ramp / 4 + depth / 2 * np.array([1.0, -1.0], dtype=np.float32)[:, None, None, None]
    maps[1, 3, 2, 2] = np.nan
    label = GridLabel("layer1.0.conv1", "Conv3d", (1, 2, 10, 5, 6), stamp="RANDOM WEIGHTS")
    made = make_volume_picture(maps, GridOptions(), label=label)
    assert made.slices == (0, 2, 4, 6, 8) and made.projection_kind == "max |x|, sign kept"
    assert_matches_golden("volume_montage", made.picture.pixels)


def test_golden_filters_of_the_trained_shapes_cnn_first_conv() -> None:
    sheet = fm.make_filter_sheet(fm.filters("shapes_cnn", "conv1"))
    assert sheet.kind == "rgb" and sheet.shown == tuple(range(16))
    assert_matches_golden("filters_shapes_cnn_conv1", sheet.pixels)


def test_golden_filters_of_a_random_resnet18_conv1() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    sheet = fm.make_filter_sheet(fm.filters(model, "conv1"), stamp="RANDOM WEIGHTS")
    assert sheet.kind == "rgb" and len(sheet.shown) == 64
    assert_matches_golden("filters_resnet18_conv1_random", sheet.pixels)


def test_golden_filters_of_a_grouped_conv_with_nan() -> None:
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    w = ((torch.arange(6 * 2 * 3 * 3) * 5) % 13 - 6).float().reshape(6, 2, 3, 3) / 4
    w[4, 1, 1, 1] = float("nan")
    with torch.no_grad():
        conv.weight.copy_(w)
    sheet = fm.make_filter_sheet(fm.filters(conv, ""), columns=3)
    assert sheet.kind == "kernels" and sheet.cmap == "RdBu_r"
    assert_matches_golden("filters_grouped_kernels_nan", sheet.pixels)


def test_golden_filters_of_a_linear_layer() -> None:
    linear = nn.Linear(7, 5)
    w = (((np.arange(5 * 7) * 3) % 11) - 5).reshape(5, 7).astype(np.float32) / 5
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
    sheet = fm.make_filter_sheet(fm.filters(linear, ""))
    assert sheet.kind == "matrix"
    assert_matches_golden("filters_linear_matrix", sheet.pixels)
