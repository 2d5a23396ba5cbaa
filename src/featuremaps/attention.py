"""Attention probabilities of an ``nn.MultiheadAttention`` call, recomputed from its inputs.

Pure: tensors and a module in, a tensor out. Models often call their attention with
``need_weights=False`` (torchvision's ViT does), so the probabilities never exist; they are
recomputed here from the call's query, key and value and the module's own projections:
``softmax(Q Kᵀ / √d_head)`` per head, with the module's ``bias_k``/``bias_v``, ``add_zero_attn``
and the masks it was given, as ``nn.MultiheadAttention`` computes them in eval mode (no dropout).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featuremaps._errors import CaptureError

__all__ = ["recompute_attention"]


def _mask_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask.float()


def _pad_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more key column (allowed) for a mask, as a key appended by the module needs."""
    return None if mask is None else F.pad(mask, (0, 1))


def recompute_attention(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-head attention probabilities of ``module(query, key, value, ...)`` in eval mode.

    Args:
        module: the ``nn.MultiheadAttention`` (packed ``in_proj_weight`` or separate
            ``q/k/v_proj_weight``; ``batch_first`` either way).
        query, key, value: the call's arguments, ``(N, L, E)`` with ``batch_first``, else
            ``(L, N, E)``; unbatched ``(L, E)`` calls count as ``N = 1``.
        key_padding_mask: ``(N, S)`` (or ``(S,)`` unbatched), ``True``/``-inf`` = ignored key.
        attn_mask: ``(L, S)`` or ``(N * heads, L, S)``, boolean (``True`` = not allowed) or
            added to the scores.

    Returns:
        float32 ``(N, heads, L, S)``; each row sums to 1 (``S`` counts any key the module
        appends: ``bias_k``, ``add_zero_attn``).

    Raises:
        CaptureError: the inputs' shapes do not fit the module.
    """
    given = (tuple(query.shape), tuple(key.shape))
    if query.dim() == 2:  # unbatched
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    elif module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    # Now (L, N, E) and (S, N, E).
    embed, heads = module.embed_dim, module.num_heads
    if query.dim() != 3 or query.shape[-1] != embed or key.dim() != 3:
        raise CaptureError(
            f"recomputing attention got a query of shape {given[0]} and a key of shape "
            f"{given[1]}; expected 3-D tensors with {embed} features last for this "
            f"MultiheadAttention(embed_dim={embed}); check the module's call"
        )
    if module._qkv_same_embed_dim:
        w_q, w_k, _ = module.in_proj_weight.float().chunk(3)
    else:
        w_q, w_k = module.q_proj_weight.float(), module.k_proj_weight.float()
    b_q = b_k = None
    if module.in_proj_bias is not None:
        b_q, b_k, _ = module.in_proj_bias.float().chunk(3)
    q = F.linear(query.float(), w_q, b_q)  # (L, N, E)
    k = F.linear(key.float(), w_k, b_k)  # (S, N, E)
    length, batch = q.shape[0], q.shape[1]
    if module.bias_k is not None:
        k = torch.cat([k, module.bias_k.float().expand(1, batch, embed)])
        attn_mask, key_padding_mask = _pad_mask(attn_mask), _pad_mask(key_padding_mask)
    d_head = embed // heads
    q = q.reshape(length, batch, heads, d_head).permute(1, 2, 0, 3)  # (N, H, L, d)
    k = k.reshape(k.shape[0], batch, heads, d_head).permute(1, 2, 0, 3)  # (N, H, S, d)
    if module.add_zero_attn:
        k = torch.cat([k, k.new_zeros(batch, heads, 1, d_head)], dim=2)
        attn_mask, key_padding_mask = _pad_mask(attn_mask), _pad_mask(key_padding_mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)  # (N, H, L, S)
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.reshape(batch, heads, *attn_mask.shape[-2:])
        scores = _mask_scores(scores, attn_mask)
    if key_padding_mask is not None:
        scores = _mask_scores(scores, key_padding_mask.reshape(batch, 1, 1, -1))
    return torch.softmax(scores, dim=-1)
