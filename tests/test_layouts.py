"""Layouts: the registry's invariants, and capture deciding each record's layout from evidence.

Oracles: models whose outputs encode their own coordinates, so a wrong axis, grid, prefix or
batch axis puts a value in the wrong place; twins whose outputs are equal by construction (an
activation after a ``Linear`` on a channels-last tensor draws exactly as its NCHW twin); and a
record's layout does not depend on which layers are selected, on containers, on a module that
permutes axes back, or on freed memory being reused by a later tensor.
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
        assert (record.layout, record.shape) == ("NHWC->NCHW", (1, 5, 7, C2)), record.name
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
    assert entries["act"].layout == "NHWC->NCHW"
    assert entries["act"].drawn_as == layouts.CHANNEL_GRID
    assert entries["act"].channels_shown == tuple(range(32))


def test_layout_does_not_depend_on_the_selection() -> None:
    model = ChannelsLastHead().eval()
    everything = {r.name: r.layout for r in fm.capture(model, X)}
    assert everything == {"conv": "NCHW", "lin": "NHWC->NCHW", "act": "NHWC->NCHW"}
    for layers in ("act", "lin", "conv", "a*"):
        alone = {r.name: r.layout for r in fm.capture(model, X, layers=layers)}
        assert alone == {n: everything[n] for n in alone}, layers
    assert [r.layout for r in fm.capture(model, X, types="GELU")] == ["NHWC->NCHW"]


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
    assert got["block.2"] == got["block"] == got["act"] == "NHWC->NCHW"
    assert got["block.0"] == "NCHW"


@pytest.mark.parametrize("channels", [6, 5], ids=["shape-changes", "square-shape-kept"])
def test_permuting_back_to_channels_first_is_not_nhwc(channels: int) -> None:
    # With 5 channels on a 5x5 input the permutation keeps the shape (1, 5, 5, 5): only its
    # strides say the axes moved.
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(4))
    c = fm.capture(convnext_like(channels), x)
    got = [(r.module_type, r.layout) for r in c]
    last = "NHWC->NCHW"
    assert got[1:6] == [("Permute", last), ("LayerNorm", last), ("Linear", last), ("GELU", last),
                        ("Linear", last)]  # fmt: skip
    assert got[6:] == [("Permute", "NCHW"), ("ReLU", "NCHW")]
    back = c.get("6")
    assert back.shape == (1, channels, 5, 5)
    assert np.array_equal(back.maps(0), back.tensor[0].numpy())


def test_freed_memory_reused_by_a_later_tensor_does_not_inherit_its_layout() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(6, 6, 1)
            self.lin = nn.Linear(6, 6)
            self.conv = nn.Conv2d(6, 6, 1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.lin(self.embed(x).permute(0, 2, 3, 1))  # (1, 6, 6, 6), NHWC
            c = self.conv(a.permute(0, 3, 1, 2).contiguous())
            memory = a.untyped_storage()
            del a
            # NCHW values written where the freed NHWC output was, as the allocator may do for
            # any new tensor of the same size (done by hand here so that it always happens).
            d = torch.empty(0).set_(memory, 0, c.shape)
            torch.mul(c, 2, out=d)
            return self.act(d)

    got = [(r.name, r.layout) for r in fm.capture(Net().eval(), torch.randn(1, 6, 6, 6))]
    assert got == [("embed", "NCHW"), ("lin", "NHWC->NCHW"), ("conv", "NCHW"), ("act", "NCHW")]


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
        assert record.layout_info.drawn_as == layouts.SIGNAL_MAP
        np.testing.assert_array_equal(record.maps(0), record.tensor[0].numpy())


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


def test_elementwise_module_without_known_input_layout_on_3d_is_decided_by_the_probes() -> None:
    # Nothing says what (1, 4, 6) is; the second input length moves axis 2 only: (N, C, L).
    c = fm.capture(nn.ReLU(), torch.randn(1, 4, 6))
    assert [(r.name, r.shape, r.layout) for r in c] == [("output", (1, 4, 6), "NCL")]
    assert c[0].layout_info.channel_axis == 1
    assert c.probed


# --- 3. registry sanity ------------------------------------------------------------------------


def test_registry_entries_are_consistent() -> None:
    names = [layout.name for layout in layouts.LAYOUTS]
    assert len(names) == len(set(names))
    for layout in layouts.LAYOUTS:
        assert layout.ndim is not None
        if layout.channel_axis is not None:
            assert 0 <= layout.channel_axis < layout.ndim, layout.name
        if layout.drawable:
            assert layout.drawn_as in (
                layouts.CHANNEL_GRID,
                layouts.BAR_STRIP,
                layouts.SIGNAL_MAP,
                layouts.VOLUME_MONTAGE,
            ), layout.name
            assert layout.reason is None
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
    grids = [x for x in (*layouts.LAYOUTS, layouts.NHWC) if x.drawn_as == layouts.CHANNEL_GRID]
    assert [x.name for x in grids] == ["NCHW", "NHWC->NCHW"]
    for layout in grids:
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
@pytest.mark.parametrize("given", [None, "NHWC->NCHW", "NCHW", "NCL", "NLD", "bogus"])
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
    # Without probes: a last-axis module's 4-D output is undecided (its other axes could be
    # anything); an element-wise module keeps its input's layout, or is channels-first by
    # elimination in a model of self-describing modules; a layout of another rank says nothing.
    [((1, 2, 3, 4), "Linear", None, "undecided"), ((1, 2, 3, 4), "LayerNorm", None, "undecided"),
     ((1, 2, 3, 4), "GELU", "NHWC", "NHWC->NCHW"), ((1, 2, 3, 4), "GELU", None, "NCHW"),
     ((1, 2, 3, 4), "GELU", "NCL", "NCHW"), ((1, 2, 3), "ReLU", "NCL", "NCL"),
     ((1, 2, 3), "ReLU", "NHWC", "undecided"), ((1, 2, 3), "BatchNorm1d", None, "NCL"),
     ((1, 2, 3), "ReLU", None, "undecided"), ((1, 2, 3, 4, 5), "Conv3d", None, "NCDHW"),
     ((1, 2, 3, 4, 5, 6), "X", None, "undecided")],
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
            f"output has {ndim} dimension(s); nothing to draw in a known layout"
        )


class GridTokens(nn.Module):
    """Patch tokens whose features 0, 1, 2 are the grid row, the grid column and the sample
    index; ``prefix`` tokens first, filled with -1 except feature 3 (their position)."""

    def __init__(
        self, prefix: int, patch: int = 4, sequence_first: bool = False, attribute: bool = True
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, patch, stride=patch)
        self.prefix = prefix
        self.sequence_first = sequence_first
        if attribute:
            self.num_prefix_tokens = prefix
        self.mix = nn.Linear(6, 6)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(6))
            self.mix.bias.zero_()
        self.act = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.embed(x)
        n, d, h, w = maps.shape
        coords = torch.zeros_like(maps)
        coords[:, 0] = torch.arange(h, dtype=maps.dtype).view(h, 1)
        coords[:, 1] = torch.arange(w, dtype=maps.dtype).view(1, w)
        coords[:, 2] = torch.arange(n, dtype=maps.dtype).view(n, 1, 1)
        tokens = coords.flatten(2).transpose(1, 2)
        head = torch.full((n, self.prefix, d), -1.0)
        head[..., 3] = torch.arange(self.prefix, dtype=maps.dtype)
        t = torch.cat([head, tokens], 1)
        if self.sequence_first:
            t = t.transpose(0, 1)
        return self.act(self.mix(t))


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
@pytest.mark.parametrize("sequence_first", [False, True])
def test_tokens_come_out_in_place(prefix: int, grid: tuple[int, int], sequence_first: bool) -> None:
    h, w = grid
    tokens = prefix + h * w
    model = GridTokens(prefix, sequence_first=sequence_first).eval()
    for batch in (2, tokens):  # a batch as large as the token count must not confuse the axes
        x = torch.randn(batch, 3, 4 * h, 4 * w, generator=torch.Generator().manual_seed(0))
        captured = fm.capture(model, x)
        assert captured.probed
        arrow = "LND->" if sequence_first else ""
        for name in ("mix", "act"):
            record = captured.get(name)
            assert record.layout == f"{arrow}tokens(prefix={prefix}, grid={h}x{w})"
            for sample in (0, batch - 1):
                maps = record.maps(sample)
                assert maps.shape == (6, h, w)
                rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                assert (maps[0] == rows.numpy()).all() and (maps[1] == cols.numpy()).all()
                assert (maps[2] == sample).all()
                patches, head = layouts.token_parts(record.layout_info, record.tensor, sample)
                assert (patches == maps).all()
                assert head.shape == (prefix, 6)
                assert (head[:, 3] == range(prefix)).all() and (head[:, :3] == -1).all()


def test_prefix_without_attributes_is_confirmed_at_a_second_input_size() -> None:
    model = GridTokens(2, attribute=False).eval()
    record = fm.capture(model, torch.randn(1, 3, 12, 20)).get("mix")
    assert record.layout == "tokens(prefix=2, grid=3x5)"
    assert "2 prefix at both input sizes" in record.layout_note


class FixedSize(GridTokens):
    """Refuses any other input size, as torchvision's ViT does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (12, 20):
            raise ValueError("wrong image size")
        return super().forward(x)


