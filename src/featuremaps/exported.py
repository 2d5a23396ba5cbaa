"""Exported programs: models saved as ``torch.export`` ``.pt2`` files, to save and to load.

Part of the model stage (input → **model** → capture → ...). A ``.pt2`` file holds the graph as
JSON and the weights as raw tensor bytes, so it needs no source code. ``torch.export.load`` can
still run code from a hostile file: it unpickles parts of it (a weight marked ``use_pickle``,
custom and opaque objects, the example inputs — retried with full unpickling when the safe reader
refuses them), it parses symbolic sizes with ``sympy.sympify`` (which evaluates Python), and it
resolves a node's function from any dotted ``torch.*`` name. :func:`load_exported` therefore
reads the file once, refuses every entry that would be unpickled other than by torch's
weights-only reader (and checks each pickle the archive holds with that reader), every size
expression that is more than arithmetic on symbols and every node that calls anything but an
operator, before handing the same bytes to ``torch.export.load``.

The loaded program is unflattened (``torch.export.unflatten``) so that its layers are modules
again, with their original names: hooks, and so every featuremaps command, work on it.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featuremaps._errors import ModelError
from featuremaps.checkpoints import LoadedModel
from featuremaps.inputs import Preprocessing

__all__ = ["EXTRA_FILE", "describe_preprocessing", "export_model", "load_exported"]

#: The archive's extra file with what featuremaps knows of the model (preprocessing, weights).
EXTRA_FILE = "featuremaps.json"

_PICKLE_FREE = (".json",)  # graph and configs: parsed as JSON, never unpickled


def export_model(
    model: nn.Module, example: torch.Tensor, info: dict[str, Any]
) -> tuple[bytes, str]:
    """The bytes of ``model`` saved for use without source code, and their kind: a
    ``torch.export`` program (``"pt2"``, the batch size left free) or, when export fails, a
    TorchScript trace (``"torchscript"``). ``info`` is stored beside it as JSON."""
    model = model.eval()
    extra = json.dumps(info)
    try:
        batch = torch.export.Dim("batch", min=1)
        doubled = torch.cat([example, example])  # a batch of 1 would be specialised
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (doubled,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer, extra_files={EXTRA_FILE: extra})
        return buffer.getvalue(), "pt2"
    except Exception as exc:  # any export failure: fall back to tracing, said in the kind
        export_error = exc
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings; torch.jit's deprecation notice
            traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: extra})
    except Exception as exc:
        raise ModelError(
            f"the pruned model can be neither exported ({type(export_error).__name__}) nor "
            f"traced ({type(exc).__name__}: {exc}); prune fewer layers with --layers"
        ) from None
    return buffer.getvalue(), "torchscript"


# What a graph node may call: torch's operators and Python's arithmetic. ``torch.export.load``
# resolves any dotted ``torch.*`` name (``torch.os.system`` too) and the graph calls it when run.
_SAFE_TARGETS = ("torch.ops.", "_operator.", "math.", "torch.sym_", "torch._sym_", "torch._assert")
# Symbolic sizes are parsed by sympy's sympify, which evaluates Python: only names of symbols
# (s0, u3), sympy's capitalised classes and functions (Symbol, Max, FloorDiv) and their keywords,
# numbers, operators and quoted symbol names may appear, never an attribute, a subscript or a
# private name.
_EXPR_TOKEN = re.compile(r"'[a-z]+[0-9]+'|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+|[-+*/%(),=<>!&|~^ ]")
_EXPR_NAMES = re.compile(
    r"[a-z]+[0-9]+|[A-Z][A-Za-z0-9]*|positive|negative|nonnegative|integer|real|finite|oo|zoo"
)


def _unsafe_expression(text: str) -> bool:
    tokens = _EXPR_TOKEN.findall(text)
    if "".join(tokens) != text:
        return True  # a character outside the grammar (quotes of code, brackets, attributes)
    if re.search(r"[A-Za-z0-9_)]\.[A-Za-z_]", text):
        return True  # attribute access
    names = (t for t in tokens if t[0].isalpha() or t[0] == "_")
    return any(not _EXPR_NAMES.fullmatch(t) for t in names)


def _check_program(program: Any, refuse: Any) -> None:
    """Walk a program's JSON: refuse a node calling anything but an operator, and a symbolic
    size expression that is more than arithmetic on symbols."""
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            target = item.get("target")
            node = isinstance(target, str) and "inputs" in item and "outputs" in item
            if node and not str(target).startswith(_SAFE_TARGETS):
                raise refuse(f"a graph node calls '{target}', which is not an operator")
            expr = item.get("expr_str")
            if isinstance(expr, str) and _unsafe_expression(expr):
                raise refuse(f"a size expression is not plain arithmetic ({expr[:60]!r})")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_archive(data: bytes, spec: str) -> None:
    """Refuse an archive that would make ``torch.export.load`` unpickle anything unsafe."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(
            f"'{spec}' is not a .pt2 archive ({exc}); save it with torch.export"
        ) from None

    def refuse(why: str) -> ModelError:
        return ModelError(
            f"'{spec}' was not loaded: {why}, and loading it could run code; re-export the model "
            "with torch.export.save from code you trust"
        )

    if not any(n.endswith("models/model.json") for n in names):
        raise refuse("it is an old-format archive or has no program 'model'")
    for name in names:
        if "/models/" in name and name.endswith(".json"):
            try:
                _check_program(json.loads(archive.read(name)), refuse)
            except ValueError as exc:
                raise refuse(f"its program '{name}' is not valid JSON ({exc})") from None
    for name in names:
        if name.endswith(("weights_config.json", "constants_config.json")):
            config = json.loads(archive.read(name)).get("config", {})
            for key, meta in config.items():
                if meta.get("use_pickle"):
                    raise refuse(f"its entry '{key}' is stored as a pickle")
                path = str(meta.get("path_name", ""))
                if not path.startswith(("weight_", "tensor_")):
                    raise refuse(f"its entry '{key}' is a custom object ('{path}')")
    for name in names:
        blob = archive.read(name)
        if name.endswith(_PICKLE_FREE) or "/data/weights/" in name or "/data/constants/" in name:
            continue  # JSON, or raw tensor bytes addressed by the configs checked above
        if blob[:1] == b"\x80" or name.endswith((".pt", ".pkl")):  # a pickle (protocol 2+)
            try:
                torch.load(io.BytesIO(blob), weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                said = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else "")
                raise refuse(f"its entry '{name}' is not a plain tensor pickle ({said})") from None


