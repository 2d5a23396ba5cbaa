"""Known module patterns: blocks whose own meaning settles the layouts of the outputs inside them.

Part of the layouts stage (… → capture → **layouts** → stats/render). The probes of
:mod:`featuremaps.layouts.evidence` cost extra forward passes (a vit_b_16 run cost three). For the
blocks of well-known architectures the layout of every output inside them follows from what the
block is: a torchvision ViT block works on ``(N, T, D)`` tokens, a Swin block on
``(N, H, W, C)`` maps, a ConvNeXt block permutes to channels last and back. Such a block is named
here by its exact class (a subclass may change ``forward``), with a rule for its sub-modules:

``tokens``
    a 3-D output is batch first with features last: tokens on the patch grid when one fits (the
    patch embedding seen earlier and the prefix tokens the model's attributes name), otherwise
    a sequence (``NLD``);
``NHWC`` / ``NCHW``
    a 4-D output is channels last / channels first;
``follow``
    nothing by rank: each output's layout follows from the module and the layout of the tensor
    it was given (a ``Permute``'s dims, a ``LayerNorm`` or ``Linear`` on a channels-last input);
``table``
    not a per-sample map (computed from a table of the model's own, the same for every sample):
    undecided, listed and not drawn, as the probes find it.

A model whose every module that would need probes is covered by a rule runs once. A rule never
overrides probe evidence, and an output a rule does not settle is held back until the probes
have run (as before), so a rule can make a run faster but not a layout different: the layouts
of the models named here are tested against their probed layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

__all__ = ["PATTERNS", "TABLE", "Rule", "pattern_rules"]

#: The rule kind of outputs that are not per-sample maps.
TABLE = "table"

# (kind, where: the block the rule comes from, in words)
Rule = tuple[str, str]

_TV = "torchvision.models"

#: Exact block class (module + qualified name) -> {sub-module path glob: rule kind}. The innermost
#: block with a matching glob decides.
PATTERNS: Mapping[str, Mapping[str, str]] = {
    # torchvision ViT: Encoder(dropout, layers of EncoderBlock, ln); the class token is prepended
    # and the position embedding added by the model's own code.
    f"{_TV}.vision_transformer.Encoder": {"dropout": "tokens", "ln": "tokens"},
    f"{_TV}.vision_transformer.EncoderBlock": {"*": "tokens"},
    # torchvision Swin (v1 and v2): blocks and patch merging work on (N, H, W, C); the stem is
    # Conv2d -> Permute -> LayerNorm, the head LayerNorm -> Permute back.
    f"{_TV}.swin_transformer.SwinTransformerBlock": {"*": "NHWC"},
    # v2 attention computes its position bias with a small MLP on the relative-coordinates
    # table, the same for every sample: not a map of the input.
    f"{_TV}.swin_transformer.SwinTransformerBlockV2": {"attn.cpb_mlp.*": "table", "*": "NHWC"},
    f"{_TV}.swin_transformer.PatchMerging": {"*": "NHWC"},
    f"{_TV}.swin_transformer.PatchMergingV2": {"*": "NHWC"},
    f"{_TV}.swin_transformer.SwinTransformer": {
        "features.0.*": "follow",
        "norm": "NHWC",
        "permute": "follow",
    },
    # torchvision ConvNeXt: block = Conv2d -> Permute -> LayerNorm -> Linear -> GELU -> Linear ->
    # Permute back; the layer scale multiplies outside any module before the stochastic depth.
    f"{_TV}.convnext.CNBlock": {"block.*": "follow", "stochastic_depth": "NCHW"},
}


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def pattern_rules(model: nn.Module) -> dict[int, Rule]:
    """The rule of every sub-module of ``model`` that a known block covers, keyed by the
    module object's ``id`` (the innermost covering block decides)."""
    rules: dict[int, Rule] = {}
    for path, block in model.named_modules():  # outer blocks first: inner ones overwrite
        globs = PATTERNS.get(_class_name(block))
        if not globs:
            continue
        where = f"{type(block).__name__} '{path}'" if path else type(block).__name__
        for sub, module in block.named_modules():
            if not sub:
                continue
            for glob, kind in globs.items():
                if fnmatchcase(sub, glob):
                    rules[id(module)] = (kind, where)
                    break
    return rules