def test_prefix_that_nothing_confirms_is_never_guessed_as_a_grid() -> None:
    record = fm.capture(FixedSize(2, attribute=False).eval(), torch.randn(1, 3, 12, 20)).get("mix")
    assert record.layout == "NLD"
    # No patch grid is guessed: the tokens are drawn as a sequence, features x positions.
    assert record.layout_info.drawn_as == layouts.SEQUENCE_MAP
    assert "no patch grid fits 17 tokens" in record.layout_info.note


class ChannelsLast(nn.Module):
    """A conv, then a functional permute to (N, H, W, C), a per-pixel Linear and an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.proj = nn.Linear(5, 7)
        self.act = nn.GELU()
        self.shift = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.proj(self.conv(x).permute(0, 2, 3, 1)))
        return self.shift(torch.roll(y, 1, dims=1))  # a functional op: its layout is not followed


class ChannelsFirstTwin(nn.Module):
    """The same computation with channels first: the 1x1 conv is the Linear."""

    def __init__(self, other: ChannelsLast) -> None:
        super().__init__()
        self.conv = other.conv
        self.proj = nn.Conv2d(5, 7, 1)
        with torch.no_grad():
            self.proj.weight.copy_(other.proj.weight[:, :, None, None])
            self.proj.bias.copy_(other.proj.bias)
        self.act = nn.GELU()
        self.shift = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift(torch.roll(self.act(self.proj(self.conv(x))), 1, dims=2))


def test_channels_last_maps_equal_their_channels_first_twin() -> None:
    torch.manual_seed(0)
    last = ChannelsLast().eval()
    first = ChannelsFirstTwin(last).eval()
    x = torch.randn(2, 3, 9, 11)
    got, want = fm.capture(last, x), fm.capture(first, x)
    for name in ("proj", "act", "shift"):
        assert got.get(name).layout == "NHWC->NCHW"
        assert got.get(name).layout_info.channel_axis == 3
        assert want.get(name).layout == "NCHW"
        for sample in (0, 1):
            torch.testing.assert_close(
                torch.from_numpy(got.get(name).maps(sample)),
                torch.from_numpy(want.get(name).maps(sample)),
                rtol=1e-5,
                atol=1e-6,
            )
    assert "axes [1, 2] move with the input size" in got.get("shift").layout_note


class HeadsInside(nn.Module):
    """Attention internals (N, heads, T, d) out of an Identity, as timm's q_norm gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.q_norm = nn.Identity()
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.embed(x).flatten(2).transpose(1, 2))  # (N, T, 8)
        n, length, _ = t.shape
        return self.q_norm(t.reshape(n, length, 2, 4).transpose(1, 2))  # (N, 2, T, 4)


