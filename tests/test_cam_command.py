"""The cam command, run --cam and fm.cam: the folder's contract, pictures, one-line errors."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featuremaps as fm
from featuremaps.classmaps import ClassMap, Target
from featuremaps.classmaps.trust import Curves
from featuremaps.cli import main
from featuremaps.geometry import AxisGeometry, MapGeometry
from featuremaps.render.classmap import draw_class_map, smoothed
from goldtest import assert_matches_golden

NETS = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.act = nn.ReLU(inplace=True)
            self.down = nn.Conv2d(6, 8, 3, stride=2, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = self.down(self.act(self.conv(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            y = self.conv(x)
            return {"out": self.head(y), "aux": y}

    def build():
        torch.manual_seed(0)
        return Net()

    def seg():
        torch.manual_seed(0)
        return Seg()
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


def test_cam_folder_holds_arrays_pictures_and_the_manifest_contract(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = run(
        ["cam", photo, "--model", f"{nets}:build", "--layers", "down,conv",
         "--method", "gradcam,eigencam", "--target", "2", "--out", str(out), "--quiet"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    cams = manifest["cams"]
    assert [(c["layer"], c["method"]) for c in cams] == [
        ("conv", "gradcam"), ("conv", "eigencam"), ("down", "gradcam"), ("down", "eigencam")
    ]  # fmt: skip
    shapes = {r["name"]: r["shape"] for r in manifest["records"]}
    for entry in cams:
        array = np.load(out / entry["array"])
        assert array.dtype == np.float32
        assert list(array.shape) == shapes[entry["layer"]][2:]  # the layer's own resolution
        assert array.min() >= 0  # after the method's ReLU
        assert entry["range"] == [float(array.min()), float(array.max())]
        assert (out / entry["picture"]).is_file()
        for key in ("deletion_auc", "insertion_auc", "random_auc", "sanity_rank_correlation"):
            assert key in entry
        assert set(entry["target"]) >= {"index", "name", "score"}
        assert entry["picture"] in stdout
    grad = [c for c in cams if c["method"] == "gradcam"]
    assert all(c["target"]["index"] == 2 for c in grad)
    eigen = [c for c in cams if c["method"] == "eigencam"]
    assert all(c["target"]["index"] is None for c in eigen)  # class-agnostic
    assert all(c["sanity_failed"] for c in eigen)  # it does not depend on the layers above
    assert any("sanity check" in w for w in manifest["warnings"])
    # the same maps as the API computes on the same model and input
    torch.manual_seed(0)
    loaded = fm.load_model(f"{nets}:build")
    maps = fm.cam(loaded, photo, layers=["down", "conv"], methods="gradcam", target=2, trust=False,
                  sanity=False)  # fmt: skip
    for found in maps:
        entry = next(c for c in grad if c["layer"] == found.layer)
        np.testing.assert_array_equal(np.load(out / entry["array"]), found.array)


def test_run_adds_class_maps_only_when_asked(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain, with_cam = tmp_path / "plain", tmp_path / "cam"
    assert run([photo, "-m", f"{nets}:build", "-o", str(plain)], capsys)[0] == 0
    code, _, err = run(
        [photo, "-m", f"{nets}:build", "-o", str(with_cam), "--cam", "layercam", "--no-sanity"],
        capsys,
    )
    assert code == 0, err
    assert "cams" not in json.loads((plain / "manifest.json").read_text())
    cams = json.loads((with_cam / "manifest.json").read_text())["cams"]
    # default layer: the last one whose output has cells (down, 10x12)
    assert [(c["layer"], c["method"], c["shape"]) for c in cams] == [("down", "layercam", [10, 12])]
    assert cams[0]["sanity_rank_correlation"] is None and cams[0]["deletion_auc"] is not None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["cam", "--method", "gradkam"], "method 'gradkam' is unknown; did you mean 'gradcam'"),
        (["cam", "--target", "7"], "target class 7 is out of range: the output has 3 classes"),
        (["cam", "--target", "cat"], "'cat' is a class name, but this model's weights name no"),
        (["cam", "--layers", "fc"], "'fc' (NC) has no cells"),
        (["run", "--target", "1"], "--target is an option of class maps; add --cam METHODS"),
        (["cam", "--region", "1,2"], "--region '1,2' is not X0,Y0,X1,Y1"),
    ],
)  # fmt: skip
def test_bad_class_map_options_are_one_line(
    argv: list[str],
    expected: str,
    nets: str,
    photo: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    command, rest = argv[0], argv[1:]
    full = [command, photo, "-m", f"{nets}:build", "-o", str(tmp_path / "o"), "--quiet", *rest]
    code, _, err = run(full, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_dict_output_needs_a_key_and_a_box_region_sums_the_box(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["cam", photo, "-m", f"{nets}:seg", "--layers", "conv", "--quiet", "--no-sanity"]
    code, _, err = run([*base, "-o", str(tmp_path / "a")], capsys)
    assert code == 2 and "several outputs ('out' (1, 3, 20, 24), 'aux'" in err
    assert "--output out" in err
    code, _, err = run(
        [*base, "-o", str(tmp_path / "b"), "--output", "out", "--target", "1",
         "--region", "2,3,10,9"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["cams"][0]
    torch.manual_seed(0)
    loaded = fm.load_model(f"{nets}:seg")
    tensor = fm.load_input(photo).tensor
    with torch.no_grad():
        scores = loaded.model(tensor)["out"][0, 1]
    assert entry["target"]["region"] == "box 2,3,10,9"
    assert entry["target"]["score"] == pytest.approx(
        float(scores[3:9, 2:10].double().sum()), rel=1e-6
    )


def _hand_map(array: np.ndarray, geometry: MapGeometry | None, cells: str = "") -> ClassMap:
    fractions = np.linspace(0, 1, 5)
    return ClassMap(
        layer="layer4.1.conv2#2",
        method="gradcam",
        sample=0,
        target=Target(7, "cat <b>", 3.25, 0.625),
        array=array.astype(np.float32),
        layout="NCHW",
        cells=cells,
        geometry=geometry,
        deletion_auc=0.125,
        insertion_auc=0.75,
        random_auc=0.5,
        random_insertion_auc=0.5,
        curves=Curves(fractions, fractions[::-1], fractions),
        sanity_rank_correlation=0.875,
        sanity_failed=True,
    )


def _picture(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 2 * 64 + 96],
                    axis=-1).astype(np.uint8)  # fmt: skip


def test_golden_class_map_placed_by_geometry() -> None:
    cells = np.arange(12, dtype=np.float64).reshape(3, 4) / 11
    cells[1, 1] = 0.0
    axis = AxisGeometry(8.0, 3.5, 11.0)
    geometry = MapGeometry("layer4.1.conv2#2", axis, axis, (3, 4), "analytic")
    drawn = draw_class_map(_picture(24, 40), _hand_map(cells, geometry), stamp="RANDOM WEIGHTS")
    assert_matches_golden("cam_geometry", drawn.pixels)
    assert drawn.lines[0] == "layer4.1.conv2#2 · gradcam · class 7 'cat <b>' (score 3.25, p 0.625)"
    assert "FAILS THE SANITY CHECK" in drawn.lines[-2]
    # cells beyond half a stride of the outer centres stay the image's own pixels
    assert np.array_equal(drawn.overlay.pixels[:, 36:40], _picture(24, 40)[:, 36:40])
    # a small input is drawn enlarged by a whole factor, each pixel a block, and it is said
    zoom = 256 // 40
    enlarged = np.repeat(np.repeat(drawn.overlay.pixels, zoom, axis=0), zoom, axis=1)
    assert np.array_equal(drawn.pixels[: 24 * zoom, : 40 * zoom], enlarged)
    assert (
        drawn.lines[-1] == f"picture enlarged {zoom}x (each input pixel as a {zoom}x{zoom} block)"
    )


def test_golden_token_class_map_on_its_patch_grid() -> None:
    cells = np.array([[0, 1, 2, 3], [1, 4, 1, 0], [0, 0, 2, 6]], dtype=np.float64)
    cam = _hand_map(cells, None, "tokens on their 3x4 patch grid; 1 prefix token excluded")
    drawn = draw_class_map(_picture(30, 40), cam, smooth=True)
    assert_matches_golden("cam_tokens_smooth", drawn.pixels)
    assert "tokens on their 3x4 patch grid; 1 prefix token excluded" in drawn.lines[1]
    assert "smoothed: linear between cell centres" in drawn.lines[1]


def test_smoothing_passes_through_cell_centres_and_is_linear_between() -> None:
    cells = np.array([[0.0, 4.0], [8.0, 12.0]])
    axis = AxisGeometry(4.0, 1.5, 5.0)  # centres at 1.5 and 5.5
    geometry = MapGeometry("x", axis, axis, (2, 2), "analytic")
    values = smoothed(cells, (8, 8), geometry)
    # pixel 1 is 0.5 px before the first centre (clamped), pixel 3 is a quarter of the way on
    assert values[0, 0] == 0.0 and values[7, 7] == 12.0
    assert values[1, 3] == pytest.approx(0.375 * 4.0)
    assert values[3, 1] == pytest.approx(0.375 * 8.0)


def test_one_target_per_input_in_one_run_folder(
    nets: str, photo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.png"
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    out = tmp_path / "out"
    argv = ["cam", photo, str(other), "-m", f"{nets}:build", "--target", "2,0", "--no-sanity",
            "--no-trust", "-o", str(out), "--quiet"]  # fmt: skip
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    top = json.loads((out / "manifest.json").read_text())
    assert [i["folder"] for i in top["inputs"]] == ["photo", "other"]
    targets = [
        json.loads((out / sub / "manifest.json").read_text())["cams"][0]["target"]["index"]
        for sub in ("photo", "other")
    ]
    assert targets == [2, 0]
    assert "photo/cams/0000_down-gradcam-s0.png" in stdout
    # the folder is featuremaps' own, so the next run may replace it
    assert run([*argv[:-3], "-o", str(out), "--quiet"], capsys)[0] == 0
    code, _, err = run(["cam", photo, str(other), "-m", f"{nets}:build", "--target", "1,2,0",
                        "-o", str(tmp_path / "x"), "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "3 targets for 2 input(s)" in err
