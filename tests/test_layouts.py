"""Layouts decided from evidence: tokens on their patch grid, channels-last maps, undecided ones.

Oracles: models whose outputs encode their own coordinates, so a wrong axis, grid, prefix or
batch axis puts a value in the wrong place; and twins whose outputs are equal by construction.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps import layouts


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


def test_prefix_that_nothing_confirms_is_undrawn_never_guessed() -> None:
    record = fm.capture(FixedSize(2, attribute=False).eval(), torch.randn(1, 3, 12, 20)).get("mix")
    assert record.layout == "NLD"
    assert not record.layout_info.drawable
    assert "no patch grid fits 17 tokens" in str(layouts.skip_reason(record.layout_info))


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
