"""Models: resolve a model spec into an ``nn.Module`` and say honestly which weights it carries.

Second stage of the flow (input → **model** → capture → render → io). A *model spec* is one of:

* ``shapes_cnn``: featuremaps' own small CNN, trained here on procedural shapes, with weights
  shipped in the package (:mod:`featuremaps.zoo`);
* a torchvision name (``resnet18``, ``vgg16``, ``vit_b_16``) with weights ``DEFAULT``, an enum
  member name (``IMAGENET1K_V1``), ``none`` or a local weights file (``.pth``, ``.safetensors``);
* ``timm:NAME`` (or a bare timm name) when timm is installed;
* a TorchScript file (``model.pt`` saved by ``torch.jit.save``);
* an exported program (``model.pt2`` saved by ``torch.export.save``; loaded after checks that no
  part of it can run code, see :mod:`featuremaps.exported`);
* user code: ``package.module:factory`` or ``path/to/file.py:factory`` (called with no arguments).

Pretrained weights come through torchvision's own weights API, which downloads them once into the
torch hub cache. When they cannot be had (no network), the model falls back to random weights
*visibly*: a :class:`RandomWeightsWarning`, ``random_weights=True`` in the result, which the CLI
stamps into the manifest and onto every picture. Checkpoints load with ``weights_only=True``; one
that needs full unpickling (which can run code) is refused unless the caller trusts it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import types
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featuremaps import _collector
from featuremaps._errors import ModelError, RandomWeightsWarning
from featuremaps.checkpoints import (
    RANDOM_SEED,
    WEIGHT_SUFFIXES,
    LoadedModel,
    fit_state_dict,
    is_torchscript,
    load_weights_file,
    seeded_build,
    torch_load,
)
from featuremaps.inputs import (
    Preprocessing,
    fixed_input_size,
    fixed_size_preprocessing,
    preprocessing_from_timm,
    preprocessing_from_weights,
)
from featuremaps.naming import suggest

__all__ = ["LoadedModel", "load_model", "load_weights_file", "no_download_arguments"]


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
        with _collector.paused():  # timm's import and the model: long-lived objects
            loaded = _load_timm(spec, spec[5:], weights, offline, trust_checkpoint)
    elif _is_factory(spec):
        loaded = _load_factory(spec)
    elif Path(spec).suffix.lower() == ".onnx":
        from featuremaps.onnx_models import load_onnx  # imported here: an optional extra

        loaded = load_onnx(spec)
    elif Path(spec).suffix.lower() == ".pt2":
        from featuremaps.exported import load_exported  # torch.export loads lazily

        loaded = load_exported(spec)
    elif Path(spec).suffix in WEIGHT_SUFFIXES or Path(spec).is_file():
        loaded = _load_model_file(spec, trust_checkpoint)
    else:
        from featuremaps import zoo  # imported here: torch.hub and the zoo's weights are slow

        if spec in zoo.NAMES:
            loaded = zoo.load(spec, weights, trust_checkpoint)
        else:
            with _collector.paused():  # torchvision's import and the model: long-lived objects
                loaded = _load_zoo(spec, weights, offline, trust_checkpoint)

    handled = ("torchvision", "timm", "featuremaps")  # these loaders already applied `weights`
    if weights not in (None, "DEFAULT", "default") and loaded.source not in handled:
        state = load_weights_file(weights, trust_checkpoint)
        fit_state_dict(loaded.model, state, weights, spec)
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


# -- torchvision -------------------------------------------------------------------------------


def _build_unweighted(name: str) -> nn.Module:
    """Build torchvision model ``name`` with seeded random weights and no download at all.

    Detection and segmentation builders take more weights than ``weights``: their
    ``weights_backbone`` defaults to ImageNet weights, which would be downloaded. Every such
    argument is set to None here, so a model asked for without weights (or built offline) never
    touches the network and really holds random weights.
    """
    import torchvision.models as tvm

    return seeded_build(tvm.get_model, name, weights=None, **no_download_arguments(name))


def no_download_arguments(name: str) -> dict[str, None]:
    """The arguments of torchvision builder ``name`` that name weights to download, set to None."""
    import inspect

    import torchvision.models as tvm

    parameters = inspect.signature(tvm.get_model_builder(name)).parameters
    return {p: None for p in parameters if p.startswith("weights") and p != "weights"}


def _architecture_preprocessing(name: str, path: str | None) -> Preprocessing | None:
    """The preprocessing of ``name``'s default torchvision weights, for weights from a file.

    A fine-tuned file keeps the architecture's input convention far more often than not, so the
    preset applies, and its source says it was assumed (``--size``/``--normalize`` change it).
    """
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None
    preset = preprocessing_from_weights(enum)
    if path is None:
        return preset
    return replace(
        preset,
        source=f"transforms of {enum}, the architecture's preset, assumed for the weights file "
        f"{Path(path).name}",
    )


# torchvision architectures that take one input size without saying it in an attribute: the
# size is the crop of their weights' transforms, and why no other size works.
_FIXED_SIZE_ARCHITECTURES = {"maxvit_t": "its attention windows fit no other size"}


def _random_weights_preprocessing(name: str, model: nn.Module, note: str) -> Preprocessing:
    """The preprocessing of torchvision model ``name`` with random weights: none, except the
    input size when the architecture fixes it (an ``image_size`` attribute, or the crop size of
    its weights' transforms for the architectures that take no other); ``note`` names the
    preset pretrained weights would use."""
    import torchvision.models as tvm

    fixed = fixed_input_size(model)
    if fixed is None and name in _FIXED_SIZE_ARCHITECTURES:
        enum = tvm.get_model_weights(name).DEFAULT
        crop = preprocessing_from_weights(enum).final_size()
        if crop is not None:
            why = _FIXED_SIZE_ARCHITECTURES[name]
            fixed = crop, f"the crop size of {enum}'s transforms; {why}"
    if fixed is None:
        return Preprocessing(source=f"none for random weights{note}")
    return fixed_size_preprocessing(*fixed, f"; no normalisation for random weights{note}")


def _load_zoo(
    name: str, weights: str | None, offline: bool, trust_checkpoint: bool = False
) -> LoadedModel:
    import torchvision.models as tvm

    known = tvm.list_models()
    if name not in known:
        if _timm_has(name):
            return _load_timm(name, name, weights, offline, trust_checkpoint)
        hint = suggest(name, known, 3, 0.6)
        raise ModelError(
            f"unknown model '{name}': not a torchvision model name, a file, or module:factory"
            f"{hint or '.'} torchvision has {len(known)} models, e.g. resnet18, vgg16, vit_b_16"
        )
    asked = weights or "DEFAULT"
    if asked.lower() in ("none", "random"):
        model = _build_unweighted(name)
        preset = _architecture_preprocessing(name, None)
        note = f" (pretrained weights would use: {', '.join(preset.steps())})" if preset else ""
        return LoadedModel(
            model, name, "torchvision", asked, "random (asked for: --weights none)", True,
            preprocessing=_random_weights_preprocessing(name, model, note),
        )  # fmt: skip
    if Path(asked).suffix in WEIGHT_SUFFIXES or Path(asked).exists():
        model = _build_unweighted(name)
        fit_state_dict(model, load_weights_file(asked, trust_checkpoint), asked, name)
        return LoadedModel(
            model, name, "torchvision", asked, f"loaded from {asked}", False,
            preprocessing=_architecture_preprocessing(name, asked),
        )  # fmt: skip

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
    model = _build_unweighted(name)
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


def _timm_preprocessing(model: nn.Module, name: str) -> Preprocessing:
    """timm's own data config for the model (input size, interpolation, crop, mean and std)."""
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)  # type: ignore[attr-defined,no-untyped-call]
    return preprocessing_from_timm(config, name)


