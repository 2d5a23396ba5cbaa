"""Tests for featuremaps.inputs: every picture and array is built here, in code, and every fed
tensor is checked against values recomputed independently with numpy (or torch core)."""

from __future__ import annotations

import hashlib
import json
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from featuremaps._errors import InputError, OptionError
from featuremaps.inputs import (
    IMAGE_SUFFIXES,
    LoadedInput,
    ModelInput,
    Preprocessing,
    expected_channels,
    expected_tokens,
    load_array,
    load_image,
    load_input,
    load_input_for,
    parse_normalize,
    parse_size,
    preprocessing_from_weights,
    sample_image_path,
)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def random_rgb(height: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def random_gray(height: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    image.save(path, **options)
    return path


def fed(loaded: LoadedInput) -> np.ndarray:
    """The fed tensor as (H, W, C) numpy, to compare with pictures."""
    assert loaded.tensor.dtype == torch.float32
    assert loaded.tensor.ndim == 4 and loaded.tensor.shape[0] == 1
    return loaded.tensor[0].permute(1, 2, 0).numpy()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Sample image and formats


def test_sample_image_is_grace_hopper_600_high_512_wide() -> None:
    path = sample_image_path()
    assert path.is_file()
    assert path.name == "grace_hopper.jpg"
    import matplotlib.cbook  # the path is found without importing matplotlib; it is its file

    assert path == Path(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    loaded = load_input(path)
    assert tuple(loaded.tensor.shape) == (1, 3, 600, 512)
    assert loaded.original.startswith("JPEG RGB 600x512")
    assert loaded.conversions == ()
    # Oracle: Pillow's own decode of the same file, divided by 255.
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    np.testing.assert_allclose(fed(loaded), expected, rtol=0, atol=1e-7)
    assert loaded.display.shape == (600, 512, 3) and loaded.display.dtype == np.uint8


@pytest.mark.parametrize(
    ("suffix", "options"),
    [(".png", {}), (".tif", {}), (".bmp", {}), (".webp", {"lossless": True})],
)
def test_lossless_rgb_formats_are_divided_by_255(
    tmp_path: Path, suffix: str, options: dict[str, Any]
) -> None:
    pixels = random_rgb(seed=1)
    path = save(Image.fromarray(pixels), tmp_path / f"rgb{suffix}", **options)
    loaded = load_image(path)
    np.testing.assert_array_equal(fed(loaded), pixels.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(loaded.display, pixels)
    assert loaded.kind == "image"
    assert loaded.conversions == ()
    assert loaded.original.endswith("RGB 6x8 (HxW)")


def test_jpeg_matches_its_decoded_pixels(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb(seed=2)), tmp_path / "photo.JPEG")
    loaded = load_input(path)
    decoded = np.asarray(Image.open(path), dtype=np.float64) / 255
    np.testing.assert_allclose(fed(loaded), decoded, rtol=0, atol=1e-7)
    assert loaded.original == "JPEG RGB 6x8 (HxW)"


def test_image_suffixes_are_lowercase_with_dot() -> None:
    assert all(s.startswith(".") and s == s.lower() for s in IMAGE_SUFFIXES)
    assert {".jpg", ".png", ".tif", ".bmp", ".webp"} <= set(IMAGE_SUFFIXES)


# --------------------------------------------------------------------------------------------------
# Modes


def test_gray_l_keeps_one_channel_without_a_model(tmp_path: Path) -> None:
    gray = random_gray(seed=3)
    loaded = load_image(save(Image.fromarray(gray), tmp_path / "gray.png"))
    assert tuple(loaded.tensor.shape) == (1, 1, 6, 8)
    np.testing.assert_array_equal(fed(loaded)[:, :, 0], gray / np.float32(255))
    np.testing.assert_array_equal(loaded.display, np.repeat(gray[:, :, None], 3, axis=2))


def test_gray_l_is_repeated_for_a_three_channel_model(tmp_path: Path) -> None:
    gray = random_gray(seed=4)
    loaded = load_image(
        save(Image.fromarray(gray), tmp_path / "gray.png"),
        ModelInput(channels=3, layer_name="conv1"),
    )
    expected = np.repeat(gray[:, :, None], 3, axis=2) / np.float32(255)
    np.testing.assert_array_equal(fed(loaded), expected)
    assert loaded.conversions == (
        "grayscale L -> RGB (channel repeated 3x) because conv1 takes 3 channels",
    )


def test_rgb_becomes_luma_for_a_one_channel_model(tmp_path: Path) -> None:
    pixels = random_rgb(seed=5)
    loaded = load_image(save(Image.fromarray(pixels), tmp_path / "rgb.png"), ModelInput(channels=1))
    assert tuple(loaded.tensor.shape) == (1, 1, 6, 8)
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(fed(loaded)[:, :, 0], luma, rtol=0, atol=1e-6)
    # Pillow's own 8-bit RGB -> L conversion agrees within one step of 1/255.
    pillow_l = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float64) / 255
    np.testing.assert_allclose(fed(loaded)[:, :, 0], pillow_l, rtol=0, atol=1 / 255)
    assert len(loaded.conversions) == 1
    assert loaded.conversions[0].startswith("RGB -> grayscale (ITU-R 601-2 luma")
    assert loaded.conversions[0].endswith("because the model's first layer takes 1 channel")


def test_la_drops_alpha(tmp_path: Path) -> None:
    gray, alpha = random_gray(seed=6), random_gray(seed=7)
    image = Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA")
    loaded = load_image(save(image, tmp_path / "la.png"))
    np.testing.assert_array_equal(fed(loaded)[:, :, 0], gray / np.float32(255))
    assert loaded.conversions == ("LA -> L (alpha dropped)",)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    pixels = random_rgb(seed=8)
    alpha = random_gray(seed=9)
    image = Image.fromarray(np.dstack([pixels, alpha]), mode="RGBA")
    loaded = load_image(save(image, tmp_path / "rgba.png"), ModelInput(channels=3))
    np.testing.assert_array_equal(fed(loaded), pixels / np.float32(255))
    assert loaded.conversions == ("RGBA -> RGB (alpha dropped)",)
    assert loaded.original == "PNG RGBA 6x8 (HxW)"


def test_rgba_is_fed_as_four_channels_to_a_model_that_takes_four(tmp_path: Path) -> None:
    pixels = random_rgb(seed=8)
    alpha = random_gray(seed=9)
    image = Image.fromarray(np.dstack([pixels, alpha]), mode="RGBA")
    path = save(image, tmp_path / "rgba.png")
    loaded = load_input(path, channels=4, layer_name="stem")
    np.testing.assert_array_equal(fed(loaded), np.dstack([pixels, alpha]) / np.float32(255))
    assert loaded.conversions == (
        "alpha kept as the 4th channel (RGBA) because the model's first layer 'stem' takes "
        "4 channels",
    )
    assert loaded.display is not None
    np.testing.assert_array_equal(loaded.display, pixels)  # the colours, alpha not drawn


def test_alpha_of_gray_and_palette_images_is_kept_for_four_channels(tmp_path: Path) -> None:
    gray, alpha = random_gray(seed=6), random_gray(seed=7)
    la = load_image(
        save(Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA"), tmp_path / "la.png"),
        ModelInput(channels=4),
    )
    want = np.dstack([gray, gray, gray, alpha]) / np.float32(255)
    np.testing.assert_array_equal(fed(la), want)
    assert la.conversions[0] == "LA -> RGBA (gray repeated 3x, alpha kept)"
    image, palette, indices = palette_image(seed=11)
    path = save(image, tmp_path / "palette.png", transparency=0)
    loaded = load_image(path, ModelInput(channels=4))
    opaque = np.where(indices == 0, 0, 255).astype(np.uint8)
    want = np.dstack([palette[indices], opaque]) / np.float32(255)
    np.testing.assert_array_equal(fed(loaded), want)
    assert loaded.conversions[0] == "palette P -> RGBA"


def test_rgb_image_for_four_channels_asks_for_alpha(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")
    with pytest.raises(
        InputError,
        match=r"^image '.*x\.png' has 3 channels \(RGB\) and no alpha channel, but the model's "
        r"first layer 'conv1' takes 4; give an RGBA image \(or a \.npy array with 4 channels\)",
    ):
        load_input(path, channels=4, layer_name="conv1")


def palette_image(seed: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    return image, palette, indices


def test_palette_is_looked_up_to_rgb(tmp_path: Path) -> None:
    image, palette, indices = palette_image(seed=10)
    loaded = load_image(save(image, tmp_path / "palette.png"))
    np.testing.assert_array_equal(fed(loaded), palette[indices] / np.float32(255))
    assert loaded.conversions == ("palette P -> RGB",)


def test_palette_with_transparency_reports_the_dropped_alpha(tmp_path: Path) -> None:
    image, palette, indices = palette_image(seed=11)
    path = save(image, tmp_path / "palette.png", transparency=0)
    loaded = load_image(path)
    np.testing.assert_array_equal(fed(loaded), palette[indices] / np.float32(255))
    assert loaded.conversions == ("palette P -> RGBA", "RGBA -> RGB (alpha dropped)")


def test_cmyk_is_converted_to_rgb(tmp_path: Path) -> None:
    cmyk = np.random.default_rng(12).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    loaded = load_image(save(Image.fromarray(cmyk, mode="CMYK"), tmp_path / "cmyk.tif"))
    # Subtractive model: each ink and the black ink each remove their share of the light.
    c = cmyk.astype(np.float64)
    expected = (255 - c[:, :, :3]) * (255 - c[:, :, 3:]) / 255 / 255
    np.testing.assert_allclose(fed(loaded), expected, rtol=0, atol=1 / 255 + 1e-6)
    assert loaded.conversions == ("CMYK -> RGB",)


def test_sixteen_bit_png_is_divided_by_65535_exactly(tmp_path: Path) -> None:
    values = np.random.default_rng(13).integers(0, 65536, (48, 64), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    loaded = load_image(path)
    assert loaded.original == "PNG I;16 48x64 (HxW)"
    assert loaded.conversions == ("16-bit values divided by 65535",)
    got = fed(loaded)[:, :, 0]
    np.testing.assert_array_equal(got, values.astype(np.float32) / np.float32(65535))
    np.testing.assert_allclose(got, values / 65535.0, rtol=1e-7, atol=0)
    assert got[0, 0] == 0.0 and got[0, 1] == 1.0


def test_big_endian_sixteen_bit_tiff_repeated_for_rgb_model(tmp_path: Path) -> None:
    values = np.random.default_rng(14).integers(0, 65536, (6, 8)).astype(">u2")
    path = save(Image.fromarray(values), tmp_path / "deep.tif")
    loaded = load_image(path, ModelInput(channels=3, layer_name="stem.0"))
    expected = values.astype(np.float64) / 65535
    np.testing.assert_allclose(fed(loaded), np.repeat(expected[:, :, None], 3, 2), rtol=1e-7)
    assert loaded.conversions == (
        "16-bit values divided by 65535",
        "grayscale I;16B -> RGB (channel repeated 3x) because stem.0 takes 3 channels",
    )


def test_mode_i_within_16_bits_is_divided_by_65535(tmp_path: Path) -> None:
    values = np.random.default_rng(15).integers(0, 65536, (6, 8)).astype(np.int32)
    loaded = load_image(save(Image.fromarray(values), tmp_path / "int.tif"))
    assert " I " in loaded.original
    np.testing.assert_allclose(fed(loaded)[:, :, 0], values / 65535.0, rtol=1e-7)
    assert loaded.conversions == ("32-bit integer values (all within 0..65535) divided by 65535",)


def test_mode_i_beyond_16_bits_is_divided_by_the_int32_maximum(tmp_path: Path) -> None:
    values = np.random.default_rng(16).integers(-100_000, 3_000_000, (6, 8)).astype(np.int32)
    loaded = load_image(save(Image.fromarray(values), tmp_path / "int.tif"))
    np.testing.assert_allclose(fed(loaded)[:, :, 0], values / 2_147_483_647, rtol=1e-6)
    assert loaded.conversions == (
        "32-bit integer values (some outside 0..65535) divided by 2,147,483,647 "
        "(the int32 maximum)",
    )


def test_float_tiff_is_used_as_is(tmp_path: Path) -> None:
    values = np.random.default_rng(17).normal(0, 3, (6, 8)).astype(np.float32)
    loaded = load_image(save(Image.fromarray(values), tmp_path / "float.tif"))
    assert loaded.original == "TIFF F 6x8 (HxW)"
    np.testing.assert_array_equal(fed(loaded)[:, :, 0], values)
    assert loaded.conversions == ("32-bit float values used as is (no scaling)",)
    # Display stretches min..max (only the picture; the tensor keeps the true values).
    assert loaded.display.min() == 0 and loaded.display.max() == 255


def test_bilevel_is_read_as_zero_and_one(tmp_path: Path) -> None:
    bits = np.random.default_rng(18).integers(0, 2, (6, 8)).astype(bool)
    loaded = load_image(save(Image.fromarray(bits), tmp_path / "bits.png"))
    np.testing.assert_array_equal(fed(loaded)[:, :, 0], bits.astype(np.float32))
    assert loaded.conversions == ("1-bit black/white read as 0 and 1",)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(random_rgb(4, 8, seed=19)), tmp_path / "turned.jpg", exif=exif)
    loaded = load_image(path)
    assert tuple(loaded.tensor.shape) == (1, 3, 8, 4)
    assert loaded.original == "JPEG RGB 4x8 (HxW)"  # as stored in the file
    assert loaded.conversions == ("EXIF orientation applied (rotated 90° clockwise)",)
    stored = np.asarray(Image.open(path), dtype=np.float64) / 255
    np.testing.assert_allclose(fed(loaded), np.rot90(stored, k=-1), rtol=0, atol=1e-7)


def test_multi_frame_tiff_uses_the_first_frame(tmp_path: Path) -> None:
    first, second = random_rgb(seed=20), random_rgb(seed=21)
    path = tmp_path / "stack.tif"
    Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
    loaded = load_image(path)
    np.testing.assert_array_equal(fed(loaded), first / np.float32(255))
    assert loaded.conversions == ("first of 2 frames used",)


# --------------------------------------------------------------------------------------------------
# Preprocessing


def test_default_preprocessing_does_nothing_and_says_so() -> None:
    default = Preprocessing()
    assert default.describe() == {
        "resize": None,
        "crop": None,
        "mean": None,
        "std": None,
        "interpolation": "bilinear",
        "antialias": True,
        "transform": None,
        "source": "ToTensor (values scaled to [0, 1], no normalisation)",
        "from_model": False,
        "as_is": False,
    }


def test_resize_shorter_side_matches_torch_interpolate(tmp_path: Path) -> None:
    pixels = random_rgb(20, 30, seed=22)
    loaded = load_image(
        save(Image.fromarray(pixels), tmp_path / "wide.png"),
        ModelInput(preprocessing=Preprocessing(resize=10)),
    )
    assert tuple(loaded.tensor.shape) == (1, 3, 10, 15)
    source = torch.from_numpy(pixels / np.float32(255)).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(
        source, size=(10, 15), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(loaded.tensor, expected, rtol=0, atol=1e-6)
    assert loaded.conversions == ("resized shorter side to 10 (bilinear, antialiased)",)
    # The display is the input as given, before resizing.
    np.testing.assert_array_equal(loaded.display, pixels)


def test_resize_to_exact_size(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb(20, 30, seed=23)), tmp_path / "x.png")
    loaded = load_image(path, ModelInput(preprocessing=Preprocessing(resize=(7, 9))))
    assert tuple(loaded.tensor.shape) == (1, 3, 7, 9)
    assert loaded.conversions == ("resized to 7x9 (HxW) (bilinear, antialiased)",)


def test_centre_crop_matches_slicing(tmp_path: Path) -> None:
    pixels = random_rgb(10, 16, seed=24)
    path = save(Image.fromarray(pixels), tmp_path / "x.png")
    loaded = load_image(path, ModelInput(preprocessing=Preprocessing(crop=(4, 6))))
    np.testing.assert_array_equal(fed(loaded), pixels[3:7, 5:11] / np.float32(255))
    assert loaded.conversions == ("centre-cropped to 4x6 (HxW)",)


def test_centre_crop_larger_than_the_picture_pads_and_says_so(tmp_path: Path) -> None:
    pixels = random_rgb(4, 4, seed=25)
    path = save(Image.fromarray(pixels), tmp_path / "x.png")
    loaded = load_image(path, ModelInput(preprocessing=Preprocessing(crop=6)))
    got = fed(loaded)
    np.testing.assert_array_equal(got[1:5, 1:5], pixels / np.float32(255))
    assert got[0].sum() == 0 and got[-1].sum() == 0
    assert loaded.conversions == (
        "centre-cropped to 6 (padded with zeros where the picture was smaller)",
    )


def test_normalisation_matches_numpy(tmp_path: Path) -> None:
    pixels = random_rgb(seed=26)
    mean, std = IMAGENET
    path = save(Image.fromarray(pixels), tmp_path / "x.png")
    loaded = load_image(path, ModelInput(preprocessing=Preprocessing(mean=mean, std=std)))
    expected = (pixels / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(fed(loaded), expected, rtol=0, atol=1e-5)
    assert loaded.conversions == (
        "normalised with mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)",
    )


def test_resnet18_weights_give_the_imagenet_recipe() -> None:
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.DEFAULT
    preprocessing = preprocessing_from_weights(weights)
    assert preprocessing.resize == 256
    assert preprocessing.crop == 224
    assert preprocessing.mean == IMAGENET[0]
    assert preprocessing.std == IMAGENET[1]
    assert preprocessing.interpolation == "bilinear"
    assert preprocessing.source == "transforms of ResNet18_Weights.IMAGENET1K_V1"

    path = sample_image_path()
    loaded = load_input(path, channels=3, layer_name="conv1", preprocessing=preprocessing)
    assert tuple(loaded.tensor.shape) == (1, 3, 224, 224)
    # Oracle: torchvision's own recipe object applied to the same [0, 1] float tensor.
    as_float = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)
    expected = weights.transforms()(as_float.permute(2, 0, 1))
    torch.testing.assert_close(loaded.tensor[0], expected, rtol=0, atol=1e-5)
    described = json.loads(json.dumps(loaded.describe()))
    assert described["fed_shape"] == [1, 3, 224, 224]
    assert described["kind"] == "image"
    assert described["path"] == str(path)
    assert described["preprocessing"]["resize"] == 256
    assert described["conversions"] == [
        "resized shorter side to 256 (bilinear, antialiased)",
        "centre-cropped to 224",
        "normalised with mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)",
    ]


def test_bicubic_recipe_is_kept(tmp_path: Path) -> None:
    from torchvision.models import ViT_B_16_Weights

    weights = ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    preprocessing = preprocessing_from_weights(weights)
    assert (preprocessing.resize, preprocessing.crop) == (384, 384)
    assert preprocessing.interpolation == "bicubic"
    pixels = random_rgb(40, 50, seed=27)
    path = save(Image.fromarray(pixels), tmp_path / "x.png")
    loaded = load_image(path, ModelInput(preprocessing=preprocessing))
    expected = weights.transforms()(torch.from_numpy(pixels / np.float32(255)).permute(2, 0, 1))
    torch.testing.assert_close(loaded.tensor[0], expected, rtol=0, atol=1e-5)


def test_segmentation_recipe_has_no_crop() -> None:
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    preprocessing = preprocessing_from_weights(FCN_ResNet50_Weights.DEFAULT)
    assert (preprocessing.resize, preprocessing.crop) == (520, None)
    assert preprocessing.mean == IMAGENET[0]


class HalveTransform:
    """A recipe object with no readable fields: featuremaps must call it as is."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image / 2


class FakeWeights:
    def __init__(self, transform: object) -> None:
        self.transform = transform

    def transforms(self) -> object:
        return self.transform

    def __str__(self) -> str:
        return "Fake_Weights.V1"


def test_other_recipe_objects_are_called(tmp_path: Path) -> None:
    preprocessing = preprocessing_from_weights(FakeWeights(HalveTransform()))
    assert preprocessing.source == "transforms of Fake_Weights.V1"
    assert preprocessing.describe()["transform"] == "HalveTransform"
    pixels = random_rgb(seed=28)
    path = save(Image.fromarray(pixels), tmp_path / "x.png")
    loaded = load_image(path, ModelInput(preprocessing=preprocessing))
    np.testing.assert_allclose(fed(loaded), pixels / 255.0 / 2, rtol=1e-6)
    assert loaded.conversions == ("applied HalveTransform from transforms of Fake_Weights.V1",)


def test_detection_recipe_works_offline() -> None:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    preprocessing = preprocessing_from_weights(FasterRCNN_ResNet50_FPN_Weights.DEFAULT)
    loaded = load_input(sample_image_path(), preprocessing=preprocessing)
    assert tuple(loaded.tensor.shape) == (1, 3, 600, 512)


# --------------------------------------------------------------------------------------------------
# Option parsing


@pytest.mark.parametrize(
    ("text", "expected"), [("224", 224), (" 7 ", 7), ("224x320", (224, 320)), ("2X3", (2, 3))]
)
def test_parse_size_accepts(text: str, expected: int | tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "2.5", "224x", "x224", "1x2x3", "224x0"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(OptionError, match=r"^size '.*' is not valid; expected a positive integer"):
        parse_size(text)


@settings(derandomize=True, max_examples=50)
@given(st.integers(1, 100_000), st.integers(1, 100_000))
def test_parse_size_round_trips(height: int, width: int) -> None:
    assert parse_size(f"{height}x{width}") == (height, width)
    assert parse_size(str(height)) == height


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("imagenet", IMAGENET),
        ("ImageNet", IMAGENET),
        (" none ", None),
        ("0.5,0.5,0.5/0.2,0.2,0.2", ((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))),
        ("0.5/0.25", ((0.5,), (0.25,))),
    ],
)
def test_parse_normalize_accepts(text: str, expected: object) -> None:
    assert parse_normalize(text) == expected


@pytest.mark.parametrize(
    "text", ["", "foo", "0.5,0.5/0.2", "0.5/0", "0.5/-1", "a/b", "0.5/0.2/0.1", "nan/1", "0.5/inf"]
)
def test_parse_normalize_refuses(text: str) -> None:
    with pytest.raises(
        OptionError, match=r"^normalisation '.*' is not valid; expected 'imagenet', 'none'"
    ):
        parse_normalize(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resize": 0}, r"^resize 0 is not a valid size; expected a positive integer"),
        ({"resize": True}, r"^resize True is not a valid size"),
        ({"crop": (1, 2, 3)}, r"^crop \(1, 2, 3\) is not a valid size"),
        ({"mean": (0.5,)}, r"^normalisation needs both mean and std, got mean \(0.5,\) and std"),
        ({"mean": (0.5, 0.5), "std": (0.2,)}, r"^normalisation has 2 mean values but 1 std values"),
        ({"mean": (float("nan"),), "std": (1.0,)}, r"^normalisation mean \(nan\) holds a value"),
        ({"mean": (0.5,), "std": (0.0,)}, r"^normalisation std \(0\) holds a value that is not a"),
        ({"interpolation": "lanczos"}, r"^interpolation 'lanczos' is not known; expected one of"),
    ],
)
def test_preprocessing_refuses_bad_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        Preprocessing(**options)  # type: ignore[arg-type]


def test_preprocessing_stores_lists_as_tuples() -> None:
    preprocessing = Preprocessing(mean=[0.5], std=[0.25])  # type: ignore[arg-type]
    assert preprocessing.mean == (0.5,) and preprocessing.std == (0.25,)
    hash(preprocessing)


def test_weights_without_transforms_are_refused() -> None:
    with pytest.raises(OptionError, match=r"^weights 'resnet18' have no transforms\(\); expected"):
        preprocessing_from_weights("resnet18")


def test_weights_whose_transforms_cannot_be_called_are_refused() -> None:
    with pytest.raises(
        OptionError, match=r"^weights Fake_Weights.V1 gave a transforms\(\) result of type int"
    ):
        preprocessing_from_weights(FakeWeights(3))


def test_channels_option_must_be_positive(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")
    with pytest.raises(OptionError, match=r"^channels 0 is not valid; expected a positive integer"):
        load_input(path, channels=0)


# --------------------------------------------------------------------------------------------------
# Expected channels


def test_expected_channels_of_resnet18() -> None:
    from torchvision.models import resnet18

    assert expected_channels(resnet18(weights=None)) == (3, "conv1")


def test_expected_channels_of_a_vision_transformer() -> None:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    )
    assert expected_channels(model) == (3, "conv_proj")


def test_expected_channels_of_small_models() -> None:
    torch.manual_seed(0)
    conv1d = torch.nn.Sequential(torch.nn.Conv1d(5, 2, 3), torch.nn.Conv1d(2, 7, 1))
    assert expected_channels(conv1d) == (5, "0")
    assert expected_channels(torch.nn.Conv3d(2, 1, 1)) == (2, "")
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert expected_channels(mlp) is None
    assert expected_channels(torch.nn.Sequential(torch.nn.LazyConv2d(4, 3))) is None


# --------------------------------------------------------------------------------------------------
# Arrays


def save_array(path: Path, array: np.ndarray) -> Path:
    # Through a handle, so numpy keeps the name exactly (it appends .npy to other names).
    with path.open("wb") as handle:
        np.save(handle, array)
    return path


def test_array_chw_is_used_as_is(tmp_path: Path) -> None:
    array = np.random.default_rng(30).normal(0, 5, (3, 5, 7)).astype(np.float32)
    path = save_array(tmp_path / "x.npy", array)
    loaded = load_input(path, channels=3)
    assert loaded.kind == "array"
    assert loaded.original == ".npy float32 (3, 5, 7)"
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), array)
    assert loaded.conversions == ()
    assert loaded.display.shape == (5, 7, 3) and loaded.display.dtype == np.uint8


def test_array_hwc_is_transposed_for_the_model(tmp_path: Path) -> None:
    array = np.random.default_rng(31).random((5, 7, 3))
    loaded = load_array(save_array(tmp_path / "x.npy", array), ModelInput(channels=3))
    np.testing.assert_array_equal(
        loaded.tensor[0].numpy(), array.transpose(2, 0, 1).astype(np.float32)
    )
    assert loaded.conversions == (
        "array (H, W, C) transposed to (C, H, W)",
        "float64 values cast to float32 (no scaling)",
    )
    # Values in [0, 1] are shown as they are.
    np.testing.assert_array_equal(loaded.display, np.rint(array.astype(np.float32) * 255))


def test_array_without_channels_guesses_chw_for_a_short_first_axis(tmp_path: Path) -> None:
    array = np.random.default_rng(32).random((2, 5, 7)).astype(np.float32)
    loaded = load_array(save_array(tmp_path / "x.npy", array))
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), array)
    assert loaded.conversions == (
        "channel axis guessed: first axis (size 2) read as channels, (C, H, W)",
    )


def test_array_without_channels_guesses_hwc_otherwise(tmp_path: Path) -> None:
    array = np.random.default_rng(33).random((48, 64, 5)).astype(np.float32)
    loaded = load_array(save_array(tmp_path / "x.npy", array))
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), array.transpose(2, 0, 1))
    assert loaded.conversions == (
        "channel axis guessed: last axis (size 5) read as channels, (H, W, C) transposed to "
        "(C, H, W)",
    )
    # More than 3 channels: the first one is shown as gray.
    expected = np.rint(array[:, :, 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(loaded.display, np.repeat(expected[:, :, None], 3, axis=2))


def test_two_d_array_is_one_channel(tmp_path: Path) -> None:
    array = np.arange(35, dtype=np.int16).reshape(5, 7) - 10
    loaded = load_input(save_array(tmp_path / "x.NPY", array), channels=1)
    assert tuple(loaded.tensor.shape) == (1, 1, 5, 7)
    np.testing.assert_array_equal(loaded.tensor[0, 0].numpy(), array.astype(np.float32))
    assert loaded.conversions == (
        "2-D array (H, W) read as 1 channel",
        "int16 values cast to float32 (no scaling)",
    )
    # Values outside [0, 1]: the display stretches min..max.
    assert loaded.display.min() == 0 and loaded.display.max() == 255


def test_four_d_array_with_one_sample(tmp_path: Path) -> None:
    array = np.random.default_rng(34).random((1, 4, 5, 7)).astype(np.float32)
    loaded = load_array(save_array(tmp_path / "x.npy", array), ModelInput(channels=4))
    np.testing.assert_array_equal(loaded.tensor.numpy(), array)
    assert loaded.conversions == ("batch axis of size 1 dropped",)


def test_bool_and_big_endian_arrays(tmp_path: Path) -> None:
    bits = np.random.default_rng(35).integers(0, 2, (1, 5, 7)).astype(bool)
    loaded = load_array(save_array(tmp_path / "bits.npy", bits))
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), bits.astype(np.float32))
    assert loaded.conversions[-1] == "bool values cast to float32 (False -> 0, True -> 1)"

    swapped = np.random.default_rng(36).random((3, 5, 7)).astype(">f4")
    loaded = load_array(save_array(tmp_path / "big.npy", swapped), ModelInput(channels=3))
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), swapped.astype(np.float32))


def test_non_finite_values_are_kept_and_reported(tmp_path: Path) -> None:
    array = np.zeros((1, 4, 4))
    array[0, 0, 0], array[0, 1, 1], array[0, 2, 2] = np.nan, np.inf, 1e300
    loaded = load_array(save_array(tmp_path / "x.npy", array))
    got = loaded.tensor[0, 0].numpy()
    assert np.isnan(got[0, 0]) and np.isposinf(got[1, 1]) and np.isposinf(got[2, 2])
    assert loaded.conversions[-2:] == (
        "1 values too large for float32 became Inf",
        "array holds 3 NaN/Inf values (fed as they are)",
    )
    assert loaded.display[0, 0].tolist() == [0, 0, 0]


def test_array_normalisation_with_one_value_for_all_channels(tmp_path: Path) -> None:
    array = np.random.default_rng(37).random((5, 6, 6)).astype(np.float32)
    path = save_array(tmp_path / "x.npy", array)
    loaded = load_array(
        path, ModelInput(channels=5, preprocessing=Preprocessing(mean=(0.5,), std=(0.25,)))
    )
    np.testing.assert_allclose(loaded.tensor[0].numpy(), (array - 0.5) / 0.25, rtol=1e-6)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
)
def test_arrays_round_trip_and_files_stay_untouched(
    channels: int, height: int, width: int, seed: int
) -> None:
    array = np.random.default_rng(seed).normal(0, 10, (channels, height, width)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = save_array(Path(folder) / "x.npy", array)
        before = digest(path)
        loaded = load_array(path, ModelInput(channels=channels))
        assert digest(path) == before
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), array)


def test_loading_never_changes_the_file_or_the_options(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb(20, 30, seed=38)), tmp_path / "x.png")
    preprocessing = Preprocessing(resize=10, crop=8, mean=IMAGENET[0], std=IMAGENET[1])
    before_file, before_options = digest(path), preprocessing.describe()
    load_input(path, channels=3, preprocessing=preprocessing)
    assert digest(path) == before_file
    assert preprocessing.describe() == before_options


# --------------------------------------------------------------------------------------------------
# Errors, one test per message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^input '.*nope\.png' does not exist; check the path"):
        load_input(tmp_path / "nope.png")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^input '.*' is a directory, expected one image or"):
        load_input(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(InputError, match=r"^input '.*empty\.npy' is empty \(0 bytes\)"):
        load_input(tmp_path / "empty.npy")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # Running as root makes chmod useless for this, so the refusal is simulated.
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(InputError, match=r"^input '.*x\.png' cannot be read \(Permission denied\)"):
        load_input(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(
        InputError, match=r"^image '.*notes\.png' has the suffix \.png but Pillow cannot recognise"
    ):
        load_input(tmp_path / "notes.png")


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(
        InputError, match=r"^input '.*table\.csv' has the suffix '\.csv', which is neither an image"
    ):
        load_input(tmp_path / "table.csv")


@pytest.mark.parametrize(("suffix", "keep"), [(".png", 0.5), (".jpg", 0.5)])
def test_truncated_image(tmp_path: Path, suffix: str, keep: float) -> None:
    whole = save(Image.fromarray(random_rgb(64, 64, seed=39)), tmp_path / f"whole{suffix}")
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=r"^image '.*cut\..*' is damaged or truncated and cannot"):
        load_input(cut)


def test_decompression_bomb_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.fromarray(random_rgb(48, 64, seed=40)), tmp_path / "big.png")
    # Only the test lowers the limit; the library never touches it.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(
        InputError,
        match=r"^image '.*big\.png' has 3,072 pixels, more than Pillow's safety limit of 100 "
        r"\(decompression-bomb protection\); downscale it or crop a region first$",
    ):
        load_input(path)


def test_decompression_bomb_warning_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(Image.fromarray(random_rgb(10, 12, seed=41)), tmp_path / "big.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # 120 pixels: warning, not error
    with warnings.catch_warnings():
        # Even where the caller ignores warnings, the bomb warning must stop the load.
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"has 120 pixels, more than Pillow's safety limit"):
            load_input(path)


def test_image_channel_mismatch(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")
    with pytest.raises(
        InputError,
        match=r"^image '.*x\.png' has 3 channels \(RGB\) but the model's first layer 'conv1' "
        r"takes 5; give a \.npy array with 5 channels, or a model that takes 1 or 3$",
    ):
        load_input(path, channels=5, layer_name="conv1")


def test_unconvertible_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")
    # No file format stores premultiplied "La", so Pillow's opener is made to return one.
    monkeypatch.setattr(PIL.Image, "open", lambda *args, **kwargs: Image.new("La", (4, 3)))
    with pytest.raises(InputError, match=r"^image '.*x\.png' has the pixel mode La, which"):
        load_input(path)


def test_normalisation_with_the_wrong_number_of_values(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_gray()), tmp_path / "gray.png")
    mean, std = IMAGENET
    with pytest.raises(
        OptionError,
        match=r"^normalisation has 3 mean/std values but image '.*gray\.png' has 1 channel; "
        r"give one mean and one std per channel",
    ):
        load_input(path, preprocessing=Preprocessing(mean=mean, std=std))


class ExplodingTransform:
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("expected a video\nof 5 dimensions")


class ListTransform:
    def __call__(self, image: torch.Tensor) -> list[int]:
        return [1, 2]


def test_recipe_object_that_fails(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")
    preprocessing = preprocessing_from_weights(FakeWeights(ExplodingTransform()))
    with pytest.raises(
        InputError,
        match=r"^the preprocessing ExplodingTransform \(transforms of Fake_Weights\.V1\) failed "
        r"on image '.*x\.png' \(expected a video of 5 dimensions\); give resize",
    ):
        load_input(path, preprocessing=preprocessing)


def test_recipe_object_that_returns_something_else(tmp_path: Path) -> None:
    path = save(Image.fromarray(random_rgb()), tmp_path / "x.png")
    preprocessing = preprocessing_from_weights(FakeWeights(ListTransform()))
    with pytest.raises(
        InputError,
        match=r"^the preprocessing ListTransform \(.*\) turned image '.*' into list \(\), expected",
    ):
        load_input(path, preprocessing=preprocessing)


def test_object_array_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(
        InputError, match=r"^array '.*objects\.npy' holds pickled Python objects, which featuremaps"
    ):
        load_input(path)


class Tripwire:
    """Unpickling this would flip a flag: proof that loading never unpickles."""

    loaded = False

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (Tripwire._trip, ())

    @staticmethod
    def _trip() -> None:
        Tripwire.loaded = True


def test_pickle_file_named_npy_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.npy"
    path.write_bytes(pickle.dumps(Tripwire(), protocol=4))
    with pytest.raises(InputError, match=r"^array '.*sneaky\.npy' holds pickled Python objects"):
        load_input(path)
    assert Tripwire.loaded is False


def test_text_file_named_npy(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_text("1 2 3")
    with pytest.raises(InputError, match=r"^array '.*x\.npy' is not a NumPy \.npy file"):
        load_input(tmp_path / "x.npy")


def test_truncated_npy(tmp_path: Path) -> None:
    path = save_array(tmp_path / "x.npy", np.ones((3, 8, 8)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"^array '.*x\.npy' is a damaged \.npy file \("):
        load_input(path)


@pytest.mark.parametrize(
    ("array", "dtype"), [(np.array([["a", "b"]]), "<U1"), (np.ones((2, 2), complex), "complex128")]
)
def test_array_that_is_not_real_numbers(tmp_path: Path, array: np.ndarray, dtype: str) -> None:
    path = save_array(tmp_path / "x.npy", array)
    with pytest.raises(
        InputError, match=rf"^array '.*x\.npy' has dtype {dtype}, expected real numbers"
    ):
        load_input(path)


@pytest.mark.parametrize("shape", [(5,), (1, 1, 2, 2, 2), ()])
def test_array_with_the_wrong_rank(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = save_array(tmp_path / "x.npy", np.zeros(shape))
    with pytest.raises(
        InputError, match=rf"^array '.*x\.npy' has shape .* \({len(shape)}-D\), expected \(H, W\)"
    ):
        load_input(path)


def test_empty_array(tmp_path: Path) -> None:
    path = save_array(tmp_path / "x.npy", np.zeros((0, 5)))
    with pytest.raises(InputError, match=r"^array '.*x\.npy' has shape \(0, 5\), which holds no"):
        load_input(path)


def test_batch_of_several_samples(tmp_path: Path) -> None:
    path = save_array(tmp_path / "x.npy", np.zeros((2, 3, 4, 4)))
    with pytest.raises(
        InputError,
        match=r"^array '.*x\.npy' has shape \(2, 3, 4, 4\), a batch of 2, expected one sample "
        r"\(1, C, H, W\); save one file per sample$",
    ):
        load_input(path, channels=3)


def test_batch_is_fed_whole_to_a_model_that_takes_images(tmp_path: Path) -> None:
    batch = np.random.default_rng(5).integers(0, 256, (3, 3, 6, 8), dtype=np.uint8)
    path = save_array(tmp_path / "x.npy", batch)
    loaded = load_input(path, channels=3, axes=2)
    np.testing.assert_array_equal(loaded.tensor.numpy(), batch / np.float32(255))
    assert loaded.conversions[0] == (
        "batch of 3 samples (N, C, H, W) fed whole (--sample picks the one drawn)"
    )
    for index in range(3):
        picture = loaded.display_of(index)
        assert picture is not None
        np.testing.assert_array_equal(picture, batch[index].transpose(1, 2, 0))
    assert loaded.display_of(3) is None


def test_batch_samples_are_preprocessed_each_as_one_sample_would_be(tmp_path: Path) -> None:
    batch = np.random.default_rng(6).random((2, 3, 10, 12), dtype=np.float32)
    recipe = Preprocessing(resize=6, mean=IMAGENET[0], std=IMAGENET[1])
    loaded = load_input(save_array(tmp_path / "x.npy", batch), preprocessing=recipe, axes=2)
    assert tuple(loaded.tensor.shape) == (2, 3, 6, 7)
    for index in range(2):
        one = save_array(tmp_path / f"one{index}.npy", batch[index : index + 1])
        alone = load_input(one, preprocessing=recipe, axes=2).tensor
        torch.testing.assert_close(loaded.tensor[index : index + 1], alone, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "read_as"),
    [
        ((48, 64, 5), r"5 channels \(H, W, C\)"),
        ((5, 7), r"1 channel \(H, W\)"),
        ((1, 2, 5, 7), r"2 channels \(1, C, H, W\)"),
    ],
)
def test_array_channel_mismatch(tmp_path: Path, shape: tuple[int, ...], read_as: str) -> None:
    path = save_array(tmp_path / "x.npy", np.zeros(shape, np.float32))
    with pytest.raises(
        InputError,
        match=rf"^array '.*x\.npy' has shape .*, read as {read_as}, but the model's first layer "
        rf"'conv1' takes 3; save it with 3 channels as \(3, H, W\)$",
    ):
        load_input(path, channels=3, layer_name="conv1")


def test_every_message_is_one_line(tmp_path: Path) -> None:
    cut = tmp_path / "cut.png"
    data = save(Image.fromarray(random_rgb(64, 64, seed=42)), tmp_path / "w.png").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as caught:
        load_input(cut)
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_display_of_extreme_values_does_not_overflow(tmp_path: Path) -> None:
    array = np.array([[[-3e38, 0.0], [1.0, 3e38]]], dtype=np.float32)
    loaded = load_array(save_array(tmp_path / "x.npy", array))
    assert loaded.display[0, 0].tolist() == [0, 0, 0]
    assert loaded.display[1, 1].tolist() == [255, 255, 255]
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), array)


# -- arrays: what an array is, decided from its dtype and values, and said --------------------

_MODEL_PRESET = Preprocessing(
    resize=40, crop=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), source="a preset",
    from_model=True,
)  # fmt: skip


def test_uint8_array_is_read_like_the_same_picture_as_an_image(tmp_path: Path) -> None:
    pixels = random_rgb(48, 64, seed=3)
    array = tmp_path / "pixels.npy"
    np.save(array, pixels)
    image = save(Image.fromarray(pixels), tmp_path / "pixels.png")
    from_array = load_input(array, channels=3, preprocessing=_MODEL_PRESET)
    from_image = load_input(image, channels=3, preprocessing=_MODEL_PRESET)
    assert torch.equal(from_array.tensor, from_image.tensor)
    assert any("uint8 values divided by 255" in c for c in from_array.conversions)


def test_uint16_array_is_divided_by_its_full_scale(tmp_path: Path) -> None:
    values = np.random.default_rng(0).integers(0, 65536, (1, 8, 8)).astype(np.uint16)
    np.save(tmp_path / "sixteen.npy", values)
    loaded = load_input(tmp_path / "sixteen.npy")
    expected = values.astype(np.float32) / np.float32(65535)
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), expected)


def test_already_preprocessed_array_is_fed_as_it_is(tmp_path: Path) -> None:
    # Normalised values (outside [0, 1]) at the model's input size: resizing, cropping and
    # normalising them again would feed something else.
    values = np.random.default_rng(1).normal(size=(3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "ready.npy", values)
    loaded = load_input(tmp_path / "ready.npy", channels=3, preprocessing=_MODEL_PRESET)
    np.testing.assert_array_equal(loaded.tensor[0].numpy(), values)
    assert any("taken as already preprocessed" in c for c in loaded.conversions)
    assert loaded.describe()["preprocessing"]["source"].startswith("not applied")


def test_picture_array_at_the_input_size_is_only_normalised(tmp_path: Path) -> None:
    values = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "sized.npy", values)
    loaded = load_input(tmp_path / "sized.npy", channels=3, preprocessing=_MODEL_PRESET)
    mean = np.array(_MODEL_PRESET.mean, dtype=np.float32)[:, None, None]
    std = np.array(_MODEL_PRESET.std, dtype=np.float32)[:, None, None]
    expected = (values - mean) / std
    np.testing.assert_allclose(loaded.tensor[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert any("not resized or cropped again" in c for c in loaded.conversions)


def test_user_preprocessing_is_applied_even_to_arrays_outside_unit_range(tmp_path: Path) -> None:
    values = np.full((3, 10, 10), 5.0, dtype=np.float32)
    np.save(tmp_path / "raw.npy", values)
    given = Preprocessing(resize=(4, 6), source="options")
    loaded = load_input(tmp_path / "raw.npy", channels=3, preprocessing=given)
    assert loaded.tensor.shape == (1, 3, 4, 6)


def test_as_is_feeds_array_values_unchanged(tmp_path: Path) -> None:
    pixels = random_rgb(8, 8, seed=4)
    np.save(tmp_path / "raw.npy", pixels)
    loaded = load_input(tmp_path / "raw.npy", channels=3, preprocessing=Preprocessing.unchanged())
    np.testing.assert_array_equal(fed(loaded), pixels.astype(np.float32))
    assert any("fed as is (asked for)" in c for c in loaded.conversions)


def test_as_is_cannot_have_steps() -> None:
    with pytest.raises(OptionError, match="'as is' feeds inputs exactly as read"):
        Preprocessing(resize=4, as_is=True)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_display_of_8_and_16_bit_values_equals_float64(bits: int, channels: int) -> None:
    from featuremaps.inputs.display import for_display

    top = 2**bits - 1
    levels = (np.arange(top + 1, dtype=np.float64) / top).astype(np.float32)  # as read
    hwc = np.repeat(levels.reshape(1, -1, 1), channels, axis=2)
    expected = np.rint(levels.astype(np.float64) * 255.0).astype(np.uint8)
    pixels = for_display(hwc)
    assert pixels.shape == (1, top + 1, 3) and pixels.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(pixels[0, :, c], expected)
    if bits == 8:
        assert np.array_equal(expected, np.arange(256))  # the oracle itself: k/255 shows as k


def _fed_reference(chw: np.ndarray, mean: object, std: object) -> np.ndarray:
    """The fed picture's formula written plainly in numpy float64 (the oracle)."""
    channels = chw.shape[0]
    if mean is not None and std is not None and len(mean) == channels:  # type: ignore[arg-type]
        values = chw * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    elif np.all(np.isfinite(chw) & (chw >= 0.0) & (chw <= 1.0)):
        values = chw
    else:
        values = chw.copy()
        for c in range(channels):
            finite = np.isfinite(values[c])
            if finite.any():
                low, high = values[c][finite].min(), values[c][finite].max()
                values[c] = (values[c] - low) / (high - low) if high > low else 0.0
    hwc = np.moveaxis(values[:1] if channels not in (1, 3) else values, 0, -1)
    pixels = np.rint(np.where(np.isfinite(hwc), np.clip(hwc, 0.0, 1.0) * 255.0, 0.0))
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["unit", "normalised", "wide", "holes"])
def test_fed_picture_equals_the_numpy_formula(channels: int, kind: str) -> None:
    from featuremaps.inputs import Preprocessing, fed_picture

    rng = np.random.default_rng(channels)
    values = rng.random((2, channels, 9, 11)).astype(np.float32)
    values[0, :, 0, :3] = [0.0, 1.0, 0.5 / 255]  # ends, and a value on a rounding half
    pre = None
    if kind == "normalised":
        values = (values - 0.45) / 0.225
        pre = Preprocessing(mean=(0.45,) * channels, std=(0.225,) * channels)
    elif kind == "wide":
        values = values * 40 - 7
    elif kind == "holes":
        values[0, 0, 1, 1], values[0, -1, 2, 2], values[0, 0, 3, 3] = np.nan, np.inf, -np.inf
    made = fed_picture(torch.from_numpy(values), pre, sample=0)
    assert made is not None
    pixels, note = made
    mean, std = (pre.mean, pre.std) if pre is not None else (None, None)
    expected = _fed_reference(values[0].astype(np.float64), mean, std)
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected.astype(np.uint8))
    assert note.startswith(f"channel 0 of {channels}; ") == (channels not in (1, 3))


class TokenModel(torch.nn.Module):
    """Token ids -> embedding -> LSTM -> a class score: what a text model starts with."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 6)
        self.lstm = torch.nn.LSTM(6, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out[:, -1])


def test_token_ids_are_fed_as_integers_as_given(tmp_path: Path) -> None:
    model = TokenModel()
    assert expected_tokens(model) == (50, "embed")
    ids = np.random.default_rng(3).integers(0, 50, (1, 20), dtype=np.int64)
    loaded = load_input_for(save_array(tmp_path / "ids.npy", ids), model)
    assert loaded.tensor.dtype == torch.int64
    np.testing.assert_array_equal(loaded.tensor.numpy(), ids)
    assert loaded.kind == "tokens" and loaded.conversions == () and loaded.display is None
    with torch.no_grad():
        model(loaded.tensor)  # the embedding takes them


def test_token_ids_of_one_sequence_get_a_batch_axis_and_narrow_ints_widen(tmp_path: Path) -> None:
    ids = np.arange(7, dtype=np.uint8)
    loaded = load_input_for(save_array(tmp_path / "ids.npy", ids), TokenModel())
    assert loaded.tensor.dtype == torch.int64
    np.testing.assert_array_equal(loaded.tensor.numpy(), ids[None].astype(np.int64))
    assert loaded.conversions == (
        "batch axis added: (7,) fed as (1, 7)",
        "uint8 ids widened to int64 (values unchanged)",
    )


def test_token_ids_outside_the_vocabulary_or_as_floats_are_refused(tmp_path: Path) -> None:
    model = TokenModel()
    path = save_array(tmp_path / "ids.npy", np.array([[0, 3, 50]], dtype=np.int64))
    with pytest.raises(
        InputError,
        match=r"span 0 \.\. 50, but the model's first layer 'embed' has 50 embeddings "
        r"\(ids 0 \.\. 49\)",
    ):
        load_input_for(path, model)
    path = save_array(tmp_path / "floats.npy", np.zeros((1, 5), dtype=np.float32))
    with pytest.raises(InputError, match=r"holds float32 values, but .* takes integer token ids"):
        load_input_for(path, model)


@pytest.mark.parametrize(
    ("dtype", "shape", "planar"),
    [("float16", (6, 8), False), ("float32", (6, 8, 3), False), ("float32", (3, 6, 8), True)],
)
def test_float_tiffs_pillow_cannot_decode_are_read_with_tifffile(
    tmp_path: Path, dtype: str, shape: tuple[int, ...], planar: bool
) -> None:
    tifffile = pytest.importorskip("tifffile")
    values = (np.random.default_rng(7).random(shape) * 4 - 1).astype(dtype)  # outside [0, 1]
    path = tmp_path / "x.tif"
    options: dict[str, Any] = {"photometric": "rgb" if len(shape) == 3 else "minisblack"}
    if planar:
        options["planarconfig"] = "separate"
    tifffile.imwrite(path, values, **options)
    with pytest.raises(PIL.UnidentifiedImageError):
        Image.open(path)  # the case: Pillow does not read it
    loaded = load_image(path)
    hwc = values.transpose(1, 2, 0) if planar else values.reshape(6, 8, -1)
    np.testing.assert_array_equal(fed(loaded), hwc.astype(np.float32))
    assert loaded.conversions[0].startswith(f"read with tifffile: Pillow cannot decode {dtype}")
    assert loaded.original.startswith(f"TIFF {dtype}")


def test_a_tiff_pillow_cannot_decode_without_tifffile_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, np.zeros((4, 5), np.float16))
    monkeypatch.setitem(__import__("sys").modules, "tifffile", None)  # as if not installed
    with pytest.raises(InputError, match=r"needs tifffile, .*pip install 'featuremaps\[slide\]'$"):
        load_image(path)