def test_attention_internals_are_undecided_not_drawn_as_maps() -> None:
    record = fm.capture(HeadsInside().eval(), torch.randn(1, 3, 16, 16)).get("q_norm")
    assert record.shape == (1, 2, 16, 4)
    assert record.layout == "undecided"
    assert not record.layout_info.drawable
    assert "only axis 2 moves" in record.layout_note
    with pytest.raises(fm.OptionError, match="has no maps to draw: layout undecided"):
        record.maps(0)


def test_recurrent_states_are_states_not_tokens() -> None:
    lstm = nn.LSTM(8, 16, num_layers=2).eval()
    captured = fm.capture(lstm, torch.randn(5, 3, 8))  # (L, N, H): sequence first
    assert captured.get("output.0").layout == "LND->NLD"
    assert captured.get("output.1.0").layout == "states(layers, N, H)"
    assert captured.get("output.1.1").layout_info.batch_axis == 1


def test_a_selected_activation_after_conv1d_keeps_its_channels() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 38, 3))
    captured = fm.capture(model.eval(), torch.randn(1, 2, 40), layers="1")
    assert [(r.name, r.layout) for r in captured] == [("1", "NCL")]
    assert not captured.probed  # a model of self-describing modules runs once


def test_channels_first_moves_batch_and_channels_for_every_layout() -> None:
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(3, 2, 4)  # (L, N, D)
    lnd = layouts.get("LND->NLD", 3)
    moved = layouts.channels_first(lnd, t)
    assert moved is not None
    torch.testing.assert_close(moved, t.permute(1, 2, 0))


