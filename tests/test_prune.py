"""Pruning: the pruned model computes exactly what the original computes with the ``removed``
channels zeroed at the ``removed`` tensors, its parameter count is the closed-form count of what
was removed, coupled layers lose the same channels, the saved model loads back without
unpickling anything but plain tensors, and refusals are one line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps._errors import LayerError, ModelError, OptionError
from featuremaps.capture import zero_channels
from featuremaps.cli import main
from featuremaps.inputs import Preprocessing, load_input
from featuremaps.pruning import (
    apply_pruning,
    choose_channels,
    count_macs,
    count_params,
    find_groups,
    score_groups,
)
from featuremaps.zoo.shapes import make_shapes

pytest.importorskip("torch_pruning")

RATIOS = (0.2, 0.4, 0.7)
PLAIN = Preprocessing(source="test: none")


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).abs().max() / want.abs().max()).item())


def _check_equivalent(model: nn.Module, x: torch.Tensor, ratio: float, seed: int = 0) -> Any:
    """Prune ``ratio`` of every group (random channels) and compare with zeroing, independently
    of the module's own check."""
    groups, _ = find_groups(model, x)
    chosen = choose_channels(groups, None, ratio=ratio, seed=seed)
    pruned = apply_pruning(model, x, groups, chosen)
    with torch.no_grad():
        got = pruned.model(x)
        with zero_channels(model, pruned.removed):
            want = model(x)
        plain = model(x)
    assert _relative(got, want) < 1e-5
    if ratio > 0:
        assert pruned.removed and _relative(got, plain) > 1e-4  # something was removed
    return pruned


