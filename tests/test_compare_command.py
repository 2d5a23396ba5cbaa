"""`featuremaps compare`: the known answer of two inputs that differ inside one box (checked
against each cell's receptive field, written out from the layers' kernels, strides and padding),
the output contract, and the data-set CKA of a checkpoint with itself and with other weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file
from torch import nn

from featuremaps.cli import main
from featuremaps.commands.compare import compare, compare_data

#: (kernel, stride, padding) of the convolutions and pool of the tiny model, in order.
STEPS = {"0": (3, 1, 1), "1": None, "2": (3, 2, 1), "3": None, "4": (2, 2, 0)}
BOX = (9, 5, 13, 8)  # top, left, bottom, right (inclusive) in input pixels


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
    ).eval()


def _fields() -> dict[str, tuple[int, int, int]]:
    """Receptive field R, cumulative stride S and padding offset P of each layer's cells."""
    r, s, p, out = 1, 1, 0, {}
    for name, step in STEPS.items():
        if step is not None:
            k, st, pad = step
            r, p, s = r + (k - 1) * s, p + pad * s, s * st
        out[name] = (r, s, p)
    return out


def test_inputs_differing_inside_a_box_change_only_cells_whose_field_meets_it(
    tmp_path: Path,
) -> None:
    torch.manual_seed(1)
    a = torch.rand(1, 3, 24, 20)
    b = a.clone()
    top, left, bottom, right = BOX
    b[..., top : bottom + 1, left : right + 1] = torch.rand(1, 3, bottom - top + 1, 8 - 5 + 1)
    result = compare(_tiny(), a, b, out=tmp_path / "o", save_arrays=True)
    diffs = load_file(str(tmp_path / "o" / "difference.safetensors"))
    fields = _fields()
    assert [layer["layer"] for layer in result["layers"]] == list(STEPS)
    for name, (r, s, p) in fields.items():
        d = diffs[name][0]
        assert d.dtype == np.float32
        h, w = d.shape[1:]
        rows = np.arange(h) * s - p  # first input row of each cell's field
        cols = np.arange(w) * s - p
        meets_rows = (rows <= bottom) & (rows + r - 1 >= top)
        meets_cols = (cols <= right) & (cols + r - 1 >= left)
        meets = meets_rows[:, None] & meets_cols[None, :]
        changed = np.any(d != 0, axis=0)
        assert not changed[~meets].any(), name
        assert changed[meets].any(), name
    same = compare(_tiny(), a, a.clone(), out=tmp_path / "same", save_arrays=True)
    for layer in same["layers"]:
        assert layer["cosine"] == 1.0 and layer["relative_l2"] == 0.0
        assert all(c["cosine"] == 1.0 and c["relative_l2"] == 0.0 for c in layer["channels"])
    zeros = load_file(str(tmp_path / "same" / "difference.safetensors"))
    assert all(not v.any() for v in zeros.values())


def test_difference_and_numbers_against_a_recomputation(tmp_path: Path) -> None:
    torch.manual_seed(2)
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    model = _tiny()
    result = compare(model, a, b, out=tmp_path / "o", save_arrays=True, layers=["2"])
    with torch.no_grad():
        xa, xb = model[:3](a).double(), model[:3](b).double()
    diffs = load_file(str(tmp_path / "o" / "difference.safetensors"))
    np.testing.assert_allclose(diffs["2"], (xb - xa).float().numpy(), atol=1e-6)
    (layer,) = result["layers"]
    expected = float(torch.sum(xa * xb) / xa.norm() / xb.norm())
    assert layer["cosine"] == pytest.approx(expected, rel=1e-6)
    assert layer["relative_l2"] == pytest.approx(float((xb - xa).norm() / xa.norm()), rel=1e-6)
    saved = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert saved["layers"][0]["channels"][0].keys() >= {"channel", "cosine", "relative_l2", "rank"}
    with Image.open(tmp_path / "o" / saved["layers"][0]["picture"]) as picture:
        assert picture.width > picture.height  # A | B | B-A side by side


