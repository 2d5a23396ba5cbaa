"""Attention probabilities in a capture: recomputed for MultiheadAttention calls that did not
return them, the model's own when it did, and their pictures on the patch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps import layouts
from featuremaps._errors import OptionError
from featuremaps.render import GridLabel, GridOptions
from featuremaps.render.attention import make_attention_picture
from goldtest import assert_matches_golden

MHA = "self_attention"


class TinyViT(nn.Module):
    """A class token and 4x3 patches of an 16x12 image, one attention layer."""

    def __init__(self, need_weights: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        self.need_weights = need_weights
        self.batch_first = batch_first
        self.conv_proj = nn.Conv2d(3, 8, 4, 4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.ln = nn.LayerNorm(8)
        self.self_attention = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv_proj(x).flatten(2).transpose(1, 2)
        return self.ln(torch.cat([self.class_token.expand(len(x), -1, -1), t], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tokens(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        a, _ = self.self_attention(
            y, y, y, need_weights=self.need_weights, average_attn_weights=False
        )
        if not self.batch_first:
            a = a.transpose(0, 1)
        return self.head(a[:, 0])


def _model_and_input(**kwargs: bool) -> tuple[TinyViT, torch.Tensor]:
    torch.manual_seed(0)
    return TinyViT(**kwargs).eval(), torch.randn(2, 3, 16, 12)


def _expected(model: TinyViT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model.tokens(x)
        if not model.batch_first:
            y = y.transpose(0, 1)
        _, w = model.self_attention(y, y, y, need_weights=True, average_attn_weights=False)
    return w


@pytest.mark.parametrize("batch_first", [True, False])
def test_recomputed_attention_record_equals_the_modules_own_weights(batch_first: bool) -> None:
    model, x = _model_and_input(batch_first=batch_first)
    cap = fm.capture(model, x, layers=["ln", MHA])
    record = cap.get(f"{MHA}.attention")
    assert record.module == MHA and record.module_type == "MultiheadAttention"
    assert record.layout == "attention(N, heads, L, S; prefix=1, grid=4x3)"
    assert record.layout_note.startswith("recomputed")
    assert record.layout_info.drawn_as == layouts.ATTENTION_MAP
    torch.testing.assert_close(record.tensor, _expected(model, x), rtol=1e-5, atol=1e-6)
    # After the module's own output, in execution order.
    names = cap.names()
    assert names.index(f"{MHA}.0") < names.index(f"{MHA}.attention")


def test_attention_is_recomputed_for_all_layers_and_glob_patterns_not_under_other_types() -> None:
    model, x = _model_and_input()
    assert f"{MHA}.attention" in fm.capture(model, x).names()
    assert f"{MHA}.attention" in fm.capture(model, x, layers="self_*").names()
    assert f"{MHA}.attention" not in fm.capture(model, x, layers="ln").names()
    assert f"{MHA}.attention" not in fm.capture(model, x, types="Linear").names()


def test_weights_the_model_returns_are_used_not_recomputed() -> None:
    model, x = _model_and_input(need_weights=True)
    cap = fm.capture(model, x, layers=["ln", MHA])
    assert f"{MHA}.attention" not in cap.names()
    record = cap.get(f"{MHA}.1")
    assert record.layout == "attention(N, heads, L, S; prefix=1, grid=4x3)"
    assert record.layout_note == "returned by the model"
    torch.testing.assert_close(record.tensor, _expected(model, x))


def test_attention_layout_names_round_trip_and_rows_are_the_tensors_slices() -> None:
    weights = torch.rand(2, 3, 13, 13)
    layout = layouts.get("attention(N, heads, L, S; prefix=1, grid=4x3)", 4)
    assert (layout.drawn_as, layout.prefix, layout.grid) == (layouts.ATTENTION_MAP, 1, (4, 3))
    assert layouts.centre_patch(layout) == (2, 1)
    first = layouts.attention_rows(layout, weights, 1, 0)
    np.testing.assert_array_equal(first, weights[1, :, 0, 1:].reshape(3, 4, 3).numpy())
    patch = layouts.attention_rows(layout, weights, 0, (2, 1))
    np.testing.assert_array_equal(patch[:, 2, 1], weights[0, :, 1 + 2 * 3 + 1, 1 + 2 * 3 + 1])
    np.testing.assert_array_equal(layouts.drawable_maps(layout, weights, 1), first)
    assert layouts.maps_shape(layout, (2, 3, 13, 13)) == (3, 4, 3)
    # Without a grid that fits both axes: listed, not drawn.
    tokens = layouts.get("tokens(prefix=1, grid=4x3)", 3)
    assert layouts.attention(tokens, (2, 3, 13, 13), "recomputed").drawn_as is not None
    assert layouts.attention(tokens, (2, 3, 13, 5), "x").drawn_as is None
    assert layouts.attention(None, (2, 3, 13, 13), "x").drawn_as is None


def test_attention_rows_refuse_a_patch_outside_the_grid() -> None:
    layout = layouts.get("attention(N, heads, L, S; prefix=1, grid=4x3)", 4)
    with pytest.raises(OptionError, match=r"patch \(4, 0\) asked for, but the patch grid is 4x3"):
        layouts.attention_rows(layout, torch.rand(1, 2, 13, 13), 0, (4, 0))


def test_golden_attention_per_head_class_token_and_centre_patch() -> None:
    # Two heads on a 3x4 grid; values from integers only: head 0 grows along rows, head 1 along
    # columns; the patch rows peak at the patch itself (row 1, column 2) in head 0.
    rows, cols = np.mgrid[0:3, 0:4]
    first = np.stack([(rows + 1) / 60, (cols + 1) / 60]).astype(np.float32)
    patch = np.stack([np.zeros((3, 4)), (rows * cols) / 60]).astype(np.float32)
    patch[0, 1, 2] = 0.5
    label = GridLabel(f"{MHA}.attention", "MultiheadAttention", (1, 2, 13, 13), "RANDOM WEIGHTS")
    made = make_attention_picture(first, patch, (1, 2), GridOptions(), label, "recomputed")
    assert made.first is not None and made.first.channels == (0, 1)
    assert made.patch.value_range is not None and made.patch.value_range.vmax == 0.5
    assert_matches_golden("attention_heads2_grid3x4", made.picture.pixels)


def test_run_draws_attention_per_head() -> None:
    model, x = _model_and_input()
    (result,) = fm.visualize(model, x[:1], layers=MHA)
    (summary,) = [r for r in result.records if r.name == f"{MHA}.attention"]
    assert summary.skipped is None and summary.drawn_as == layouts.ATTENTION_MAP
    assert summary.channels_shown == (0, 1)  # both heads
    assert f"{MHA}.attention" in result.grids


def test_run_draws_the_chosen_patchs_attention() -> None:
    model, x = _model_and_input()
    (result,) = fm.visualize(model, x[:1], layers=MHA, attention_patch=(0, 2))
    record = fm.capture(model, x[:1], layers=MHA).get(f"{MHA}.attention")
    layout = record.layout_info
    first = layouts.attention_rows(layout, record.tensor, 0, 0)
    patch = layouts.attention_rows(layout, record.tensor, 0, (0, 2))
    label = GridLabel(record.name, record.module_type, record.shape)
    expected = make_attention_picture(first, patch, (0, 2), GridOptions(), label, "recomputed")
    np.testing.assert_array_equal(result.grids[record.name].pixels, expected.picture.pixels)
