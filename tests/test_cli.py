"""Command line: the main job end to end, `layers`, and one clear line for every bad input."""

from __future__ import annotations

import io
import json
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
    assert lines[-1] == "60 records from 52 modules of resnet18 on input (1, 3, 600, 512)"


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
        (lambda t, n, p: [p, "-m", n, "--range", "1,0"], r"--range '1,0' needs LO < HI"),
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
    def huge(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] can't allocate memory: 1e11 bytes")

    monkeypatch.setattr(fm, "load_input", huge)
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