class Coupled(nn.Module):
    """A residual addition, a concatenation and a depthwise convolution, with BatchNorms."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.bnd = nn.BatchNorm2d(12)
        self.side = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(12 + 6 + 8, 5)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for bn in (self.bn0, self.bna, self.bnd):  # BatchNorm that is not the identity
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.2)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        s = torch.relu(s + self.bna(self.a(s)))  # residual: stem, a coupled
        d = torch.relu(self.bnd(self.dw(torch.relu(self.expand(s)))))  # depthwise
        y = torch.cat([d, torch.relu(self.side(s)), s], 1)  # concatenation
        return self.head(y.mean((2, 3)))


def test_coupled_model_pruned_equals_zeroed_and_coupled_layers_lose_the_same_channels() -> None:
    model = Coupled().eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    for ratio in RATIOS:
        pruned = _check_equivalent(model, x, ratio)
        r = pruned.removed
        assert r["stem"] == r["bn0"] == r["a"] == r["bna"]  # the residual couples them
        assert r["expand"] == r["dw"] == r["bnd"]  # the depthwise conv follows its input
        assert len(r["bn0"]) == int(np.floor(ratio * 8 + 1e-9))
        head = pruned.model.head
        assert head.in_features == 26 - len(r["bnd"]) - len(r["side"]) - len(r["bn0"])
        assert pruned.model.dw.groups == pruned.model.dw.out_channels == 12 - len(r["dw"])
    assert model.stem.out_channels == 8  # the original is untouched


def test_groups_score_by_the_sum_over_members_and_remove_the_lowest() -> None:
    model = Coupled().eval()
    x = torch.randn(1, 3, 8, 8)
    groups, skipped = find_groups(model, x)
    assert "head" in skipped and "output layer" in skipped["head"]
    stem = next(g for g in groups if g.root == "stem")
    values = {"bn0": np.arange(8.0)[::-1].copy(), "bna": np.array([0, 0, 0, 0, 0, 0, 0, 9.0])}
    values["bn0"][3] = np.nan  # NaN counts as 0 in the sum
    (score,) = score_groups([stem], values)
    np.testing.assert_array_equal(score, [7, 6, 5, 0, 3, 2, 1, 9])
    assert choose_channels([stem], [score], k=3) == {"stem": [3, 5, 6]}
    with pytest.raises(OptionError, match="would remove every channel of 'stem'"):
        choose_channels([stem], [score], k=8)
    with pytest.raises(OptionError, match="0 <= ratio < 1"):
        choose_channels([stem], [score], ratio=1.0)
    with pytest.raises(OptionError, match="no statistic for any layer coupled to 'stem'"):
        score_groups([stem], {"head": np.zeros(5)})


# -- known answers on resnet18 (random weights) and the trained shapes_cnn ------------------------


def _resnet18_closed_form(model: nn.Module, removed: Mapping[str, list[int]]) -> int:
    """The parameters left after removing ``removed``: each conv loses rows for its BatchNorm's
    removed channels and columns for the removed channels of the tensor it reads."""

    def gone(name: str) -> int:
        return len(removed.get(name, ()))

    def stream(stage: int) -> int:  # the residual stream a stage ends with
        return gone(f"layer{stage}.1.bn2") if stage else gone("bn1")

    total = 0

    def conv(name: str, out_bn: str, lost_in: int) -> None:
        nonlocal total
        c = model.get_submodule(name)
        kernel = c.kernel_size[0] * c.kernel_size[1]
        out = c.out_channels - gone(out_bn)
        total += out * (c.in_channels - lost_in) * kernel + 2 * out  # + its BatchNorm

    conv("conv1", "bn1", 0)
    for s in range(1, 5):
        for b in range(2):
            p = f"layer{s}.{b}"
            conv(f"{p}.conv1", f"{p}.bn1", stream(s - 1) if b == 0 else stream(s))
            conv(f"{p}.conv2", f"{p}.bn2", gone(f"{p}.bn1"))
        if s > 1:
            conv(f"layer{s}.0.downsample.0", f"layer{s}.0.downsample.1", stream(s - 1))
    fc = model.fc
    total += fc.out_features * (fc.in_features - stream(4)) + fc.out_features
    return total


def test_resnet18_pruned_equals_zeroed_and_params_match_the_closed_form() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert _resnet18_closed_form(model, {}) == count_params(model)
    for ratio, seed in zip(RATIOS, (0, 1, 2), strict=True):
        pruned = _check_equivalent(model, x, ratio, seed)
        r = pruned.removed
        for s in range(1, 5):  # the residual stream of a stage loses the same channels everywhere
            stream = [f"layer{s}.0.bn2", f"layer{s}.1.bn2"]
            stream += ["bn1"] if s == 1 else [f"layer{s}.0.downsample.1"]
            assert len({tuple(r[n]) for n in stream}) == 1, (ratio, s)
        assert count_params(pruned.model) == _resnet18_closed_form(model, r)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shapes")
    images, _ = make_shapes(24, seed=4242)
    for i, image in enumerate(images):
        pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def test_shapes_cnn_pruned_equals_zeroed_and_params_match_the_closed_form() -> None:
    loaded = fm.load_model("shapes_cnn")
    model = loaded.model
    images, _ = make_shapes(8, seed=77)
    x = torch.from_numpy(images)
    for ratio in RATIOS:
        pruned = _check_equivalent(model, x, ratio)
        r = pruned.removed
        widths = [16, 32, 64]
        lost = [len(r[f"bn{i}"]) for i in (1, 2, 3)]
        assert lost == [len(r[f"conv{i}"]) for i in (1, 2, 3)]
        assert lost == [int(np.floor(ratio * w + 1e-9)) for w in widths]
        kept = [w - n for w, n in zip(widths, lost, strict=True)]
        classes = model.fc.out_features
        expected = (kept[0] * 3 * 25 + kept[1] * kept[0] * 9 + kept[2] * kept[1] * 9
                    + 2 * sum(kept) + classes * kept[2] + classes)  # fmt: skip
        assert count_params(pruned.model) == expected
        # MACs: torch's counter against the convolutions' and the classifier's own formula
        h = 64
        macs = kept[0] * 3 * 25 * h * h + kept[1] * kept[0] * 9 * (h // 2) ** 2
        macs += kept[2] * kept[1] * 9 * (h // 4) ** 2 + kept[2] * classes
        assert count_macs(pruned.model, x[:1]) == macs


# -- the command: files, numbers against a recomputation, the saved model ------------------------


def test_prune_command_writes_numbers_that_a_recomputation_confirms(
    shapes_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    code = main(["prune", str(shapes_folder), "--model", "shapes_cnn", "--ratio", "0.25,0.5",
                 "--by", "absmean", "--out", str(out), "--workers", "0"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "24 inputs, 3 layer group(s) pruned" in printed
    summary = json.loads((out / "prune.json").read_text())
    assert sorted(summary["files"]) == ["prune.csv", "prune.png", "pruned.pt2"]
    assert summary["ratio"] == 0.25 and summary["control"]["ratio"] == 0.25
    assert [p["ratio"] for p in summary["sweep"]] == [0.25, 0.25, 0.5, 0.5]
    with Image.open(out / "prune.png") as picture:
        assert picture.size[0] > 100

    original = fm.load_model("shapes_cnn")
    saved = fm.load_model(str(out / "pruned.pt2"))
    assert saved.source == "torch.export"
    assert sum(p.numel() for p in saved.model.parameters()) == summary["params_after"]
    assert summary["params_before"] == count_params(original.model)
    assert summary["params_after"] < summary["params_before"]
    pre = saved.input_preprocessing()
    batch = torch.cat([
        load_input(p, preprocessing=pre).tensor for p in sorted(shapes_folder.glob("*.png"))
    ])  # fmt: skip
    with torch.no_grad():
        a = original.model(batch).numpy().argmax(1)
        b = saved.model(batch).numpy().argmax(1)
        zeroed_model = original.model
        with zero_channels(zeroed_model, summary["removed"]):
            zeroed = zeroed_model(batch).numpy()
        np.testing.assert_allclose(saved.model(batch).numpy(), zeroed, rtol=1e-5, atol=1e-5)
    assert summary["agreement"] == pytest.approx(float(np.mean(a == b)))
    assert summary["macs_after"] == count_macs(saved.model, batch[:1])

    # `run` works on the saved model: its layers are modules again
    maps = tmp_path / "maps"
    code = main(["run", str(sorted(shapes_folder.glob("*.png"))[0]), "--model",
                 str(out / "pruned.pt2"), "--layers", "conv2", "--out", str(maps)])  # fmt: skip
    assert code == 0
    manifest = json.loads((maps / "manifest.json").read_text())
    assert json.dumps(manifest).count('"conv2"') >= 1
    with pytest.raises(OptionError, match="has no Conv or Linear layer modules to prune"):
        fm.prune(str(out / "pruned.pt2"), [str(shapes_folder)], ratio=0.2, workers=0)


def test_prune_with_a_stats_file_and_k(shapes_folder: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats"
    argv = ["stats", str(shapes_folder), "--model", "shapes_cnn", "--layers", "bn1,bn2,bn3"]
    assert main([*argv, "--no-plots", "--out", str(stats), "--workers", "0"]) == 0
    table = fm.read_stats(stats / "stats.csv")
    result = fm.prune("shapes_cnn", [str(shapes_folder)], k=4, layers="conv2,conv3", by="max",
                      channel_stats=stats / "stats.csv", workers=0)  # fmt: skip
    assert result.groups == ["conv2", "conv3"]
    assert "statistics file" in result.ranking
    for layer in ("bn2", "bn3"):  # with only the BatchNorm in the file, its lowest 4 go
        want = sorted(np.argsort(table.layers[layer]["max"], kind="stable")[:4].tolist())
        assert result.point("ranked").removed[layer] == want


# -- safety: loading a .pt2 executes no pickle payload ---------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def _exported(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8),))
    path = tmp_path / "good.pt2"
    torch.export.save(program, str(path))
    return path


def _rewrite(source: Path, target: Path, change: Mapping[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            key = next((k for k in change if name.endswith(k)), None)
            zout.writestr(name, change[key] if key else zin.read(name))
    return target


def test_hostile_pt2_runs_its_payload_under_torch_but_not_under_featuremaps(
    tmp_path: Path,
) -> None:
    good = _exported(tmp_path)
    assert fm.load_model(str(good)).source == "torch.export"
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)  # torch's own format, so its fallback unpickles it
    hostile = _rewrite(
        good, tmp_path / "hostile.pt2", {"sample_inputs/model.pt": buffer.getvalue()}
    )
    with pytest.raises(ModelError, match=r"not a plain tensor pickle .*GLOBAL posix.mkdir"):
        fm.load_model(str(hostile))
    assert not marker.exists()
    # The same file through torch.export.load alone: the payload runs (what the check prevents).
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # torch logs its failed first attempt as a warning
    try:
        with contextlib.suppress(Exception):
            torch.export.load(str(hostile))
    finally:
        logger.setLevel(level)
    assert marker.exists()


def test_pt2_with_a_pickled_weight_entry_is_refused(tmp_path: Path) -> None:
    good = _exported(tmp_path)
    with zipfile.ZipFile(good) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(z.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    bad = _rewrite(
        good, tmp_path / "bad.pt2", {"model_weights_config.json": json.dumps(config).encode()}
    )
    with pytest.raises(ModelError, match=f"its entry '{re.escape(first)}' is stored as a pickle"):
        fm.load_model(str(bad))
    with pytest.raises(ModelError, match="is not a .pt2 archive"):
        (tmp_path / "junk.pt2").write_bytes(pickle.dumps([1, 2]))
        fm.load_model(str(tmp_path / "junk.pt2"))


# -- refusals: one line each -----------------------------------------------------------------------


def test_refusals_are_one_line(shapes_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["prune", str(shapes_folder), "--model", "shapes_cnn", "--workers", "0", "--out"]
    cases = [
        (["--ratio", "0.5", "--layers", "fc"], "layer 'fc' cannot be pruned: it is the model's"),
        (["--ratio", "0.5", "--layers", "relu1"], "layer 'relu1' is a ReLU; pruning removes"),
        (["--k", "16", "--layers", "conv1"], "--k 16 would remove every channel of 'conv1'"),
        (["--ratio", "1.5"], "--ratio 1.5: expected a fraction"),
    ]
    for extra, message in cases:
        code = main([*base, "unused-out", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, extra
        assert len(err.splitlines()) == 1, err
        assert message in err, err


def test_vit_layers_coupled_to_layer_norm_are_refused_with_the_reason() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=4).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    message = (
        "'encoder.layers.encoder_layer_0.mlp.3' cannot be pruned: its channels reach LayerNorm "
        "'encoder.ln', which mixes channels"
    )
    with pytest.raises(LayerError, match=re.escape(message)):
        find_groups(vit, x, ["encoder.layers.*.mlp.3"])


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(OptionError, match=r"pip install 'featuremaps\[prune\]'"):
        fm.prune("shapes_cnn", ["nothing"], ratio=0.5)


# -- big coupled models: each runs after pruning, its `removed` consistent across the coupling -----


def _big(name: str, x: torch.Tensor, layers: list[str] | None = None) -> Any:
    torch.manual_seed(0)
    builder = getattr(torchvision.models, name)
    model = builder(num_classes=10).eval()
    groups, _ = find_groups(model, x, layers)
    pruned = apply_pruning(model, x, groups, choose_channels(groups, None, ratio=0.3))
    with torch.no_grad():
        got = pruned.model(x)
        with zero_channels(model, pruned.removed):
            want = model(x)
    assert got.shape == (len(x), 10)
    assert _relative(got, want) < 1e-5
    assert count_params(pruned.model) < count_params(model)
    return pruned


@pytest.mark.slow
def test_resnet50_residual_stages_lose_the_same_channels() -> None:
    r = _big("resnet50", torch.randn(1, 3, 32, 32)).removed
    for s, blocks in ((1, 3), (2, 4), (3, 6)):
        names = [f"layer{s}.{b}.bn3" for b in range(blocks)] + [f"layer{s}.0.downsample.1"]
        assert len({tuple(r[n]) for n in names}) == 1 and r[names[0]], s


@pytest.mark.slow
def test_densenet121_concatenation_passes_removed_channels_on_at_their_offset() -> None:
    r = _big("densenet121", torch.randn(1, 3, 32, 32)).removed
    block = "features.denseblock1"
    own = r[f"{block}.denselayer1.conv2"]
    assert own
    for later in range(2, 7):  # the 64 stem channels come first, then layer 1's 32
        assert {c + 64 for c in own} <= set(r[f"{block}.denselayer{later}.norm1"])
    assert {c + 64 for c in own} <= set(r["features.transition1.norm"])


@pytest.mark.slow
def test_mobilenet_v2_depthwise_convolution_follows_its_expansion() -> None:
    r = _big("mobilenet_v2", torch.randn(1, 3, 32, 32)).removed
    for block in (2, 5, 10):
        c = f"features.{block}.conv"
        assert r[f"{c}.0.0"] == r[f"{c}.0.1"] == r[f"{c}.1.0"] == r[f"{c}.1.1"]
        assert r[f"{c}.0.0"]


@pytest.mark.slow
def test_vit_mlp_hidden_channels() -> None:
    torch.manual_seed(0)
    vit = torchvision.models.vit_b_16(image_size=32, num_classes=10).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts it at zero: every output 0
    x = torch.randn(1, 3, 32, 32)
    groups, _ = find_groups(vit, x, ["encoder.layers.*.mlp.0"])
    assert len(groups) == 12
    pruned = apply_pruning(vit, x, groups, choose_channels(groups, None, ratio=0.3))
    with torch.no_grad():
        got = pruned.model(x)
        with zero_channels(vit, pruned.removed):
            want = vit(x)
    assert _relative(got, want) < 1e-5
    for i in range(12):
        block = pruned.model.encoder.layers[i].mlp
        lost = len(pruned.removed[f"encoder.layers.encoder_layer_{i}.mlp.0"])
        assert lost == int(3072 * 0.3)
        assert block[0].out_features == block[3].in_features == 3072 - lost


class _Branchy(nn.Module):
    """Control flow on the data: torch.export refuses it, tracing records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > -1e9:
            return y.mean((2, 3))
        return y.amax((2, 3))


