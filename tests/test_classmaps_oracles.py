"""Class maps checked against oracles written by others, and against recomputations written here.

The peers are pytorch-grad-cam 1.5.7 and Captum 0.9.0 (test-only dependencies). grad-cam's maps
are taken raw, at the layer's resolution: its pipeline runs with ``scale_cam_image`` (min-max
scaling and resize) replaced by an identity, and its other methods' own ``get_cam_image`` are
applied to the activations and gradients that pipeline captured. Captum's ``LayerGradCam`` is
not normalised or resized. Where the peers are wrong (an in-place ReLU after the layer, a module
called twice) the oracle is a recomputation in this file: a forward hook that lets the model go on
with a clone, the gradient by ``torch.autograd.grad``, the formulas in numpy.

Weights are random (seeded); the full-size torchvision models are marked ``slow``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from featuremaps._errors import OptionError
from featuremaps.classmaps import METHODS, ClassMap, Region, class_maps
from featuremaps.classmaps.methods import GRADIENT_METHODS

#: The tolerance of every comparison, as a fraction of the larger map's maximum.
TOLERANCE = 1e-5


def _ours(
    model: nn.Module, x: torch.Tensor, layers: str | Sequence[str], target: Any, **options: Any
) -> tuple[dict[tuple[str, str], np.ndarray], list[ClassMap]]:
    """``{(layer, method): (N, *cells)}`` from :func:`class_maps` (no trust numbers)."""
    options.setdefault("methods", GRADIENT_METHODS)
    found = class_maps(
        model, x, layers=layers, target=target, trust=False, sanity=False, geometry=False, **options
    )
    grouped: dict[tuple[str, str], list[np.ndarray]] = {}
    for item in sorted(found, key=lambda m: m.sample):
        grouped.setdefault((item.layer, item.method), []).append(item.array)
    return {key: np.stack(arrays) for key, arrays in grouped.items()}, found


def assert_maps_equal(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    """Per sample, to :data:`TOLERANCE` of the larger maximum; and not all zero (no vacuous
    comparison of two blank maps)."""
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    assert theirs.max() > 0, f"{what}: the peer's maps are all zero, nothing is compared"
    for n, (mine, peer) in enumerate(zip(ours, theirs, strict=True)):
        scale = max(float(np.abs(mine).max()), float(np.abs(peer).max()))
        gap = float(np.abs(mine.astype(np.float64) - peer.astype(np.float64)).max())
        assert gap <= TOLERANCE * scale, f"{what}, sample {n}: off by {gap:.3g} of {scale:.3g}"


# --- the peers -------------------------------------------------------------------------------


def _gradcam_raw(
    model: nn.Module,
    module: nn.Module,
    x: torch.Tensor,
    targets: Sequence[int],
    reshape: Callable[[torch.Tensor], torch.Tensor] | None,
) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's raw maps of every gradient method, from one run of its pipeline."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM, base_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = GradCAM(model=model, target_layers=[module], reshape_transform=reshape)
    try:  # not `with cam`: its __exit__ swallows IndexError
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(base_cam, "scale_cam_image", lambda image, target_size=None: image)
            found = {"gradcam": cam(x, [ClassifierOutputTarget(k) for k in targets])}
        # Its captured values in float64, as ours are computed: XGrad-CAM divides by a channel's
        # sum over the cells, small for signed activations, and float32 arithmetic there is
        # off by more than the tolerance asked here.
        a = cam.activations_and_grads.activations[0].numpy().astype(np.float64)
        g = cam.activations_and_grads.gradients[0].numpy().astype(np.float64)
    finally:
        cam.activations_and_grads.release()
    others = {
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "hirescam": HiResCAM,
    }
    for name, kind in others.items():
        # The class's own get_cam_image (and weights), without an instance (its __init__ would
        # hook the model again); the ReLU is the one its pipeline applies next.
        image = kind.get_cam_image(_Bare(kind), x, module, None, a, g, False)
        found[name] = np.maximum(image, 0)
    return found


class _Bare:
    """``self`` for a grad-cam method called without an instance: its formulas use no state
    but their own ``get_cam_weights``."""

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def get_cam_weights(self, *args: Any) -> Any:
        return self.kind.get_cam_weights(self, *args)


def _captum_gradcam(
    model: nn.Module, module: nn.Module, x: torch.Tensor, targets: Sequence[int], part: int | None
) -> np.ndarray:
    """Captum's ``LayerGradCam`` with its ReLU, ``(N, *cells)``; ``part`` picks one output of a
    layer that returns a tuple."""
    from captum.attr import LayerGradCam

    found = LayerGradCam(model, module).attribute(x, target=list(targets), relu_attributions=True)
    if part is not None:
        found = found[part]
    return found[:, 0].detach().numpy()


class _TokensToGrid(nn.Module):
    """ViT tokens ``(N, 1 + h·w, C)`` → ``(class token, (N, C, h, w) grid)``: the peers' view
    of a token layer (grad-cam's usual ViT reshape, as a module so that Captum can hook it)."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tokens[:, :1], _vit_grid(tokens, self.side)


class _GridToTokens(nn.Module):
    def forward(self, parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        prefix, grid = parts
        return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], 1)


