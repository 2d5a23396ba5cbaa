"""Geometry checked against input gradients: what is placed holds, what cannot hold is refused.

The oracle is the input gradient of single cells: every input pixel with a non-zero gradient must
lie inside the field the geometry reports for that cell, and between neighbouring cells whose
gradient stays clear of the input border, the gradient's extent must move by the stride.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision
from torch import nn

import featuremaps as fm
from featuremaps._errors import GeometryError, LayerError
from featuremaps.cli import main
from featuremaps.geometry import MapGeometry, compute_geometry
from featuremaps.hooks import HookedOutput, run_hooked
from featuremaps.layouts import get, spatial_maps
from featuremaps.selection import select_modules

UNET = """
import torch
from torch import nn


def block(i, o):
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1), nn.ReLU(), nn.Conv2d(o, o, 3, padding=1), nn.ReLU()
    )


class UNet(nn.Module):
    def __init__(self, up):
        super().__init__()
        self.enc1 = block(3, 8)
        self.pool = nn.MaxPool2d(2)
        self.enc2 = block(8, 16)
        self.up = up
        self.dec1 = block(24, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.enc1(x)
        b = self.enc2(self.pool(a))
        return self.head(self.dec1(torch.cat([a, self.up(b)], 1)))


def nearest():
    torch.manual_seed(0)
    return UNet(nn.Upsample(scale_factor=2, mode="nearest"))


def transposed():
    torch.manual_seed(0)
    return UNet(nn.ConvTranspose2d(16, 16, 2, stride=2))
"""


def _unet(factory: str = "nearest") -> nn.Module:
    module = ModuleType("unet_for_tests")
    exec(UNET, module.__dict__)
    return getattr(module, factory)().eval()  # type: ignore[no-any-return]


Box = tuple[int, int, int, int]  # y0, y1, x0, x1 of the non-zero input gradient


def _gradient_boxes(
    model: nn.Module, x: torch.Tensor, cells: dict[str, list[tuple[int, int]]]
) -> dict[str, dict[tuple[int, int], Box | None]]:
    """The box of non-zero input gradient of each cell, on each record's own 2-D grid."""
    layout_of: dict[str, str] = {}
    fm.capture(model, x, containers=True, copy=False,
               on_record=lambda r: layout_of.__setitem__(r.name, r.layout))  # fmt: skip
    grabbed: dict[str, torch.Tensor] = {}

    def sink(out: HookedOutput) -> None:
        if out.name in cells:
            grabbed[out.name] = out.tensor.clone()

    modules = select_modules(model, None, None, True, "model")
    xx = x.detach().clone().requires_grad_(True)
    run_hooked(model, xx, modules, sink, grad=True)
    mix = torch.Generator().manual_seed(1)
    boxes: dict[str, dict[tuple[int, int], Box | None]] = {}
    for name, wanted in cells.items():
        maps = spatial_maps(get(layout_of[name], grabbed[name].dim()), grabbed[name])
        assert maps is not None, name
        weights = torch.randn(maps.shape[1], generator=mix)
        boxes[name] = {}
        for r, c in wanted:
            (grad,) = torch.autograd.grad((maps[0, :, r, c] * weights).sum(), xx, retain_graph=True)
            ys, xs = torch.nonzero(grad[0].abs().sum(0) > 0, as_tuple=True)
            boxes[name][(r, c)] = (
                (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) if len(ys) else None
            )
    return boxes


def _placed(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, MapGeometry | str]:
    """What ``locate`` answers for each record: its geometry, or the refusal's message (it
    composes these two calls; one model pass serves all the records here)."""
    from featuremaps.geometry import measure_geometry

    every = select_modules(model, None, None, True, "model")
    analytic = compute_geometry(model, x, layers=every, method="analytic")
    found: dict[str, MapGeometry | str] = {}
    for name in names:
        if name in analytic:
            found[name] = analytic[name]
            continue
        try:
            found[name] = measure_geometry(model, x, every, name)
        except GeometryError as refused:
            found[name] = str(refused)
    return found


def _run(n: int) -> list[int]:
    start = min(max(n // 2 - 1, 0), max(n - 4, 0))
    return list(range(start, min(start + 4, n)))


def _check_against_gradients(model: nn.Module, x: torch.Tensor, names: list[str]) -> set[str]:
    """Assert the property for each record; return the names that were refused."""
    placed = _placed(model, x, names)
    height, width = int(x.shape[2]), int(x.shape[3])
    cells: dict[str, list[tuple[int, int]]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    records = fm.capture(model, x, layers=sorted({n.partition("#")[0] for n in names}),
                         containers=True)  # fmt: skip
    for name in names:
        record = records.get(name)
        maps = spatial_maps(get(record.layout, record.tensor.dim()), record.tensor)
        assert maps is not None, name
        h, w = int(maps.shape[2]), int(maps.shape[3])
        shapes[name] = (h, w)
        rows, cols = _run(h), _run(w)
        mid_r, mid_c = rows[len(rows) // 2], cols[len(cols) // 2]
        sampled = {(0, 0), (h - 1, w - 1), (0, w - 1)}
        sampled |= {(r, mid_c) for r in rows} | {(mid_r, c) for c in cols}
        cells[name] = sorted(sampled)
    boxes = _gradient_boxes(model, x, cells)
    refused = set()
    for name in names:
        geo = placed[name]
        h, w = shapes[name]
        rows, cols = _run(h), _run(w)
        mid_r, mid_c = rows[len(rows) // 2], cols[len(cols) // 2]
        along = {
            0: [boxes[name][(r, mid_c)] for r in rows],
            2: [boxes[name][(mid_r, c)] for c in cols],
        }
        if isinstance(geo, str):
            refused.add(name)
            assert "\n" not in geo and geo.startswith(("the ", "cell ", f"'{name}'")), geo
            # The oracle agrees it cannot hold: a field cut off by the border, or neighbours that
            # do not move by one fixed step.
            holds = True
            for at, run in along.items():
                clear = all(
                    b is not None and b[0] > 0 and b[2] > 0 and b[1] < height - 1
                    and b[3] < width - 1
                    for b in run
                )  # fmt: skip
                steps = {(b[at] - a[at], b[at + 1] - a[at + 1]) for a, b in itertools.pairwise(run)
                         if a is not None and b is not None}  # fmt: skip
                even = len(steps) == 1 and len({s for pair in steps for s in pair}) == 1
                holds = holds and clear and even and min(min(steps)) > 0
            assert not holds, (name, geo)
            continue
        assert geo.shape == (h, w), (name, geo.shape, (h, w))
        assert geo.y.stride > 0 and geo.x.stride > 0 and geo.y.size >= 1 and geo.x.size >= 1
        for (r, c), box in boxes[name].items():
            if box is None:
                continue
            y0, x0, y1, x1 = geo.cell_region(r, c)
            assert y0 <= y1 and x0 <= x1
            assert y0 <= box[0] and box[1] <= y1 and x0 <= box[2] and box[3] <= x1, (
                name, (r, c), box, (y0, y1, x0, x1)
            )  # fmt: skip
        for at, run in along.items():
            stride = geo.y.stride if at == 0 else geo.x.stride
            for a, b in itertools.pairwise(run):
                if a is None or b is None:
                    continue
                if min(a[0], b[0], a[2], b[2]) <= 0 or max(a[1], b[1]) >= height - 1:
                    continue  # cut off by the border: its extent does not show the shift
                if max(a[3], b[3]) >= width - 1:
                    continue
                if b[at + 1] - b[at] != a[at + 1] - a[at]:
                    continue  # an effective field cut by a max-pool's losing inputs
                assert (b[at] - a[at], b[at + 1] - a[at + 1]) == (stride, stride), (name, a, b)
    return refused


@pytest.mark.slow
def test_resnet18_geometry_holds_against_input_gradients() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 96, 96)
    names = ["conv1", "maxpool", "layer1", "layer2.0.downsample.0", "layer3", "layer4.1.relu#2"]
    assert _check_against_gradients(model, x, names) == set()


@pytest.mark.parametrize("factory", ["nearest", "transposed"])
def test_unet_geometry_holds_or_is_refused(factory: str) -> None:
    model = _unet(factory)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    names = ["enc1.0", "enc1", "pool", "enc2", "up", "dec1.0", "dec1.2", "dec1", "head"]
    refused = _check_against_gradients(model, x, names)
    # Everything after the upsampling is refused; the encoder is placed.
    assert refused == {"up", "dec1.0", "dec1.2", "dec1", "head"}


@pytest.mark.slow
def test_swin_geometry_holds_or_is_refused() -> None:
    model = torchvision.models.swin_t(weights=None).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    names = ["features.0.0", "features.0.2", "features.1"]
    refused = _check_against_gradients(model, x, names)
    assert refused == {"features.1"}  # windowed attention


def test_a_container_has_the_geometry_of_the_leaf_call_that_made_its_tensor() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    leaves = compute_geometry(model, x, method="analytic")
    for container, leaf in (("layer4", "layer4.1.relu#2"), ("layer3", "layer3.1.relu#2")):
        geo = fm.locate(model, x, container)
        assert (geo.y, geo.x, geo.shape) == (leaves[leaf].y, leaves[leaf].x, leaves[leaf].shape)
        assert (geo.method, geo.same_as) == ("analytic", leaf)
        assert geo.to_json()["same_as"] == leaf
    assert fm.locate(model, x, "layer4").y.stride == 32.0


def test_the_measurement_refuses_a_field_cut_off_by_the_border() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with pytest.raises(GeometryError, match=r"reaches the border of the 224x224 input"):
        fm.locate(model, x, "layer4.1.relu#2", method="empirical")
    assert issubclass(GeometryError, LayerError)


class ChannelsLast(nn.Module):
    """A patchify convolution, then LayerNorm and Linear on channels-last maps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 4, stride=4)
        self.permute = torchvision.ops.Permute([0, 2, 3, 1])
        self.norm = nn.LayerNorm(6)
        self.mlp = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(self.permute(self.conv(x))))  # type: ignore[no-any-return]


def test_channels_last_maps_are_measured_on_their_own_grid() -> None:
    x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    for name in ("norm", "mlp"):
        geo = fm.locate(ChannelsLast().eval(), x, name)
        assert geo.shape == (10, 12) and geo.method == "empirical"
        assert (geo.y.stride, geo.y.offset, geo.y.size) == (4.0, 1.5, 4.0)
        assert geo.x == geo.y
    assert _check_against_gradients(ChannelsLast().eval(), x, ["conv", "norm", "mlp"]) == set()


class Flipped(nn.Module):
    """A functional flip between two convolutions: its output is a new tensor of the shape of
    ``b``'s freed output, and the allocator tends to hand it the same memory."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.ReLU()
        self.c = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        return self.c(torch.flip(y, [2, 3]))  # type: ignore[no-any-return]


@pytest.mark.parametrize("size", [32, 64])
def test_the_analytic_chain_does_not_follow_memory_a_new_tensor_reuses(size: int) -> None:
    x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        found = compute_geometry(Flipped().eval(), x, method="analytic")
        assert "b" in found and "c" not in found  # mirrored: cell j does not see j's field


def test_cli_refuses_upsampled_layers_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "unet.py").write_text(UNET)
    spec = f"{tmp_path / 'unet.py'}:nearest"
    for layer in ("dec1", "head"):
        code = main(["locate", "-m", spec, "--size", "64x64", "--layer", layer, "--cell", "1,1"],
                    out=io.StringIO())  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"featuremaps: error: the cells of '{layer}' are not evenly spaced" in err
    buf = io.StringIO()
    assert main(["locate", "-m", spec, "--size", "64x64", "--layer", "enc2"], out=buf) == 0
    assert "stride 2x2, first cell centred at (0.5, 0.5), receptive field 14x14 (analytic, the " \
        "same tensor as enc2.3)" in buf.getvalue()  # fmt: skip


def test_run_places_the_first_convolution_of_a_probed_model(tmp_path: Path) -> None:
    """A model with channels-last modules runs shape probes inside the capture; the geometry
    followed through the run must still name and place the real pass's records."""
    import json

    fm.visualize(ChannelsLast().eval(), torch.rand(1, 3, 40, 48), out=tmp_path / "o")
    records = json.loads((tmp_path / "o" / "manifest.json").read_text())["records"]
    conv = next(r for r in records if r["name"] == "conv")
    assert conv["geometry"] == {
        "method": "analytic", "stride": [4.0, 4.0], "offset": [1.5, 1.5],
        "receptive_field": [4.0, 4.0],
    }  # fmt: skip


def test_spatial_maps_puts_tokens_and_channels_last_on_their_grid() -> None:
    from featuremaps.layouts import NHWC
    from featuremaps.layouts.registry import token_layout

    maps = torch.arange(2 * 5 * 2 * 3, dtype=torch.float32).reshape(2, 5, 2, 3)  # N, C, H, W
    tokens = torch.cat([torch.full((2, 1, 5), -1.0), maps.flatten(2).transpose(1, 2)], 1)
    for layout, given in (
        (token_layout(1, (2, 3), sequence_first=False), tokens),
        (token_layout(1, (2, 3), sequence_first=True), tokens.transpose(0, 1)),
        (NHWC, maps.permute(0, 2, 3, 1).contiguous()),
        (get("NCHW", 4), maps),
    ):
        found = spatial_maps(layout, given)
        assert found is not None and torch.equal(found, maps), layout.name
    assert spatial_maps(get("NC", 2), torch.zeros(2, 5)) is None


def test_a_call_that_never_happened_points_to_the_model_s_own_layer_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        GeometryError, match=r"'0#2' gave no tensor .* from fm\.list_layers\(model\)"
    ):
        fm.locate(model, x, "0#2")
    (tmp_path / "unet.py").write_text(UNET)
    spec = f"{tmp_path / 'unet.py'}:nearest"
    code = main(["locate", "-m", spec, "--size", "64x64", "--layer", "enc2#2"], out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and f"from 'featuremaps layers {spec}'" in err, err


def test_a_squeeze_excitation_gate_keeps_the_local_geometry_and_says_it_is_only_that() -> None:
    from torchvision.ops import SqueezeExcitation

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), SqueezeExcitation(8, 4), nn.Conv2d(8, 8, 3)
    ).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    found = compute_geometry(model, x, method="analytic")
    assert found["0"].method == "analytic"
    after = found["2"]
    assert (after.y.stride, after.y.size) == (2.0, 7.0)  # the convolutions' own chain
    assert "squeeze-excitation" in after.method and "whole input" in after.method
