"""Models: resolve a model spec into an ``nn.Module`` and say honestly which weights it carries.

Second stage of the flow (input → **model** → capture → render → io). A *model spec* is one of:

* ``shapes_cnn``: featuremaps' own small CNN, trained here on procedural shapes, with weights
  shipped in the package (:mod:`featuremaps.zoo`);
* a torchvision name (``resnet18``, ``vgg16``, ``vit_b_16``) with weights ``DEFAULT``, an enum
  member name (``IMAGENET1K_V1``), ``none`` or a local weights file (``.pth``, ``.safetensors``);
* ``timm:NAME`` (or a bare timm name) when timm is installed;
* a TorchScript file (``model.pt`` saved by ``torch.jit.save``);
* user code: ``package.module:factory`` or ``path/to/file.py:factory`` (called with no arguments).

Pretrained weights come through torchvision's own weights API, which downloads them once into the
torch hub cache. When they cannot be had (no network), the model falls back to random weights
*visibly*: a :class:`RandomWeightsWarning`, ``random_weights=True`` in the result, which the CLI
stamps into the manifest and onto every picture. Checkpoints load with ``weights_only=True``; one
that needs full unpickling (which can run code) is refused unless the caller trusts it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from featuremaps._errors import ModelError, RandomWeightsWarning, UntrustedCheckpointError

if TYPE_CHECKING:
    from featuremaps.inputs import Preprocessing

__all__ = ["LoadedModel", "load_model", "load_weights_file"]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
RANDOM_SEED = 0  # random initialisation is seeded so "random weights" pictures are reproducible


@dataclass(frozen=True)
class LoadedModel:
    """A ready model and an honest account of where its weights came from.

    Attributes:
        model: the module, on the CPU, in eval mode.
        spec: the spec as given.
        source: ``"torchvision"``, ``"timm"``, ``"torchscript"``, ``"factory"`` or ``"pickle"``.
        weights: the weights as asked for (``"DEFAULT"``, ``"none"``, a path, ...).
        weights_status: one sentence, e.g. ``"pretrained: ResNet18_Weights.IMAGENET1K_V1"``.
        random_weights: True when the model runs with randomly initialised weights.
        weights_enum: the torchvision weights enum member, when one applies (its transforms
            describe the preprocessing the weights expect, even when they could not be loaded).
        preprocessing: the preprocessing the model expects when it is not described by
            ``weights_enum`` (featuremaps' zoo models); preferred over ``weights_enum`` when set.
    """

    model: nn.Module
    spec: str
    source: str
    weights: str
    weights_status: str
    random_weights: bool
    weights_enum: Any = None
    preprocessing: Preprocessing | None = None

    def input_preprocessing(self) -> Preprocessing:
        """The preprocessing this model's inputs get by default: the zoo model's own, else the
        weights' transforms, else plain ToTensor."""
        from featuremaps.inputs import Preprocessing, preprocessing_from_weights

        if self.preprocessing is not None:
            return self.preprocessing
        if self.weights_enum is not None:
            return preprocessing_from_weights(self.weights_enum)
        return Preprocessing()

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for manifests."""
        return {
            "spec": self.spec,
            "source": self.source,
            "weights": self.weights,
            "weights_status": self.weights_status,
            "random_weights": self.random_weights,
        }


def load_model(
    spec: str = "resnet18",
    weights: str | None = None,
    *,
    trust_checkpoint: bool = False,
    offline: bool | None = None,
) -> LoadedModel:
    """Resolve ``spec`` (see the module docstring) into a model in eval mode on the CPU.

    Args:
        spec: torchvision/timm name, TorchScript file, or ``module:factory`` / ``file.py:factory``.
        weights: for zoo names ``"DEFAULT"`` (the default), an enum member name, ``"none"`` or a
            weights file; for other specs ``None`` (as built) or a weights file.
        trust_checkpoint: allow files that need full unpickling. Only for files you trust:
            unpickling can execute arbitrary code.
        offline: do not try to download; use the torch hub cache or fall back to random weights.
            ``None`` reads the ``FEATUREMAPS_OFFLINE`` environment variable.

    Raises:
        ModelError: unknown name, unreadable file, weights for another architecture, a factory
            that fails or returns something that is not an ``nn.Module``.
        UntrustedCheckpointError: a checkpoint needs unpickling and ``trust_checkpoint`` is off.
    """
    if offline is None:
        offline = os.environ.get("FEATUREMAPS_OFFLINE", "") not in ("", "0")
    spec = spec.strip()
    if spec.startswith("timm:"):
        loaded = _load_timm(spec, spec[5:], weights, offline)
    elif _is_factory(spec):
        loaded = _load_factory(spec)
    elif Path(spec).suffix in WEIGHT_SUFFIXES or Path(spec).is_file():
        loaded = _load_model_file(spec, trust_checkpoint)
    else:
        from featuremaps import zoo  # imported here: the zoo builds on this module

        if spec in zoo.NAMES:
            loaded = zoo.load(spec, weights, trust_checkpoint)
        else:
            loaded = _load_zoo(spec, weights, offline)

    handled = ("torchvision", "timm", "featuremaps")  # these loaders already applied `weights`
    if weights not in (None, "DEFAULT", "default") and loaded.source not in handled:
        state = load_weights_file(weights, trust_checkpoint)
        _fit_state_dict(loaded.model, state, weights, spec)
        loaded = LoadedModel(
            loaded.model, spec, loaded.source, weights, f"loaded from {weights}", False
        )
    loaded.model.eval()
    return loaded


def _is_factory(spec: str) -> bool:
    if ":" not in spec or re.match(r"^[A-Za-z]:[\\/]", spec):  # a Windows drive is no factory
        return False
    target, attr = spec.rsplit(":", 1)
    return attr.isidentifier() and (target.endswith(".py") or _is_dotted(target))


def _is_dotted(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def _seeded_build(build: Any, *args: Any, **kwargs: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = build(*args, **kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model builder returned {type(model).__name__}, not a torch.nn.Module")
    return model


# -- torchvision -------------------------------------------------------------------------------


def _load_zoo(name: str, weights: str | None, offline: bool) -> LoadedModel:
    import torchvision.models as tvm

    known = tvm.list_models()
    if name not in known:
        if _timm_has(name):
            return _load_timm(name, name, weights, offline)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ModelError(
            f"unknown model '{name}': not a torchvision model name, a file, or module:factory; "
            f"{hint}torchvision has {len(known)} models, e.g. resnet18, vgg16, vit_b_16"
        )
    asked = weights or "DEFAULT"
    if asked.lower() in ("none", "random"):
        model = _seeded_build(tvm.get_model, name, weights=None)
        return LoadedModel(
            model, name, "torchvision", asked, "random (asked for: --weights none)", True
        )
    if Path(asked).suffix in WEIGHT_SUFFIXES or Path(asked).exists():
        model = _seeded_build(tvm.get_model, name, weights=None)
        _fit_state_dict(model, load_weights_file(asked, False), asked, name)
        return LoadedModel(model, name, "torchvision", asked, f"loaded from {asked}", False)

    enum = _weights_enum(name, asked)
    cached = _hub_cache_path(enum.url)
    if offline and not cached.is_file():
        reason = "offline mode and no cached copy"
    else:
        try:
            model = tvm.get_model(name, weights=enum)
        except OSError as exc:  # URLError, DNS and socket failures all derive from OSError
            reason = f"download failed: {exc}"
        else:
            return LoadedModel(
                model, name, "torchvision", asked, f"pretrained: {enum}", False, enum
            )
    warnings.warn(
        RandomWeightsWarning(
            f"pretrained weights {enum} for {name} could not be had ({reason}); running with "
            f"RANDOM weights (seed {RANDOM_SEED}). With a network they are downloaded to "
            f"{cached.parent}; or pass --weights PATH."
        ),
        stacklevel=3,
    )
    model = _seeded_build(tvm.get_model, name, weights=None)
    status = f"random (offline fallback: {enum} could not be had: {reason})"
    return LoadedModel(model, name, "torchvision", asked, status, True, enum)


def _weights_enum(name: str, asked: str) -> Any:
    import torchvision.models as tvm

    try:
        enum_cls = tvm.get_model_weights(name)
    except (ValueError, KeyError):
        raise ModelError(
            f"torchvision has no pretrained weights for '{name}'; use --weights none or a file"
        ) from None
    member = asked.split(".")[-1].upper() if asked.lower() != "default" else "DEFAULT"
    try:
        return enum_cls[member]
    except KeyError:
        names = ", ".join(dict.fromkeys(["DEFAULT", *enum_cls.__members__]))
        raise ModelError(
            f"'{asked}' is not a weights name for {name}; expected one of {names}, none, "
            "or a weights file path"
        ) from None


def _hub_cache_path(url: str) -> Path:
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


# -- timm (optional) ---------------------------------------------------------------------------


def _timm_has(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.list_models(name))


def _load_timm(spec: str, name: str, weights: str | None, offline: bool) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise ModelError(
            f"model spec '{spec}' needs timm, which is not installed; "
            "pip install 'featuremaps[timm]'"
        ) from None
    if not timm.list_models(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"unknown timm model '{name}'{hint}")
    asked = weights or "DEFAULT"
    if asked.lower() in ("none", "random") or Path(asked).suffix in WEIGHT_SUFFIXES:
        model = _seeded_build(timm.create_model, name, pretrained=False)
        if asked.lower() in ("none", "random"):
            return LoadedModel(model, spec, "timm", asked, "random (asked for: none)", True)
        _fit_state_dict(model, load_weights_file(asked, False), asked, spec)
        return LoadedModel(model, spec, "timm", asked, f"loaded from {asked}", False)
    if not offline:
        try:
            model = timm.create_model(name, pretrained=True)
        except (OSError, RuntimeError) as exc:  # hub and connection errors are OSErrors
            reason = f"download failed: {exc}"
        else:
            return LoadedModel(model, spec, "timm", asked, f"pretrained: timm {name}", False)
    else:
        reason = "offline mode"
    warnings.warn(
        RandomWeightsWarning(
            f"pretrained weights for timm model {name} could not be had ({reason}); running "
            f"with RANDOM weights (seed {RANDOM_SEED})"
        ),
        stacklevel=3,
    )
    model = _seeded_build(timm.create_model, name, pretrained=False)
    return LoadedModel(model, spec, "timm", asked, f"random (offline fallback: {reason})", True)


# -- user code ---------------------------------------------------------------------------------


def _load_factory(spec: str) -> LoadedModel:
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"model file '{target}' does not exist (from spec '{spec}')")
        module_name = f"_featuremaps_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import '{target}' as Python code (from spec '{spec}')")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ModelError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(
                f"cannot import module '{target}' from spec '{spec}': {exc}; check that it is "
                "installed or on PYTHONPATH, or give a file path like models/net.py:build"
            ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"'{target}' has no callable '{attr}'{hint}")
    try:
        model = _seeded_build(factory)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"calling {spec}() failed: {type(exc).__name__}: {exc}; the factory must build the "
            "model with no arguments"
        ) from exc
    return LoadedModel(model, spec, "factory", "as built", "as built by the factory", False)


# -- files -------------------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def _load_model_file(spec: str, trust: bool) -> LoadedModel:
    path = Path(spec)
    if not path.is_file():
        raise ModelError(
            f"model file '{spec}' does not exist; expected a TorchScript file, a torchvision name "
            "or module:factory"
        )
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
                model = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except (RuntimeError, OSError) as exc:
            raise ModelError(f"cannot load TorchScript file '{spec}': {exc}") from None
        return LoadedModel(model, spec, "torchscript", "as saved", "as saved in the file", False)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, spec, "pickle", "as saved", "as saved in the (trusted) file", False)
    raise ModelError(
        f"'{spec}' holds weights but no architecture; pass the architecture as the model and the "
        f"file as weights, e.g. --model resnet18 --weights {spec}"
    )


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the refused global ("Unsupported global: GLOBAL pkg.Class"); any other
        # unpickling failure means the bytes are not a valid checkpoint at all.
        if "global" not in str(exc).lower():
            raise ModelError(
                f"cannot read '{path}' as a PyTorch file: it is corrupt or not a checkpoint"
            ) from None
        if not trust:
            raise UntrustedCheckpointError(
                f"'{path}' needs full unpickling, which can run arbitrary code, so it was not "
                "loaded; if you trust its source pass --trust-checkpoint (trust_checkpoint=True), "
                "or re-save it as a state_dict or .safetensors"
            ) from None
    except Exception as exc:  # reported as a ModelError below, not swallowed
        # On arbitrary bytes the weights-only unpickler fails in many ways (IndexError,
        # KeyError, struct.error, RuntimeError from the zip reader...): all mean "not a
        # readable checkpoint", and none of them ran code.
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(
            f"cannot read '{path}' as a PyTorch file ({type(exc).__name__}: {first}); "
            "is it complete and really a .pt?"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"unpickling trusted file '{path}' failed: {exc}") from exc


def load_weights_file(path_text: str, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    Common wrappers are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}``, a saved module,
    and the ``module.`` prefix that ``DataParallel`` adds.
    """
    path = Path(path_text)
    if not path.is_file():
        raise ModelError(f"weights file '{path_text}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read safetensors file '{path_text}': {exc}") from None
    if _is_torchscript(path):
        raise ModelError(
            f"'{path_text}' is a TorchScript model (architecture and weights), not a state_dict; "
            f"pass it as the model instead: --model {path_text}"
        )
    obj = _torch_load(path, trust_checkpoint)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"'{path_text}' does not hold a state_dict (a mapping of names to tensors); "
            "save one with torch.save(model.state_dict(), path)"
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _fit_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str, label: str
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} tensors have the wrong shape (e.g. '{k}': file "
                f"{tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} model tensors are missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} file tensors have no place (e.g. '{unexpected[0]}')")
        raise ModelError(
            f"weights file '{path}' does not fit {label}: {'; '.join(parts)}; it was probably "
            "saved from another architecture or with other settings (e.g. num_classes)"
        )
    model.load_state_dict(state, strict=True)