def _vit_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    n, _, c = tokens.shape
    return tokens[:, 1:].reshape(n, side, side, c).permute(0, 3, 1, 2)


class _Permute(nn.Module):
    def __init__(self, *order: int) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.order)


@dataclass(frozen=True)
class PeerLayer:
    """How the peers see one layer of ``ours``: grad-cam's target (a path in the peer's copy,
    ``None`` where it is known to be wrong) with its reshape, Captum's layer and output part."""

    gradcam: str | None
    captum: str
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
    part: int | None = None


@dataclass
class Compared:
    """The maps of one model by us and by the peers, ``{(layer, method): (N, *cells)}``."""

    model: str
    ours: dict[tuple[str, str], np.ndarray]
    gradcam: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    captum: dict[str, np.ndarray] = field(default_factory=dict)
    cells: dict[str, str] = field(default_factory=dict)


def _compare(
    name: str,
    model: nn.Module,
    peer: nn.Module,
    x: torch.Tensor,
    targets: list[int],
    layers: dict[str, PeerLayer],
) -> Compared:
    ours, found = _ours(model, x, list(layers), targets)
    result = Compared(name, ours, cells={m.layer: m.cells for m in found})
    for layer, how in layers.items():
        if how.gradcam is not None:
            raw = _gradcam_raw(peer, peer.get_submodule(how.gradcam), x, targets, how.reshape)
            result.gradcam.update({(layer, method): maps for method, maps in raw.items()})
        result.captum[layer] = _captum_gradcam(
            peer, peer.get_submodule(how.captum), x, targets, how.part
        )
    return result


