"""Ablation: masks equal a recomputation with the channels removed, the model is left untouched,
and on a model built with irrelevant low-activity channels the ranked curve is exactly flat while
the random control is not."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featuremaps._errors import CaptureError, LayerError, OptionError
from featuremaps.ablation import METRICS, lowest_first, measure_ablation
from featuremaps.capture import capture, zero_channels
from featuremaps.dataset import read_stats
from featuremaps.inputs import Preprocessing, load_input
from featuremaps.render import GridOptions
from featuremaps.render.grid import _legend_content

IRRELEVANT = (4, 5, 6, 7)


class KnownNet(nn.Module):
    """8 feature channels; 4..7 are weak (weights x0.01) and the head ignores them (zero weight)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.feat = nn.Conv2d(3, 8, 1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            self.feat.weight.copy_(torch.randn(8, 3, 1, 1, generator=g))
            self.feat.bias.copy_(torch.randn(8, generator=g) * 0.1)
            self.feat.weight[list(IRRELEVANT)] *= 0.01
            self.feat.bias[list(IRRELEVANT)] = 0.0
            self.head.weight.copy_(torch.randn(5, 8, generator=g) * 3)
            self.head.weight[:, list(IRRELEVANT)] = 0.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(torch.relu(self.feat(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.act(self.feat(x))), 1))


PLAIN = Preprocessing(source="test: none")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        tint = rng.integers(0, 256, 3)
        pixels = np.clip(rng.normal(tint, 60, (9, 11, 3)), 0, 255).astype(np.uint8)
        paths.append(tmp_path / f"im{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def _batch(paths: list[Path]) -> torch.Tensor:
    return torch.cat([load_input(p, channels=3, preprocessing=PLAIN).tensor for p in paths])


def _oracle(model: KnownNet, x: torch.Tensor, zeroed: tuple[int, ...]) -> np.ndarray:
    """(agreement, mean |Δlogit|, KL) recomputed in numpy with the head's weights removed."""
    with torch.no_grad():
        f = model.features(x).double().numpy()
    w = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    kept = w.copy()
    kept[:, list(zeroed)] = 0.0
    z, zm = f @ w.T + b, f @ kept.T + b

    def logsoftmax(a: np.ndarray) -> np.ndarray:
        m = a.max(1, keepdims=True)
        return a - m - np.log(np.exp(a - m).sum(1, keepdims=True))

    lp, lq = logsoftmax(z), logsoftmax(zm)
    kl = (np.exp(lp) * (lp - lq)).sum(1)
    agree = (z.argmax(1) == zm.argmax(1)).mean()
    return np.array([agree, np.abs(zm - z).mean(), kl.mean()])


def _activity(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    rec = capture(model, x, layers="act").get("act").tensor
    return rec.abs().mean((0, 2, 3)).numpy()


def test_ranked_curve_is_flat_over_irrelevant_channels_and_matches_the_oracle(
    images: list[Path],
) -> None:
    model = KnownNet().eval()
    x = _batch(images)
    activity = _activity(model, x)
    assert set(lowest_first(activity)[:4]) == set(IRRELEVANT)  # the construction holds
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = measure_ablation(
        model,
        images,
        {"act": activity},
        ks=[0, 2, 4, 6, 8],
        stat="absmean",
        channels=3,
        preprocessing=PLAIN,
        trials=6,
        seed=1,
        batch_size=5,  # batches of 5, 5, 5, 5, 4: per-image means must weigh the last one right
        workers=0,
    )
    assert result.images == 24 and result.ks == (0, 2, 4, 6, 8)
    for p in result.points:
        expected = _oracle(model, x, p.masks["act"])
        got = np.array([p.agreement, p.mean_abs_dlogit, p.kl])
        assert got[0] == expected[0]  # the model runs in float32, the oracle in float64
        np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-5, atol=1e-9)
        assert p.zeroed == min(p.k, 8) == len(p.masks["act"])

    ranked = {p.k: p for p in result.points if p.selection == "ranked"}
    for k in (0, 2, 4):  # only irrelevant channels zeroed: no change at all
        assert ranked[k].agreement == 1.0 and ranked[k].mean_abs_dlogit == 0.0
        assert ranked[k].kl == 0.0
    assert ranked[6].mean_abs_dlogit > 0 and ranked[8].mean_abs_dlogit > 0
    random4 = [p for p in result.points if p.selection == "random" and p.k == 4]
    assert len(random4) == 6
    assert np.mean([p.mean_abs_dlogit for p in random4]) > 0  # the control does lose something
    assert min(p.agreement for p in random4) < 1.0
    curve = {c["k"]: c for c in result.curve()}
    assert curve[4]["ranked_agreement"] == 1.0 > curve[4]["random_agreement_mean"]
    # The model itself was never changed and keeps no hooks.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_zero_channels_masks_one_call_of_a_reused_module_and_survives_inplace_ops() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(self.conv(x))
            y = self.act(self.conv(y))
            return y

    model = Twice().eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        with zero_channels(model, {"act#2": [1, 3]}) as applied:
            got = model(x)
        first = torch.relu(model.conv(x))
        expected = torch.relu(model.conv(first))
        expected[:, [1, 3]] = 0
        with zero_channels(model, {"act": [0]}):
            got_first = model(x)
        masked_first = first.clone()
        masked_first[:, 0] = 0
        expected_first = torch.relu(model.conv(masked_first))
    assert applied == {"act#2": 1}
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_first, expected_first, rtol=0, atol=0)
    assert not model.act._forward_hooks


def test_zero_channels_errors_name_the_problem() -> None:
    model = KnownNet().eval()
    x = torch.rand(1, 3, 4, 4)
    with (
        pytest.raises(LayerError, match=r"layer 'aact' not found in KnownNet; did you mean 'act'"),
        zero_channels(model, {"aact": [0]}),
    ):
        pass
    with (
        pytest.raises(OptionError, match=r"channel 9 does not exist in 'act', which has 8"),
        zero_channels(model, {"act": [9]}),
        torch.no_grad(),
    ):
        model(x)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveMaxPool2d(1, return_indices=True)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.pool(t)[0]

    pair = Pair()
    with (
        pytest.raises(
            CaptureError, match=r"'pool' \(AdaptiveMaxPool2d\) returns tuple.*one tensor"
        ),
        zero_channels(pair, {"pool": [0]}),
        torch.no_grad(),
    ):
        pair(x)
    assert not pair.pool._forward_hooks


def test_ablation_needs_class_scores_and_valid_ks(images: list[Path]) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    common = {"stat": "absmean", "channels": 3, "preprocessing": PLAIN, "workers": 0}
    with pytest.raises(OptionError, match=r"class scores.*returns \(1, 2, 9, 11\)"):
        measure_ablation(model, images[:1], {"0": np.ones(2)}, ks=[1], **common)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"--k -1: expected channel counts of 0 or more"):
        measure_ablation(KnownNet(), images, {"act": np.ones(8)}, ks=[-1], **common)  # type: ignore[arg-type]


