"""1-D signals (N, C, L): .npy and .wav inputs, geometry through Conv1d and pooling, pictures."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps import layouts
from featuremaps.cli import main
from featuremaps.geometry import GeometryTracker, LineGeometry
from featuremaps.inputs import ModelInput, load_signal, load_wav
from featuremaps.render import GridLabel, GridOptions
from featuremaps.render.signal import Placement, make_signal_picture

NETS = """
from torch import nn

def build():
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, stride=2, padding=2), nn.ReLU(), nn.AvgPool1d(2),
        nn.Conv1d(4, 3, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2),
    )
"""


def _write_wav(path: Path, frames: np.ndarray, width: int) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(frames.shape[1])
        writer.setsampwidth(width)
        writer.setframerate(8000)
        if width == 1:
            data = frames.astype(np.uint8).tobytes()
        elif width == 3:
            little = frames.astype("<i4").view(np.uint8).reshape(*frames.shape, 4)
            data = little[..., :3].tobytes()
        else:
            data = frames.astype(f"<i{width}").tobytes()
        writer.writeframes(data)


@pytest.mark.parametrize(
    ("width", "low", "high", "scale", "zero"),
    [(1, 0, 256, 128.0, 128), (2, -32768, 32768, 32768.0, 0), (3, -(2**23), 2**23, 2.0**23, 0)],
)
def test_pcm_wav_is_channels_by_samples_scaled_to_minus_one_one(
    tmp_path: Path, width: int, low: int, high: int, scale: float, zero: int
) -> None:
    rng = np.random.default_rng(width)
    frames = rng.integers(low, high, size=(37, 2))
    frames[0] = (low, high - 1)  # both extremes
    path = tmp_path / "sound.wav"
    _write_wav(path, frames, width)
    loaded = load_wav(path, ModelInput(channels=2))
    expected = ((frames - zero) / scale).T[None].astype(np.float32)
    np.testing.assert_array_equal(loaded.tensor.numpy(), expected)
    assert loaded.tensor.shape == (1, 2, 37) and loaded.display is None
    assert float(loaded.tensor.min()) == -1.0 and float(loaded.tensor.max()) < 1.0
    assert f"{8 * width}-bit PCM, 2 channel(s) x 37 samples at 8000 Hz" in loaded.conversions[0]


def test_a_wav_with_other_channels_than_the_first_layer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    _write_wav(path, np.zeros((10, 1), dtype=np.int64), 2)
    with pytest.raises(fm.InputError, match=r"has 1 channel .* takes 2; give a signal with 2"):
        load_wav(path, ModelInput(channels=2, layer_name="conv"))


def test_a_wav_for_an_image_or_volume_model_says_what_the_model_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.wav"
    _write_wav(path, np.zeros((10, 1), dtype=np.int64), 2)
    nets = tmp_path / "nets.py"
    nets.write_text("from torch import nn\n\ndef build():\n    return nn.Conv2d(3, 2, 3)\n")
    assert main(["layers", f"{nets}:build", "--input", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"featuremaps: error: input '{path}' is a sound (a signal (C, L)), but the model's first "
        "layer is 2-D and takes images; give an image file or a .npy array (C, H, W)"
    )
    with pytest.raises(fm.InputError, match=r"is 3-D and takes volumes \(C, D, H, W\) or clips"):
        fm.load_input(path, axes=3)


def test_a_file_that_is_not_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.wav"
    path.write_bytes(b"RIFF0000nope")
    with pytest.raises(fm.InputError, match=r"not a PCM \.wav file .* convert it to 16-bit PCM"):
        load_wav(path)


def test_npy_signals_are_fed_as_one_sample_c_by_l(tmp_path: Path) -> None:
    values = np.arange(2 * 9, dtype=np.float64).reshape(2, 9) - 4.5
    for name, array in {"cl": values, "ncl": values[None], "lc": values.T}.items():
        np.save(tmp_path / f"{name}.npy", array)
        loaded = fm.load_input(tmp_path / f"{name}.npy", channels=2, axes=1)
        np.testing.assert_array_equal(loaded.tensor.numpy(), values[None].astype(np.float32))
    assert "array (L, C) transposed to (C, L)" in loaded.conversions
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 3, 4)))
    with pytest.raises(fm.InputError, match=r"expected \(C, L\), \(1, C, L\) or \(L,\)"):
        load_signal(tmp_path / "bad.npy")


def test_an_image_for_a_1d_model_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(fm.InputError, match=r"is 1-D and takes signals \(C, L\); give a \.npy"):
        fm.load_input(tmp_path / "a.png", axes=1, layer_name="conv")


def test_image_preprocessing_given_for_a_signal_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.zeros((1, 8), np.float32))
    pre = fm.Preprocessing(mean=(0.5,), std=(0.2,))
    with pytest.raises(fm.OptionError, match=r"is for images, but this input is a signal"):
        fm.load_input(tmp_path / "s.npy", axes=1, preprocessing=pre)


def test_image_options_refused_for_a_signal_name_only_real_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    np.save(tmp_path / "s.npy", np.zeros((2, 16), np.float32))
    argv = [str(tmp_path / "s.npy"), "--model", f"{nets}:build", "--normalize", "imagenet"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featuremaps: error: the preprocessing normalise") and "\n" not in err
    assert err.endswith("drop --size and --normalize (in Python: the preprocessing argument) "
                        "and scale the signal yourself")  # fmt: skip


def test_expected_axes_reads_the_first_layer_type() -> None:
    assert fm.expected_axes(nn.Sequential(nn.Conv1d(2, 3, 3))) == (1, "0", "Conv1d")
    assert fm.expected_axes(nn.Sequential(nn.Conv3d(1, 3, 3))) == (3, "0", "Conv3d")
    assert fm.expected_axes(nn.Sequential(nn.Linear(2, 3))) is None


def test_1d_geometry_matches_the_input_gradient_of_each_cell() -> None:
    """Oracle: the span of input samples with a non-zero gradient for cell j is its receptive
    field, and its middle is the cell's centre (positive weights and average pooling, so no
    gradient inside the field is zero)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 2, 5, stride=2, padding=1), nn.AvgPool1d(3, stride=2), nn.Conv1d(2, 2, 3)
    )
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.uniform_(0.1, 1.0)
    x = torch.randn(1, 1, 101)
    with GeometryTracker(x, dict(model.named_children())) as tracker:
        model(x)
    for name, upto in (("0", 1), ("1", 2), ("2", 3)):
        found = tracker.found[name]
        assert isinstance(found, LineGeometry)
        xg = x.clone().requires_grad_(True)
        out = model[:upto](xg)
        assert found.length == out.shape[2]
        for j in range(2, out.shape[2] - 2):
            (grad,) = torch.autograd.grad(out[0, :, j].sum(), xg, retain_graph=True)
            hit = torch.nonzero(grad[0, 0]).flatten()
            lo, hi = hit.min().item(), hit.max().item()
            assert found.x.center(j) == (lo + hi) / 2, (name, j)
            assert found.x.size == hi - lo + 1, (name, j)


