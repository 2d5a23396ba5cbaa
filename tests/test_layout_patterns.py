"""Known blocks settle layouts without probes, and never to another layout than the probes give.

The oracle is the probed capture of the same model (``probe=True`` runs the probe passes and
decides every layout from their evidence, as every run did before the shortcut existed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import featuremaps as fm
from featuremaps import layouts
from featuremaps.layouts import patterns
from featuremaps.layouts.patterns import pattern_rules

# Named in the requirement; the others share their blocks.
MODELS = ("vit_b_16", "swin_t", "convnext_tiny", "swin_v2_t", "vit_b_32")


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def _layouts(result: fm.Capture) -> list[tuple[str, str]]:
    return [(r.name, r.layout) for r in result.records]


@pytest.mark.parametrize("name", MODELS)
def test_known_blocks_give_the_probed_layouts_without_probing(name: str) -> None:
    model = _model(name)
    x = torch.rand(1, 3, 224, 224)
    probed = fm.capture(model, x, probe=True)
    shortcut = fm.capture(_model(name), x)  # a new instance: nothing cached from the probes
    assert probed.probed and not shortcut.probed
    assert _layouts(shortcut) == _layouts(probed)
    drawn = {r.layout for r in shortcut.records if r.layout_info.drawable}
    assert len(drawn) > 1  # not all of one kind: tokens/NHWC records are among them
    assert "undecided" not in {r.layout for r in shortcut.records} or name == "swin_v2_t"


@pytest.mark.parametrize("name", ("vit_b_16", "swin_t", "convnext_tiny"))
def test_manifest_layouts_are_the_same_with_and_without_the_shortcut(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.rand(1, 3, 224, 224)
    options = fm.GridOptions(max_channels=2)
    [fast] = fm.visualize(_model(name), x, grid=options, report=False)
    monkeypatch.setattr(patterns, "PATTERNS", {})  # no known blocks: probes decide, as before
    [slow] = fm.visualize(_model(name), x, grid=options, report=False)
    fast_layouts = [(r["name"], r["layout"]) for r in fast.manifest["records"]]
    slow_layouts = [(r["name"], r["layout"]) for r in slow.manifest["records"]]
    assert fast_layouts == slow_layouts
    evidence = [r.get("layout_evidence") or "" for r in fast.manifest["records"]]
    assert not any("samples" in e for e in evidence)  # no probe evidence: none ran
    assert any("samples" in (r.get("layout_evidence") or "") for r in slow.manifest["records"])


class ChangedBlock(torchvision.models.vision_transformer.EncoderBlock):
    """A subclass may change what the block does: the rule of its parent does not apply."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(0, 1)).transpose(0, 1)


def test_rules_name_exact_classes_not_subclasses() -> None:
    block = ChangedBlock(2, 16, 32, 0.0, 0.0)
    assert pattern_rules(block) == {}
    plain = torchvision.models.vision_transformer.EncoderBlock(2, 16, 32, 0.0, 0.0)
    assert {kind for kind, _ in pattern_rules(plain).values()} == {"tokens"}


