"""Checkpoints: read weights files safely, fit them to a module, and say where weights came from.

Part of the *model* stage (input → **model** → capture → ...). :mod:`featuremaps.models` resolves
specs and :mod:`featuremaps.zoo` builds featuremaps' own models; both read files and seed random
builds through this module, so neither imports the other's internals. Checkpoints load with
``weights_only=True``; one that needs full unpickling (which can run code) is refused unless the
caller trusts it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from featuremaps._errors import ModelError, UntrustedCheckpointError
from featuremaps.manifest import RANDOM_WEIGHTS, weights_mark

if TYPE_CHECKING:
    from featuremaps.inputs import Preprocessing

__all__ = [
    "PYTHON_OBJECT",
    "RANDOM_SEED",
    "WEIGHT_SUFFIXES",
    "LoadedModel",
    "OnnxNode",
    "fit_state_dict",
    "is_torchscript",
    "load_weights_file",
    "seeded_build",
    "torch_load",
]

# The source of a model given to the Python API as an object (not loaded from a spec).
PYTHON_OBJECT = "python object"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
RANDOM_SEED = 0  # random initialisation is seeded so "random weights" pictures are reproducible


@dataclass(frozen=True)
class OnnxNode:
    """One node of an ONNX model: its name in the file, its operator and its output names."""

    name: str
    op_type: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class LoadedModel:
    """A ready model and an honest account of where its weights came from.

    Attributes:
        model: the module, on the CPU, in eval mode.
        spec: the spec as given.
        source: ``"torchvision"``, ``"timm"``, ``"torchscript"``, ``"factory"``, ``"pickle"``,
            or :data:`PYTHON_OBJECT` for a module given as is.
        weights: the weights as asked for (``"DEFAULT"``, ``"none"``, a path, ...).
        weights_status: one sentence, e.g. ``"pretrained: ResNet18_Weights.IMAGENET1K_V1"``.
        random_weights: True when the model runs with randomly initialised weights.
        weights_enum: the torchvision weights enum member, when one applies (its transforms
            describe the preprocessing the weights expect, even when they could not be loaded).
        preprocessing: the preprocessing the model expects when it is not described by
            ``weights_enum`` (featuremaps' zoo models, timm's data config, a torchvision
            architecture's preset assumed for a weights file, or a note that random weights
            get none); preferred over ``weights_enum`` when set.
        onnx_nodes: for an ONNX file, each node's ONNX name, operator and outputs, keyed by the
            module path it was converted to (the records' ``module``).
    """

    model: nn.Module
    spec: str
    source: str
    weights: str
    weights_status: str
    random_weights: bool
    weights_enum: Any = None
    preprocessing: Preprocessing | None = None
    onnx_nodes: Mapping[str, OnnxNode] | None = None

    @property
    def stamp(self) -> str | None:
        """What pictures draw in a red box when the weights are random (None otherwise)."""
        return RANDOM_WEIGHTS if self.random_weights else None

    @property
    def mark(self) -> str | None:
        """The sentence every output carries when the weights are random (None otherwise):
        picture metadata, TIFF descriptions, OME-XML, arrays, console notes."""
        return weights_mark(self.weights_status) if self.random_weights else None

    def __repr__(self) -> str:
        count = sum(p.numel() for p in self.model.parameters())
        size = f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"
        random = ", RANDOM WEIGHTS" if self.random_weights else ""
        return (
            f"LoadedModel({self.spec!r}, {self.source}, {type(self.model).__name__} with {size} "
            f"parameters, weights {self.weights_status}{random})"
        )

    @property
    def cli_spec(self) -> str | None:
        """The spec the ``featuremaps`` commands can load this model from (named in their
        hints), or None for a model object given in Python."""
        return None if self.source == PYTHON_OBJECT else self.spec

    def _repr_html_(self) -> str:
        import html

        rows = {
            "spec": self.spec,
            "source": self.source,
            "module": type(self.model).__name__,
            "parameters": f"{sum(p.numel() for p in self.model.parameters()):,}",
            "weights": self.weights_status,
        }
        cells = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
        )
        warn = "<p><b>RANDOM WEIGHTS</b></p>" if self.random_weights else ""
        return f"{warn}<table>{cells}</table>"

    def input_preprocessing(self) -> Preprocessing:
        """The preprocessing this model's inputs get by default: the zoo model's own, else the
        weights' transforms, else the input size the architecture fixes (see
        :func:`~featuremaps.inputs.fixed_input_size`), else plain ToTensor."""
        from featuremaps.inputs import (
            Preprocessing,
            fixed_input_size,
            fixed_size_preprocessing,
            preprocessing_from_weights,
        )

        if self.preprocessing is not None:
            return self.preprocessing
        if self.weights_enum is not None:
            return preprocessing_from_weights(self.weights_enum)
        fixed = fixed_input_size(self.model)
        if fixed is not None:
            return fixed_size_preprocessing(*fixed)
        return Preprocessing()

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for manifests."""
        return {
            "spec": self.spec,
            "source": self.source,
            "weights": self.weights,
            "weights_status": self.weights_status,
            "random_weights": self.random_weights,
            **(
                {
                    "onnx_nodes": {
                        module: {"name": n.name, "op_type": n.op_type, "outputs": list(n.outputs)}
                        for module, n in self.onnx_nodes.items()
                    }
                }
                if self.onnx_nodes is not None
                else {}
            ),
        }


def seeded_build(build: Any, *args: Any, **kwargs: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = build(*args, **kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model builder returned {type(model).__name__}, not a torch.nn.Module")
    return model


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def torch_load(path: Path, trust: bool) -> Any:
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
    if is_torchscript(path):
        raise ModelError(
            f"'{path_text}' is a TorchScript model (architecture and weights), not a state_dict; "
            f"pass it as the model instead: --model {path_text}"
        )
    obj = torch_load(path, trust_checkpoint)
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


def fit_state_dict(
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
