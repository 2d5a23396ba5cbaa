"""`featuremaps stats`: statistics over a folder equal numpy on the captured tensors; unreadable
files are counted and named; a channel built to be dead is found; correlated channels are paired."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featuremaps as fm
from featuremaps.cli import main

NET = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            with torch.no_grad():
                self.conv.weight[3] = 0.0      # channel 3: zero weights ...
                self.conv.bias[3] = -1.0       # ... and a negative bias: the ReLU never fires
                self.conv.weight[2] = 2.0 * self.conv.weight[1]   # 2 = twice channel 1 ...
                self.conv.bias[2] = 2.0 * self.conv.bias[1]        # ... so they correlate 1.0
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x))

    def build():
        return Net()
    """
)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        target = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(target)
    (folder / "broken.png").write_text("not a picture")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_stats_over_a_folder_match_numpy(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "net.py"
    net.write_text(NET)
    out = tmp_path / "stats"
    buf = io.StringIO()
    code = main(
        ["stats", str(data), "-m", f"{net}:build", "-o", str(out), "--batch-size", "2",
         "--workers", "0", "--duplicates", "0.99", "--size", "12x10"],
        out=buf,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = buf.getvalue()
    assert "not read: " in printed and "broken.png" in printed
    assert "5 of 6 inputs read" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["read"] == 5 and len(summary["inputs"]["not_read"]) == 1
    act = next(layer for layer in summary["layers"] if layer["name"] == "act")
    assert act["dead"] == [3]
    assert [pair[:2] for pair in act["near_duplicates"]] == [[1, 2]]

    # Oracle: the same layers captured image by image, statistics by numpy.
    model = fm.load_model(f"{net}:build").model
    images = sorted(p for p in data.rglob("img*.png"))
    pre = fm.Preprocessing(resize=(12, 10), source="test")
    tensors = [fm.capture(model, fm.load_input(p, preprocessing=pre).tensor) for p in images]
    with open(out / "stats.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 4
    for row in rows:
        values = np.concatenate(
            [t.get(row["layer"]).tensor[0, int(row["channel"])].double().numpy().ravel()
             for t in tensors]
        )  # fmt: skip
        # Batched convolutions differ from one-image ones in the last float32 bits.
        assert float(row["mean"]) == pytest.approx(values.mean(), rel=1e-5, abs=1e-7)
        assert float(row["std"]) == pytest.approx(values.std(), rel=1e-5, abs=1e-7)
        assert float(row["max"]) == pytest.approx(values.max(), rel=1e-6)
        assert float(row["zeros"]) == pytest.approx(np.mean(values == 0))
        assert (row["dead"] == "True") == (values.std() == 0)


MIRROR = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    def build():
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight[1] = -conv.weight[0]
            conv.bias[1] = -conv.bias[0]
        return nn.Sequential(conv)
    """
)


def test_duplicates_keep_the_sign_of_r_and_the_summary_says_the_rule(
    data: Path, tmp_path: Path
) -> None:
    net = tmp_path / "mirror.py"
    net.write_text(MIRROR)
    out = tmp_path / "stats"
    argv = ["stats", str(data), "-m", f"{net}:build", "-o", str(out), "--workers", "0"]
    assert main([*argv, "--duplicates", "0.95", "--no-plots"], out=io.StringIO()) == 0
    summary = json.loads((out / "summary.json").read_text())
    [[i, j, r]] = summary["layers"][0]["near_duplicates"]
    assert (i, j) == (0, 1) and r == pytest.approx(-1.0)  # channel 1 is channel 0 negated
    assert summary["duplicates"]["threshold"] == 0.95
    assert "|r| >= threshold; r keeps its sign" in summary["duplicates"]["rule"]


MOSTLY_NAN = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class MostlyNaN(nn.Module):
        def forward(self, x):
            y = x.clone()
            y[..., 1:, :] = float("nan")  # all rows but the first: 11 of 12 values
            return y

    def build():
        return nn.Sequential(MostlyNaN())
    """
)


def test_stats_warns_about_nan_layers_by_the_same_rule_as_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "nan.py"
    net.write_text(MOSTLY_NAN)
    model = ["-m", f"{net}:build", "--size", "12x10"]
    stats = ["stats", str(data), *model, "-o", str(tmp_path / "s"), "--workers", "0"]
    assert main([*stats, "--no-plots"], out=io.StringIO()) == 0
    stats_warning = capsys.readouterr().err
    image = str(next(data.glob("img*.png")))
    assert main([image, *model, "-o", str(tmp_path / "r")], out=io.StringIO()) == 0
    run_warning = capsys.readouterr().err
    same = "featuremaps: warning: 1 layer(s) hold NaN/Inf values (first: '0'); "
    assert same in run_warning and same in stats_warning
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["warnings"] == [stats_warning.split("featuremaps: warning: ")[1].strip()]


def test_nothing_readable_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.png").write_text("x")
    code = main(["stats", str(tmp_path / "a.png"), "-m", "resnet18", "--weights", "none",
                 "-o", str(tmp_path / "o"), "--workers", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "none of the 1 inputs could be read" in err
    assert not (tmp_path / "o").exists()


def test_no_inputs_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["stats", str(tmp_path / "*.png"), "-m", "resnet18", "--weights", "none"])
    assert code == 2 and "no input files found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["stats", "ablate"])
def test_a_1d_model_gets_the_documented_limit_not_a_conv_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/limits.md: stats and ablate read every file as an image or a 2-D array; 1-D and
    # 3-D models are fed from run only.
    nets = tmp_path / "nets.py"
    nets.write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv1d(1, 2, 3))\n"
    )
    np.save(tmp_path / "s.npy", np.zeros((1, 16), np.float32))
    argv = [command, str(tmp_path / "s.npy"), "-m", f"{nets}:build", "-o", str(tmp_path / "o")]
    code = main([*argv, "--workers", "0"] + (["-l", "0"] if command == "ablate" else []))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == (
        f"featuremaps: error: {command} reads every file as an image or a 2-D array, but the "
        "model's first layer '0' (Conv1d) is 1-D and takes signals (C, L); 1-D and 3-D models "
        "are fed from 'featuremaps run' (or fm.visualize) only"
    )
    assert not (tmp_path / "o").exists()


def test_tensor_channels_first_for_tokens() -> None:
    from featuremaps.dataset import _channels_first

    record = fm.LayerRecord("x", "x", 1, "Linear", None, 0, torch.arange(24.0).reshape(1, 4, 6))
    assert _channels_first(record).shape == (1, 6, 4)


def test_stats_reads_every_format_run_reads_and_counts_what_it_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    kinds = [".png", ".gif", ".ppm", ".tga", ".pcx"]
    for suffix in kinds:
        picture.save(folder / f"img{suffix}")
    np.save(folder / "array.npy", np.asarray(picture))
    for name in ("a.txt", "b.txt", "labels.json", "README"):
        (folder / name).write_text("not an input")
    net = tmp_path / "net.py"
    net.write_text(NET)
    out, buf = tmp_path / "stats", io.StringIO()
    argv = ["stats", str(folder), "-m", f"{net}:build", "-o", str(out), "--workers", "0",
            "--no-plots"]  # fmt: skip
    code = main(argv, out=buf)
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    # The oracle: every file `run` reads (load_input) is read here too.
    for path in folder.iterdir():
        if path.suffix in (*kinds, ".npy"):
            fm.load_input(path, channels=3)
    assert summary["inputs"]["read"] == len(kinds) + 1 and summary["inputs"]["not_read"] == []
    assert summary["inputs"]["skipped"] == {
        "suffix '.txt' is not an image or .npy": 2,
        "suffix '.json' is not an image or .npy": 1,
        "no suffix (not an image or .npy)": 1,
    }
    printed = buf.getvalue()
    assert "skipped: 2 files: suffix '.txt' is not an image or .npy" in printed
    assert "skipped: 1 file: no suffix (not an image or .npy)" in printed


def test_readable_suffixes_are_the_formats_pillow_decodes() -> None:
    from featuremaps.inputs import readable_suffixes

    Image.init()
    suffixes = readable_suffixes()
    assert {".gif", ".npy", ".png", ".jpg", ".webp", ".tif"} <= set(suffixes)
    for suffix, kind in Image.registered_extensions().items():
        # Stubs (identified, not decoded here) and Ghostscript's EPS are left out on purpose.
        stubs = {"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "EPS"}
        if kind in Image.OPEN and kind in Image.SAVE and kind not in stubs:
            assert suffix in suffixes, suffix


def test_already_preprocessed_arrays_of_any_size_share_a_data_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "a.npy", rng.normal(size=(3, 64, 64)).astype(np.float32))
    np.save(folder / "b.npy", rng.normal(size=(3, 40, 48)).astype(np.float32))
    Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(folder / "c.png")
    argv = ["stats", str(folder), "-m", "shapes_cnn", "-o", str(tmp_path / "o"), "--workers",
            "0", "--no-plots", "--batch-size", "4"]  # fmt: skip
    code = main(argv, out=io.StringIO())
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["inputs"]["read"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--near-zero", "-1"], "near-zero threshold -1 is not valid; expected 0 or more"),
        (["--duplicates", "2"], "duplicate threshold 2 can never be reached"),
        (["--layers", "conv1#3"],
         "layer 'conv1#3' matches no call in shapes_cnn: 'conv1' ran 1 time (conv1)"),
    ],
)  # fmt: skip
def test_stats_options_that_would_select_or_mean_nothing_are_errors(
    extra: list[str], message: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["stats", str(data), "-m", "shapes_cnn", "-o", str(tmp_path / "o"), "--workers", "0",
            "--no-plots", *extra]  # fmt: skip
    code = main(argv, out=io.StringIO())
    assert code == 2
    assert message in capsys.readouterr().err
