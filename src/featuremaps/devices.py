"""Where a model runs and in which precision: ``--device`` and ``--dtype``, decided once.

Part of the "model" stage (inputs → **model** → capture → ...). :func:`resolve_placement` turns
what the user asked for (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``float32``,
``bfloat16``, ``float16``) into a :class:`Placement`, or one error line that says what is missing
and what to do. A placement moves the model and its inputs (:meth:`Placement.place`) and runs
the forward pass under ``torch.autocast`` when a lower precision was asked for
(:meth:`Placement.autocast`); every picture's legend and the manifest say so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featuremaps._errors import OptionError

__all__ = ["DEVICES", "DTYPES", "Placement", "resolve_device", "resolve_placement"]

#: What ``--device`` takes (``cuda:N`` for the N-th CUDA device).
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: What ``--dtype`` takes: float32 runs as is, the others under autocast.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_CUDA = re.compile(r"cuda(?::(\d+))?")


def _no_cuda(asked: str) -> OptionError:
    build = (
        f"this torch {torch.__version__} was built with CUDA {torch.version.cuda} but finds no "
        "CUDA device (driver, container or CUDA_VISIBLE_DEVICES)"
        if torch.version.cuda
        else f"this torch {torch.__version__} was built without CUDA"
    )
    return OptionError(
        f"--device {asked} asked for a CUDA GPU, but {build}; use --device cpu, or --device auto "
        "to take a GPU when there is one"
    )


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` for ``spec``: ``auto`` takes CUDA, then MPS, then the CPU.

    Raises:
        OptionError: the device does not exist here (with what to use instead).
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise OptionError(
                "--device mps asked for Apple's Metal GPU, which this machine or torch build "
                "does not have; use --device cpu, or --device auto"
            )
        return torch.device("mps")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise OptionError(
            f"--device '{spec}' is not understood; expected one of {', '.join(DEVICES)} "
            "(for example cuda:1)"
        )
    if not torch.cuda.is_available():
        raise _no_cuda(text)
    count = torch.cuda.device_count()
    index = int(match[1]) if match[1] is not None else torch.cuda.current_device()
    if index >= count:
        raise OptionError(
            f"--device {text} asked for CUDA device {index}, but there "
            f"{'is' if count == 1 else 'are'} {count} (cuda:0 to cuda:{count - 1}); pick one of "
            "those"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@dataclass(frozen=True)
class Placement:
    """A device and a precision for one run.

    ``dtype`` is the name of the precision (``float32`` runs the model as it is; ``bfloat16``
    and ``float16`` run it under ``torch.autocast``, so each operation picks its own dtype and
    the records say which one they got). ``requested`` is what the user asked for.
    """

    device: torch.device
    dtype: str = "float32"
    requested: str = "auto"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs in, or ``None`` for a plain float32 run."""
        return None if self.dtype == "float32" else DTYPES[self.dtype]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The context the forward pass runs in: autocast for bfloat16/float16, else nothing."""
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (in place, as ``nn.Module.to`` does); return it."""
        if isinstance(model, torch.jit.ScriptModule) or _on(model, self.device):
            return model
        return model.to(self.device)

    def inputs(self, value: Any) -> Any:
        """``value`` (a tensor, a tuple or a dict of them) on the device; a CPU batch that was
        pinned is copied without blocking the host."""
        if isinstance(value, torch.Tensor):
            blocking = not (value.is_pinned() and self.device.type == "cuda")
            return value.to(self.device, non_blocking=not blocking)
        if isinstance(value, tuple):
            return tuple(self.inputs(v) for v in value)
        if isinstance(value, dict):
            return {k: self.inputs(v) for k, v in value.items()}
        return value

    @property
    def label(self) -> str | None:
        """What the legends print after the layer's shape: ``None`` for a float32 run."""
        return None if self.dtype == "float32" else f"{self.dtype} autocast"

    def describe(self) -> dict[str, Any]:
        """The manifest's ``compute`` entry."""
        out: dict[str, Any] = {
            "device": str(self.device),
            "requested": self.requested,
            "dtype": self.dtype,
            "autocast": self.autocast_dtype is not None,
        }
        if self.device.type == "cuda":
            out["device_name"] = torch.cuda.get_device_name(self.device)
        return out

    def __repr__(self) -> str:
        return f"Placement({self.device}, {self.dtype}{' autocast' if self.label else ''})"


def _on(model: nn.Module, device: torch.device) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(_same(t.device, device) for t in tensors)


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def resolve_placement(
    model: nn.Module, device: str | torch.device | None = None, dtype: str | None = None
) -> Placement:
    """The placement for a run: ``device=None`` keeps the model where it is (an API caller's
    model is not moved unless asked), ``"auto"`` takes a GPU when there is one; ``dtype`` is
    ``float32`` (default), ``bfloat16`` or ``float16``.

    Raises:
        OptionError: an unknown or absent device, an unknown dtype, or float16 on the CPU with
            a torch whose CPU autocast lacks it.
    """
    name = (dtype or "float32").strip().lower()
    if name not in DTYPES:
        raise OptionError(
            f"--dtype '{dtype}' is not understood; expected one of {', '.join(DTYPES)}"
        )
    if device is None:
        where, asked = model_device(model), "the model's own"
    else:
        where, asked = resolve_device(device), str(device)
    if name != "float32" and not torch.amp.autocast_mode.is_autocast_available(where.type):
        raise OptionError(
            f"--dtype {name} runs under autocast, which torch {torch.__version__} does not offer "
            f"on {where.type}; use --dtype float32 or another --device"
        )
    return Placement(where, name, asked)