@pytest.fixture
def known_spec(tmp_path: Path) -> str:
    import inspect

    net = tmp_path / "known.py"
    net.write_text(
        "import torch\nfrom torch import nn\n\nIRRELEVANT = (4, 5, 6, 7)\n\n\n"
        + inspect.getsource(KnownNet)
        + "\n\ndef build():\n    return KnownNet()\n"
    )
    return f"{net}:build"


def test_cli_ablate_with_a_saved_ranking_writes_the_curve(
    images: list[Path], known_spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import io
    import json

    from featuremaps.cli import main

    data = str(images[0].parent / "*.png")
    common = ["-m", known_spec, "--workers", "0", "--normalize", "none"]
    assert main(["stats", data, *common, "-l", "act", "-o", str(tmp_path / "s")]) == 0
    buf = io.StringIO()
    code = main(
        ["ablate", data, *common, "-l", "act", "--k", "0,4,8", "--random", "2",
         "--stats", str(tmp_path / "s" / "stats.csv"), "-o", str(tmp_path / "a")],
        out=buf,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = buf.getvalue()
    assert "24 inputs, 1 layer(s); K lowest by absmean" in printed
    assert printed.splitlines()[-1].endswith("ablation.csv")
    size = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert printed.splitlines()[-2] == f"size: {size / 1e6:.1f} MB in {(tmp_path / 'a').resolve()}"
    assert f"ranking by absmean from statistics file {tmp_path / 's' / 'stats.csv'}\n" in printed
    with open(tmp_path / "a" / "ablation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["selection"], r["k"]) for r in rows] == [
        (sel, k) for k in ("0", "4", "8") for sel in ("ranked", "random", "random")
    ]
    ranked4 = next(r for r in rows if r["selection"] == "ranked" and r["k"] == "4")
    assert float(ranked4["top1_agreement"]) == 1.0 and float(ranked4["kl"]) == 0.0
    summary = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert summary["ranking"]["source"].startswith("statistics file")
    assert sorted(summary["layers"][0]["lowest_ranked"][:4]) == list(IRRELEVANT)
    assert [c["k"] for c in summary["curve"]] == [0, 4, 8]
    png = (tmp_path / "a" / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG")

    # Without a saved file the ranking is computed on the same inputs, and says so.
    again = ["ablate", data, *common, "-l", "act", "--k", "4", "--random", "0",
             "-o", str(tmp_path / "b")]  # fmt: skip
    assert main(again) == 0
    buf = io.StringIO()
    assert main(again, out=buf) == 0  # a second run replaces the folder the first one wrote
    summary = json.loads((tmp_path / "b" / "ablation.json").read_text())
    assert "in-sample" in summary["ranking"]["source"]
    # The terminal says it too, not only ablation.json.
    assert (
        f"ranking by absmean from {summary['ranking']['source']}; give --stats FILE made on "
        "other inputs for a fair test\n"
    ) in buf.getvalue()
    assert summary["curve"][0]["random_agreement_mean"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-l", "act", "--k", "a"], r"--k 'a' is not understood; expected counts like 0,8,16,32"),
        (["-l", "actt"], r"layer 'actt' not found in .*did you mean 'act'"),
        (["-l", "act", "--stats", "missing.csv"], r"cannot read statistics file 'missing.csv'"),
        (["-l", "act", "--random", "-1"], r"--random -1: expected 0 or more random trials"),
    ],
)
def test_cli_ablate_errors_are_one_line(
    images: list[Path],
    known_spec: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    from featuremaps.cli import main

    code = main(["ablate", str(images[0]), "-m", known_spec, "--workers", "0",
                 "-o", str(tmp_path / "o"), *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_run_ranks_top_channels_by_a_saved_stats_file(
    images: list[Path], known_spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from featuremaps.cli import main

    common = ["-m", known_spec, "--normalize", "none"]
    stats = tmp_path / "s" / "stats.csv"
    assert main(["stats", str(images[0].parent), *common, "--workers", "0", "-l", "feat,act",
                 "-o", str(stats.parent)]) == 0  # fmt: skip
    saved = read_stats(stats)
    expected = np.argsort(-saved.values("act", "max"), kind="stable")[:3].tolist()
    code = main(["run", str(images[5]), *common, "--channels", "top:3:max", "--stats", str(stats),
                 "-o", str(tmp_path / "r"), "--no-report"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    records = {r["name"]: r for r in manifest["records"]}
    assert records["act"]["channels_shown"] == expected
    assert any("not in stats.csv" in w for w in records["pool"]["warnings"])
    # The legend states where the choice came from.
    note = "top 3 by max over the data set in stats.csv"
    options = GridOptions(max_channels=3, order="max", channels=(0, 1, 2), channels_note=note)
    legend = _legend_content(options, None, (8, 2, 2), (0, 1, 2), None, False, "viridis", 0)
    assert legend.selection == f"3 of 8 channels shown ({note})"

    code = main(["run", str(images[5]), *common, "--stats", str(stats), "-o", str(tmp_path / "x")])
    assert code == 2 and "--stats ranks channels for --channels top:K:STAT" in (
        capsys.readouterr().err
    )


def test_ablation_plot_draws_hostile_layer_names_as_text() -> None:
    from PIL import Image as PILImage

    from featuremaps.render.plots import plot_ablation

    curve = [
        {"k": k, "zeroed": k,
         **dict(zip([f"ranked_{m}" for m in METRICS], (1 - k / 10, k, k), strict=True)),
         **{f"random_{m}_{s}": 0.5 for m in METRICS for s in ("mean", "min", "max")}}
        for k in (0, 4, 8)
    ]  # fmt: skip
    png = plot_ablation(curve, model="$net$", layers=["$\\frac{a}{", "<img src=x>", "a", "b"],
                        images=3, stat="absmean", trials=2, random_weights=True)  # fmt: skip
    with PILImage.open(io.BytesIO(png)) as picture:
        assert picture.size == (1100, 340)
        assert len(picture.convert("RGB").getcolors(1 << 20) or []) > 20


def test_ablation_picture_says_where_the_ranking_came_from() -> None:
    from featuremaps.render.plots import ablation_ranked_label, ablation_ranking_caption

    in_sample = "the same inputs (in-sample: computed first on the data measured)"
    assert ablation_ranked_label("std", in_sample) == "lowest std first, ranked in-sample"
    assert ablation_ranking_caption("std", in_sample) == (
        "ranking by std: in-sample, computed on the same inputs it is measured on"
    )
    saved = "statistics file /data/other/stats.csv"
    assert ablation_ranked_label("std", saved) == "lowest std first"
    assert ablation_ranking_caption("std", saved) == "ranking by std from stats.csv"


def test_ablate_refuses_a_ranking_from_another_model_or_without_a_named_layer(
    images: list[Path], known_spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featuremaps.cli import main

    stats = tmp_path / "other.csv"  # 4 channels for 'act', which has 8 in this model
    stats.write_text(
        "layer,type,channel,mean,std,min,max,absmean\n"
        + "".join(f"act,ReLU,{c},1,1,0,2,1\n" for c in range(4))
    )
    common = ["ablate", str(images[0]), "-m", known_spec, "--workers", "0", "--k", "2"]
    code = main([*common, "-l", "act", "--stats", str(stats), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "'act' has 8 channels but its ranking lists 4" in err
    code = main([*common, "-l", "act,feat", "--stats", str(stats), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "has no layer matching --layers feat;" in err
    assert not (tmp_path / "o").exists()


def test_ablate_checks_for_class_scores_before_the_ranking_pass(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featuremaps.dataset
    from featuremaps.commands.ablate import ablate

    def no_ranking(*args: object, **kwargs: object) -> None:
        raise AssertionError("the ranking pass ran before the output was checked")

    monkeypatch.setattr(featuremaps.dataset, "compute_dataset_stats", no_ranking)
    model = nn.Sequential(nn.Conv2d(3, 2, 1)).eval()
    with pytest.raises(OptionError, match=r"class scores.*returns \(1, 2, 9, 11\)"):
        ablate(model, [str(images[0].parent)], layers="0", out=tmp_path / "o", workers=0,
               preprocessing=PLAIN)  # fmt: skip
    assert not (tmp_path / "o").exists()