def _load_timm(
    spec: str, name: str, weights: str | None, offline: bool, trust_checkpoint: bool = False
) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise ModelError(
            f"model spec '{spec}' needs timm, which is not installed; "
            "pip install 'featuremaps[timm]'"
        ) from None
    if not timm.list_models(name):
        raise ModelError(f"unknown timm model '{name}'{suggest(name, timm.list_models(), 3, 0.6)}")
    asked = weights or "DEFAULT"
    if asked.lower() in ("none", "random") or Path(asked).suffix in WEIGHT_SUFFIXES:
        model = seeded_build(timm.create_model, name, pretrained=False)
        pre = _timm_preprocessing(model, name)
        if asked.lower() in ("none", "random"):
            return LoadedModel(
                model, spec, "timm", asked, "random (asked for: none)", True, preprocessing=pre
            )
        fit_state_dict(model, load_weights_file(asked, trust_checkpoint), asked, spec)
        return LoadedModel(
            model, spec, "timm", asked, f"loaded from {asked}", False, preprocessing=pre
        )
    if not offline:
        try:
            model = timm.create_model(name, pretrained=True)
        except (OSError, RuntimeError) as exc:  # hub and connection errors are OSErrors
            reason = f"download failed: {exc}"
        else:
            return LoadedModel(
                model, spec, "timm", asked, f"pretrained: timm {name}", False,
                preprocessing=_timm_preprocessing(model, name),
            )  # fmt: skip
    else:
        reason = "offline mode"
    warnings.warn(
        RandomWeightsWarning(
            f"pretrained weights for timm model {name} could not be had ({reason}); running "
            f"with RANDOM weights (seed {RANDOM_SEED})"
        ),
        stacklevel=3,
    )
    model = seeded_build(timm.create_model, name, pretrained=False)
    return LoadedModel(
        model, spec, "timm", asked, f"random (offline fallback: {reason})", True,
        preprocessing=_timm_preprocessing(model, name),
    )  # fmt: skip


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
        except SystemExit as exc:
            del sys.modules[module_name]
            raise _exited(f"importing '{target}'", exc) from None
        except Exception as exc:
            del sys.modules[module_name]
            raise ModelError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except SystemExit as exc:
            raise _exited(f"importing '{target}'", exc) from None
        except ImportError as exc:
            raise ModelError(
                f"cannot import module '{target}' from spec '{spec}': {exc}; check that it is "
                "installed or on PYTHONPATH, or give a file path like models/net.py:build"
            ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = _defined_callables(module)
        hint = suggest(attr, names)
        if not hint:
            listed = ", ".join(f"'{n}'" for n in names[:10])
            hint = f"; callables defined there: {listed}" if names else "; it defines no callables"
        raise ModelError(f"'{target}' has no callable '{attr}'{hint}")
    try:
        model = seeded_build(factory)
    except ModelError:
        raise
    except SystemExit as exc:
        raise _exited(f"calling {spec}()", exc) from None
    except Exception as exc:
        raise ModelError(
            f"calling {spec}() failed: {type(exc).__name__}: {exc}; the factory must build the "
            "model with no arguments"
        ) from exc
    return LoadedModel(model, spec, "factory", "as built", "as built by the factory", False)


def _defined_callables(module: types.ModuleType) -> list[str]:
    """The public functions and classes ``module`` defines itself (not those it imports)."""
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and callable(obj)
        and getattr(obj, "__module__", None) == module.__name__
    )


def _exited(what: str, exc: SystemExit) -> ModelError:
    """A factory or its module asked the program to exit; that is a failure to build a model."""
    return ModelError(
        f"{what} tried to end the program (SystemExit with code {exc.code!r}) instead of "
        "returning a model; the spec must name a function that builds and returns an "
        "nn.Module, e.g. models/net.py:build"
    )


# -- files -------------------------------------------------------------------------------------


def _load_model_file(spec: str, trust: bool) -> LoadedModel:
    path = Path(spec)
    if not path.is_file():
        raise ModelError(
            f"model file '{spec}' does not exist; expected a TorchScript file, a torchvision name "
            "or module:factory"
        )
    if is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
                model = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except (RuntimeError, OSError) as exc:
            raise ModelError(f"cannot load TorchScript file '{spec}': {exc}") from None
        return LoadedModel(model, spec, "torchscript", "as saved", "as saved in the file", False)
    obj = torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, spec, "pickle", "as saved", "as saved in the (trusted) file", False)
    raise ModelError(
        f"'{spec}' holds weights but no architecture; pass the architecture as the model and the "
        f"file as weights, e.g. --model resnet18 --weights {spec}"
    )
