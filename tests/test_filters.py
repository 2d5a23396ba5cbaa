"""Filters: the weights behind a channel, their norms, the shared scale, errors and `run --filters`.

Oracles: norms and kernels recomputed from the module's weight with numpy (grouped and transposed
convolutions regrouped by explicit loops over groups); the "rgb" picture's grey levels from their
formula; the run's sheets and columns against the public API and numpy.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.cli import main
from featuremaps.filters import MAX_KERNEL_INPUTS
from featuremaps.render.colormap import level_indices
from featuremaps.render.filters import GREY_LEVELS, MAX_SIDE
from featuremaps.render.palette import LEVELS, grid_palette
from featuremaps.render.scaling import normalize
from featuremaps.report.filter_view import filter_views
from featuremaps.report.model import build_report


def _weight(module: nn.Module) -> np.ndarray:
    return module.weight.detach().double().numpy().copy()


def _rows_by_loop(module: nn.Module) -> list[np.ndarray]:
    """Each output channel's own kernels, by the definition of (transposed) grouped conv."""
    w = _weight(module)
    groups = module.groups if hasattr(module, "groups") else 1
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        in_g = w.shape[0] // groups
        out_g = w.shape[1]
        rows = []
        for o in range(out_g * groups):
            g, j = divmod(o, out_g)
            rows.append(w[g * in_g : (g + 1) * in_g, j])
        return rows
    return [w[o] for o in range(w.shape[0])]


LAYERS = {
    "conv2d": lambda: nn.Conv2d(3, 5, 3),
    "grouped": lambda: nn.Conv2d(8, 12, 3, groups=4),
    "depthwise": lambda: nn.Conv2d(6, 6, 5, groups=6),
    "pointwise": lambda: nn.Conv2d(10, 7, 1),
    "wide": lambda: nn.Conv2d(4, 3, 9),
    "many_inputs": lambda: nn.Conv2d(MAX_KERNEL_INPUTS + 1, 2, 3),
    "linear": lambda: nn.Linear(9, 4),
    "conv1d": lambda: nn.Conv1d(4, 6, 5),
    "conv3d": lambda: nn.Conv3d(2, 3, 3),
    "transposed_grouped": lambda: nn.ConvTranspose2d(4, 6, 3, groups=2),
}
KINDS = {
    "conv2d": "rgb",
    "grouped": "kernels",
    "depthwise": "kernels",
    "pointwise": "matrix",
    "wide": "norms",
    "many_inputs": "norms",
    "linear": "matrix",
    "conv1d": "rows",
    "conv3d": "norms",
    "transposed_grouped": "kernels",
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_norms_and_values_equal_a_numpy_recomputation(name: str) -> None:
    torch.manual_seed(3)
    module = LAYERS[name]()
    f = fm.filters(module, "")
    rows = _rows_by_loop(module)
    assert f.kind == KINDS[name]
    assert f.out_channels == len(rows)
    np.testing.assert_allclose(f.l1, [np.abs(r).sum() for r in rows], rtol=1e-12)
    np.testing.assert_allclose(f.l2, [np.sqrt((r**2).sum()) for r in rows], rtol=1e-12)
    if f.kind == "rgb":
        expected = np.stack([np.moveaxis(r, 0, -1) for r in rows])
    elif f.kind == "norms":
        expected = np.stack([np.sqrt((r.reshape(r.shape[0], -1) ** 2).sum(1)) for r in rows])
    elif f.kind == "matrix":
        expected = np.stack([r.reshape(-1) for r in rows])
    else:
        expected = np.stack(rows)
    assert f.values.shape == expected.shape
    np.testing.assert_allclose(f.values, expected, rtol=1e-6)
    assert f.weight_shape == tuple(module.weight.shape)


def test_grouped_conv_filters_show_only_their_own_group() -> None:
    conv = nn.Conv2d(8, 4, 3, groups=4, bias=False)  # filter o sees inputs 2o and 2o + 1
    x = torch.randn(1, 8, 5, 5)
    f = fm.filters(conv, "")
    assert f.values.shape == (4, 2, 3, 3) and f.groups == 4 and "groups=4" in f.note
    with torch.no_grad():
        y = conv(x)
    for o in range(4):
        own = x[:, 2 * o : 2 * o + 2]
        by_hand = torch.nn.functional.conv2d(own, torch.from_numpy(f.values[o : o + 1].copy()))
        torch.testing.assert_close(by_hand[:, 0], y[:, o])


def test_reading_filters_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f = fm.filters(model, "2")
    assert model.training and not model[2].training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not np.shares_memory(f.values, model[2].weight.detach().numpy())
    with pytest.raises(ValueError):
        f.values[0, 0, 0, 0] = 1.0  # read-only


def test_rgb_sheet_mid_grey_is_exactly_zero_and_ends_are_max_abs() -> None:
    conv = nn.Conv2d(3, 4, 3, bias=False)
    w = ((torch.arange(4 * 3 * 3 * 3) * 7) % 11 - 5).float().reshape(4, 3, 3, 3) / 8
    w[1] = 0.0  # one filter all zero: mid-grey everywhere
    w[2, 0, 0, 0], w[3, 1, 2, 2] = 1.5, -1.5  # +max|w| and -max|w|, one each
    with torch.no_grad():
        conv.weight.copy_(w)
    f = fm.filters(conv, "")
    sheet = fm.make_filter_sheet(f)
    m = 1.5
    assert (sheet.value_range.vmin, sheet.value_range.vmax) == (-m, m)
    assert sheet.value_range.symmetric
    rgb = w.permute(0, 2, 3, 1).double().numpy()
    expected = np.rint((rgb / m + 1) / 2 * (GREY_LEVELS - 1)).astype(np.uint8)
    for o in range(4):
        y, x, h, wd = sheet.box(o)
        patch = sheet.pixels[y : y + h, x : x + wd]
        s = h // 3
        np.testing.assert_array_equal(patch[::s, ::s], expected[o])
        assert (patch == patch[::s, ::s].repeat(s, 0).repeat(s, 1)).all()  # whole-factor zoom
    y, x, h, wd = sheet.box(1)
    assert (sheet.pixels[y : y + h, x : x + wd] == 127).all()  # 0 is mid-grey, exactly
    y, x, _, _ = sheet.box(2)
    assert sheet.pixels[y, x, 0] == 254  # +max|w|: the top of the red channel
    y, x, h, wd = sheet.box(3)
    assert sheet.pixels[y + h - 1, x + wd - 1, 1] == 0  # -max|w|: the bottom of green
    assert "one symmetric range over all 4 filters" in sheet.legend
    assert "-1.5 … 1.5" in sheet.legend and "weights -1.5 … 1.5" in sheet.legend


def test_signed_sheets_are_centred_on_zero_with_the_grids_diverging_map() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 3, 3)
    f = fm.filters(conv, "")
    sheet = fm.make_filter_sheet(f)
    m = float(conv.weight.detach().abs().max())
    assert sheet.cmap == "RdBu_r" and sheet.value_range.vmin == -sheet.value_range.vmax
    assert sheet.value_range.vmax == pytest.approx(m, rel=1e-7)
    norms = fm.make_filter_sheet(fm.filters(nn.Conv3d(2, 3, 3), ""))
    assert norms.cmap == "viridis" and not norms.value_range.symmetric


