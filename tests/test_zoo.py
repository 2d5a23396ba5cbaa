"""The featuremaps zoo: procedural shapes, the trained shapes_cnn weights, and their training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import featuremaps as fm
from featuremaps.cli import main
from featuremaps.zoo import shapes
from featuremaps.zoo.shapes import CLASSES, ShapesNet, evaluate, make_shapes, train

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = ROOT / "src" / "featuremaps" / "zoo"
TEST_SEED = 20240611  # not a seed the training or the card's test set uses


@pytest.fixture(scope="module")
def trained() -> fm.LoadedModel:
    return fm.load_model("shapes_cnn")


# -- data --------------------------------------------------------------------------------------


def test_make_shapes_is_deterministic_balanced_and_in_range() -> None:
    images, labels = make_shapes(62, seed=3)
    again, again_labels = make_shapes(62, seed=3)
    other, _ = make_shapes(62, seed=4)
    assert images.shape == (62, 3, 64, 64) and images.dtype == np.float32
    assert labels.dtype == np.int64
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert not np.array_equal(images, other)
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 62
    assert images.min() >= 0.0 and images.max() <= 1.0


def _dominant_normal_degrees(image: np.ndarray) -> float:
    """Direction (0-180 degrees, 0 = along x) of the strongest non-constant Fourier component."""
    centred = image - image.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(centred)) ** 2).sum(axis=0)
    ky, kx = np.unravel_index(int(np.argmax(power)), power.shape)
    size = image.shape[-1]
    fy, fx = np.fft.fftfreq(size)[ky] * size, np.fft.fftfreq(size)[kx] * size
    return float(np.degrees(np.arctan2(fy, fx)) % 180.0)


def test_stripes_have_the_orientation_of_their_class() -> None:
    # Oracle for the generator: the strongest frequency of a stripes image points across its
    # bands (90 degrees for horizontal bands, 0 for vertical ones, 45 or 135 for diagonal ones),
    # within the drawn ±12° jitter plus the frequency grid's rounding.
    images, labels = make_shapes(120, seed=5)
    nominal = {"hstripes": [90.0], "vstripes": [0.0, 180.0], "dstripes": [45.0, 135.0]}
    for kind, angles in nominal.items():
        for image in images[labels == CLASSES.index(kind)]:
            angle = _dominant_normal_degrees(image)
            assert min(abs(angle - a) for a in angles) <= 22.0, (kind, angle)


# -- the packaged model ------------------------------------------------------------------------


def test_shapes_cnn_spec_loads_the_trained_weights(trained: fm.LoadedModel) -> None:
    assert isinstance(trained.model, ShapesNet) and not trained.model.training
    assert trained.source == "featuremaps" and not trained.random_weights
    card = json.loads((ZOO_DIR / "shapes_cnn.json").read_text(encoding="utf-8"))
    assert card["classes"] == list(CLASSES)
    assert trained.weights_status == (
        f"pretrained: shapes_cnn (procedural shapes, test accuracy {card['test_accuracy']:.1%})"
    )
    assert trained.preprocessing is not None
    assert (trained.preprocessing.resize, trained.preprocessing.crop) == (64, 64)
    assert trained.preprocessing.mean is None  # trained on [0, 1] values


def test_shapes_cnn_classifies_freshly_drawn_shapes(trained: fm.LoadedModel) -> None:
    images, labels = make_shapes(300, seed=TEST_SEED)
    assert evaluate(trained.model, images, labels) >= 0.9


def test_weights_none_gives_seeded_random_weights_and_says_so(trained: fm.LoadedModel) -> None:
    loaded = fm.load_model("shapes_cnn", "none")
    again = fm.load_model("shapes_cnn", "none")
    assert loaded.random_weights and loaded.source == "featuremaps"
    assert loaded.weights_status.startswith("random (asked for: --weights none")
    weight = loaded.model.state_dict()["conv1.weight"]
    assert torch.equal(weight, again.model.state_dict()["conv1.weight"])
    assert not torch.equal(weight, trained.model.state_dict()["conv1.weight"])
    images, labels = make_shapes(120, seed=TEST_SEED)
    assert evaluate(loaded.model, images, labels) < 0.5  # untrained: near chance (1/6)


def test_weights_file_and_bad_weights_name(trained: fm.LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "copy.safetensors"
    save_file(trained.model.state_dict(), str(path))
    loaded = fm.load_model("shapes_cnn", str(path))
    assert loaded.weights_status == f"loaded from {path}" and not loaded.random_weights
    assert torch.equal(loaded.model.conv3.weight, trained.model.conv3.weight)
    with pytest.raises(
        fm.ModelError, match=r"'IMAGENET1K_V1' is not a weights name for shapes_cnn"
    ):
        fm.load_model("shapes_cnn", "IMAGENET1K_V1")


def test_cli_resizes_a_photo_for_shapes_cnn(tmp_path: Path) -> None:
    picture = np.zeros((90, 120, 3), dtype=np.uint8)
    picture[::10] = 255  # horizontal stripes, wider than tall
    Image.fromarray(picture).save(tmp_path / "stripes.png")
    out = tmp_path / "out"
    argv = [str(tmp_path / "stripes.png"), "-m", "shapes_cnn", "--layers", "conv1"]
    code = main([*argv, "--out", str(out), "--no-report", "--quiet"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["random_weights"] is False
    assert manifest["input"]["fed_shape"] == [1, 3, 64, 64]
    assert [r["shape"] for r in manifest["records"]] == [[1, 16, 64, 64]]


# -- conv1 learned oriented edge detectors -----------------------------------------------------


def _coherence(kernel: np.ndarray) -> float:
    """How much of a (C, k, k) filter's spatial gradient points along one orientation, in [0, 1].

    The eigenvalues l1 >= l2 of the structure tensor J = sum over channels and taps of
    [gx*gx, gx*gy; gx*gy, gy*gy] give (l1 - l2) / (l1 + l2): 1 for an ideal edge or bar filter
    (all gradients parallel), near 0 for isotropic or noisy filters.
    """
    gy, gx = np.gradient(kernel.astype(np.float64), axis=(1, 2))
    tensor = np.array([[(gx * gx).sum(), (gx * gy).sum()], [(gx * gy).sum(), (gy * gy).sum()]])
    low, high = np.linalg.eigvalsh(tensor)
    return float((high - low) / (high + low))


def test_conv1_filters_are_oriented_edge_detectors(trained: fm.LoadedModel) -> None:
    weights = trained.model.conv1.weight.detach().numpy()
    coherent = [_coherence(k) for k in weights]
    random_weights = fm.load_model("shapes_cnn", "none").model.conv1.weight.detach().numpy()
    random_coherent = [_coherence(k) for k in random_weights]
    # Control: PyTorch's default init gives no filter this coherent, so the criterion has teeth.
    assert sum(c >= 0.4 for c in random_coherent) <= 1
    assert sum(c >= 0.4 for c in coherent) >= 8


def test_conv1_responds_to_one_stripe_orientation(trained: fm.LoadedModel) -> None:
    # Behaviour, not weights: the mean |response| of a conv1 filter to horizontal stripes vs.
    # vertical stripes. An oriented filter prefers one by a wide margin.
    images, labels = make_shapes(180, seed=TEST_SEED)

    def preference(conv1: torch.nn.Module) -> np.ndarray:
        """Per filter: mean |response| to horizontal stripes / the same for vertical stripes."""
        with torch.no_grad():
            h, v = (
                conv1(torch.from_numpy(images[labels == CLASSES.index(kind)]))
                .abs()
                .mean(dim=(0, 2, 3))
                .numpy()
                for kind in ("hstripes", "vstripes")
            )
        return np.asarray(h / v)

    trained_ratio = preference(trained.model.conv1)
    random_ratio = preference(fm.load_model("shapes_cnn", "none").model.conv1)
    assert (np.maximum(random_ratio, 1 / random_ratio) >= 2.0).sum() <= 1  # control
    assert (np.maximum(trained_ratio, 1 / trained_ratio) >= 2.0).sum() >= 6
    assert (trained_ratio >= 2.0).any() and (trained_ratio <= 0.5).any()  # both orientations


# -- training ----------------------------------------------------------------------------------


def _package_files() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in ZOO_DIR.iterdir()}


def test_training_is_deterministic_and_writes_nothing() -> None:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    before = _package_files()
    model, result = train(seed=1, epochs=1, n_train=24, batch_size=12, threads=1)
    again, _ = train(seed=1, epochs=1, n_train=24, batch_size=12, threads=1)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert len(result.losses) == 1 and 0.0 <= result.train_accuracy <= 1.0
    assert not model.training
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (
        threads,
        deterministic,
    )
    assert _package_files() == before


def test_training_script_writes_weights_and_card_where_told(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_shapes", ROOT / "scripts/train_shapes.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before = _package_files()
    argv = ["--epochs", "1", "--n-train", "24", "--n-test", "12", "--threads", "1"]
    assert script.main([*argv, "--out-dir", str(tmp_path)]) == 0
    assert _package_files() == before
    card = json.loads((tmp_path / "shapes_cnn.json").read_text(encoding="utf-8"))
    assert card["classes"] == list(CLASSES) and card["input_size"] == [64, 64]
    assert card["n_test"] == 12 and 0.0 <= card["test_accuracy"] <= 1.0
    loaded = fm.load_model("shapes_cnn", str(tmp_path / "shapes_cnn.safetensors"))
    assert not loaded.random_weights


def test_make_shapes_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"need n >= 0 and size >= 8, got n=-1"):
        shapes.make_shapes(-1)
