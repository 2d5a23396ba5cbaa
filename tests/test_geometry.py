"""Geometry: analytic composition, empirical measurement, impulse responses, inverse lookup."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from featuremaps.geometry import AxisGeometry, compute_geometry


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "offset", "size"),
    [
        (3, 2, 1, 1, 0.0, 3.0),
        (4, 2, 0, 1, 1.5, 4.0),
        (3, 1, 2, 2, 0.0, 5.0),
        (7, 2, 3, 1, 0.0, 7.0),
    ],
)
def test_single_conv_matches_the_formula(
    kernel: int, stride: int, padding: int, dilation: int, offset: float, size: float
) -> None:
    conv = nn.Conv2d(1, 1, kernel, stride, padding, dilation)
    [geometry] = compute_geometry(conv, torch.zeros(1, 1, 20, 20)).values()
    assert (geometry.y.stride, geometry.y.offset, geometry.y.size) == (stride, offset, size)
    assert geometry.x == geometry.y and geometry.method == "analytic"


def test_resnet18_geometry_matches_published_figures() -> None:
    model = torchvision.models.resnet18(weights=None)
    geo = compute_geometry(model, torch.zeros(1, 3, 64, 64))
    last = geo["layer4.1.relu#2"]
    assert (last.y.stride, last.y.offset, last.y.size) == (32.0, 0.0, 435.0)
    # The first cell is centred on the block's top-left pixel, not on (S - 1) / 2 = 15.5.
    assert last.cell_center(0, 0) == (0.0, 0.0)
    assert geo["maxpool"].y.stride == 4.0 and geo["conv1"].y.size == 7.0
    assert all(g.method == "analytic" for g in geo.values())
    assert "fc" not in geo  # not a 2-D map


def _peaked(conv: nn.Conv2d) -> nn.Conv2d:
    """Positive weights that fall off from the kernel centre, so the response to an impulse
    is largest in the cell whose receptive field is centred nearest the impulse."""
    k = conv.kernel_size[0]
    r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    w = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / k)
    with torch.no_grad():
        conv.weight.copy_(w.expand_as(conv.weight))
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def test_impulse_lights_the_cell_centred_nearest_it() -> None:
    model = nn.Sequential(
        _peaked(nn.Conv2d(1, 1, 5, stride=2, padding=2)),
        nn.ReLU(),
        _peaked(nn.Conv2d(1, 1, 3, stride=2, padding=2, dilation=2)),
        _peaked(nn.Conv2d(1, 1, 3, stride=1, padding=0)),
    ).eval()
    h, w = 61, 45  # non-square
    geo = compute_geometry(model, torch.zeros(1, 1, h, w))
    g = geo["2"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        y = int(torch.randint(8, h - 8, (1,), generator=gen))
        x = int(torch.randint(8, w - 8, (1,), generator=gen))
        image = torch.zeros(1, 1, h, w)
        image[0, 0, y, x] = 1.0
        with torch.no_grad():
            out = model[:3](image)[0, 0]
        row, col = divmod(int(out.argmax()), out.shape[1])
        cy, cx = g.cell_center(row, col)
        assert abs(cy - y) <= g.y.stride and abs(cx - x) <= g.x.stride, (y, x, row, col)
        rows, cols = g.cells_seeing(y, x)
        assert row in rows and col in cols


class Functional(nn.Module):
    """A pooling done by functional code breaks the analytic path for what follows."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.fill_(1.0)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.avg_pool2d(self.a(x), 2))


def test_empirical_fallback_agrees_with_the_formula() -> None:
    geo = compute_geometry(Functional(), torch.zeros(1, 1, 64, 64))
    assert geo["a"].method == "analytic" and geo["b"].method == "empirical"
    # Analytic expectation: a (k3 p1) -> avg_pool (k2 s2) -> b (k3 s2 p1).
    expected = AxisGeometry(1, 0, 3).compose(2, 2, 0, 1).compose(3, 2, 1, 1)
    assert geo["b"].y == expected and geo["b"].x == expected


def test_cells_seeing_is_the_inverse_of_cell_region() -> None:
    g = AxisGeometry(stride=8.0, offset=-0.5, size=19.0)
    for coordinate in range(0, 100, 7):
        cells = g.cells_seeing(coordinate, 12)
        for j in range(12):
            inside = abs(g.center(j) - coordinate) <= (g.size - 1) / 2
            assert (j in cells) == inside


LOCATE_NET = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1, dilation=2), nn.ReLU(),
        nn.Conv2d(2, 2, 3, stride=2, padding=0),
    )