def test_tile_sheets_cap_the_filters_shown_and_say_so() -> None:
    f = fm.filters(nn.Conv2d(3, 20, 3), "")
    sheet = fm.make_filter_sheet(f, max_filters=8)
    assert sheet.shown == tuple(range(8)) and sheet.total == 20
    assert sheet.box(8) is None and sheet.box(7) is not None
    assert "8 of 20 filters shown" in sheet.warnings


def test_large_matrices_are_reduced_by_the_stated_block_rule() -> None:
    torch.manual_seed(2)
    linear = nn.Linear(2 * MAX_SIDE + 5, 3, bias=False)  # 2053 inputs: blocks of 3 columns
    f = fm.filters(linear, "")
    sheet = fm.make_filter_sheet(f)
    assert (
        "reduced to at most 1024 rows and columns: each pixel the largest |w| of a 1x3 block "
        "(out x in), sign kept" in sheet.warnings
    )
    w = f.values.astype(np.float64)
    blocks = [w[:, j : j + 3] for j in range(0, w.shape[1], 3)]  # the last holds 1 column
    picked = np.stack([b[np.arange(3), np.abs(b).argmax(axis=1)] for b in blocks], axis=1)
    assert picked.shape == (3, 685)
    levels = level_indices(normalize(picked.astype(np.float32), sheet.value_range), LEVELS, 0)
    expected = grid_palette("RdBu_r")[levels]
    lay = sheet.layout
    assert lay["type"] == "rows" and lay["per_row"] == 1 and lay["width"] == 685
    top, left, step = lay["top"], lay["left"], lay["row_height"]
    drawn = sheet.pixels[top : top + 3 * step : step, left : left + 685]
    np.testing.assert_array_equal(drawn, expected)


@pytest.mark.parametrize(
    ("layer", "match"),
    [
        ("1", r"layer '1' of Sequential is a ReLU, which has no weight; expected a Conv or Linear"),
        ("2", r"is a MaxPool2d, which has no weight"),
        ("3", r"is a BatchNorm2d, which has a weight that is not a filter"),
        ("convv", r"layer 'convv' not found in Sequential.*Expected the name of a Conv or Linear"),
    ],
)
def test_a_layer_without_filters_is_one_clear_error(layer: str, match: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4))
    with pytest.raises(fm.LayerError, match=match) as info:
        fm.filters(model, layer)
    assert "fm.list_layers(model)" in str(info.value) and "\n" not in str(info.value)