def _build(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor, dict[str, PeerLayer]]:
    """A seeded random-weights model, the peers' copy of it (grad-cam calls ``eval()`` and
    fills ``.grad``; identity wrappers let Captum see token and channels-last layers as grids),
    an input and the layers compared."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    if name == "resnet50":
        size = 112
        layers = {p: PeerLayer(p, p) for p in ("layer4", "layer3")}
        # The block adds its shortcut to bn3's output in place (`out += identity`): grad-cam's
        # stored copy would be the sum; Captum clones, so it is an oracle there.
        layers["layer4.2.bn3"] = PeerLayer(None, "layer4.2.bn3")
    elif name == "densenet121":
        size = 128
        layers = {
            "features.denseblock4": PeerLayer("features.denseblock4", "features.denseblock4"),
            # DenseNet.forward runs F.relu(features, inplace=True): grad-cam's stored copy of
            # `features` becomes the post-ReLU value (see the in-place test); Captum clones.
            "features": PeerLayer(None, "features"),
        }
    elif name == "vit_b_16":
        size = 224  # torchvision's ViT refuses other sizes
        nn.init.normal_(model.heads.head.weight, std=0.02)  # zero at init: no gradient at all
    else:
        size = 128
    peer = copy.deepcopy(model)
    if name == "vit_b_16":
        path = "encoder.layers.encoder_layer_10"
        block = peer.encoder.layers.encoder_layer_10
        peer.encoder.layers.encoder_layer_10 = nn.Sequential(
            block, _TokensToGrid(14), _GridToTokens()
        )
        layers = {
            path: PeerLayer(f"{path}.0", f"{path}.1", reshape=lambda t: _vit_grid(t, 14), part=1)
        }
    elif name == "swin_t":
        layers = {}
        for index in (5, 7):
            stage = peer.features[index]
            peer.features[index] = nn.Sequential(stage, _Permute(0, 3, 1, 2), _Permute(0, 2, 3, 1))
            layers[f"features.{index}"] = PeerLayer(
                f"features.{index}.0",
                f"features.{index}.1",
                reshape=lambda t: t.permute(0, 3, 1, 2),
            )
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, peer, x, layers


FULL_SIZE = ("resnet50", "densenet121", "vit_b_16", "swin_t")
#: Two inputs with different targets (with random weights the indices mean nothing; these give
#: maps that are not blank at every layer compared).
TARGETS = [4, 9]


@pytest.fixture(scope="module", params=FULL_SIZE)
def compared(request: pytest.FixtureRequest) -> Compared:
    model, peer, x, layers = _build(request.param)
    return _compare(request.param, model, peer, x, TARGETS, layers)


@pytest.mark.slow
def test_gradient_methods_equal_pytorch_grad_cam(compared: Compared) -> None:
    assert compared.gradcam
    for (layer, method), theirs in compared.gradcam.items():
        what = f"{compared.model} {layer} {method}"
        assert_maps_equal(compared.ours[layer, method], theirs, what)


@pytest.mark.slow
def test_gradcam_equals_captum(compared: Compared) -> None:
    for layer, theirs in compared.captum.items():
        what = f"{compared.model} {layer} gradcam"
        assert_maps_equal(compared.ours[layer, "gradcam"], theirs, what)


@pytest.mark.slow
def test_full_size_layouts_are_said(compared: Compared) -> None:
    if compared.model == "vit_b_16":
        note = compared.cells["encoder.layers.encoder_layer_10"]
        assert note == "tokens on their 14x14 patch grid; 1 prefix token excluded"
        assert compared.ours["encoder.layers.encoder_layer_10", "gradcam"].shape == (2, 14, 14)
    elif compared.model == "swin_t":  # 128 px: patches of 4, halved twice and three times
        assert compared.ours["features.5", "gradcam"].shape == (2, 8, 8)
        assert compared.ours["features.7", "gradcam"].shape == (2, 4, 4)
        assert all(compared.cells[f"features.{i}"].startswith("channels last") for i in (5, 7))
    else:
        assert set(compared.cells.values()) == {""}


# --- recomputations written here --------------------------------------------------------------


def recomputed(
    model: nn.Module,
    x: torch.Tensor,
    module: nn.Module,
    score: Callable[[Any], torch.Tensor],
    call: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The activations of ``module``'s ``call``-th call and the gradient of ``score(output)``
    summed over the batch, float64: a forward hook keeps the returned tensor and lets the model
    go on with a clone of it (so an in-place operation later cannot change it), and autograd
    takes the gradient back along the clone's path."""
    kept: list[torch.Tensor] = []
    seen = [0]

    def hook(_: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        seen[0] += 1
        if seen[0] != call:
            return None
        kept.append(output)
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score(out).sum(), kept[0])
    return kept[0].detach().double().numpy(), grad.double().numpy()