class ExtraNorm(nn.Module):
    """A known model with a module no rule covers: the probes run, as they must."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = _model("vit_b_32")
        self.norm = nn.LayerNorm(1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.vit(x).unsqueeze(1)).squeeze(1)


def test_a_module_no_rule_covers_brings_the_probes_back() -> None:
    x = torch.rand(1, 3, 224, 224)
    result = fm.capture(ExtraNorm(), x)
    assert result.probed
    assert _layouts(result) == _layouts(fm.capture(ExtraNorm(), x, probe=True))


@pytest.mark.parametrize(
    ("given", "shape"),
    [("NHWC->NCHW", (1, 5, 6, 8)), ("tokens(prefix=1, grid=2x3)", (1, 7, 8)), ("NLD", (2, 9, 4))],
)
def test_last_axis_modules_keep_a_features_last_layout_they_were_given(
    given: str, shape: tuple[int, ...]
) -> None:
    for module_type in ("LayerNorm", "Linear", "RMSNorm"):
        decided = layouts.decide(shape, module_type, given)
        assert decided.name == given and "last axis" in decided.note


def test_last_axis_rule_does_not_apply_to_channels_first_or_with_probe_evidence() -> None:
    # LayerNorm over the last axis of NCHW (the width) says nothing about the axes: undecided.
    assert layouts.decide((1, 4, 5, 6), "LayerNorm", "NCHW").name == "undecided"
    probe = layouts.Probe(one=(1, 5, 6, 8), two=(2, 5, 6, 8), resized=(1, 7, 7, 8))
    decided = layouts.decide((1, 5, 6, 8), "LayerNorm", "NHWC->NCHW", probe=probe)
    assert decided.name == "NHWC->NCHW" and "batch axis 0" in decided.note


def _encoder(batch_first: bool) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    return nn.Sequential(nn.Linear(8, 16), layer).eval()


def _forward_calls(model: nn.Module, x: torch.Tensor) -> tuple[int, list[tuple[str, str]]]:
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        result = fm.capture(model, x)
    finally:
        handle.remove()
    return len(calls), _layouts(result)


def test_probes_are_shared_by_instances_of_one_architecture_not_of_another() -> None:
    x = torch.rand(2, 5, 8)  # (N, L, F) for batch_first, (L, N, F) otherwise
    first_calls, first = _forward_calls(_encoder(True), x)
    again_calls, again = _forward_calls(_encoder(True), x)  # new weights object, same shapes
    assert first_calls > 1 and again_calls == 1 and again == first
    other_calls, _ = _forward_calls(_encoder(False), x)  # batch_first differs: probed anew
    assert other_calls > 1


def test_token_pictures_and_pca_written_by_the_writer_equal_those_drawn_in_memory(
    tmp_path: Path,
) -> None:
    # With an output folder, a token layer's PCA is taken on the writer's thread from a copy of
    # the tokens; without one, at once. Pictures, PCA numbers and bases must be the same.
    import numpy as np
    from PIL import Image

    from featuremaps.render.tokens import token_pca

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=24
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    [written] = fm.visualize(model, x, out=tmp_path / "o", report=False)
    [in_memory] = fm.visualize(model, x)
    values = {r.name: r for r in fm.capture(model, x)}
    tokens = [r for r in written.records if r.pca is not None]
    assert len(tokens) >= 6
    kept = {r.name: r for r in in_memory.records}
    for record in tokens:
        assert record.pca is not None and kept[record.name].pca is not None
        assert record.pca["explained_variance"] == kept[record.name].pca["explained_variance"]
        basis = np.load(tmp_path / "o" / record.pca["basis"])
        patches = in_memory.grids[record.name]
        with Image.open(tmp_path / "o" / record.image) as image:
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), patches.pixels)
        captured = values[record.name]
        expected = token_pca(captured.maps(), dtype=captured.dtype)
        want = np.concatenate([expected.mean[None], expected.basis]).astype(np.float32)
        np.testing.assert_array_equal(basis, want)


def test_pca_memo_reuses_only_byte_identical_tokens() -> None:
    # A Dropout (eval) or Identity after a token layer passes the same tokens on; its PCA is
    # reused. Anything else, down to one ulp or the sign of a zero, is computed again.
    import numpy as np

    from featuremaps.render.tokens import PcaMemo, token_pca

    def same(a: object, b: object) -> None:
        for name in ("mean", "basis", "rgb"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.explained == b.explained and a.constant == b.constant  # type: ignore[attr-defined]

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((12, 3, 4)).astype(np.float32)
    memo = PcaMemo()
    first = memo.pca(tokens, np.float32)
    same(first, token_pca(tokens, dtype=np.float32))
    assert memo.pca(tokens.copy(), np.float32) is first
    assert memo.pca(tokens, np.float16) is not first  # the noise floor depends on the dtype
    nudged = tokens.copy()
    nudged[0, 0, 0] = np.nextafter(nudged[0, 0, 0], np.float32(np.inf))
    again = memo.pca(nudged, np.float32)
    assert again is not first
    same(again, token_pca(nudged, dtype=np.float32))
    zeros = np.zeros((4, 2, 2), np.float32)
    plain = memo.pca(zeros, np.float32)
    assert memo.pca(-zeros, np.float32) is not plain
    holes = tokens.copy()
    holes[:, 1, 2] = np.nan
    with_nan = memo.pca(holes, np.float32)
    assert memo.pca(holes.copy(), np.float32) is with_nan
    same(with_nan, token_pca(holes, dtype=np.float32))


def test_pca_memo_does_not_see_tokens_changed_after_the_call() -> None:
    import numpy as np

    from featuremaps.render.tokens import PcaMemo

    tokens = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    memo = PcaMemo()
    first = memo.pca(tokens, np.float32)
    tokens *= 2.0  # in place, as a network's next in-place op would
    assert memo.pca(tokens, np.float32) is not first
