"""Model specs: zoo names and weights, checkpoints (safe loading), TorchScript, user factories."""

from __future__ import annotations

import pickle
import sys
import tempfile
import textwrap
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import featuremaps as fm
from featuremaps.models import _hub_cache_path


def _same_weights(a: nn.Module, b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.state_dict().items())


def test_weights_none_is_random_and_says_so() -> None:
    loaded = fm.load_model("squeezenet1_1", "none")
    assert loaded.random_weights and "asked for" in loaded.weights_status
    assert not loaded.model.training
    again = fm.load_model("squeezenet1_1", "none")  # seeded: the same random weights each time
    assert _same_weights(loaded.model, again.model.state_dict())


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8
    )


def test_an_architecture_that_fixes_its_input_size_gets_it(tmp_path: Path) -> None:
    loaded = fm.load_model(f"{__name__}:tiny_vit")
    pre = loaded.input_preprocessing()
    assert pre.final_size() == (32, 32) and pre.mean is None
    assert pre.source == "input size 32x32 fixed by the architecture (VisionTransformer.image_size)"
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(path)
    fed = fm.load_input(path, preprocessing=pre).tensor
    assert tuple(fed.shape) == (1, 3, 32, 32)
    with torch.no_grad():
        loaded.model(fed)  # the model's own size assertion holds


@pytest.mark.slow
def test_weights_none_keeps_the_input_size_vit_fixes(capsys: pytest.CaptureFixture[str]) -> None:
    from featuremaps.cli import main

    assert main(["layers", "vit_b_16", "--weights", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].endswith("of vit_b_16 on input (1, 3, 224, 224)")
    assert lines[-1].startswith(
        "preprocessing: resize shorter side 224 (bilinear), centre crop 224 (input size 224x224 "
        "fixed by the architecture (VisionTransformer.image_size); no normalisation for random "
        "weights (pretrained weights would use: resize shorter side 256"
    )


def test_offline_default_falls_back_visibly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(fm.RandomWeightsWarning, match=r"SqueezeNet1_1_Weights.*RANDOM weights"):
        loaded = fm.load_model("squeezenet1_1")
    assert loaded.random_weights
    assert loaded.weights_status.startswith("random (offline fallback")
    assert loaded.weights_enum is torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1


def test_download_failure_falls_back_visibly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("FEATUREMAPS_OFFLINE")

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.warns(fm.RandomWeightsWarning, match="download failed: .*Name or service"):
        loaded = fm.load_model("squeezenet1_1", "IMAGENET1K_V1")
    assert loaded.random_weights and "download failed" in loaded.weights_status


def test_default_weights_come_through_torchvisions_api_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    saved = torchvision.models.squeezenet1_1(num_classes=1000).state_dict()
    saved = {k: v + 1.0 if v.is_floating_point() else v for k, v in saved.items()}
    cached = _hub_cache_path(enum.url)
    cached.parent.mkdir(parents=True)
    torch.save(saved, cached)
    loaded = fm.load_model("squeezenet1_1", "DEFAULT")
    assert not loaded.random_weights
    assert loaded.weights_status == f"pretrained: {enum}"
    assert _same_weights(loaded.model, saved)


def test_weight_enum_names_and_unknown_names() -> None:
    with pytest.raises(fm.ModelError, match=r"'IMAGENET9K' is not a weights name for resnet18; "):
        fm.load_model("resnet18", "IMAGENET9K")
    with pytest.raises(fm.ModelError, match=r"unknown model 'resnet181'.*did you mean 'resnet18'"):
        fm.load_model("resnet181")


@pytest.fixture
def squeeze_state(tmp_path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return torchvision.models.squeezenet1_1().state_dict()


def test_state_dict_files_load_safely(
    tmp_path: Path, squeeze_state: dict[str, torch.Tensor]
) -> None:
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in squeeze_state.items()}}, pth)
    loaded = fm.load_model("squeezenet1_1", str(pth))
    assert not loaded.random_weights and loaded.weights_status == f"loaded from {pth}"
    assert _same_weights(loaded.model, squeeze_state)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in squeeze_state.items()}, str(st))
    assert _same_weights(fm.load_model("squeezenet1_1", str(st)).model, squeeze_state)


def test_weights_for_another_architecture(
    tmp_path: Path, squeeze_state: dict[str, torch.Tensor]
) -> None:
    pth = tmp_path / "w.pth"
    torch.save(squeeze_state, pth)
    with pytest.raises(
        fm.ModelError, match=r"does not fit resnet18: .*missing .*another architecture"
    ):
        fm.load_model("resnet18", str(pth))