def test_a_model_export_refuses_is_saved_as_torchscript(tmp_path: Path) -> None:
    from featuremaps.exported import export_model

    model = _Branchy().eval()
    x = torch.randn(1, 3, 8, 8)
    data, kind = export_model(model, x, {"preprocessing": None})
    assert kind == "torchscript"
    (tmp_path / "pruned.pt").write_bytes(data)
    loaded = fm.load_model(str(tmp_path / "pruned.pt"))
    assert loaded.source == "torchscript"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_prune_chart_golden() -> None:
    """Ranked (red) and random (grey, dashed) agreement against MACs left, the original at 100 %,
    each ranked point labelled with its ratio, the stats file named by its file name."""
    from featuremaps.render.plots import plot_pruning
    from goldtest import assert_matches_golden

    rows = [
        {"selection": s, "ratio": r, "k": None, "macs": int(1000 * (1 - r) ** 2), "agreement": a}
        for s, points in (
            ("ranked", ((0.2, 0.9), (0.4, 0.5), (0.6, 0.2))),
            ("random", ((0.2, 0.95), (0.4, 0.7), (0.6, 0.25))),
        )
        for r, a in points
    ]
    png = plot_pruning(rows, model="shapes_cnn", macs_before=1000, metric="top1_agreement",
                       stat="std", images=12, random_weights=True,
                       ranking="statistics file /somewhere/far/away/stats.csv")  # fmt: skip
    with Image.open(io.BytesIO(png)) as picture:
        assert_matches_golden("prune_chart", np.asarray(picture.convert("RGB")))