"""


def test_cli_locate_answers_match_an_impulse_oracle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cells `locate --pixel` names are exactly the cells whose value moves when that input
    pixel moves (no ReLU in the oracle, so no cell is off). The first layer is dilated 2 with
    stride 2, so it reads odd coordinates only: even ones lie in the field's box but in a hole."""
    import re

    import numpy as np
    from PIL import Image

    import featuremaps as fm
    from featuremaps.cli import main

    (tmp_path / "net.py").write_text(LOCATE_NET)
    spec = f"{tmp_path / 'net.py'}:build"
    Image.fromarray(np.full((23, 30), 128, np.uint8)).save(tmp_path / "grey.png")
    model = fm.load_model(spec).model
    linear = nn.Sequential(model[0], model[2])  # no ReLU: every weight of the field counts
    base = torch.full((1, 1, 23, 30), 128 / 255)
    for y, x in ((1, 1), (11, 15), (21, 25), (5, 23)):
        buf = io.StringIO()
        code = main(["locate", str(tmp_path / "grey.png"), "-m", spec, "--layer", "2",
                     "--pixel", f"{y},{x}", "--cell", "1,2"], out=buf)  # fmt: skip
        assert code == 0, capsys.readouterr().err
        stated, head, cell, pixel = buf.getvalue().splitlines()
        assert stated.startswith("preprocessing: none known for this model")
        assert head.startswith("2: 5x6 cells over the input as fed (23x30, grey.png); stride 4x4")
        assert "(analytic)" in head
        poked = base.clone()
        poked[0, 0, y, x] += 1.0
        with torch.no_grad():
            moved = (linear(poked) - linear(base)).abs().sum(1)[0] > 0
        rows, cols = torch.nonzero(moved, as_tuple=True)
        span = re.search(r"rows (\S+), columns (\S+) \((\d+) cells\)", pixel)
        assert span is not None, pixel
        expect_rows = f"{rows.min()}..{rows.max()}" if rows.max() > rows.min() else f"{rows.min()}"
        expect_cols = f"{cols.min()}..{cols.max()}" if cols.max() > cols.min() else f"{cols.min()}"
        assert (span[1], span[2], int(span[3])) == (expect_rows, expect_cols, int(moved.sum()))
    geo = fm.locate(spec, base, "2")
    assert cell.startswith(
        f"cell (1, 2) is centred on input {geo.cell_center(1, 2)}".replace(".0", "")
    )


def test_cli_locate_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from featuremaps.cli import main

    (tmp_path / "net.py").write_text(LOCATE_NET)
    spec = f"{tmp_path / 'net.py'}:build"
    for extra, message in (
        (["--layer", "2", "--cell", "9,9"], "--cell 9,9 is not a cell of the 5x6 map of 2"),
        (["--layer", "2", "--pixel", "a"], "--pixel 'a' is not Y,X"),
        (["--layer", "2", "--pixel", "99,0"], "--pixel 99,0 is outside the 23x30 input"),
        (["--layer", "7"], "layer '7' not found"),
    ):
        code = main(["locate", "-m", spec, "--size", "23x30", *extra], out=io.StringIO())
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_locate_overlay_writes_the_placed_picture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from PIL import Image

    import featuremaps as fm
    from featuremaps.cli import main
    from featuremaps.render import overlay

    (tmp_path / "net.py").write_text(LOCATE_NET)
    spec = f"{tmp_path / 'net.py'}:build"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (23, 30), dtype=np.uint8)).save(tmp_path / "noise.png")
    buf = io.StringIO()
    argv = ["locate", str(tmp_path / "noise.png"), "-m", spec, "--layer", "2", "--overlay", "1",
            "--threshold", "0.4", "--alpha", "0.8", "-o", str(tmp_path / "o")]  # fmt: skip
    code = main(argv, out=buf)
    assert code == 0, capsys.readouterr().err
    assert "overlay: placed by receptive-field geometry (analytic)" in buf.getvalue()
    written = tmp_path / "o" / "overlay.png"
    record = json.loads((tmp_path / "o" / "locate.json").read_text())
    assert (record["layer"], record["channel"], record["picture"]) == ("2", 1, "overlay.png")
    assert record["geometry"]["stride"] == [4.0, 4.0]
    assert main(argv, out=io.StringIO()) == 0  # the same --out again replaces its own folder
    # Oracle: the same overlay built from the public pieces.
    item = fm.load_input(tmp_path / "noise.png", channels=1)
    x = item.tensor
    geo = fm.locate(spec, x, "2")
    cell_map = fm.capture(fm.load_model(spec).model, x, layers="2").get("2").tensor[0, 1].numpy()
    grey = np.repeat(np.asarray(Image.open(tmp_path / "noise.png"))[..., None], 3, axis=2)
    expected = overlay(grey, cell_map, geo, alpha=0.8, threshold=0.4)
    np.testing.assert_array_equal(np.asarray(Image.open(written).convert("RGB")), expected.pixels)