def _images(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


def test_cli_two_inputs_and_two_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _images(tmp_path / "data", 2)
    a, b = str(data / "img00.png"), str(data / "img01.png")
    out = tmp_path / "two"
    code = main(["compare", a, b, "--model", "shapes_cnn", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "cosine" in printed
    saved = json.loads((out / "compare.json").read_text())
    assert saved["mode"] == "inputs" and saved["only_a"] == [] and saved["layers"]
    code = main(["compare", a, "--model", "shapes_cnn", "--weights-b", "none",
                 "--out", str(tmp_path / "ckpt")])  # fmt: skip
    assert code == 0
    saved = json.loads((tmp_path / "ckpt" / "compare.json").read_text())
    assert saved["mode"] == "checkpoints"
    assert min(layer["cosine"] for layer in saved["layers"]) < 0.99


def test_cli_refuses_one_input_without_a_second_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _images(tmp_path / "data", 2)
    code = main(["compare", str(data / "img00.png"), "--model", "shapes_cnn"])
    assert code == 2
    assert "1 input(s) given; expected two (A B)" in capsys.readouterr().err
    image = str(data / "img00.png")
    assert main(["compare", image, image, "--model", "shapes_cnn", "--channels", "1,x"]) == 2
    assert "--channels '1,x'; expected channel numbers" in capsys.readouterr().err
    argv = ["compare", "--data", str(data), "--model", "shapes_cnn", "--weights-b", "none"]
    assert main([*argv, "--batch-size", "3"]) == 2
    assert "--batch-size 3 for CKA; expected at least 4" in capsys.readouterr().err
    assert main([*argv, image]) == 2
    assert "--data compares two checkpoints over a data set" in capsys.readouterr().err
    assert main([*argv, "--as-is"]) == 2
    assert "does not give one input size" in capsys.readouterr().err


def test_data_set_cka_of_a_checkpoint_with_itself_and_with_random_weights(tmp_path: Path) -> None:
    from featuremaps.models import load_model

    data = _images(tmp_path / "data", 10)
    trained = load_model("shapes_cnn")
    same = compare_data(trained, trained, [str(data)], out=tmp_path / "same", batch_size=4)
    matrix = np.asarray(same["cka_matrix"]["values"], dtype=float)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
    assert (same["cka_batches"], same["cka_left_out"]) == (2, 2)
    assert all(layer["mean_shift"] == [0.0] * len(layer["mean_shift"]) for layer in same["layers"])
    other = compare_data(
        trained, load_model("shapes_cnn", "none"), [str(data)], out=tmp_path / "o", batch_size=4
    )
    assert min(layer["cka"] for layer in other["layers"]) < 0.99
    with Image.open(tmp_path / "o" / other["cka_picture"]) as heat_map:
        assert heat_map.width > 200 and heat_map.height > 200


def test_layers_on_one_side_are_listed_and_shape_mismatches_are_one_line(tmp_path: Path) -> None:
    torch.manual_seed(3)
    a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    b = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 2, 1), nn.Tanh())
    result = compare(a, torch.rand(1, 3, 8, 8), model_b=b.eval(), out=tmp_path / "o")
    assert result["mismatched"] == [
        "layer '0' has shape (1, 4, 8, 8) in A and (1, 5, 8, 8) in B; not compared",
        "layer '1' has shape (1, 4, 8, 8) in A and (1, 5, 8, 8) in B; not compared",
    ]
    assert [layer["layer"] for layer in result["layers"]] == ["2"]
    assert (result["only_a"], result["only_b"]) == ([], ["3"])


def test_one_dimensional_signals_compare_per_channel(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv1d(2, 3, 5, padding=2), nn.ReLU()).eval()
    a = torch.randn(1, 2, 40)
    b = a.clone()
    b[..., 30:] += 1.0
    result = compare(model, a, b, out=tmp_path / "o", save_arrays=True)
    diffs = load_file(str(tmp_path / "o" / "difference.safetensors"))
    assert diffs["0"].shape == (1, 3, 40)
    assert not diffs["0"][..., : 30 - 2].any() and diffs["0"][..., 28:].any()
    with torch.no_grad():
        xa, xb = model[0](a).double(), model[0](b).double()
    cosines = [c["cosine"] for c in result["layers"][0]["channels"]]
    expected = torch.nn.functional.cosine_similarity(xa[0], xb[0], dim=1)
    np.testing.assert_allclose(cosines, expected.numpy(), rtol=1e-9)


def test_volumes_compare_per_channel_against_a_recomputation(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1)).eval()
    a, b = torch.randn(1, 1, 4, 6, 6), torch.randn(1, 1, 4, 6, 6)
    result = compare(model, a, b, out=tmp_path / "o", save_arrays=True)
    with torch.no_grad():
        xa, xb = model(a).double(), model(b).double()
    diffs = load_file(str(tmp_path / "o" / "difference.safetensors"))
    np.testing.assert_allclose(diffs["0"], (xb - xa).float().numpy(), atol=1e-6)
    (layer,) = result["layers"]
    rel = (xb - xa)[0].flatten(1).norm(dim=1) / xa[0].flatten(1).norm(dim=1)
    np.testing.assert_allclose([c["relative_l2"] for c in layer["channels"]], rel, rtol=1e-9)