class Sneaky:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickled_checkpoint_is_refused_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Sneaky(marker)}, evil)
    with pytest.raises(
        fm.UntrustedCheckpointError, match=r"needs full unpickling.*--trust-checkpoint"
    ):
        fm.load_model("squeezenet1_1", str(evil))
    assert not marker.exists()


def test_full_model_pickle_needs_trust(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 2, 1)), path)
    with pytest.raises(fm.UntrustedCheckpointError, match="needs full unpickling"):
        fm.load_model(str(path))
    loaded = fm.load_model(str(path), trust_checkpoint=True)
    assert loaded.source == "pickle" and isinstance(loaded.model[0], nn.Conv2d)


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=300))
def test_any_bytes_as_weights_give_a_model_error(garbage: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.pth"
        bad.write_bytes(garbage)
        with pytest.raises(fm.ModelError):  # never another exception type, never code
            fm.load_model("squeezenet1_1", str(bad))


def test_corrupt_weights_and_state_dict_as_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(bytes(range(7, 71)))
    with pytest.raises(fm.ModelError, match="cannot read .*bad.pth"):
        fm.load_model("squeezenet1_1", str(bad))
    sd = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, sd)
    with pytest.raises(
        fm.ModelError, match=r"holds weights but no architecture; .*--model resnet18"
    ):
        fm.load_model(str(sd))
    with pytest.raises(fm.ModelError, match="weights file .*missing.pth' does not exist"):
        fm.load_model("squeezenet1_1", str(tmp_path / "missing.pth"))


