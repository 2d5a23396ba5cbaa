"""Layouts: what the axes of a captured output mean, and how (or whether) it becomes pictures.

Between capture and the pure transforms in the flow (… → capture → **layouts** → stats/render).
Every output tensor gets one :class:`Layout`: its ``name`` as written in the manifest, where its
batch and channel axes are, how one sample becomes drawable maps (``drawn_as``) or why it cannot.
Everything else (the run, statistics, ablation, the report) asks the layout instead of testing
``len(shape)``, so a new kind of output is one entry here and one renderer.

Names (the manifest's ``layout``)::

    NCHW, NCL, NCDHW, NC, N, scalar     channels first; drawn as channel grids, signal heat maps,
                                        volume montages, bar strips (scalars are not drawn)
    NHWC->NCHW                          channels last, drawn as NCHW
    tokens(prefix=1, grid=14x14)        (N, T, D): T = prefix + h*w patch tokens on an h x w grid
    LND->tokens(prefix=0, grid=4x6)     the same with the sequence first, (T, N, D)
    NLD, LND->NLD                       a sequence with features last and no patch grid, drawn
                                        as a feature x position heat map
    states(layers, N, H)                recurrent hidden/cell states
    attention(N, heads, L, S)           attention probabilities (rows: queries, columns: keys)
    attention(N, heads, L, S; prefix=1, grid=14x14)
                                        the same for self-attention over tokens on a known patch
                                        grid (L = S = prefix + h*w): drawn per head, the first
                                        prefix token's row and one patch's row on the grid
    undecided                           the evidence does not settle it: never drawn

Decisions come from evidence, never from the rank alone (:func:`decide`):

1. the module's own meaning: ``*2d`` modules give NCHW, ``*1d`` NCL, ``*3d`` NCDHW; an RNN's
   ``batch_first``; a ``Permute``'s ``dims`` applied to the layout it was given; an element-wise
   module (activation, dropout, ...) keeps the layout it was given;
2. known blocks (:mod:`~featuremaps.layouts.patterns`: torchvision's ViT, Swin and ConvNeXt
   blocks, by exact class) settle the outputs inside them, and a module acting on the last axis
   keeps a features-last layout it was given; only without probe evidence;
3. probes (run during a capture only for models with other module types): the
   output's shape for one sample, for two samples (the axis that doubles is the batch axis), and
   for a second input size (spatial axes move, channel axes do not);
4. for tokens, the patch grid is the spatial size of a channels-first map seen earlier in the
   same pass (the patch embedding), and the prefix count ``T - h*w`` must equal what the model's
   attributes say (``num_prefix_tokens``, ``cls_token``/``class_token``, ``dist_token``, register
   tokens) or, without such attributes, be the same at the second input size.

Whatever is left open is ``undecided``, with the evidence in words, and is not drawn.

The rooms: :mod:`~featuremaps.layouts.registry` (the names and what they mean),
:mod:`~featuremaps.layouts.evidence` (the decision, the probes and the tracker that gathers the
evidence during a capture), :mod:`~featuremaps.layouts.patterns` (the known blocks),
:mod:`~featuremaps.layouts.arrays` (a decided layout's arrays).
"""

from __future__ import annotations

from featuremaps.layouts.arrays import (
    attention_rows,
    centre_patch,
    channels_first,
    drawable_maps,
    maps_shape,
    skip_reason,
    spatial_maps,
    token_parts,
)
from featuremaps.layouts.evidence import Facts, Probe, decide, needs_probes, prefix_tokens
from featuremaps.layouts.registry import (
    ATTENTION,
    ATTENTION_MAP,
    BAR_STRIP,
    CHANNEL_GRID,
    LAYOUTS,
    LND,
    NHWC,
    NLD,
    RETURNED,
    SEQUENCE_MAP,
    SIGNAL_MAP,
    STATES,
    TOKEN_GRID,
    UNDECIDED_REASON,
    VOLUME_MONTAGE,
    Layout,
    Shape,
    attention,
    get,
)

__all__ = [
    "ATTENTION",
    "ATTENTION_MAP",
    "BAR_STRIP",
    "CHANNEL_GRID",
    "LAYOUTS",
    "LND",
    "NHWC",
    "NLD",
    "RETURNED",
    "SEQUENCE_MAP",
    "SIGNAL_MAP",
    "STATES",
    "TOKEN_GRID",
    "UNDECIDED_REASON",
    "VOLUME_MONTAGE",
    "Facts",
    "Layout",
    "Probe",
    "Shape",
    "attention",
    "attention_rows",
    "centre_patch",
    "channels_first",
    "decide",
    "drawable_maps",
    "get",
    "maps_shape",
    "needs_probes",
    "prefix_tokens",
    "skip_reason",
    "spatial_maps",
    "token_parts",
]
