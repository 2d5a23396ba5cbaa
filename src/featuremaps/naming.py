"""Names: how records are named, how modules are called, and close-name suggestions.

Shared by every stage that names things to a user (selection, capture, masks, options), so one
rule names a record and one helper suggests the closest valid names when a name is wrong.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: render code uses these helpers without torch
    from torch import nn

__all__ = ["close_names", "layers_hint", "record_name", "suggest", "type_name", "type_names"]


def record_name(module: str, call: int, key: str | None = None) -> str:
    """Return the record name for the ``call``-th call (1-based) of ``module``, output ``key``."""
    module = module or "output"  # the model itself (a bare layer, or a TorchScript model)
    name = module if call == 1 else f"{module}#{call}"
    return name if key is None else f"{name}.{key}"


def type_name(module: nn.Module) -> str:
    """The class name users know a module by (TorchScript modules keep their original name)."""
    original = getattr(module, "original_name", None)
    return original if isinstance(original, str) else type(module).__name__


def type_names(module: nn.Module) -> set[str]:
    """Every name a ``--type`` filter may use for ``module``: its classes, bare and qualified."""
    names = set()
    for cls in type(module).__mro__:
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    original = getattr(module, "original_name", None)  # TorchScript keeps the Python class name
    if isinstance(original, str):
        names.add(original)
    return names


def close_names(value: str, names: Sequence[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The names closest to ``value`` (glob and ``re:`` syntax ignored), best first."""
    stem = re.sub(r"[*?\[\]]", "", str(value).removeprefix("re:"))
    return difflib.get_close_matches(stem, list(names), n=n, cutoff=cutoff)


def suggest(value: str, names: Sequence[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the names closest to ``value``, or ``""``."""
    close = close_names(value, names, n, cutoff)
    if not close:
        return ""
    return "; did you mean " + ", ".join(f"'{c}'" for c in close) + "?"


def layers_hint(spec: str | None) -> str:
    """How to list a model's layers: ``'featuremaps layers SPEC'`` for a model the commands
    can load from ``spec``, ``fm.list_layers(model)`` for a model object (``spec`` None)."""
    return f"'featuremaps layers {spec}'" if spec else "fm.list_layers(model)"
