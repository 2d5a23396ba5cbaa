"""Command line: the main job end to end, `layers`, and one clear line for every bad input."""

from __future__ import annotations

import io
import json
import re
import runpy
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

import featuremaps as fm
from featuremaps.cli import main

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.act = nn.ReLU(inplace=True)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            x = self.act(self.conv(x))
            return self.fc(torch.flatten(self.pool(x), 1))

    class NaNNet(Net):
        def forward(self, x):
            x = self.conv(x)
            x[:, 0, 0, 0] = float("nan")
            return self.act(x)

    def build():
        return Net()

    def nan():
        return NaNNet()
    """
)


@pytest.fixture
def nets(tmp_path: Path) -> str:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return str(path)


@pytest.fixture
def photo(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    return str(path)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    buf = io.StringIO()
    code = main(argv, out=buf)
    return code, buf.getvalue(), capsys.readouterr().err


def test_run_writes_pictures_manifest_and_arrays(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(
        [photo, "--model", f"{nets}:build", "--out", str(out), "--save-arrays"], capsys
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    names = [r["name"] for r in manifest["records"]]
    assert names == ["conv", "act", "pool", "fc"]
    conv = manifest["records"][0]
    assert conv["image"] == "0000_conv.png" and (out / conv["image"]).is_file()
    assert conv["shape"] == [1, 6, 20, 24] and conv["skipped"] is None
    assert conv["geometry"] == {
        "method": "analytic",
        "stride": [1.0, 1.0],
        "offset": [0.0, 0.0],
        "receptive_field": [3.0, 3.0],
    }
    fc = manifest["records"][3]
    assert fc["image"] == "0003_fc.png" and fc["drawn_as"] == "bar strip" and fc["layout"] == "NC"
    assert fc["data"] is None and fc["skipped"] is None  # a vector is not drawn as 1x1 tiles
    assert manifest["model"]["random_weights"] is False
    assert manifest["input"]["fed_shape"] == [1, 3, 20, 24]
    assert manifest["versions"]["featuremaps"] == fm.__version__
    # The manifest's numbers and the arrays agree with a recomputation of the layer.
    net = fm.load_model(f"{nets}:build").model
    x = fm.load_input(photo).tensor
    with torch.no_grad():
        expected = net.conv(x)
    with safe_open(str(out / "arrays.safetensors"), "pt") as f:
        torch.testing.assert_close(f.get_tensor("conv"), expected, rtol=0, atol=0)
        assert f.get_tensor("act").min() >= 0
    assert conv["min"] == pytest.approx(float(expected.min()))
    assert conv["max"] == pytest.approx(float(expected.max()))
    assert conv["mean"] == pytest.approx(float(expected.double().mean()), rel=1e-6)
    assert f"results: {out.resolve()}" in stdout


def test_default_model_and_image_stamp_random_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run(["run", "--out", str(out), "--layers", "layer4.1.*"], capsys)
    assert code == 0
    assert "featuremaps: warning: pretrained weights ResNet18_Weights" in err
    assert "RANDOM weights" in err and "Traceback" not in err
    assert "using the bundled sample" in stdout and "note: RANDOM WEIGHTS" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["random_weights"] is True
    assert manifest["input"]["fed_shape"] == [1, 3, 224, 224]  # the weights' own transforms
    assert [r["name"] for r in manifest["records"]][-1] == "layer4.1.relu#2"
    with Image.open(out / manifest["records"][0]["image"]) as image:
        picture = np.asarray(image.convert("RGB"))
    stamp_red = (picture[..., 0] > 180) & (picture[..., 1] < 40) & (picture[..., 2] < 40)
    assert stamp_red[:40].sum() > 50  # the RANDOM WEIGHTS stamp is on the picture


def test_layers_command_lists_calls_and_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(["layers", "resnet18", "--weights", "none"], capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].split() == ["name", "call", "type", "output", "shape"]
    # --weights none: no weights preset, so ToTensor on the full 600x512 sample photo
    assert lines[1].split() == ["conv1", "1", "Conv2d", "1x64x300x256"]
    assert ["layer1.0.relu#2", "2", "ReLU", "1x64x150x128"] in [ln.split() for ln in lines]
    assert lines[-2] == "60 records from 52 modules of resnet18 on input (1, 3, 600, 512)"
    assert lines[-1].startswith("preprocessing: none for random weights")


def test_several_images_get_one_folder_each(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "sub" / "photo.png"
    other.parent.mkdir()
    Image.new("L", (10, 12), 128).save(other)
    out = tmp_path / "many"
    code, stdout, _ = run([photo, str(other), "-m", f"{nets}:build", "-o", str(out)], capsys)
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["assets", "index.html", "manifest.json", "photo", "photo-2"]
    second = json.loads((out / "photo-2" / "manifest.json").read_text())
    assert "grayscale L -> RGB" in " ".join(second["input"]["conversions"])
    assert "photo.png: grayscale L -> RGB" in stdout


def test_nan_activations_are_drawn_and_warned(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan"
    code, _, err = run([photo, "-m", f"{nets}:nan", "-o", str(out)], capsys)
    assert code == 0
    # The NaN is written after conv returned: conv's record stays clean, act's holds it.
    assert "featuremaps: warning: 1 layer(s) hold NaN/Inf values (first: 'act')" in err
    conv, record = json.loads((out / "manifest.json").read_text())["records"][:2]
    assert conv["nonfinite"] == 0 and record["nonfinite"] == 1 and record["image"]
    with Image.open(out / record["image"]) as image:
        picture = np.asarray(image.convert("RGB"))
    assert ((picture == (255, 0, 255)).all(axis=-1)).any()  # the NaN cell is magenta


def _bad_png(tmp_path: Path) -> str:
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a picture")
    return str(path)


def _five_channels(tmp_path: Path) -> str:
    path = tmp_path / "five.npy"
    np.save(path, np.zeros((5, 8, 8), dtype=np.float32))
    return str(path)


def _arch_mismatch(tmp_path: Path) -> str:
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    return str(path)


class Pickled:
    pass


def _pickled(tmp_path: Path) -> str:
    path = tmp_path / "pickled.pth"
    torch.save({"model": Pickled()}, path)
    return str(path)


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "taken"
    path.write_text("x")
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t, n, p: [str(t / "nope.jpg"), "-m", n], r"input '.*nope.jpg' does not exist"),
        (lambda t, n, p: [_bad_png(t), "-m", n], r"notes.png"),
        (lambda t, n, p: [p, "-m", "resnet181"], r"unknown model 'resnet181'.*did you mean"),
        (
            lambda t, n, p: [p, "-m", "resnet18", "--weights", _arch_mismatch(t)],
            r"does not fit resnet18",
        ),
        (
            lambda t, n, p: [p, "-m", "resnet18", "--weights", _pickled(t)],
            r"needs full unpickling.*--trust-checkpoint",
        ),
        (
            lambda t, n, p: [p, "-m", n, "--layers", "cnov"],
            r"layer 'cnov' not found in .*did you mean 'conv'\? Run 'featuremaps layers",
        ),
        (lambda t, n, p: [_five_channels(t), "-m", n], r"5 channels.*takes 3"),
        (lambda t, n, p: [p, "-m", n, "-o", _a_file(t)], r"output path .*taken' is a file"),
        (lambda t, n, p: [p, "-m", n, "--channels", "top:3:median"], r"--channels 'top:3:median'"),
        (lambda t, n, p: [p, "-m", n, "--cmap", "virdis"], r"did you mean 'viridis'"),
        (lambda t, n, p: [p, "-m", n, "--scale", "fixed"], r"fixed"),
        (
            lambda t, n, p: [p, "-m", n, "--scale", "fixed", "--range", "1,0"],
            r"--range '1,0' needs LO < HI",
        ),
        (lambda t, n, p: [p, "-m", n, "--channels", "0"], r"--channels 0 would show nothing"),
        (lambda t, n, p: [p, "-m", n, "--layers", ""], r"--layers was given but empty"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(
    make_args, message: str, nets: str, photo: str, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(make_args(tmp_path, f"{nets}:build", photo), capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featuremaps: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(message, lines[0]), lines[0]


def test_bomb_limit_is_a_clear_error(
    nets: str, photo: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    code, _, err = run([photo, "-m", f"{nets}:build"], capsys)
    assert code == 2 and "decompression-bomb" in err and len(err.strip().splitlines()) == 1


def test_seed_recipe_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[1] / "examples" / "seed_recipe.py"
    monkeypatch.setattr(sys, "argv", [str(example), str(tmp_path / "seed")])
    runpy.run_path(str(example), run_name="__main__")
    manifest = json.loads((tmp_path / "seed" / "manifest.json").read_text())
    [record] = manifest["records"]
    assert record["type"] == "Conv2d" and record["shape"] == [1, 64, 300, 256]
    assert record["channels_shown"] == list(range(32))
    with Image.open(tmp_path / "seed" / record["image"]) as picture:
        assert picture.width > 8 * 256  # 8 columns of 256-pixel-wide maps


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run([], capsys)
    assert code == 0 and "featuremaps" in stdout and "layers" in stdout
    code, stdout, _ = run(["--version"], capsys)
    assert code == 0 and stdout.strip() == f"featuremaps {fm.__version__}"


def test_visualize_in_memory_shows_grids(tiny: nn.Module, image_batch: torch.Tensor) -> None:
    [result] = fm.visualize(tiny, image_batch, layers="conv1,bn1")
    assert list(result.grids) == ["conv1", "bn1"] and result.out_dir is None
    assert "data:image/png;base64" in result._repr_html_()
    assert result.grids["bn1"].channels == tuple(range(8))


def test_shapes_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[1] / "examples" / "shapes_conv1.py"
    monkeypatch.setattr(sys, "argv", [str(example), str(tmp_path / "shapes")])
    runpy.run_path(str(example), run_name="__main__")
    manifest = json.loads((tmp_path / "shapes" / "manifest.json").read_text())
    [record] = manifest["records"]
    assert (record["name"], record["shape"]) == ("conv1", [1, 16, 64, 64])
    assert manifest["model"]["weights_status"].startswith("pretrained: shapes_cnn")


TWO_INPUTS = textwrap.dedent(
    """
    import torch.nn as nn

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x, y):
            return self.conv(x) + y

    def build():
        return Two()
    """
)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featuremaps: error: "), err
    return lines[0]


def test_forward_failing_before_any_layer_is_one_line(
    photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.py"
    path.write_text(TWO_INPUTS)
    code, _, err = run([photo, "-m", f"{path}:build", "-o", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "forward pass failed on input of shape" in _one_error_line(err)


def test_out_of_memory_is_one_line(
    nets: str, photo: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from featuremaps.commands import cli_common  # loads the inputs the command line names

    def huge(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] can't allocate memory: 1e11 bytes")

    monkeypatch.setattr(cli_common, "load_input_for", huge)
    code, _, err = run([photo, "-m", f"{nets}:build"], capsys)
    assert code == 2 and "out of memory" in _one_error_line(err)


def test_output_folder_guards(
    nets: str,
    photo: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, _, err = run([photo, "-m", f"{nets}:build", "--out", "."], capsys)
    assert code == 2 and "is the current folder" in _one_error_line(err)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    code, _, err = run([photo, "-m", f"{nets}:build", "--out", str(tmp_path / "link")], capsys)
    assert code == 2 and "symbolic link" in _one_error_line(err)
    run_dir = tmp_path / "run"
    assert run([photo, "-m", f"{nets}:build", "--out", str(run_dir)], capsys)[0] == 0
    assert oct(run_dir.stat().st_mode & 0o777) != oct(0o700)  # readable like any new folder
    inside = run_dir / "again.png"
    Image.open(photo).save(inside)
    code, _, err = run([str(inside), "-m", f"{nets}:build", "--out", str(run_dir)], capsys)
    assert code == 2 and "lies inside the output folder" in _one_error_line(err)
    assert inside.exists()


def test_inputs_named_like_report_files_get_their_own_folders(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "index.html.png"
    Image.open(photo).save(odd)
    out = tmp_path / "many"
    code, _, err = run([str(odd), photo, "-m", f"{nets}:build", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "index.html").is_file() and (out / "index.html-2" / "manifest.json").is_file()


def test_sample_of_a_batch_array_is_the_one_drawn(
    nets: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = np.random.default_rng(3).integers(0, 256, (3, 3, 10, 12), dtype=np.uint8)
    path = tmp_path / "batch.npy"
    np.save(path, batch)
    out = tmp_path / "out"
    argv = [str(path), "-m", f"{nets}:build", "--sample", "1", "--out", str(out)]
    code, stdout, err = run([*argv, "--save-arrays"], capsys)
    assert code == 0, err
    assert "batch of 3 samples (N, C, H, W) fed whole" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["fed_shape"] == [3, 3, 10, 12]
    assert manifest["render"]["sample"] == 1
    given = np.asarray(Image.open(out / manifest["input"]["pictures"]["given"]))
    np.testing.assert_array_equal(given, batch[1].transpose(1, 2, 0))
    net = fm.load_model(f"{nets}:build").model
    with torch.no_grad():
        expected = net.conv(torch.from_numpy(batch / np.float32(255)))
    conv = manifest["records"][0]
    assert conv["max"] == pytest.approx(float(expected[1].max()))
    assert conv["max"] != pytest.approx(float(expected[0].max()))  # not the first sample's


TOKENS = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30, 6)
            self.lstm = nn.LSTM(6, 5, batch_first=True)

        def forward(self, ids):
            return self.lstm(self.embed(ids))[0]

    def build():
        return Tokens()
    """
)


