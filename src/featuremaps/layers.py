"""Layers: discover the modules of a model and select some of them by name or type.

Between model and capture in the flow. :func:`list_layers` *discovers* (optionally with a dry run
that records every call's output shape); :func:`select_modules` *acts* on patterns, and when a
pattern matches nothing its error names the closest layers and points back to the discovery
command, so the user never has to guess a name twice.

Pattern rules (``--layers`` on the command line, ``layers=`` in the API):

* an exact module path (``layer1.0.conv1``); an exact path of a container selects the container;
* a glob (``layer1.*``, ``*.relu``; ``*`` also crosses dots), which selects leaf modules unless
  containers are asked for;
* ``re:REGEX``, searched in the path (``re:conv\\d$``);
* any of the above followed by ``#k`` keeps only the k-th call (``layer1.0.relu#2``).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featuremaps._errors import LayerError
from featuremaps.capture import record_name, run_hooked

__all__ = ["LayerInfo", "as_patterns", "keep_record", "list_layers", "select_modules"]


@dataclass(frozen=True)
class LayerInfo:
    """One module call found by :func:`list_layers`.

    ``shape`` is ``None`` when no dry run was made or the module never ran (``ran`` False);
    a tuple/dict output has one entry per tensor, named like records (``lstm.0``).
    """

    name: str
    module: str
    call: int
    module_type: str
    shape: tuple[int, ...] | None
    ran: bool
    is_container: bool


def as_patterns(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Normalise a pattern argument: ``None``, one string (commas split it) or a sequence."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = tuple(p.strip() for item in items for p in item.split(",") if p.strip())
    return out or None


def _match(pattern: str, text: str) -> bool:
    if pattern.startswith("re:"):
        try:
            return re.search(pattern[3:], text) is not None
        except re.error as exc:
            raise LayerError(
                f"layer pattern '{pattern}' is not a valid regular expression ({exc}); "
                "write it as re:REGEX in Python syntax, e.g. re:conv\\d$"
            ) from None
    return text == pattern or fnmatch.fnmatchcase(text, pattern)


def _split_call(pattern: str) -> tuple[str, bool]:
    """Return the module part of a pattern and whether it picks one call (``name#k``)."""
    if not pattern.startswith("re:") and re.search(r"#\d+$", pattern):
        return pattern.rsplit("#", 1)[0], True
    return pattern, False


def _suggest(pattern: str, names: Sequence[str]) -> str:
    stem = re.sub(r"[*?\[\]]", "", pattern.removeprefix("re:"))
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.5)
    if not close:
        return ""
    return "; did you mean " + ", ".join(f"'{c}'" for c in close) + "?"


def _type_names(module: nn.Module) -> set[str]:
    cls_names = set()
    for cls in type(module).__mro__:
        cls_names.add(cls.__name__)
        cls_names.add(f"{cls.__module__}.{cls.__qualname__}")
    original = getattr(module, "original_name", None)  # TorchScript keeps the Python class name
    if isinstance(original, str):
        cls_names.add(original)
    return cls_names


def type_name(module: nn.Module) -> str:
    """The class name users know a module by (TorchScript modules keep their original name)."""
    original = getattr(module, "original_name", None)
    return original if isinstance(original, str) else type(module).__name__


def select_modules(
    model: nn.Module,
    patterns: tuple[str, ...] | None,
    types: tuple[str, ...] | None,
    containers: bool,
    label: str,
) -> dict[str, nn.Module]:
    """Return ``{path: module}`` of the modules to hook, in registration order.

    Raises:
        LayerError: a pattern matches no module, or no selected module has one of ``types``.
    """
    named = [(p, m) for p, m in model.named_modules() if p]
    if not named:  # a model without submodules is its own only layer
        named = [("", model)]
    leaves = {p for p, m in named if next(iter(m.children()), None) is None}
    names = [p for p, _ in named]
    hint = f" Run 'featuremaps layers {label}' to list the names."

    chosen: set[str] = set()
    if patterns is None:
        chosen = set(names) if containers else set(leaves)
    else:
        for pattern in patterns:
            base, _ = _split_call(pattern)
            hits = {
                p for p in names if _match(base, p) and (containers or p in leaves or p == base)
            }
            if not hits:
                suggestion = _suggest(base, names) or "."
                raise LayerError(f"layer '{pattern}' not found in {label}{suggestion}{hint}")
            chosen |= hits

    if types is not None:
        present = sorted({type(m).__name__ for p, m in named if p in chosen})
        chosen = {p for p, m in named if p in chosen and _type_names(m) & set(types)}
        if not chosen:
            raise LayerError(
                f"no selected layer of {label} has type {', '.join(types)}; types there: "
                f"{', '.join(present)}.{hint}"
            )
    return {p: m for p, m in named if p in chosen}


def keep_record(name: str, module: str, patterns: tuple[str, ...] | None) -> bool:
    """Whether a record survives the patterns (``name#k`` patterns keep only that call)."""
    if patterns is None:
        return True
    for pattern in patterns:
        base, one_call = _split_call(pattern)
        if one_call:
            if _match(pattern, name) or _match(pattern + ".*", name):
                return True
        elif _match(base, module):
            return True
    return False


def list_layers(
    model: nn.Module,
    inputs: Any = None,
    *,
    containers: bool = False,
) -> list[LayerInfo]:
    """List the model's layers; with ``inputs``, one entry per call with its output shape.

    Without inputs every module is listed once with ``shape=None``. With inputs the model runs
    once in eval mode under ``no_grad`` (nothing is copied) and modules that never ran are
    listed after the ones that did, with ``ran=False``.
    """
    modules = select_modules(model, None, None, True, type(model).__name__)
    leaves = {p for p, m in modules.items() if next(iter(m.children()), None) is None}
    if not containers:
        modules = {p: m for p, m in modules.items() if p in leaves}
    if inputs is None:
        return [
            LayerInfo(p, p, 1, type_name(m), None, False, p not in leaves)
            for p, m in modules.items()
        ]

    found: list[LayerInfo] = []

    def sink(path: str, module: nn.Module, call: int, key: str | None, t: torch.Tensor) -> None:
        found.append(
            LayerInfo(
                record_name(path, call, key),
                path,
                call,
                type_name(module),
                tuple(t.shape),
                True,
                path not in leaves,
            )
        )

    _, calls = run_hooked(model, inputs, _hookable(modules), sink)
    found.extend(
        LayerInfo(p, p, 0, type_name(m), None, False, p not in leaves)
        for p, m in modules.items()
        if calls.get(p, 0) == 0
    )
    return found


def _hookable(modules: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    return {p: m for p, m in modules.items() if not isinstance(m, torch.jit.ScriptModule)}