def load_exported(spec: str) -> LoadedModel:
    """Load a ``.pt2`` file saved by ``torch.export.save``, executing no pickle payload.

    Raises:
        ModelError: the file is missing, is not a ``.pt2`` archive, or holds an entry that would
            be unpickled by anything but torch's weights-only reader.
    """
    path = Path(spec)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file '{spec}': {exc.strerror or exc}") from None
    _check_archive(data, spec)
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
            model = torch.export.unflatten(program)
    except Exception as exc:
        raise ModelError(
            f"cannot load exported program '{spec}': {type(exc).__name__}: {exc}"
        ) from None
    info = json.loads(extra[EXTRA_FILE] or "{}")
    pre = info.get("preprocessing")
    preprocessing = None
    if isinstance(pre, dict):

        def size(value: Any) -> Any:  # JSON gives lists where the recipe holds tuples
            return tuple(value) if isinstance(value, list) else value

        preprocessing = Preprocessing(
            resize=size(pre.get("resize")), crop=size(pre.get("crop")),
            mean=size(pre.get("mean")), std=size(pre.get("std")),
            source=str(pre.get("source", "as saved with the model")),
            interpolation=str(pre.get("interpolation", "bilinear")),
            antialias=bool(pre.get("antialias", True)), from_model=True,
        )  # fmt: skip
    status = str(info.get("weights_status", "as saved in the file"))
    return LoadedModel(
        model, spec, "torch.export", "as saved", status, bool(info.get("random_weights", False)),
        preprocessing=preprocessing,
    )  # fmt: skip


def describe_preprocessing(pre: Preprocessing | None) -> dict[str, Any] | None:
    """The fields of ``pre`` that :func:`load_exported` can rebuild it from (None when the
    recipe is a transform object whose steps are not fields)."""
    if pre is None or pre._transform is not None or pre.as_is:
        return None
    keep = ("resize", "crop", "mean", "std", "source", "interpolation", "antialias")
    return {k: getattr(pre, k) for k in keep}