def test_models_without_class_scores_are_compared_by_the_mean_cosine(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()
    rng = np.random.default_rng(3)
    for i in range(5):
        pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    result = fm.prune(model, [str(tmp_path)], ratio=0.5, preprocessing=PLAIN, workers=0)
    assert result.metric == "mean_cosine" and result.groups == ["0"]
    assert result.skipped == {"3": "it is the model's output layer: its channels are the answers"}
    batch = torch.cat([load_input(p, preprocessing=PLAIN).tensor
                       for p in sorted(tmp_path.glob("*.png"))])  # fmt: skip
    assert result.model is not None
    with torch.no_grad():
        a = model(batch).flatten(1).double().numpy()
        b = result.model(batch).flatten(1).double().numpy()
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert result.point("ranked").agreement == pytest.approx(float(cosine.mean()), abs=1e-6)
    assert result.point("ranked").agreement < 1.0


def test_hostile_pt2_code_in_a_size_expression_or_a_node_target_is_refused(
    tmp_path: Path,
) -> None:
    """No pickle needed: torch.export.load hands size expressions to sympy, which evaluates them
    as Python, and resolves any dotted torch.* name as a node's function."""
    from featuremaps.exported import export_model

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    data, kind = export_model(model, torch.randn(1, 3, 8, 8), {})
    assert kind == "pt2"
    good = tmp_path / "good.pt2"
    good.write_bytes(data)
    with zipfile.ZipFile(good) as z:
        program = z.read(next(n for n in z.namelist() if n.endswith("models/model.json")))
    text = program.decode()
    symbol = re.search(r'"expr_str": ("Symbol\([^"]*\)")', text)
    assert symbol is not None
    marker = tmp_path / "payload-ran"
    payload = json.dumps(f"__import__('os').mkdir({str(marker)!r})")
    changed = text.replace(symbol.group(1), payload).encode()
    hostile = _rewrite(good, tmp_path / "sym.pt2", {"models/model.json": changed})
    with pytest.raises(ModelError, match="a size expression is not plain arithmetic"):
        fm.load_model(str(hostile))
    assert not marker.exists()
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.suppress(Exception):
            torch.export.load(str(hostile))
    finally:
        logger.setLevel(level)
    assert marker.exists()  # what the check prevents

    calls = text.replace('"target": "torch.ops.aten.relu.default"', '"target": "torch.os.rmdir"')
    assert calls != text
    bad = _rewrite(good, tmp_path / "call.pt2", {"models/model.json": calls.encode()})
    with pytest.raises(ModelError, match="a graph node calls 'torch.os.rmdir', which is not an op"):
        fm.load_model(str(bad))


def test_layer_patterns_keep_the_conv_and_linear_layers_they_match() -> None:
    model = Coupled().eval()
    x = torch.randn(1, 3, 8, 8)
    groups, _ = find_groups(model, x, ["s*", "bn*"])  # stem, side; bn0, bna, bnd are no roots
    assert [g.root for g in groups] == ["stem", "side"]
    assert set(groups[0].layers) == {"stem", "bn0", "a", "bna", "expand", "side", "head"}
