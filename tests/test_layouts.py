"""Layouts: the registry's invariants, and capture deciding each record's layout from evidence.

Guards that an activation after a ``Linear`` on a channels-last tensor stays ``NHWC`` (its maps,
its picture and its channel count are those of the NCHW twin tensor), that ``Conv1d`` outputs and
the activations after them are ``NCL`` and token outputs ``NLD``, and that a record's layout does
not depend on which layers are selected, on containers, on a module that permutes axes back, or
on freed memory being reused by a later tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featuremaps as fm
from featuremaps import layouts
from featuremaps.render import GridLabel, GridOptions

C2 = 40  # more than the 32 channels a grid shows by default
X = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(3))  # H != W != channels


class ChannelsLastHead(nn.Module):
    """Conv2d, then a Linear and a GELU on the (N, H, W, C) permutation (a ConvNeXt-style MLP)."""

    def __init__(self, c2: int = C2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.lin = nn.Linear(6, c2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(self.conv(x).permute(0, 2, 3, 1)))


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def convnext_like(channels: int) -> nn.Sequential:
    """Conv → to channels-last → LayerNorm → Linear → GELU → Linear → back to NCHW → ReLU."""
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(channels),
        nn.Linear(channels, 2 * channels),
        nn.GELU(),
        nn.Linear(2 * channels, channels),
        Permute(0, 3, 1, 2),
        nn.ReLU(),
    ).eval()


# --- 1. the NHWC twin oracle -------------------------------------------------------------------


def test_activation_after_channels_last_linear_is_nhwc_with_the_twin_maps() -> None:
    model = ChannelsLastHead().eval()
    c = fm.capture(model, X)
    conv, lin, act = c.get("conv"), c.get("lin"), c.get("act")

    assert (conv.layout, conv.shape) == ("NCHW", (1, 6, 5, 7))
    assert np.array_equal(conv.maps(0), conv.tensor[0].numpy())
    torch.testing.assert_close(act.tensor, F.gelu(lin.tensor), rtol=0, atol=0)
    for record in (lin, act):
        assert (record.layout, record.shape) == ("NHWC", (1, 5, 7, C2)), record.name
        assert record.layout_info.channel_axis == 3
        maps = record.maps(0)
        assert maps.shape == (C2, 5, 7)
        assert np.array_equal(maps, record.tensor[0].permute(2, 0, 1).numpy())
        assert layouts.maps_shape(record.layout_info, record.shape) == (C2, 5, 7)
        first = layouts.channels_first(record.layout_info, record.tensor)
        assert first is not None
        assert torch.equal(first, record.tensor.permute(0, 3, 1, 2))


@pytest.mark.parametrize("selection", ["lin,act", "act"])
def test_nhwc_records_draw_exactly_as_their_nchw_twin(selection: str) -> None:
    model = ChannelsLastHead().eval()
    captured = fm.capture(model, X)
    [result] = fm.visualize(model, X, layers=selection)

    assert set(result.grids) == set(selection.split(","))
    for name, grid in result.grids.items():
        record = captured.get(name)
        assert grid.channels == tuple(range(min(32, C2)))
        assert grid.total_channels == C2
        twin = record.tensor.permute(0, 3, 1, 2).contiguous()  # the same values, NCHW
        label = GridLabel(name, record.module_type, record.shape)
        expected = fm.make_grid(twin[0].numpy(), GridOptions(), label=label)
        assert np.array_equal(grid.pixels, expected.pixels), name
        # The untransposed sample would be 5 channels of 7x40 maps: another picture.
        wrong = fm.make_grid(record.tensor[0].numpy(), GridOptions(), label=label)
        assert wrong.total_channels == 5
        assert grid.pixels.shape != wrong.pixels.shape or not np.array_equal(
            grid.pixels, wrong.pixels
        )
    entries = {r.name: r for r in result.records}
    assert entries["act"].layout == "NHWC"
    assert entries["act"].drawn_as == layouts.CHANNEL_GRID
    assert entries["act"].channels_shown == tuple(range(32))


def test_layout_does_not_depend_on_the_selection() -> None:
    model = ChannelsLastHead().eval()
    everything = {r.name: r.layout for r in fm.capture(model, X)}
    assert everything == {"conv": "NCHW", "lin": "NHWC", "act": "NHWC"}
    for layers in ("act", "lin", "conv", "a*"):
        alone = {r.name: r.layout for r in fm.capture(model, X, layers=layers)}
        assert alone == {n: everything[n] for n in alone}, layers
    assert [r.layout for r in fm.capture(model, X, types="GELU")] == ["NHWC"]


def test_a_container_keeps_the_layout_of_the_output_it_returns() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Permute(0, 2, 3, 1))
            self.block.append(nn.Linear(4, 6))
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.block(x))

    got = {r.name: r.layout for r in fm.capture(Outer().eval(), X, containers=True)}
    assert got["block.2"] == got["block"] == got["act"] == "NHWC"
    assert got["block.0"] == "NCHW"


@pytest.mark.parametrize("channels", [6, 5], ids=["shape-changes", "square-shape-kept"])
def test_permuting_back_to_channels_first_is_not_nhwc(channels: int) -> None:
    # With 5 channels on a 5x5 input the permutation keeps the shape (1, 5, 5, 5): only its
    # strides say the axes moved.
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    c = fm.capture(convnext_like(channels), x)
    got = [(r.module_type, r.layout) for r in c]
    assert got[2:6] == [("LayerNorm", "NHWC"), ("Linear", "NHWC"), ("GELU", "NHWC"),
                        ("Linear", "NHWC")]  # fmt: skip
    assert got[6:] == [("Permute", "NCHW"), ("ReLU", "NCHW")]
    back = c.get("6")
    assert back.shape == (1, channels, 5, 5)
    assert np.array_equal(back.maps(0), back.tensor[0].numpy())


def test_freed_memory_reused_by_a_later_tensor_does_not_inherit_its_layout() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 6)
            self.conv = nn.Conv2d(6, 6, 1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.lin(x)  # (1, 6, 6, 6), NHWC
            c = self.conv(a.permute(0, 3, 1, 2).contiguous())
            memory = a.untyped_storage()
            del a
            # NCHW values written where the freed NHWC output was, as the allocator may do for
            # any new tensor of the same size (done by hand here so that it always happens).
            d = torch.empty(0).set_(memory, 0, c.shape)
            torch.mul(c, 2, out=d)
            return self.act(d)

    got = [(r.name, r.layout) for r in fm.capture(Net().eval(), torch.randn(1, 6, 6, 6))]
    assert got == [("lin", "NHWC"), ("conv", "NCHW"), ("act", "NCHW")]


def test_zero_channels_masks_the_channel_axis_capture_reports() -> None:
    model = ChannelsLastHead().eval()
    with torch.no_grad():
        plain = model(X)
        with fm.zero_channels(model, {"act": [0]}):
            masked = model(X)
    assert torch.all(masked[..., 0] == 0)
    assert torch.equal(masked[..., 1:], plain[..., 1:])


# --- 2. Conv1d propagation, tokens -------------------------------------------------------------


def test_conv1d_outputs_and_the_activations_after_them_are_ncl() -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 5, 3), nn.ReLU(), nn.Conv1d(5, 4, 3), nn.ReLU(inplace=True)
    ).eval()
    x = torch.randn(1, 2, 40, generator=torch.Generator().manual_seed(5))
    c = fm.capture(model, x)
    assert [(r.name, r.module_type, r.shape, r.layout) for r in c] == [
        ("0", "Conv1d", (1, 5, 38), "NCL"),
        ("1", "ReLU", (1, 5, 38), "NCL"),
        ("2", "Conv1d", (1, 4, 36), "NCL"),
        ("3", "ReLU", (1, 4, 36), "NCL"),
    ]
    torch.testing.assert_close(c.get("1").tensor, F.relu(c.get("0").tensor), rtol=0, atol=0)
    for record, channels in zip(c, (5, 5, 4, 4), strict=True):
        assert record.layout_info.channel_axis == 1
        first = layouts.channels_first(record.layout_info, record.tensor)
        assert first is not None and first.shape[1] == channels
        assert torch.equal(first, record.tensor)
        assert not record.layout_info.drawable
        with pytest.raises(fm.OptionError, match=r"NCL"):
            record.maps(0)


def test_linear_on_tokens_and_the_gelu_after_it_are_nld() -> None:
    model = nn.Sequential(nn.Linear(6, 9), nn.GELU()).eval()
    x = torch.randn(2, 7, 6, generator=torch.Generator().manual_seed(6))
    c = fm.capture(model, x)
    assert [(r.shape, r.layout) for r in c] == [((2, 7, 9), "NLD"), ((2, 7, 9), "NLD")]
    for record in c:
        assert record.layout_info.channel_axis == 2
        first = layouts.channels_first(record.layout_info, record.tensor)
        assert first is not None and first.shape == (2, 9, 7)
        assert torch.equal(first, record.tensor.permute(0, 2, 1))


def test_elementwise_module_without_known_input_layout_on_3d_falls_back_to_nld() -> None:
    c = fm.capture(nn.ReLU(), torch.randn(1, 4, 6))
    assert [(r.name, r.shape, r.layout) for r in c] == [("output", (1, 4, 6), "NLD")]
    assert c[0].layout_info.channel_axis == 2


# --- 3. registry sanity ------------------------------------------------------------------------


def test_registry_entries_are_consistent() -> None:
    names = [layout.name for layout in layouts.LAYOUTS]
    assert len(names) == len(set(names))
    for layout in layouts.LAYOUTS:
        assert layout.ndim is not None
        if layout.channel_axis is not None:
            assert 0 <= layout.channel_axis < layout.ndim, layout.name
        if layout.drawable:
            assert layout.drawn_as == layouts.CHANNEL_GRID and layout.reason is None
            assert layout.channel_axis is not None
            assert layouts.skip_reason(layout) is None
        else:
            assert layout.drawn_as is None and layout.to_maps is None
            assert isinstance(layout.reason, str) and layout.reason
            assert layouts.skip_reason(layout) == layout.reason
        assert layouts.skip_reason(layout, complex_valued=True) == (
            "complex-valued output; not drawn"
        )
        if layout.to_maps is not None:
            assert sorted(layout.to_maps) == list(range(layout.ndim - 1))
        assert layouts.get(layout.name, layout.ndim) is layout


def test_drawable_layouts_put_the_channel_axis_first_in_their_maps() -> None:
    for layout in (x for x in layouts.LAYOUTS if x.drawable):
        assert layout.channel_axis is not None
        shape = (2, 3, 4, 5)
        t = torch.arange(float(np.prod(shape))).reshape(shape)
        maps = layouts.drawable_maps(layout, t, 1)
        assert maps.shape == layouts.maps_shape(layout, shape)
        assert maps.shape[0] == shape[layout.channel_axis]
        first = layouts.channels_first(layout, t)
        assert first is not None
        assert np.array_equal(maps, first[1].numpy())


@pytest.mark.parametrize("ndim", range(7))
@pytest.mark.parametrize("module_type", ["Conv2d", "Linear", "ReLU", "Conv1d", "", "LayerNorm"])
@pytest.mark.parametrize("given", [None, "NHWC", "NCHW", "NCL", "NLD", "bogus"])
def test_decide_never_raises_and_matches_the_rank(
    ndim: int, module_type: str, given: str | None
) -> None:
    layout = layouts.decide((2,) * ndim, module_type, given)
    assert layout.ndim == ndim
    again = layouts.get(layout.name, ndim)  # what the report reads back from the manifest
    assert (again.name, again.channel_axis, again.drawn_as, again.reason) == (
        layout.name, layout.channel_axis, layout.drawn_as, layout.reason
    )  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "module_type", "given", "name"),
    [((1, 2, 3, 4), "Linear", None, "NHWC"), ((1, 2, 3, 4), "LayerNorm", None, "NHWC"),
     ((1, 2, 3, 4), "GELU", "NHWC", "NHWC"), ((1, 2, 3, 4), "GELU", None, "NCHW"),
     ((1, 2, 3, 4), "GELU", "NCL", "NCHW"), ((1, 2, 3), "ReLU", "NCL", "NCL"),
     ((1, 2, 3), "ReLU", "NHWC", "NLD"), ((1, 2, 3), "BatchNorm1d", None, "NCL"),
     ((1, 2, 3), "ReLU", None, "NLD"), ((1, 2, 3, 4, 5), "Conv3d", None, "NCDHW"),
     ((1, 2, 3, 4, 5, 6), "X", None, "6-D")],
)  # fmt: skip
def test_decide_uses_module_type_and_given_layout(
    shape: tuple[int, ...], module_type: str, given: str | None, name: str
) -> None:
    assert layouts.decide(shape, module_type, given).name == name


def test_get_falls_back_to_a_generic_undrawn_layout() -> None:
    for name, ndim in (("NCHW", 3), ("bogus", 4), ("6-D", 6)):
        layout = layouts.get(name, ndim)
        assert (layout.name, layout.ndim, layout.channel_axis) == (f"{ndim}-D", ndim, None)
        assert not layout.drawable and layout.reason == (
            f"output has {ndim} dimension(s); channel grids need (N, C, H, W)"
        )