class AfterTheLastModule(nn.Module):
    """A functional op after the last module: the model's output differs from every record."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.fc(x)
        return {"logits": y, "scaled": torch.log(y - y.max() - 1.0) * 0 + y.sqrt()}


def test_the_models_own_output_is_a_record_unless_a_module_already_holds_it() -> None:
    torch.manual_seed(0)
    model = AfterTheLastModule().eval()
    x = torch.randn(2, 4)
    captured = fm.capture(model, x)
    assert captured.outputs == {"logits": "fc", "scaled": "output.scaled"}
    record = captured.get("output.scaled")
    assert record.module == "output" and record.layout == "NC"
    with torch.no_grad():
        torch.testing.assert_close(record.tensor, model(x)["scaled"], equal_nan=True)
    assert torch.isnan(record.tensor).any()  # the NaN a functional op made is kept
    # Changed in place after the module returned: no longer the module's record.
    inplace = nn.Sequential(nn.Linear(4, 3))
    inplace.register_forward_hook(lambda m, a, out: out.mul_(2))
    assert fm.capture(inplace.eval(), x).outputs == {"": "output"}


def test_top_5_is_named_from_weights_metadata_and_marked_meaningless() -> None:
    from featuremaps.predictions import categories, prediction

    loaded = fm.load_model("resnet18", "none", offline=True)
    found = categories(loaded)
    assert found is not None
    names, source = found
    assert source == "weights metadata ResNet18_Weights.IMAGENET1K_V1" and len(names) == 1000
    logits = torch.zeros(1, 1000, dtype=torch.float64)
    logits[0, [7, 3, 999, 500, 1]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    result = prediction(logits, names, source, loaded.random_weights)
    assert result is not None and result["meaningless"] and result["random_weights"]
    assert [p["index"] for p in result["top"]] == [7, 3, 999, 500, 1]
    assert [p["label"] for p in result["top"]] == [names[i] for i in (7, 3, 999, 500, 1)]
    expected = torch.softmax(logits[0], 0)[[7, 3, 999, 500, 1]].tolist()
    assert [p["probability"] for p in result["top"]] == pytest.approx(expected, rel=1e-12)
    assert prediction(torch.zeros(1, 10), names, source, False) is None  # not 1000 classes


class Detector(nn.Module):
    """A detector-like output: per image a dict of unbatched tensors, some of them empty."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)  # a module type that makes the capture probe

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        maps = self.conv(x)
        return [
            {"boxes": maps.new_zeros((0, 4)), "scores": maps[i].mean((1, 2))} for i in range(len(x))
        ]


def test_detector_outputs_are_listed_with_reasons_and_nothing_crashes() -> None:
    [result] = fm.visualize(Detector().eval(), torch.randn(1, 3, 8, 8))
    by_name = {r.name: r for r in result.records}
    boxes, scores = by_name["output.0.boxes"], by_name["output.0.scores"]
    assert boxes.layout == "undecided" and boxes.drawn_as is None
    assert "no axis follows the batch size" in str(boxes.skipped)
    assert scores.layout == "N" and scores.skipped == "output has 1 dimension(s); nothing to draw"
    assert by_name["conv"].drawn_as == "channel grid"
    assert result.manifest["outputs"] == {
        "0.boxes": "output.0.boxes",
        "0.scores": "output.0.scores",
    }


@pytest.mark.parametrize(("name", "batch_axis"), [("NLD", 0), ("LND->NLD", 1)])
def test_a_sequence_is_drawn_as_features_by_positions(name: str, batch_axis: int) -> None:
    t = torch.randn(2, 7, 5) if batch_axis == 0 else torch.randn(7, 2, 5)
    layout = layouts.get(name, 3)
    assert layout.drawn_as == layouts.SEQUENCE_MAP
    one = t[1] if batch_axis == 0 else t[:, 1]  # (L, D)
    np.testing.assert_array_equal(layouts.drawable_maps(layout, t, 1), one.T.numpy())
    assert layouts.maps_shape(layout, tuple(t.shape)) == (5, 7)