def class_score(targets: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: out[torch.arange(len(targets)), list(targets)]


def numpy_maps(a: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    """The five gradient methods in numpy, from their papers, on ``(N, C, *cells)``."""
    cells = tuple(range(2, a.ndim))

    def weighted(w: np.ndarray) -> np.ndarray:
        return np.maximum((w.reshape(w.shape + (1,) * len(cells)) * a).sum(1), 0)

    total = a.sum(cells, keepdims=True)
    alpha = np.where(g != 0, g**2 / (2 * g**2 + total * g**3 + 1e-6), 0.0)
    return {
        "gradcam": weighted(g.mean(cells)),  # Selvaraju et al.
        "gradcam++": weighted((np.maximum(g, 0) * alpha).sum(cells)),  # Chattopadhay et al.
        "xgradcam": weighted((g * a / (total + 1e-7)).sum(cells)),  # Fu et al.
        "layercam": np.maximum((np.maximum(g, 0) * a).sum(1), 0),  # Jiang et al.
        "hirescam": np.maximum((g * a).sum(1), 0),  # Draelos & Carin
    }


def assert_all_methods_equal(
    ours: dict[tuple[str, str], np.ndarray], layer: str, expected: dict[str, np.ndarray]
) -> None:
    for method in GRADIENT_METHODS:
        assert_maps_equal(ours[layer, method], expected[method], f"{layer} {method}")


# --- in-place operations after the layer ------------------------------------------------------


class InPlaceNet(nn.Module):
    """A convolution whose output an in-place ReLU rewrites (as in torchvision's CNNs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_an_in_place_relu_after_the_layer_changes_nothing_but_misleads_grad_cam() -> None:
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM, base_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = InPlaceNet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    targets = [1, 3]
    ours, _ = _ours(model, x, "conv", targets)
    a, g = recomputed(model, x, model.conv, class_score(targets))
    assert (a < 0).any()  # the ReLU after the layer has something to rewrite
    assert_all_methods_equal(ours, "conv", numpy_maps(a, g))
    captum = LayerGradCam(model, model.conv).attribute(x, target=targets, relu_attributions=True)
    assert_maps_equal(ours["conv", "gradcam"], captum[:, 0].detach().numpy(), "captum")

    peer = copy.deepcopy(model)
    cam = GradCAM(model=peer, target_layers=[peer.conv])
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(base_cam, "scale_cam_image", lambda image, target_size=None: image)
            theirs = cam(x, [ClassifierOutputTarget(k) for k in targets])
    finally:
        cam.activations_and_grads.release()
    # grad-cam keeps `output.cpu().detach()`, the same storage on CPU: the ReLU rewrites it
    gap = np.abs(theirs - ours["conv", "gradcam"]).max()
    assert gap > 0.1 * ours["conv", "gradcam"].max()


# --- a batch, and the model's state -----------------------------------------------------------


class SmallNet(nn.Module):
    """Two convolutions with batch norm (so that train mode would mix the inputs) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(torch.relu(y).mean((2, 3)))


def _small() -> SmallNet:
    torch.manual_seed(3)
    model = SmallNet()
    with torch.no_grad():  # running statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _hook_counts(model: nn.Module) -> dict[str, int]:
    """How many hooks of each kind every module holds (forward, pre, backward, state dict...)."""
    return {
        f"{path}.{attr}": len(value)
        for path, module in model.named_modules()
        for attr, value in vars(module).items()
        if "hooks" in attr and isinstance(value, dict)
    }


@dataclass(frozen=True)
class State:
    grads: dict[str, torch.Tensor | None]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    hooks: dict[str, int]

    @staticmethod
    def of(model: nn.Module) -> State:
        return State(
            {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: m.training for n, m in model.named_modules()},
            _hook_counts(model),
        )

    def assert_same(self, other: State) -> None:
        assert self.requires_grad == other.requires_grad
        assert self.training == other.training
        assert self.hooks == other.hooks
        assert self.grads.keys() == other.grads.keys()
        for name, grad in self.grads.items():
            after = other.grads[name]
            assert (grad is None) == (after is None), name
            assert grad is None or after is None or torch.equal(grad, after), name


def test_a_batch_equals_single_runs_and_the_model_is_left_as_it_was() -> None:
    model = _small()
    model.train()  # left in train mode by its user, with one module in eval mode
    model.conv2.eval()
    model.conv1.weight.requires_grad_(False)  # partly frozen
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)  # a grad from elsewhere
    seen: list[str] = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append("forward"))
    model.conv1.register_forward_pre_hook(lambda m, i: seen.append("pre"))
    model.fc.register_full_backward_hook(lambda m, gi, go: seen.append("backward"))
    before = State.of(model)
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    targets = [0, 2, 4]

    found = class_maps(model, x, layers="conv2", methods="all", target=targets, steps=4)

    State.of(model).assert_same(before)
    assert set(seen) == {"forward", "pre", "backward"}  # the user's hooks still ran
    assert [m.target.index for m in found if m.method == "gradcam"] == targets
    batch = {(m.method, m.sample): m.array for m in found}
    for n, k in enumerate(targets):
        alone, _ = _ours(model, x[n : n + 1], "conv2", [k], methods="all")
        for method in METHODS:
            what = f"{method}, input {n} alone"
            assert_maps_equal(batch[method, n][None], alone["conv2", method], what)
    State.of(model).assert_same(before)
    model.eval()
    a, g = recomputed(model, x, model.conv2, class_score(targets))
    assert_all_methods_equal(_ours(model, x, "conv2", targets)[0], "conv2", numpy_maps(a, g))


def test_a_model_with_every_parameter_frozen_still_gets_maps() -> None:
    model = _small().eval()
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    a, g = recomputed(model, x, model.conv2, class_score([1, 2]))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    before = State.of(model)
    ours, _ = _ours(model, x, ["conv1", "conv2"], [1, 2])
    State.of(model).assert_same(before)
    assert_all_methods_equal(ours, "conv2", numpy_maps(a, g))
    assert ours["conv1", "gradcam"].max() > 0  # the first layer too (its output is a new leaf)


