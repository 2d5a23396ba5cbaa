"""Volumes and clips (N, C, D, H, W): slice montages, projections, slice means, and inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps import layouts
from featuremaps._errors import InputError, OptionError
from featuremaps.cli import main
from featuremaps.inputs import ModelInput, Preprocessing, load_clip, load_input, load_volume
from featuremaps.render import GridLabel, GridOptions
from featuremaps.render.colormap import colormap_levels, level_indices
from featuremaps.render.palette import LEVELS, NAN_INDEX
from featuremaps.render.scaling import ValueRange, normalize
from featuremaps.render.volume import make_volume_picture, projection, slice_means, slice_step

NETS = """
from torch import nn

def build():
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 3),
    )
"""

LABEL = GridLabel("block.conv", "Conv3d", (1, 2, 20, 3, 4))


def _colour(value: float, r: ValueRange, cmap: str) -> np.ndarray:
    level = level_indices(normalize(np.array([value]), r), LEVELS, NAN_INDEX)[0]
    return colormap_levels(cmap, LEVELS)[level]


def test_slice_k_with_value_k_lands_in_its_tile_with_its_colour() -> None:
    # slice k of channel c holds k + 100 c everywhere: each tile must be one flat colour.
    depth, h, w = 20, 3, 4
    maps = np.arange(depth)[None, :, None, None] + 100.0 * np.arange(2)[:, None, None, None]
    maps = np.broadcast_to(maps, (2, depth, h, w)).astype(np.float32)
    made = make_volume_picture(maps, GridOptions(min_tile=12), LABEL)
    step = -(-depth // 8)  # at most 8 tiles per channel
    assert slice_step(depth) == step == 3
    assert made.slices == tuple(range(0, depth, step)) == (0, 3, 6, 9, 12, 15, 18)
    assert made.factor == 3 and made.tile == (9, 12)
    r = made.value_range
    assert r == ValueRange(0.0, 119.0, False)  # one range over every slice of both channels
    pixels = made.picture.pixels
    th, tw = made.tile
    for i, c in enumerate(made.channels):
        for j, k in enumerate(made.slices):
            y, x = made.origins[i][j]
            tile = pixels[y : y + th, x : x + tw]
            assert (tile == _colour(k + 100 * c, r, "viridis")).all(), (c, k)
        y, x = made.origins[i][-1]  # the projection: the deepest slice, 19 + 100 c
        assert (pixels[y : y + th, x : x + tw] == _colour(19 + 100 * c, r, "viridis")).all()
    # tiles sit side by side, 2 px apart, in slice order
    xs = [x for _, x in made.origins[0][:-1]]
    assert np.diff(xs).tolist() == [tw + 2] * (len(xs) - 1)


def test_tile_pixels_are_the_slice_enlarged_without_resampling() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((1, 5, 4, 6)).astype(np.float32)
    made = make_volume_picture(maps, GridOptions(min_tile=12), LABEL)
    assert made.slices == (0, 1, 2, 3, 4) and made.factor == 2
    r = made.value_range
    assert r is not None
    levels = colormap_levels("viridis", LEVELS)
    for j, k in enumerate(made.slices):
        y, x = made.origins[0][j]
        want = levels[level_indices(normalize(maps[0, k], r), LEVELS, NAN_INDEX)]
        want = want.repeat(2, axis=0).repeat(2, axis=1)
        np.testing.assert_array_equal(made.picture.pixels[y : y + 8, x : x + 12], want)


def test_projection_and_slice_means_match_numpy() -> None:
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(3, 7, 5, 6))
    made = make_volume_picture(vol.astype(np.float32), GridOptions(), LABEL)
    assert made.projection_kind == "max |x|, sign kept"  # signed data
    block = vol.astype(np.float32).astype(np.float64)
    big, small = block.max(axis=1), block.min(axis=1)
    np.testing.assert_array_equal(made.projections, np.where(-small > big, small, big))
    np.testing.assert_allclose(made.means, block.mean(axis=(2, 3)))
    unsigned = np.abs(vol)
    assert (projection(unsigned, signed=False) == unsigned.max(axis=1)).all()
    positive = make_volume_picture(unsigned.astype(np.float32), GridOptions(), LABEL)
    assert positive.projection_kind == "max"
    with_nan = unsigned.copy()
    with_nan[0, 2, 1, 1] = np.nan
    means = slice_means(with_nan)
    assert means[0, 2] == pytest.approx(np.nanmean(with_nan[0, 2]))


def test_slices_along_another_axis_and_per_channel_scale() -> None:
    maps = np.arange(2 * 4 * 6 * 10, dtype=np.float32).reshape(2, 4, 6, 10)
    along_w = make_volume_picture(maps, GridOptions(scale="channel"), LABEL, axis=2)
    assert along_w.slices == (0, 2, 4, 6, 8)  # W = 10: every 2nd
    assert along_w.value_range is None
    assert along_w.row_ranges == (ValueRange(0.0, 239.0, False), ValueRange(240.0, 479.0, False))
    with pytest.raises(OptionError, match="expected \\(C, D, H, W\\) maps and an axis"):
        make_volume_picture(maps, GridOptions(), LABEL, axis=3)


def test_layout_registry_draws_ncdhw_as_volume_montages() -> None:
    layout = layouts.decide((1, 2, 3, 4, 5), "Conv3d")
    assert layout.name == "NCDHW" and layout.drawn_as == layouts.VOLUME_MONTAGE
    assert layouts.skip_reason(layout, False) is None


def test_volume_npy_is_fed_as_it_is(tmp_path: Path) -> None:
    vol = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    np.save(tmp_path / "v.npy", vol)
    loaded = load_input(tmp_path / "v.npy", channels=2, axes=3)
    assert loaded.kind == "volume" and tuple(loaded.tensor.shape) == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), vol.astype(np.float32) / 255)
    np.save(tmp_path / "b.npy", (vol[None] * 0.5).astype(np.float64))
    batch = load_volume(tmp_path / "b.npy")
    np.testing.assert_array_equal(batch.tensor[0].numpy(), (vol * 0.5).astype(np.float32))
    assert "batch axis of size 1 dropped" in batch.conversions
    with pytest.raises(InputError, match="expected \\(C, D, H, W\\) or \\(1, C, D, H, W\\)"):
        np.save(tmp_path / "flat.npy", vol[0])
        load_volume(tmp_path / "flat.npy")
    with pytest.raises(InputError, match="save it as \\(1, D, H, W\\)"):
        load_volume(tmp_path / "v.npy", ModelInput(channels=1))
    with pytest.raises(OptionError, match="input is a volume \\(C, D, H, W\\)"):
        load_volume(tmp_path / "v.npy", ModelInput(preprocessing=Preprocessing(resize=8)))


def test_a_clip_from_a_gif_and_from_a_folder_of_frames(tmp_path: Path) -> None:
    frames = [np.full((6, 8, 3), 40 * t, dtype=np.uint8) for t in range(4)]
    images = [Image.fromarray(f) for f in frames]
    images[0].save(tmp_path / "c.gif", save_all=True, append_images=images[1:], duration=40)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, image in enumerate(images):
        image.save(folder / f"{t:03d}.png")
    for source in (tmp_path / "c.gif", folder):
        clip = load_input(source, channels=3, axes=3)
        assert clip.kind == "clip" and tuple(clip.tensor.shape) == (1, 3, 4, 6, 8)
        np.testing.assert_allclose(
            clip.tensor[0, 0, :, 0, 0].numpy(), [40 * t / 255 for t in range(4)], atol=1e-6
        )
    resized = load_clip(folder, ModelInput(preprocessing=Preprocessing(resize=(3, 4))))
    assert tuple(resized.tensor.shape) == (1, 3, 4, 3, 4)
    assert any("resized to 3x4" in c for c in resized.conversions)
    with pytest.raises(InputError, match="holds no image files"):
        (tmp_path / "empty").mkdir()
        load_clip(tmp_path / "empty")
    with pytest.raises(InputError, match="give a .npy volume \\(1, D, H, W\\) instead"):
        load_clip(folder, ModelInput(channels=1))


def test_a_conv3d_model_runs_from_the_cli_on_a_npy_volume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    z, y, x = np.mgrid[:10, :12, :12]
    np.save(tmp_path / "vol.npy", np.sin(z / 3 + y / 4 + x / 5)[None].astype(np.float32))
    out = tmp_path / "out"
    code = main([str(tmp_path / "vol.npy"), "--model", f"{nets}:build", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["fed_shape"] == [1, 1, 10, 12, 12]
    records = {r["name"]: r for r in manifest["records"]}
    for name in ("0", "1", "2", "3"):
        assert records[name]["layout"] == "NCDHW"
        assert records[name]["drawn_as"] == layouts.VOLUME_MONTAGE
        assert records[name]["data"] is None  # the report shows the picture
        with Image.open(out / records[name]["image"]) as image:
            assert image.size[0] > 200
    assert records["6"]["drawn_as"] == layouts.BAR_STRIP


@pytest.mark.slow
def test_r3d_18_draws_its_volume_layers(tmp_path: Path) -> None:
    loaded = fm.load_model("r3d_18", "none")
    clip = torch.rand(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    [result] = fm.visualize(loaded, clip, out=tmp_path / "out", report=False)
    elapsed = time.perf_counter() - start
    records = result.manifest["records"]
    volumes = [r for r in records if r["layout"] == "NCDHW"]
    assert volumes and all(r["drawn_as"] == layouts.VOLUME_MONTAGE for r in volumes)
    assert all((tmp_path / "out" / r["image"]).is_file() for r in volumes)
    stem = next(r for r in volumes if r["name"] == "stem.0")
    assert stem["shape"] == [1, 64, 16, 56, 56]
    assert elapsed < 120


def test_a_gif_clip_runs_from_the_cli_on_a_3d_rgb_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nets = tmp_path / "rgb3d.py"
    nets.write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv3d(3, 2, 3), "
        "nn.ReLU())\n"
    )
    frames = [Image.fromarray(np.full((9, 11, 3), 50 * t, dtype=np.uint8)) for t in range(5)]
    frames[0].save(tmp_path / "c.gif", save_all=True, append_images=frames[1:], duration=40)
    out = tmp_path / "out"
    code = main([str(tmp_path / "c.gif"), "--model", f"{nets}:build", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["kind"] == "clip"
    assert manifest["input"]["fed_shape"] == [1, 3, 5, 9, 11]
    records = {r["name"]: r for r in manifest["records"]}
    assert records["0"]["shape"] == [1, 2, 3, 7, 9]
    assert records["1"]["drawn_as"] == layouts.VOLUME_MONTAGE


def test_volume_values_too_large_for_float32_are_counted(tmp_path: Path) -> None:
    vol = np.zeros((1, 2, 3, 4))
    vol[0, 0, 0, :3] = [1e300, -1e300, 2.0]  # two beyond float32's range
    np.save(tmp_path / "big.npy", vol)
    loaded = load_volume(tmp_path / "big.npy")
    assert "2 values too large for float32 became Inf" in loaded.conversions
    assert np.isinf(loaded.tensor[0, 0, 0, 0, :2].numpy()).all()


def _frames(tmp_path: Path, count: int = 3) -> tuple[Path, torch.Tensor]:
    """A folder of RGB frames 40x48 and the same frames as a (T, C, H, W) float tensor."""
    rng = np.random.default_rng(9)
    folder = tmp_path / "frames"
    folder.mkdir()
    pixels = rng.integers(0, 256, (count, 40, 48, 3), dtype=np.uint8)
    for index, frame in enumerate(pixels):
        Image.fromarray(frame).save(folder / f"{index:03d}.png")
    return folder, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def test_a_clip_gets_the_video_weights_preprocessing_as_torchvision_applies_it(
    tmp_path: Path,
) -> None:
    from torchvision.models.video import R3D_18_Weights

    from featuremaps.inputs import preprocessing_from_weights

    weights = R3D_18_Weights.KINETICS400_V1
    pre = preprocessing_from_weights(weights)
    assert pre.transform is None  # read into steps, so options can replace one of them
    assert (pre.resize, pre.crop, pre.antialias) == ((128, 171), (112, 112), False)
    folder, tchw = _frames(tmp_path)
    loaded = load_clip(folder, ModelInput(channels=3, preprocessing=pre))
    expected = weights.transforms()(tchw)  # torchvision's own (C, T, H, W)
    assert tuple(loaded.tensor.shape) == (1, 3, 3, 112, 112)
    torch.testing.assert_close(loaded.tensor[0], expected, rtol=0, atol=1e-6)
    assert "each frame resized to 128x171 (HxW) (bilinear, not antialiased)" in loaded.conversions


def test_size_and_normalize_replace_only_their_own_step_for_clips() -> None:
    import argparse

    from torchvision.models.video import R3D_18_Weights

    from featuremaps.commands.cli_common import preprocessing_from_args
    from featuremaps.models import LoadedModel

    weights = R3D_18_Weights.KINETICS400_V1
    loaded = LoadedModel(nn.Conv3d(3, 2, 3), "r3d", "test", "DEFAULT", "test", False, weights)
    kinetics = weights.transforms()

    def options(size: str | None, normalize: str | None) -> argparse.Namespace:
        return argparse.Namespace(as_is=False, size=size, normalize=normalize)

    sized = preprocessing_from_args(options("112", None), loaded)
    assert (sized.resize, sized.crop) == (112, None)
    assert sized.mean == tuple(kinetics.mean) and sized.std == tuple(kinetics.std)
    normalised = preprocessing_from_args(options(None, "imagenet"), loaded)
    assert (normalised.resize, normalised.crop) == ((128, 171), (112, 112))
    assert normalised.mean == (0.485, 0.456, 0.406)