def test_token_ids_run_and_sequences_are_drawn_as_heat_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tokens.py").write_text(TOKENS)
    ids = np.random.default_rng(4).integers(0, 30, (1, 12), dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "out"
    spec = f"{tmp_path / 'tokens.py'}:build"
    code, _, err = run([str(tmp_path / "ids.npy"), "-m", spec, "--out", str(out)], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["fed_shape"] == [1, 12]
    records = {r["name"]: r for r in manifest["records"]}
    for name, width in (("embed", 6), ("lstm.0", 5)):
        record = records[name]
        assert record["shape"] == [1, 12, width] and record["layout"] == "NLD"
        assert record["drawn_as"] == "sequence heat map" and record["skipped"] is None
        assert (out / record["image"]).is_file()
    net = fm.load_model(spec).model
    with torch.no_grad():
        embedded = net.embed(torch.from_numpy(ids))
    assert records["embed"]["max"] == pytest.approx(float(embedded.max()))


def test_consumer_errors_are_not_called_forward_failures(
    nets: str, photo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([photo, "-m", f"{nets}:build", "--sample", "5"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "sample 5 asked for" in line and "forward pass failed" not in line


@pytest.mark.parametrize(
    "order",
    [
        ["--out", "{out}", "-m", "{nets}", "{a}", "{b}"],  # options first, no command word
        ["{a}", "--out", "{out}", "{b}", "-m", "{nets}"],  # options between images
        ["run", "{a}", "{b}", "-m", "{nets}", "--out", "{out}"],  # options last
        ["run", "-m", "{nets}", "{a}", "--out", "{out}", "{b}"],
    ],
)
def test_options_in_any_order(
    order: list[str], nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "second.png"
    Image.new("RGB", (12, 10), (10, 200, 30)).save(other)
    out = tmp_path / "out"
    values = {"out": str(out), "nets": f"{nets}:build", "a": photo, "b": str(other)}
    code, _, err = run([arg.format(**values) for arg in order], capsys)
    assert code == 0, err
    top = json.loads((out / "manifest.json").read_text())
    assert top["runs"] == ["photo/manifest.json", "second/manifest.json"]
    for sub, given in (("photo", photo), ("second", str(other))):
        manifest = json.loads((out / sub / "manifest.json").read_text())
        assert manifest["input"]["path"] == given
        assert manifest["model"]["spec"] == f"{nets}:build"


def test_zoo_model_without_command_word(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    code, stdout, err = run(
        ["--model", "shapes_cnn", "--out", str(out), "--layers", "conv1"], capsys
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["spec"] == "shapes_cnn"
    assert [r["name"] for r in manifest["records"]] == ["conv1"]
    assert "using the bundled sample" in stdout


def test_negative_range_value_with_a_space(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    argv = [photo, "-m", f"{nets}:build", "--out", str(out), "--scale", "fixed", "--range", "-1,1"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["render"]["value_range"] == [-1.0, 1.0]


def test_each_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    from featuremaps.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert f"usage: featuremaps {name}" in capsys.readouterr().out


# -- preprocessing is always stated, and options replace only their own step -------------------


def test_run_states_unknown_preprocessing_and_how_to_set_it(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, _ = run([photo, "-m", f"{nets}:build", "-o", str(tmp_path / "o")], capsys)
    assert code == 0
    line = next(ln for ln in stdout.splitlines() if ln.startswith("preprocessing:"))
    assert "none known for this model" in line
    assert "--size N and --normalize imagenet" in line


@pytest.mark.parametrize("command", ["layers", "stats", "ablate", "locate"])
def test_every_command_that_reads_inputs_states_its_preprocessing(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(data / "a.png")
    argv = {
        "layers": ["layers", "shapes_cnn", "--input", str(data / "a.png")],
        "stats": ["stats", str(data), "-m", "shapes_cnn", "-o", str(tmp_path / "s"), "-q",
                  "--workers", "0", "--no-plots"],
        "ablate": ["ablate", str(data), "-m", "shapes_cnn", "--layers", "relu3", "--k", "0",
                   "--random", "0", "-o", str(tmp_path / "a"), "-q", "--workers", "0"],
        "locate": ["locate", str(data / "a.png"), "-m", "shapes_cnn", "--layer", "conv1"],
    }[command]  # fmt: skip
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    assert "preprocessing: resize shorter side 64 (bilinear), centre crop 64 (shapes_cnn" in stdout


def test_size_option_keeps_the_model_normalisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "weights.pth"
    torch.save(torchvision_resnet18_state(), path)
    argv = ["layers", "resnet18", "--weights", str(path), "--size", "32"]
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    last = stdout.splitlines()[-1]
    assert last.startswith("preprocessing: resize shorter side 32 (bilinear), normalise mean")
    assert "--size 32, the rest from transforms of ResNet18_Weights" in last


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    import torchvision

    return torchvision.models.resnet18().state_dict()


def test_as_is_feeds_an_array_unchanged_and_excludes_other_steps(
    nets: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = np.arange(3 * 5 * 6, dtype=np.uint8).reshape(3, 5, 6)
    np.save(tmp_path / "x.npy", values)
    out = tmp_path / "o"
    argv = [
        str(tmp_path / "x.npy"),
        "-m",
        f"{nets}:build",
        "-o",
        str(out),
        "--as-is",
        "--save-arrays",
    ]
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and "preprocessing: none, inputs fed as read" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["preprocessing"]["as_is"] is True
    assert manifest["input"]["fed_shape"] == [1, 3, 5, 6]
    code, _, err = run([*argv, "--size", "4"], capsys)
    assert code == 2 and "--as-is feeds inputs exactly as read" in err


def test_help_says_a_factory_spec_runs_code(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "layers"):
        buf = io.StringIO()
        with pytest.raises(SystemExit):
            sys.stdout, saved = buf, sys.stdout
            try:
                main([command, "--help"])
            finally:
                sys.stdout = saved
        text = " ".join(buf.getvalue().split())
        assert "'path/file.py:factory' always runs that code" in text


def test_a_layer_call_that_never_happened_fails_with_the_calls_that_did(
    photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [photo, "-m", "resnet18", "--weights", "none", "-o", str(tmp_path / "o"), "--no-report"]
    code, _, err = run([*argv, "--layers", "layer1.0.relu#5"], capsys)
    assert code == 2
    assert (
        "layer 'layer1.0.relu#5' matches no call in resnet18: 'layer1.0.relu' ran 2 times "
        "(layer1.0.relu, layer1.0.relu#2); did you mean 'layer1.0.relu#2'?"
    ) in _one_error_line(err)
    assert not (tmp_path / "o").exists()


MIXED = textwrap.dedent(
    """
    import dataclasses
    import torch
    from torch import nn

    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor

    class Log(nn.Module):
        def forward(self, x):
            return None

    class Head(nn.Module):
        def forward(self, x):
            return Out(x.mean((2, 3)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.log = Log()
            self.head = Head()

        def forward(self, x):
            y = self.conv(x)
            self.log(y)
            return self.head(y)

    def build():
        return Net()
    """
)


def test_outputs_without_tensors_appear_in_manifest_and_layers(
    photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mixed.py"
    path.write_text(MIXED)
    out = tmp_path / "o"
    code, _, _ = run([photo, "-m", f"{path}:build", "-o", str(out), "--no-report"], capsys)
    assert code == 0
    records = {r["name"]: r for r in json.loads((out / "manifest.json").read_text())["records"]}
    assert records["log"]["skipped"] == "returned NoneType, not a tensor: nothing to record"
    assert records["head.logits"]["shape"] == [1, 4]
    code, stdout, _ = run(["layers", f"{path}:build", "--input", photo], capsys)
    assert code == 0
    assert ["log", "1", "Log", "returned", "NoneType", "(no", "tensor)"] in [
        ln.split() for ln in stdout.splitlines()
    ]


@pytest.mark.slow
def test_detection_transform_is_listed_with_the_type_it_returned(
    photo: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "layers",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "--weights",
        "none",
        "--input",
        photo,
    ]
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    rows = [ln.split() for ln in stdout.splitlines()]
    assert ["transform", "1", "GeneralizedRCNNTransform", "returned", "tuple", "(ImageList,",
            "NoneType)", "(no", "tensor)"] in rows  # fmt: skip


# -- scale and range: never ignored, never clipped without a hint, messages in CLI words ------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scale", "global", "--range=-1,1"],
         "--range -1,1 is used only with --scale fixed, but the scale is 'global'"),
        (["--range", "-1,1"],
         "--range -1,1 is used only with --scale fixed, but the scale is 'layer'"),
        (["--scale", "channel", "--range", "0,1"], "but the scale is 'channel'"),
        (["--scale", "fixed"], "--scale fixed needs --range LO,HI, for example --range -1,1"),
        (["--columns", "0"], "--columns 0 is not valid; expected 1 or more"),
        (["--attention-patch", "7"], "--attention-patch '7' is not ROW,COL (two whole numbers"),
    ],
)  # fmt: skip
def test_scale_and_range_misuse_is_an_error_in_command_line_words(
    extra: list[str], message: str, nets: str, photo: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    code, _, err = run([photo, "-m", f"{nets}:build", "-o", str(tmp_path / "o"), *extra], capsys)
    assert code == 2
    assert message in _one_error_line(err)


@pytest.mark.parametrize(
    "extra",
    [
        ["--scale", "fixed"],
        ["--scale", "global", "--range", "0,1"],
        ["--columns", "0"],
        ["--channels", "0,99"],
        ["--channels", "top:0:mean"],
        ["--sample", "3"],
        ["--cmap", "nope"],
        ["--scale", "fixed", "--range", "inf,1"],
        ["--size", "0"],
        ["--normalize", "1,2/0,1"],
    ],
)
def test_no_python_syntax_in_command_line_errors(
    extra: list[str], nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run([photo, "-m", f"{nets}:build", "-o", str(tmp_path / "o"), *extra], capsys)
    line = _one_error_line(err)
    assert code == 2
    # Keyword arguments (value_range=..., columns=8) and tuples are Python, not options.
    assert not re.search(r"\b[a-z_]+=|\(low, high\)|list_layers|\(\d+, \d+\)", line), line


def test_fixed_scale_counts_clipped_cells_in_the_manifest(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    argv = [photo, "-m", f"{nets}:build", "-o", str(out), "--scale", "fixed", "--range", "0,0.01",
            "--layers", "conv", "--save-arrays", "--no-report"]  # fmt: skip
    code, _, _ = run(argv, capsys)
    assert code == 0
    [record] = json.loads((out / "manifest.json").read_text())["records"]
    with safe_open(str(out / "arrays.safetensors"), "pt") as arrays:
        values = arrays.get_tensor("conv")[0]
    outside = int(((values < 0) | (values > 0.01)).sum())
    assert outside > 0
    assert f"{outside} values outside the fixed range 0 … 0.01" in " ".join(record["warnings"])


def test_visualize_refuses_a_range_it_would_ignore(
    tiny: nn.Module, image_batch: torch.Tensor
) -> None:
    grid = fm.GridOptions(scale="global", value_range=(-1.0, 1.0))
    with pytest.raises(fm.OptionError, match="scale 'global' measures its range over all layers"):
        fm.visualize(tiny, image_batch, grid=grid)


def test_inputs_whose_names_sanitise_alike_stay_distinct_and_traceable(
    nets: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "é.png",
             tmp_path / "ü.png", tmp_path / "x y.png", tmp_path / "x_y.png"]  # fmt: skip
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        picture.save(path)
    out = tmp_path / "o"
    argv = [*map(str, paths), "-m", f"{nets}:build", "-o", str(out), "--no-report"]
    code, _, _ = run(argv, capsys)
    assert code == 0
    top = json.loads((out / "manifest.json").read_text())
    folders = [entry["folder"] for entry in top["inputs"]]
    assert len(set(folders)) == len(paths)
    assert [entry["input"] for entry in top["inputs"]] == [str(p) for p in paths]
    for entry in top["inputs"]:
        sub = json.loads((out / entry["manifest"]).read_text())
        assert sub["input"]["path"] == entry["input"]
        assert entry["manifest"] == f"{entry['folder']}/manifest.json"
    assert folders[2:4] == ["input", "input-2"]  # nothing of é or ü survives sanitising


def test_run_prints_and_writes_the_top_5_marked_meaningless(
    photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [photo, "--model", "resnet18", "--weights", "none", "--offline", "--layers", "fc"]
    code, stdout, err = run([*argv, "--out", str(out), "--no-report"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    found = manifest["prediction"]
    assert found["source"] == "weights metadata ResNet18_Weights.IMAGENET1K_V1"
    assert found["random_weights"] is True and found["meaningless"] is True
    assert len(found["top"]) == 5 and manifest["outputs"] == {"": "fc"}
    fc = next(r for r in manifest["records"] if r["name"] == "fc")
    assert fc["drawn_as"] == "bar strip"
    assert "top-5 classes (weights metadata ResNet18_Weights.IMAGENET1K_V1): MEANINGLESS" in stdout
    first = found["top"][0]
    assert f"{first['label']} (#{first['index']})" in stdout
    assert max(fc["channel_stats"]["max"]) == pytest.approx(
        max(fc["channel_stats"]["max"][p["index"]] for p in found["top"])
    )  # the top class is the largest logit
