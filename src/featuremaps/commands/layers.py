"""The ``layers`` command: discover a model's layers, and with an input, every call's shape.

Discovery half of the selection pair (torchvision's ``get_graph_node_names`` is the model):
:func:`list_layers` lists the names that :mod:`featuremaps.selection` acts on, and the errors
of the selection point back here (``featuremaps layers MODEL``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import nn

from featuremaps.commands.cli_common import (
    Command,
    add_containers_option,
    add_model_options,
    load_model_and_inputs,
    print_preprocessing,
)
from featuremaps.hooks import HookedOutput, run_hooked
from featuremaps.naming import record_name, type_name
from featuremaps.selection import select_modules

__all__ = ["COMMAND", "LayerInfo", "list_layers"]


@dataclass(frozen=True)
class LayerInfo:
    """One module call found by :func:`list_layers`.

    ``shape`` is ``None`` when no dry run was made, when the module never ran (``ran`` False),
    or when its output holds no tensor (``returned`` then names the type it returned, e.g.
    ``NoneType`` or ``ImageList``); a tuple/dict/dataclass output has one entry per tensor,
    named like records (``lstm.0``).
    """

    name: str
    module: str
    call: int
    module_type: str
    shape: tuple[int, ...] | None
    ran: bool
    is_container: bool
    returned: str | None = None


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
    modules = select_modules(model, None, None, True, None)
    leaves = {p for p, m in modules.items() if next(iter(m.children()), None) is None}
    if not containers:
        modules = {p: m for p, m in modules.items() if p in leaves}
    if inputs is None:
        return [
            LayerInfo(p, p, 1, type_name(m), None, False, p not in leaves)
            for p, m in modules.items()
        ]

    found: list[LayerInfo] = []

    def sink(out: HookedOutput) -> None:
        found.append(
            LayerInfo(
                out.name,
                out.path,
                out.call,
                type_name(out.module),
                tuple(out.tensor.shape),
                True,
                out.path not in leaves,
            )
        )

    def other(path: str, module: nn.Module, call: int, returned: str) -> None:
        found.append(
            LayerInfo(
                record_name(path, call, None),
                path,
                call,
                type_name(module),
                None,
                True,
                path not in leaves,
                returned,
            )
        )

    _, calls = run_hooked(model, inputs, _hookable(modules), sink, on_other=other)
    found.extend(
        LayerInfo(p, p, 0, type_name(m), None, False, p not in leaves)
        for p, m in modules.items()
        if calls.get(p, 0) == 0
    )
    return found


def _hookable(modules: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    return {p: m for p, m in modules.items() if not isinstance(m, torch.jit.ScriptModule)}


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="resnet18", help="model spec")
    p.add_argument("--input", help="image for the dry run (default: the bundled sample)")
    add_model_options(p, spec=False)
    add_containers_option(p)


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    loaded, inputs = load_model_and_inputs(
        args, args.model, [args.input] if args.input else [], None
    )
    infos = list_layers(
        loaded.model,
        inputs[0].tensor,
        containers=args.containers,
    )
    rows = [("name", "call", "type", "output shape")]
    for info in infos:
        if info.returned is not None:
            shape = f"returned {info.returned} (no tensor)"
        else:
            shape = "x".join(map(str, info.shape)) if info.shape else "never ran"
        rows.append((info.name, str(info.call), info.module_type, shape))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}", file=out)
    ran = sum(1 for i in infos if i.shape)
    others = sum(1 for i in infos if i.returned is not None)
    print(
        f"{ran} records from {len({i.module for i in infos})} modules of {args.model} "
        f"on input {tuple(inputs[0].tensor.shape)}"
        + (f"; {others} calls returned no tensor" if others else ""),
        file=out,
    )
    print_preprocessing(inputs[0].preprocessing, out)  # as applied to this input
    return 0


COMMAND = Command("list a model's layers with their output shapes", _add_options, _execute)