def test_unknown_layer_suggests_close_names_and_the_layers_command() -> None:
    with pytest.raises(fm.LayerError) as info:
        fm.filters("shapes_cnn", "conv4")
    text = str(info.value)
    assert "layer 'conv4' not found in shapes_cnn; did you mean 'conv3', 'conv2', 'conv1'?" in text
    assert "Run 'featuremaps layers shapes_cnn' to list the names." in text


def test_a_later_call_names_the_same_filters() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    assert fm.filters(model, "0#2").layer == "0"


# -- the command line ---------------------------------------------------------------------------


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    buf = io.StringIO()
    code = main(argv, out=buf)
    return code, buf.getvalue(), capsys.readouterr().err


def test_run_filters_writes_sheets_manifest_entries_and_norm_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--model", "shapes_cnn", "--filters", "--layers", "conv1,relu1,conv2,fc", "--out"]
    code, _, err = _run([*argv, str(out)], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    loaded = fm.load_model("shapes_cnn")
    entries = {e["layer"]: e for e in manifest["filters"]}
    assert list(entries) == ["conv1", "conv2", "fc"]  # relu1 has no filters
    kinds = {"conv1": "rgb", "conv2": "kernels", "fc": "matrix"}
    modules = dict(loaded.model.named_modules())
    for layer, entry in entries.items():
        assert entry["kind"] == kinds[layer]
        assert entry["shape"] == list(modules[layer].weight.shape)
        assert entry["image"] == f"filters/{list(entries).index(layer):04d}_{layer}.png"
        with Image.open(out / entry["image"]) as image:
            written = np.asarray(image.convert("RGB"))
        sheet = fm.make_filter_sheet(fm.filters(loaded, layer))
        np.testing.assert_array_equal(written, sheet.pixels)
        assert entry["layout"] == sheet.layout
    for rec in manifest["records"]:
        stats = rec["channel_stats"]
        count = len(stats["mean"])
        if rec["module"] in entries:
            w = modules[rec["module"]].weight.detach().double().numpy().reshape(count, -1)
            np.testing.assert_allclose(stats["filter_l1"], np.abs(w).sum(1), rtol=1e-12)
            np.testing.assert_allclose(stats["filter_l2"], np.sqrt((w * w).sum(1)), rtol=1e-12)
        else:
            assert stats["filter_l1"] == [None] * count == stats["filter_l2"]
        # The statistics the table had before are all still there.
        assert {"mean", "std", "min", "max", "zeros"} <= set(stats)


def test_run_without_filters_writes_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(["--model", "shapes_cnn", "--layers", "conv1", "--out", str(out)], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert "filters" not in manifest and not (out / "filters").exists()
    assert "filter_l1" not in manifest["records"][0]["channel_stats"]


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        ("relu1", "layer 'relu1' of shapes_cnn is a ReLU, which has no weight; expected a Conv or "
                  "Linear layer (here: conv1, conv2, conv3, ...). Run 'featuremaps layers "
                  "shapes_cnn' to list the names."),
        ("relu9", "layer 'relu9' not found in shapes_cnn; did you mean"),
    ],
)  # fmt: skip
def test_run_filters_on_layers_without_filters_is_one_line_and_exit_2(
    layers: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["--model", "shapes_cnn", "--filters", "--layers", layers, "--out", str(out)]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"featuremaps: error: {err.strip()[20:]}"]
    assert words in err and "Traceback" not in err
    assert not out.exists()


def test_report_reads_filter_entries_and_skips_broken_ones() -> None:
    good = {
        "layer": "conv",
        "image": "sub/filters/0000_conv.png",
        "kind": "rgb",
        "shown": 2,
        "filters": 2,
        "layout": {"type": "tiles", "top": 1, "left": 2, "width": 3, "height": 3, "step_x": 5,
                   "step_y": 6, "columns": 8},
    }  # fmt: skip
    broken = [{**good, "layer": "a", "layout": {"type": "tiles"}}, {**good, "layer": 5}, "x"]
    views = filter_views([good, *broken], "sub/")
    assert list(views) == ["conv"] and views["conv"]["image"] == "filters/0000_conv.png"
    assert filter_views(None) == {} and filter_views("filters") == {}
    manifest = {"tool": "featuremaps", "records": [], "filters": [good]}
    assert build_report(manifest).filters is not None
    assert build_report({"tool": "featuremaps", "records": []}).filters is None


def test_scripted_layers_have_the_same_filters() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, groups=2), nn.ConvTranspose2d(6, 4, 3), nn.Linear(3, 3)
    )
    with pytest.warns(FutureWarning):  # torch's deprecation of scripting
        scripted = torch.jit.script(model)
    for layer in ("0", "1", "2"):
        plain, script = fm.filters(model, layer), fm.filters(scripted, layer)
        assert (script.kind, script.groups, script.module_type) == (
            plain.kind,
            plain.groups,
            plain.module_type,
        )
        np.testing.assert_array_equal(script.values, plain.values)
        np.testing.assert_array_equal(script.l2, plain.l2)
