"""Exact stitching: maps computed tile by tile with the planned halos equal a whole-image forward.

Oracle: the same model run once on the whole (small) image. Relative error is the max abs error
over the map's largest magnitude; the bound is 1e-4 (float summation order differs by window).
The halos must matter: the same plan without halos gets cells wrong. Locality probes must flag
models that mix information across the whole input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from featuremaps.geometry import AxisGeometry
from featuremaps.slide.forward import (
    EXACT_TOLERANCE,
    SlideLayer,
    TileForward,
    check_locality,
    resolve_layers,
    stitch,
    to_input,
)
from featuremaps.slide.plan import AxisPlan, Halo, axis_halo


class DilatedNet(nn.Module):
    """Strided and dilated convolutions, batch norm, in-place ReLU and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.dilated = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=2, dilation=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=4, dilation=4),
        )
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Sequential(nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.dilated(y)
        z += y
        return self.head(self.pool(self.act(z)))


def ihc_input(height: int, width: int) -> torch.Tensor:
    """A crop of scikit-image's IHC picture (real tissue texture), ImageNet-normalised."""
    from skimage import data

    picture = data.immunohistochemistry()[:height, :width]
    return to_input(picture, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def relative_error(full: torch.Tensor, stitched: torch.Tensor) -> float:
    diff = torch.nan_to_num((full - stitched).abs(), nan=math.inf)
    return float(diff.max()) / float(full.abs().max())


def stitched_vs_full(
    model: nn.Module, layer: str, x: torch.Tensor, core: int, halo: bool = True
) -> float:
    [resolved] = resolve_layers(model, [layer], "model", x[:, :, :128, :128])
    if not halo:
        resolved = SlideLayer(resolved.name, resolved.channels, resolved.geometry,
                              (Halo(0, 0), Halo(0, 0)))  # fmt: skip
    forward = TileForward(model, [layer], "model")
    full = forward(x)[layer]
    stitched = stitch(forward, [resolved], x, core, {layer: tuple(full.shape[1:])})[layer]
    return relative_error(full, stitched)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


@pytest.mark.parametrize(("layer", "core"), [("layer1", 48), ("layer2", 64)])
def test_resnet18_stitched_equals_whole_image(resnet18: nn.Module, layer: str, core: int) -> None:
    torch.set_num_threads(1)
    assert stitched_vs_full(resnet18, layer, ihc_input(200, 232), core) <= EXACT_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize(("layer", "core"), [("layer3", 96), ("layer4", 128)])
def test_resnet18_deep_layers_stitched_equal_whole_image(
    resnet18: nn.Module, layer: str, core: int
) -> None:
    torch.set_num_threads(1)
    assert stitched_vs_full(resnet18, layer, ihc_input(400, 432), core) <= EXACT_TOLERANCE


def test_without_halos_the_same_tiles_are_wrong(resnet18: nn.Module) -> None:
    # The oracle can fail: cores alone (as naive tilers do) give wrong cells at every seam.
    assert stitched_vs_full(resnet18, "layer2", ihc_input(200, 232), 64, halo=False) > 0.05


def test_dilated_model_stitched_equals_whole_image() -> None:
    model = DilatedNet().eval()
    [layer] = resolve_layers(model, ["head"], "DilatedNet", torch.zeros(1, 3, 128, 128))
    # stem 5x5/2, dilations 2 and 4 at stride 2, pool 3/2, head 3/2: R = 5 + 2·(4 + 8 + 2) + 4·2
    assert layer.geometry.x == AxisGeometry(8.0, 0.0, 41.0)
    assert stitched_vs_full(model, "head", ihc_input(150, 170), 24) <= EXACT_TOLERANCE


@pytest.mark.slow
def test_resnet50_with_dilation_stitched_equals_whole_image() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True]).eval()
    [layer] = resolve_layers(model, ["layer4"], "resnet50", torch.zeros(1, 3, 128, 128))
    assert layer.geometry.x.stride == 16  # dilation replaced layer4's stride
    assert stitched_vs_full(model, "layer4", ihc_input(352, 320), 96) <= EXACT_TOLERANCE