# --- a module called twice --------------------------------------------------------------------


class ReusedNet(nn.Module):
    """One convolution called twice (as torchvision's ResNet blocks call their ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.relu(self.conv(torch.relu(self.stem(x)))))
        return self.fc(torch.relu(y).mean((2, 3)))


def test_each_call_of_a_reused_module_gets_its_own_map() -> None:
    from captum.attr import LayerGradCam

    torch.manual_seed(6)
    model = ReusedNet().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    targets = [0, 3]
    ours, found = _ours(model, x, "conv", targets)
    assert {m.layer for m in found} == {"conv", "conv#2"}
    for call, name in ((1, "conv"), (2, "conv#2")):
        a, g = recomputed(model, x, model.conv, class_score(targets), call=call)
        assert_all_methods_equal(ours, name, numpy_maps(a, g))
    assert not np.allclose(ours["conv", "gradcam"], ours["conv#2", "gradcam"])
    captum = LayerGradCam(model, model.conv).attribute(x, target=targets, relu_attributions=True)
    # Captum keeps the last call only
    assert_maps_equal(ours["conv#2", "gradcam"], captum[:, 0].detach().numpy(), "captum")


# --- layouts ----------------------------------------------------------------------------------


def test_a_token_layer_gets_its_patch_grid_without_the_class_token() -> None:
    torch.manual_seed(7)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8
    ).eval()
    nn.init.normal_(model.heads.head.weight)  # zero at init: no gradient at all
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    layer = "encoder.layers.encoder_layer_0"
    ours, found = _ours(model, x, layer, [0, 1])
    assert {m.cells for m in found} == {"tokens on their 4x4 patch grid; 1 prefix token excluded"}
    a, g = recomputed(model, x, model.encoder.layers[0], class_score([0, 1]))
    assert a.shape == (2, 1 + 16, 8)
    grid = {  # the 16 patch tokens, row by row, channels first
        name: v[:, 1:].reshape(2, 4, 4, 8).transpose(0, 3, 1, 2) for name, v in (("a", a), ("g", g))
    }
    assert_all_methods_equal(ours, layer, numpy_maps(grid["a"], grid["g"]))


class ChannelsLastNet(nn.Module):
    """A convolution, then channels-last layers (as ConvNeXt and Swin blocks run)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.mix = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(self.norm(self.conv(x).permute(0, 2, 3, 1)))  # (N, H, W, C)
        return self.fc(torch.relu(y).mean((1, 2)))


def test_a_channels_last_layer_gets_an_h_by_w_map() -> None:
    torch.manual_seed(8)
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(8))
    ours, found = _ours(model, x, "mix", [2, 4])
    assert found[0].array.shape == (9, 7)
    assert found[0].cells.startswith("channels last")
    a, g = recomputed(model, x, model.mix, class_score([2, 4]))
    first = (0, 3, 1, 2)
    assert_all_methods_equal(ours, "mix", numpy_maps(a.transpose(first), g.transpose(first)))


def test_a_signal_model_gets_a_map_along_time() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv1d(2, 6, 5), nn.ReLU(inplace=True), nn.Conv1d(6, 8, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    x = torch.randn(2, 2, 40, generator=torch.Generator().manual_seed(9))
    ours, found = _ours(model, x, ["0", "2"], [1, 3])
    assert found[0].array.shape == (36,)
    for path in ("0", "2"):
        a, g = recomputed(model, x, model.get_submodule(path), class_score([1, 3]))
        assert_all_methods_equal(ours, path, numpy_maps(a, g))


def test_a_volume_model_gets_a_depth_height_width_map() -> None:
    torch.manual_seed(10)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 6, 7, 8, generator=torch.Generator().manual_seed(10))
    ours, found = _ours(model, x, "0", [0, 2])
    assert found[0].array.shape == (4, 5, 6)
    a, g = recomputed(model, x, model[0], class_score([0, 2]))
    assert_all_methods_equal(ours, "0", numpy_maps(a, g))


# --- targets ----------------------------------------------------------------------------------

NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]


def _one_line_error(run: Callable[[], Any], match: str) -> str:
    with pytest.raises(OptionError, match=match) as caught:
        run()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_class_name_is_resolved_from_the_names() -> None:
    model = _small().eval()
    x = torch.randn(1, 3, 10, 10, generator=torch.Generator().manual_seed(11))
    by_name, found = _ours(model, x, "conv2", "Tiger Shark", names=NAMES)
    assert (found[0].target.index, found[0].target.name) == (3, "tiger shark")
    with torch.no_grad():
        assert found[0].target.score == pytest.approx(float(model(x)[0, 3]), rel=1e-6)
    a, g = recomputed(model, x, model.conv2, class_score([3]))
    assert_all_methods_equal(by_name, "conv2", numpy_maps(a, g))


