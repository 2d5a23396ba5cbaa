"""Recomputed attention probabilities against nn.MultiheadAttention's own returned weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featuremaps._errors import CaptureError
from featuremaps.attention import recompute_attention


def _oracle_case(
    batch_first: bool, packed: bool, bias_kv: bool = False, zero_attn: bool = False
) -> tuple[nn.MultiheadAttention, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    kdim = None if packed else 12
    mha = nn.MultiheadAttention(
        16,
        4,
        batch_first=batch_first,
        kdim=kdim,
        vdim=kdim,
        add_bias_kv=bias_kv,
        add_zero_attn=zero_attn,
    ).eval()
    assert mha._qkv_same_embed_dim is packed
    n, length, source = 3, 5, 7
    q = torch.randn((n, length, 16) if batch_first else (length, n, 16))
    kv_width = 16 if packed else 12
    k = torch.randn((n, source, kv_width) if batch_first else (source, n, kv_width))
    v = torch.randn_like(k)
    return mha, q, k, v


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("packed", [True, False])
def test_recomputed_attention_equals_the_modules_returned_weights(
    batch_first: bool, packed: bool
) -> None:
    mha, q, k, v = _oracle_case(batch_first, packed)
    with torch.no_grad():
        _, expected = mha(q, k, v, need_weights=True, average_attn_weights=False)
        got = recompute_attention(mha, q, k, v)
    assert got.dtype == torch.float32 and got.shape == (3, 4, 5, 7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias_kv", [True, False])
@pytest.mark.parametrize("zero_attn", [True, False])
def test_recomputed_attention_with_masks_and_appended_keys(bias_kv: bool, zero_attn: bool) -> None:
    mha, q, k, v = _oracle_case(True, True, bias_kv, zero_attn)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 5:] = True
    padding[2, 0] = True
    causal_ish = torch.triu(torch.ones(5, 7, dtype=torch.bool), diagonal=3)
    float_mask = torch.randn(3 * 4, 5, 7)
    with torch.no_grad():
        for kwargs in (
            {"key_padding_mask": padding},
            {"attn_mask": causal_ish},
            {"attn_mask": float_mask},
            {"attn_mask": causal_ish, "key_padding_mask": padding},
        ):
            _, expected = mha(q, k, v, need_weights=True, average_attn_weights=False, **kwargs)
            got = recompute_attention(mha, q, k, v, **kwargs)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_recomputed_attention_unbatched() -> None:
    mha, q, k, v = _oracle_case(False, True)
    with torch.no_grad():
        _, expected = mha(q[:, 0], k[:, 0], v[:, 0], need_weights=True, average_attn_weights=False)
        got = recompute_attention(mha, q[:, 0], k[:, 0], v[:, 0])
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-6)


def test_recomputing_attention_refuses_inputs_that_do_not_fit() -> None:
    mha, q, k, v = _oracle_case(True, True)
    with pytest.raises(CaptureError, match=r"query of shape \(3, 5, 8\).*embed_dim=16"):
        recompute_attention(mha, q[..., :8], k, v)