def test_resnet18_halos_match_the_formula(resnet18: nn.Module) -> None:
    layers = resolve_layers(
        resnet18, ["layer1", "layer2", "layer3", "layer4"], "resnet18", torch.zeros(1, 3, 64, 64)
    )
    # left S·ceil(P/S), right S·ceil(max(R−P−S,0)/S); resnet18: P = (R − 1)/2, offset 0
    expected = {"layer1": (24, 20), "layer2": (56, 48), "layer3": (112, 96), "layer4": (224, 192)}
    for layer in layers:
        assert (layer.halo[1].before, layer.halo[1].after) == expected[layer.name]
        assert layer.halo[0] == layer.halo[1]


@given(
    kernel=st.integers(1, 9),
    stride=st.integers(1, 4),
    padding=st.integers(0, 4),
    dilation=st.integers(1, 3),
)
def test_axis_halo_covers_the_receptive_field(
    kernel: int, stride: int, padding: int, dilation: int
) -> None:
    axis = AxisGeometry(1.0, 0.0, 1.0).compose(kernel, stride, padding, dilation)
    halo = axis_halo(axis)
    s = stride
    p = padding  # cell j sees j·s − p … j·s − p + R − 1
    r = dilation * (kernel - 1) + 1
    assert halo.before % s == 0 and halo.after % s == 0
    assert halo.before >= p and halo.before - s < max(p, 0)
    assert halo.after >= r - p - s and (halo.after == 0 or halo.after - s < r - p - s)


@given(length=st.integers(1, 3000), core=st.integers(1, 600), stride=st.sampled_from([1, 2, 8]))
def test_tile_cells_partition_the_map(length: int, core: int, stride: int) -> None:
    core = stride * math.ceil(core / stride)
    axis = AxisPlan(length, core, Halo(0, 0))
    total = math.ceil(length / stride)
    spans = [axis.cells(k, stride, total) for k in range(axis.count)]
    covered = np.zeros(total, dtype=int)
    for a, b in spans:
        covered[a:b] += 1
    assert (covered == 1).all()
    windows = [axis.window(k) for k in range(axis.count)]
    assert windows[0][0] == 0 and windows[-1][1] == length


def test_mobilenet_v3_small_is_flagged_approximate() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small().eval()
    layers = resolve_layers(model, ["features.4"], "mobilenet_v3_small", torch.zeros(1, 3, 96, 96))
    forward = TileForward(model, ["features.4"], "mobilenet_v3_small")
    locality = check_locality(forward, layers, 3, (16, 16))
    assert not locality.exact
    assert locality.corner_change > 0  # squeeze-excitation pools the whole input
    assert "approximate" in locality.reason


def test_resnet18_is_found_local(resnet18: nn.Module) -> None:
    torch.set_num_threads(1)
    layers = resolve_layers(resnet18, ["layer2"], "resnet18", torch.zeros(1, 3, 64, 64))
    locality = check_locality(TileForward(resnet18, ["layer2"], "resnet18"), layers, 3, (8, 8))
    assert locality.exact and locality.corner_change == 0
    assert locality.stitch_error <= EXACT_TOLERANCE


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 8)  # statistics over the whole map: not local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class SamePadding(nn.Module):
    """TensorFlow-style SAME padding: how much is padded depends on the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = [max(4 - 2 + (-n % 2), 0) for n in (x.shape[3], x.shape[2])]
        pad = (extra[0] // 2, extra[0] - extra[0] // 2, extra[1] // 2, extra[1] - extra[1] // 2)
        return torch.relu(self.conv(nn.functional.pad(x, pad)))


def test_group_norm_is_flagged_by_the_far_corner_probe() -> None:
    model = GroupNormNet().eval()
    layers = resolve_layers(model, ["norm"], "gn", torch.zeros(1, 3, 64, 64))
    locality = check_locality(TileForward(model, ["norm"], "gn"), layers, 3, (2, 2))
    assert not locality.exact and locality.corner_change > 0


def test_size_dependent_padding_is_flagged_by_the_stitching_probe() -> None:
    # Far cells do not move (the model is local), but windows of another size pad differently.
    model = SamePadding().eval()
    layers = [
        SlideLayer(
            "conv",
            4,
            resolve_layers(model, ["conv"], "same", torch.zeros(1, 3, 32, 32))[0].geometry,
            (Halo(0, 0), Halo(2, 2)),
        )
    ]
    locality = check_locality(TileForward(model, ["conv"], "same"), layers, 3, (2, 2))
    assert locality.corner_change == 0
    assert not locality.exact and locality.stitch_error > EXACT_TOLERANCE