def test_an_out_of_range_class_and_an_unknown_name_are_one_line_each() -> None:
    model = _small().eval()
    x = torch.randn(1, 3, 10, 10)
    _one_line_error(
        lambda: _ours(model, x, "conv2", 5),
        r"^target class 5 is out of range: the output has 5 classes \(0\.\.4\)",
    )
    message = _one_line_error(
        lambda: _ours(model, x, "conv2", "tiger shrak", names=NAMES),
        r"^target 'tiger shrak' is not one of the model's 5 class names",
    )
    assert "tiger shark" in message  # the closest name is suggested


class SegmentationNet(nn.Module):
    """Returns ``{"out": (N, K, H, W), "aux": (N, K, H, W)}`` as torchvision's FCN does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 4, 1)
        self.aux = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.conv(x))
        return {"out": self.out(features), "aux": self.aux(features)}


def test_a_segmentation_class_over_a_box_explains_the_box_sum() -> None:
    torch.manual_seed(12)
    model = SegmentationNet().eval()
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(12))
    _one_line_error(
        lambda: _ours(model, x, "conv", 1),
        r"several outputs \('out' \(2, 4, 12, 10\), 'aux' \(2, 4, 12, 10\)\); choose the scores "
        r"to explain with --output KEY, e.g. --output out",
    )
    box = (2, 3, 7, 9)  # x0, y0, x1, y1 in output cells, the ends excluded

    def box_sum(out: dict[str, torch.Tensor]) -> torch.Tensor:
        return out["out"][:, 1, 3:9, 2:7].sum((1, 2))

    ours, found = _ours(model, x, "conv", Region(1, box=box), output="out")
    with torch.no_grad():
        direct = box_sum(model(x))
    assert [m.target.score for m in found if m.method == "gradcam"] == pytest.approx(
        direct.tolist(), rel=1e-6
    )
    assert {m.target.region for m in found} == {"box 2,3,7,9"}
    a, g = recomputed(model, x, model.conv, box_sum)
    assert_all_methods_equal(ours, "conv", numpy_maps(a, g))


class DetectorNet(nn.Module):
    """Returns one dict of boxes, scores and labels per image, as torchvision's detectors do."""

    def __init__(self, boxes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.boxes = boxes

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        level = self.conv(x).mean((1, 2, 3))
        return [
            {
                "boxes": level[n] * torch.ones(self.boxes, 4),
                "scores": level[n].expand(self.boxes),
                "labels": torch.zeros(self.boxes, dtype=torch.int64),
            }
            for n in range(x.shape[0])
        ]


@pytest.mark.parametrize("output", [None, "0.boxes", "0.scores"])
def test_a_detector_has_no_scalar_target_in_one_clear_line(output: str | None) -> None:
    # One box per image: its boxes (1, 4) would pass for the class scores of a batch of one.
    model = DetectorNet(boxes=1).eval()
    x = torch.randn(1, 3, 8, 8)
    _one_line_error(
        lambda: _ours(model, x, "conv", "top1", output=output),
        r"^the model returns a list of 1 dict \('boxes' \(1, 4\), 'scores' \(1\), 'labels' "
        r"\(1\)\), one per image as a detector's results: no score per input",
    )


def test_a_batch_of_labels_as_a_tensor_or_array_gives_one_target_per_input() -> None:
    model = _small().eval()
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(13))
    expected, _ = _ours(model, x, "conv2", [4, 0, 2])
    for labels in (torch.tensor([4, 0, 2]), np.array([4, 0, 2]), [4.0, torch.tensor(0), "2"]):
        found, maps = _ours(model, x, "conv2", labels)
        assert [m.target.index for m in maps if m.method == "gradcam"] == [4, 0, 2]
        for key, value in expected.items():
            assert_maps_equal(found[key], value, f"{type(labels).__name__} {key}")
    _one_line_error(
        lambda: _ours(model, x, "conv2", torch.tensor([1.5, 0.0, 2.0])),
        r"^target 1\.5 \(float\) is not a class; give a class index 0\.\.4, a class name or top1",
    )