def test_heat_map_columns_show_the_cell_whose_box_holds_them() -> None:
    maps = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)
    placement = Placement(stride=4.0, offset=2.5, field=9.0)
    made = make_signal_picture(
        maps, GridOptions(), GridLabel("x", "Conv1d", (1, 3, 20)), length=400, placement=placement
    )
    u = made.coordinates
    np.testing.assert_allclose(u, np.arange(400))  # 400 samples on 400 columns
    expected = np.floor((u - 2.5) / 4.0 + 0.5 + 1e-9).astype(int)
    expected[(expected < 0) | (expected >= 20)] = -1
    np.testing.assert_array_equal(made.columns, expected)
    # cell 0 holds [0.5, 4.5) and cell 19 [76.5, 80.5): sample 0 and 81 lie in no cell
    assert list(made.columns[[0, 1, 80, 81]]) == [-1, 0, 19, -1]
    stretched = make_signal_picture(maps, GridOptions(), GridLabel("x", "Conv1d", (1, 3, 20)))
    assert stretched.coordinates.size == 400 and (stretched.columns >= 0).all()
    np.testing.assert_array_equal(np.bincount(stretched.columns), np.full(20, 20))


def test_a_conv1d_model_runs_from_the_cli_on_a_npy_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    signal = np.sin(np.linspace(0, 12, 2 * 64)).reshape(2, 64).astype(np.float32)
    np.save(tmp_path / "signal.npy", signal)
    out = tmp_path / "out"
    code = main([str(tmp_path / "signal.npy"), "--model", f"{nets}:build", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["fed_shape"] == [1, 2, 64]
    records = {r["name"]: r for r in manifest["records"]}
    assert records["0"]["layout"] == "NCL" and records["0"]["drawn_as"] == layouts.SIGNAL_MAP
    # Conv1d(5, stride 2, padding 2): cell j centred on 2j; AvgPool1d(2) after the ReLU: 4j + 1.
    assert records["0"]["geometry"]["stride"] == [2.0] and records["0"]["geometry"]["offset"] == [
        0.0
    ]
    assert records["2"]["geometry"] == {
        "method": "analytic", "stride": [4.0], "offset": [1.0], "receptive_field": [7.0]
    }  # fmt: skip
    assert records["3"]["shape"] == [1, 3, 14] and (out / records["3"]["image"]).is_file()
    assert records["6"]["drawn_as"] == layouts.BAR_STRIP


def test_eeg_example_draws_every_1d_layer_on_the_input_axis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpy
    import sys

    example = Path(__file__).parents[1] / "examples" / "eeg_signal.py"
    monkeypatch.setattr(sys, "argv", [str(example), str(tmp_path / "eeg" / "out")])
    runpy.run_path(str(example), run_name="__main__")
    manifest = json.loads((tmp_path / "eeg" / "out" / "manifest.json").read_text())
    assert manifest["input"]["fed_shape"] == [1, 4, 800]
    drawn = [r for r in manifest["records"] if r["drawn_as"] == layouts.SIGNAL_MAP]
    assert [r["name"] for r in drawn] == ["0", "1", "2", "3", "4", "5"]
    # Conv1d(9, stride 2, padding 4) -> MaxPool1d(2) -> Conv1d(5, padding 2): stride 4, field 27.
    assert drawn[3]["geometry"]["receptive_field"] == [27.0]
    assert drawn[5]["geometry"] is None  # adaptive pooling: stretched, and the picture says so
