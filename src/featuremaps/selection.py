"""Selection: which modules and calls a layer pattern or type picks (pure name logic, no hooks).

Between model and capture in the flow. :func:`featuremaps.list_layers` *discovers* names (see
:mod:`featuremaps.commands.layers`); :func:`select_modules` *acts* on patterns, and when a pattern
matches nothing its error names the closest layers and points back to the discovery command, so
the user never has to guess a name twice.

Pattern rules (``--layers`` on the command line, ``layers=`` in the API):

* an exact module path (``layer1.0.conv1``); an exact path of a container selects the container;
* a glob (``layer1.*``, ``*.relu``; ``*`` also crosses dots), which selects leaf modules unless
  containers are asked for;
* ``re:REGEX``, searched in the path (``re:conv\\d$``);
* any of the above followed by ``#k`` keeps only the k-th call (``layer1.0.relu#2``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

from torch import nn

from featuremaps._errors import LayerError
from featuremaps.naming import close_names, layers_hint, suggest, type_name, type_names

__all__ = [
    "as_patterns",
    "keep_record",
    "matching_patterns",
    "pattern_call",
    "pattern_matches_module",
    "select_modules",
    "split_record",
    "type_name",
]


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


def pattern_call(pattern: str) -> int | None:
    """The call a ``name#k`` pattern picks (``k``), or None for a pattern of every call."""
    base, one_call = _split_call(pattern)
    return int(pattern[len(base) + 1 :]) if one_call else None


def pattern_matches_module(pattern: str, module: str) -> bool:
    """Whether the module part of ``pattern`` matches the module path ``module``."""
    return _match(_split_call(pattern)[0], module)


def select_modules(
    model: nn.Module,
    patterns: tuple[str, ...] | None,
    types: tuple[str, ...] | None,
    containers: bool,
    spec: str | None,
) -> dict[str, nn.Module]:
    """Return ``{path: module}`` of the modules to hook, in registration order.

    ``spec`` names the model in messages, as the commands load it; None for a model object
    (named by its class, its layers listed by ``fm.list_layers(model)``).

    Raises:
        LayerError: a pattern matches no module, or no selected module has one of ``types``.
    """
    named = [(p, m) for p, m in model.named_modules() if p]
    if not named:  # a model without submodules is its own only layer
        named = [("", model)]
    leaves = {p for p, m in named if next(iter(m.children()), None) is None}
    names = [p for p, _ in named]
    label = spec or type_name(model)
    hint = f" Run {layers_hint(spec)} to list the names."

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
                suggestion = suggest(base, names) or "."
                raise LayerError(f"layer '{pattern}' not found in {label}{suggestion}{hint}")
            chosen |= hits

    if types is not None:
        present = sorted({type(m).__name__ for p, m in named if p in chosen})
        chosen = {p for p, m in named if p in chosen and type_names(m) & set(types)}
        if not chosen:
            raise LayerError(
                f"no selected layer of {label} has type {', '.join(types)}; types there: "
                f"{', '.join(present)}{_suggest_types(types, present) or '.'}{hint}"
            )
    return {p: m for p, m in named if p in chosen}


def _suggest_types(types: tuple[str, ...], present: list[str]) -> str:
    """``"; did you mean 'ReLU'?"`` for type names given in the wrong case or misspelt."""
    lowered = {name.lower(): name for name in present}
    found: list[str] = []
    for wanted in types:
        same = lowered.get(wanted.lower())
        close = [same] if same else [lowered[n] for n in close_names(wanted.lower(), list(lowered))]
        found += [name for name in close if name not in found]
    return "; did you mean " + ", ".join(f"'{n}'" for n in found[:3]) + "?" if found else ""


def keep_record(
    name: str, module: str, patterns: tuple[str, ...] | None, call: int | None = None
) -> bool:
    """Whether a record survives the patterns (``name#k`` patterns keep only the k-th call).

    ``call`` is the record's call number; without it, it is read from the name (``#k`` after
    the module path, else the first call), so ``conv#1`` keeps the first call, named ``conv``.
    """
    if patterns is None:
        return True
    return bool(matching_patterns(module, _call_of(name, module) if call is None else call,
                                  patterns))  # fmt: skip


def matching_patterns(module: str, call: int, patterns: tuple[str, ...]) -> list[str]:
    """The patterns that keep call ``call`` of module ``module``."""
    found = []
    for pattern in patterns:
        wanted = pattern_call(pattern)
        if (wanted is None or wanted == call) and pattern_matches_module(pattern, module):
            found.append(pattern)
    return found


def _call_of(name: str, module: str) -> int:
    rest = name[len(module) :] if name.startswith(module) else ""
    found = re.match(r"#(\d+)", rest)
    return int(found[1]) if found else 1


def split_record(name: str, modules: Mapping[str, nn.Module]) -> tuple[str, int]:
    """``"layer1.0.relu#2"`` → ``("layer1.0.relu", 2)``; a plain module path is its first call.

    Returns ``(name, 0)`` when ``name`` is not a call of one of ``modules``.
    """
    if name in modules:
        return name, 1
    path, _, call = name.rpartition("#")
    if path in modules and call.isdigit() and int(call) >= 1:
        return path, int(call)
    return name, 0