def test_torchscript_file(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    path = tmp_path / "net.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(net), str(path))
    loaded = fm.load_model(str(path))
    assert loaded.source == "torchscript"
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(fm.capture(loaded.model, x)[0].tensor, net(x))
    # Given as weights, it is pointed to --model (not to torch's weights_only advice).
    with pytest.raises(fm.ModelError, match=r"is a TorchScript model .*--model .*net\.pt$"):
        fm.load_model("squeezenet1_1", str(path))


FACTORY = textwrap.dedent(
    """
    import torch.nn as nn

    def build():
        return nn.Sequential(nn.Conv2d(1, 4, 3))

    def broken():
        raise ValueError("no config")

    def not_a_model():
        return 42
    """
)


def test_factories_from_module_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mynets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = fm.load_model("mynets:build")
    assert loaded.source == "factory" and loaded.model[0].in_channels == 1
    from_file = fm.load_model(f"{tmp_path / 'mynets.py'}:build")
    assert isinstance(from_file.model[0], nn.Conv2d)
    with pytest.raises(
        fm.ModelError, match=r"'mynets' has no callable 'buidl'; did you mean 'build'"
    ):
        fm.load_model("mynets:buidl")
    with pytest.raises(
        fm.ModelError, match=r"calling mynets:broken\(\) failed: ValueError: no config"
    ):
        fm.load_model("mynets:broken")
    with pytest.raises(fm.ModelError, match="returned int, not a torch.nn.Module"):
        fm.load_model("mynets:not_a_model")
    with pytest.raises(fm.ModelError, match="cannot import module 'nosuchpkg.nets'"):
        fm.load_model("nosuchpkg.nets:build")
    sys.modules.pop("mynets", None)


def test_missing_factory_suggests_only_what_the_file_defines(tmp_path: Path) -> None:
    # The file imports torch; 'torch' is no factory of the file and must not be offered.
    (tmp_path / "models.py").write_text("import torch\n" + FACTORY)
    spec = f"{tmp_path / 'models.py'}:nosuch"
    with pytest.raises(
        fm.ModelError,
        match=r"no callable 'nosuch'; callables defined there: 'broken', 'build', 'not_a_model'$",
    ):
        fm.load_model(spec)
    with pytest.raises(fm.ModelError, match=r"has no callable 'buidl'; did you mean 'build'\?$"):
        fm.load_model(f"{tmp_path / 'models.py'}:buidl")


def test_timm_missing_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(fm.ModelError, match=r"needs timm, which is not installed"):
        fm.load_model("timm:resnet18")


def test_pickle_module_is_the_stdlib_one() -> None:
    # checkpoints.py relies on torch.load raising pickle.UnpicklingError for refused globals.
    import featuremaps.checkpoints

    assert featuremaps.checkpoints.pickle is pickle  # type: ignore[attr-defined]


def test_timm_names_random_and_offline_fallback() -> None:
    # timm is a dev dependency so this path is exercised; for users it stays optional.
    loaded = fm.load_model("timm:resnet10t", "none")
    assert (loaded.source, loaded.random_weights) == ("timm", True)
    assert fm.capture(loaded.model, torch.zeros(1, 3, 32, 32)).names()[0] == "conv1.0"
    with pytest.warns(fm.RandomWeightsWarning, match="timm model resnet10t .*offline mode"):
        fallback = fm.load_model("resnet10t")  # a bare timm name that torchvision lacks
    assert fallback.random_weights and fallback.weights_status.startswith("random (offline")
    with pytest.raises(fm.ModelError, match=r"unknown timm model 'resnet10x'"):
        fm.load_model("timm:resnet10x")


# -- the user's own model: preprocessing follows the architecture, loading never misleads ------


def test_torchvision_name_with_weights_file_keeps_the_architecture_preprocessing(
    tmp_path: Path,
) -> None:
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    path = tmp_path / "finetuned.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    loaded = fm.load_model("resnet18", str(path))
    pre = loaded.input_preprocessing()
    assert "assumed for the weights file finetuned.pth" in pre.source
    assert pre.from_model
    # The oracle: torchvision's own transforms of that architecture, on the same pixels.
    image = fm.sample_image_path()
    fed = fm.load_input(image, preprocessing=pre).tensor[0]
    pixels = np.array(Image.open(image).convert("RGB"))
    chw = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    expected = weights.transforms()(chw)
    assert fed.shape == expected.shape == (3, 224, 224)
    assert torch.allclose(fed, expected, atol=1e-5)


def test_timm_models_use_timm_data_config_on_any_image_size(tmp_path: Path) -> None:
    import timm

    path = tmp_path / "wide.png"
    Image.open(fm.sample_image_path()).convert("RGB").resize((300, 200)).save(path)
    loaded = fm.load_model("timm:vit_tiny_patch16_224", "none")
    pre = loaded.input_preprocessing()
    assert "timm data config" in pre.source
    fed = fm.load_input(path, preprocessing=pre).tensor
    config = timm.data.resolve_data_config({}, model=loaded.model)
    expected = timm.data.create_transform(**config)(Image.open(path).convert("RGB"))[None]
    assert fed.shape == expected.shape == (1, 3, 224, 224)
    # timm resizes PIL images, we resize tensors (antialiased): the same recipe, values within
    # a fraction of a grey level on average (std 0.5, so 0.01 is 0.6 grey levels).
    assert float((fed - expected).abs().mean()) < 0.01
    records = fm.capture(loaded.model, fed, layers="blocks.0")  # a non-224 image no longer fails
    assert records[0].shape == (1, 197, 192)


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    attempts: list[str] = []

    def refuse(url: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append(str(getattr(url, "full_url", url)))
        raise urllib.error.URLError("network refused by the test")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    return attempts


@pytest.mark.parametrize("weights", ["none", "DEFAULT"])
@pytest.mark.parametrize(
    "name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "lraspp_mobilenet_v3_large"]
)
def test_no_weights_and_offline_never_touch_the_network(
    name: str, weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    attempts = _refuse_network(monkeypatch)
    if weights == "none":
        loaded = fm.load_model(name, weights, offline=True)
    else:
        with pytest.warns(fm.RandomWeightsWarning, match="offline mode"):
            loaded = fm.load_model(name, weights, offline=True)
    assert attempts == []
    assert loaded.random_weights


def test_every_torchvision_weights_argument_is_kept_from_downloading() -> None:
    import inspect

    from featuremaps.models import no_download_arguments

    for name in torchvision.models.list_models():
        builder = torchvision.models.get_model_builder(name)
        downloading = {
            p.name
            for p in inspect.signature(builder).parameters.values()
            if p.name != "weights" and isinstance(p.default, torchvision.models.WeightsEnum)
        }
        assert downloading <= set(no_download_arguments(name)), name


def test_trust_checkpoint_reaches_a_whole_model_file_given_as_weights(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    model = torchvision.models.squeezenet1_1()
    torch.save(model, path)
    with pytest.raises(fm.UntrustedCheckpointError, match="pass --trust-checkpoint"):
        fm.load_model("squeezenet1_1", str(path))
    loaded = fm.load_model("squeezenet1_1", str(path), trust_checkpoint=True)
    assert _same_weights(loaded.model, model.state_dict())


@pytest.mark.parametrize("spec", ["builtins:exit", "sys:exit"])
def test_a_factory_that_exits_is_a_model_error(spec: str) -> None:
    with pytest.raises(fm.ModelError, match=r"tried to end the program \(SystemExit"):
        fm.load_model(spec)


def test_a_model_file_that_exits_on_import_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "quits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(fm.ModelError, match=r"importing '.*quits.py' tried to end the program"):
        fm.load_model(f"{path}:build")
