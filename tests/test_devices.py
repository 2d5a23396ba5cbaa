"""--device and --dtype: resolution and its errors on any machine, bfloat16/float16 autocast on
the CPU against a recomputation, and the same runs on CUDA (marked ``gpu``: they skip without
CUDA)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

import featuremaps as fm
from featuremaps.cli import main
from featuremaps.devices import Placement, resolve_device, resolve_placement
from featuremaps.render.grid import _legend_content


def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_takes_cuda_then_mps_then_the_cpu() -> None:
    found = resolve_device("auto")
    if torch.cuda.is_available():
        assert found.type == "cuda"
    elif torch.backends.mps.is_available():
        assert found.type == "mps"
    else:
        assert found == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert resolve_device(None) == found


def test_auto_is_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda(monkeypatch)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_cuda_says_so_and_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_cuda(monkeypatch)
    with pytest.raises(
        fm.OptionError,
        match=r"^--device cuda:1 asked for a CUDA GPU, but this torch .* (finds no CUDA device|"
        r"was built without CUDA).*; use --device cpu, or --device auto",
    ):
        resolve_device("cuda:1")


def test_a_cuda_index_beyond_the_devices_names_those_that_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        fm.OptionError,
        match=r"--device cuda:3 asked for CUDA device 3, but there is 1 \(cuda:0 to cuda:0\)",
    ):
        resolve_device("cuda:3")


def test_mps_without_metal_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(fm.OptionError, match=r"--device mps asked for Apple's Metal GPU"):
        resolve_device("mps")


def test_unknown_device_and_dtype_are_refused(tiny: nn.Module) -> None:
    with pytest.raises(fm.OptionError, match=r"--device 'tpu' is not understood; expected one"):
        resolve_device("tpu")
    with pytest.raises(fm.OptionError, match=r"--dtype 'int8' is not understood; expected one"):
        resolve_placement(tiny, "cpu", "int8")


def test_a_dtype_without_autocast_on_the_device_is_refused(
    tiny: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.amp.autocast_mode, "is_autocast_available", lambda kind: False)
    with pytest.raises(fm.OptionError, match=r"--dtype float16 runs under autocast, which torch"):
        resolve_placement(tiny, "cpu", "float16")


def test_none_keeps_the_model_where_it_is(tiny: nn.Module) -> None:
    placement = resolve_placement(tiny, None, None)
    assert placement == Placement(torch.device("cpu"), "float32", "the model's own")
    assert placement.label is None and placement.autocast_dtype is None
    assert placement.describe() == {
        "device": "cpu", "requested": "the model's own", "dtype": "float32", "autocast": False
    }  # fmt: skip


def test_cli_device_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _no_cuda(monkeypatch)
    for command in (
        ["run", "--model", "shapes_cnn", "--out", str(tmp_path / "o")],
        ["stats", str(tmp_path), "--model", "shapes_cnn", "--out", str(tmp_path / "s")],
        ["ablate", str(tmp_path), "--model", "shapes_cnn", "--layers", "conv1"],
    ):
        assert main([*command, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("featuremaps: error: --device cuda asked for")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_run_records_the_autocast_values_and_says_so(
    tiny: nn.Module, image_batch: torch.Tensor, tmp_path: Path, dtype: str
) -> None:
    [result] = fm.visualize(
        tiny, image_batch, out=tmp_path / "o", device="cpu", dtype=dtype, save_arrays=True
    )
    assert result.manifest["compute"] == {
        "device": "cpu", "requested": "cpu", "dtype": dtype, "autocast": True
    }  # fmt: skip
    records = {r.name: r for r in result.records}
    assert records["conv1"].dtype == dtype  # autocast ran the convolution in that precision
    # Oracle: the same layer recomputed under the same autocast.
    with torch.no_grad(), torch.autocast("cpu", dtype=getattr(torch, dtype)):
        expected = tiny.conv1(image_batch)
    arrays = load_file(str(tmp_path / "o" / "arrays.safetensors"))
    np.testing.assert_array_equal(arrays["conv1"], expected.float().numpy())
    # The manifest's whole-tensor numbers are those of the low-precision values.
    values = expected.float().numpy().astype(np.float64)
    assert records["conv1"].min == values.min() and records["conv1"].max == values.max()
    assert records["conv1"].mean == pytest.approx(values.mean(), rel=1e-12)
    written = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert written["compute"]["dtype"] == dtype


def test_the_legend_names_the_autocast_precision() -> None:
    from featuremaps.render.grid import GridOptions

    maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    plain = fm.GridLabel("conv1", "Conv2d", (1, 2, 2, 2))
    low = fm.GridLabel("conv1", "Conv2d", (1, 2, 2, 2), None, "bfloat16 autocast")
    args = (GridOptions(), (2, 2, 2), (0, 1), None, False, "viridis", 0)
    assert _legend_content(args[0], plain, *args[1:]).title == "conv1 · Conv2d · (1, 2, 2, 2)"
    assert _legend_content(args[0], low, *args[1:]).title.endswith(" · bfloat16 autocast")
    a = fm.make_grid(maps, label=plain).indices
    b = fm.make_grid(maps, label=low).indices
    assert a.shape[0] == b.shape[0] and not np.array_equal(a, b)


def test_a_model_is_moved_only_when_asked(tiny: nn.Module, image_batch: torch.Tensor) -> None:
    # device=None leaves a caller's model where it is (no copy, no move); "cpu" is a no-op here.
    weight = tiny.conv1.weight
    fm.visualize(tiny, image_batch, layers="conv1")
    fm.visualize(tiny, image_batch, layers="conv1", device="cpu")
    assert tiny.conv1.weight is weight


def test_stats_and_ablate_say_where_they_ran(tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    summary = fm.collect_stats(
        "shapes_cnn", [str(data)], out=tmp_path / "s", device="cpu", dtype="bfloat16",
        plots=False, workers=0,
    )  # fmt: skip
    assert summary["compute"]["dtype"] == "bfloat16" and summary["compute"]["device"] == "cpu"
    fm.ablate(
        "shapes_cnn", [str(data)], layers="relu2", out=tmp_path / "a", ks=(0, 2), trials=1,
        device="cpu", workers=0,
    )  # fmt: skip
    written = json.loads((tmp_path / "a" / "ablation.json").read_text())
    assert written["compute"] == {
        "device": "cpu", "requested": "cpu", "dtype": "float32", "autocast": False
    }  # fmt: skip


# -- on CUDA (skipped without it) --------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_summary_on_the_device_matches_numpy() -> None:
    from featuremaps.stats import summarize

    values = torch.randn(2, 8, 33, 17, generator=torch.Generator().manual_seed(0)) * 100 + 1e4
    values[0, 0, 0, 0] = float("nan")
    lo, hi, mean, nonfinite = summarize(values.cuda())
    finite = values.numpy()[np.isfinite(values.numpy())].astype(np.float64)
    assert nonfinite == 1 and (lo, hi) == (finite.min(), finite.max())
    assert mean == pytest.approx(finite.mean(), rel=1e-12)


@pytest.mark.gpu
def test_gpu_run_matches_the_cpu_run(tiny: nn.Module, image_batch: torch.Tensor) -> None:
    [cpu] = fm.visualize(tiny, image_batch, device="cpu")
    [gpu] = fm.visualize(tiny, image_batch, device="cuda")
    assert gpu.manifest["compute"]["device"].startswith("cuda")
    assert next(tiny.parameters()).is_cuda  # moved, as asked
    for a, b in zip(cpu.records, gpu.records, strict=True):
        assert (a.name, a.shape, a.image) == (b.name, b.shape, b.image)
        assert b.mean == pytest.approx(a.mean, rel=1e-4, abs=1e-5)
    assert set(gpu.grids) == set(cpu.grids)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_autocast_records_the_low_precision(
    tiny: nn.Module, image_batch: torch.Tensor, dtype: str
) -> None:
    tiny = tiny.cuda()
    records = {}
    with torch.autocast("cuda", dtype=getattr(torch, dtype)):
        for r in fm.capture(tiny, image_batch.cuda(), layers="conv1"):
            records[r.name] = r.tensor
    [result] = fm.visualize(tiny, image_batch, layers="conv1", device="cuda", dtype=dtype)
    [summary] = result.records
    assert summary.dtype == dtype and records["conv1"].dtype == getattr(torch, dtype)
    values = records["conv1"].float().cpu().numpy().astype(np.float64)
    assert summary.min == values.min() and summary.max == values.max()


@pytest.mark.gpu
def test_gpu_stats_match_the_cpu_stats(tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    fm.collect_stats("shapes_cnn", [str(data)], out=tmp_path / "c", device="cpu", plots=False)
    fm.collect_stats("shapes_cnn", [str(data)], out=tmp_path / "g", device="cuda", plots=False)
    import csv

    c = list(csv.DictReader((tmp_path / "c" / "stats.csv").open()))
    g = list(csv.DictReader((tmp_path / "g" / "stats.csv").open()))
    assert [(r["layer"], r["channel"]) for r in c] == [(r["layer"], r["channel"]) for r in g]
    for a, b in zip(c, g, strict=True):
        for key in ("mean", "std", "min", "max"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-3, abs=1e-5), key
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["compute"]["device"].startswith("cuda")
