"""ONNX files as models: ``--model model.onnx`` (the optional ``onnx`` extra).

Part of the "model" stage (inputs → **model** → capture → ...). The file is converted to a torch
``fx.GraphModule`` by ``onnx2torch``, in which every ONNX node is one submodule, called once, in
the graph's order; so capture records every node's output. onnx2torch renames nodes to make them
module paths (the leading ``/`` dropped, ``.`` turned into ``/``), so the loaded model keeps the
mapping back to each node's own ONNX name, operator and output names
(:attr:`~featuremaps.checkpoints.LoadedModel.onnx_nodes`); the manifest lists it.

Two things are settled before conversion. Exporters share one stored tensor between several
operators through ``Identity`` nodes, which onnx2torch cannot read (it looks weights up among the
stored tensors by name): such nodes are folded away, their consumers reading the stored tensor
itself (:func:`fold_identity_initializers`). And a graph that declares a fixed input size is fed
at that size: the size becomes the model's preprocessing (a resize, said on the preprocessing
line), and an input that still does not match is refused, as onnxruntime refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from featuremaps._errors import CaptureError, ModelError
from featuremaps.checkpoints import LoadedModel, OnnxNode
from featuremaps.inputs import fixed_size_preprocessing
from featuremaps.inputs.checks import one_line

__all__ = ["declared_input", "fold_identity_initializers", "load_onnx"]


def load_onnx(spec: str) -> LoadedModel:
    """Load the ONNX file ``spec`` as a torch model, with its node names kept.

    Raises:
        ModelError: the extra is not installed, the file is not readable ONNX, or onnx2torch
            cannot convert one of its operators.
    """
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelError(
            f"'{spec}' is an ONNX model, which needs the onnx extra: pip install "
            "'featuremaps[onnx]' (onnx, onnx2torch and onnxruntime)"
        ) from None
    path = Path(spec)
    try:
        proto = onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"ONNX file '{spec}' does not exist; check the path") from None
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError ... for bad files
        raise ModelError(
            f"'{spec}' is not a readable ONNX model ({type(exc).__name__}: {exc}); export it "
            "again, e.g. with torch.onnx.export"
        ) from None
    folded = fold_identity_initializers(proto.graph)
    try:
        graph = convert(proto)
    except NotImplementedError as exc:
        opset = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
        raise ModelError(
            f"onnx2torch cannot convert '{spec}' (opset {opset}): {exc}; export it with another "
            "opset (e.g. torch.onnx.export(..., opset_version=17))"
        ) from None
    except Exception as exc:  # onnx2torch raises KeyError, ValueError ... on graphs it misreads
        raise ModelError(
            f"onnx2torch cannot convert {_failing_node(exc)}of '{spec}' "
            f"({type(exc).__name__}: {one_line(exc)}); simplify the graph (e.g. python -m "
            "onnxsim) or export it again, or load the torch model itself"
        ) from None
    modules = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    if len(modules) != len(proto.graph.node):  # a converter that changed how it builds graphs
        raise ModelError(
            f"onnx2torch made {len(modules)} modules from the {len(proto.graph.node)} nodes of "
            f"'{spec}', so its node names cannot be matched; please report this"
        )
    nodes = {
        str(module): OnnxNode(node.name, node.op_type, tuple(node.output))
        for module, node in zip(modules, proto.graph.node, strict=True)
    }
    shape, name = declared_input(proto.graph)
    preprocessing = None
    if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
        size = "x".join("N" if n is None else str(n) for n in shape)
        # The same rule as an architecture that fixes its input size (a ViT's image_size).
        preprocessing = fixed_size_preprocessing(
            (shape[2], shape[3]),
            f"declared by {path.name} as {size}",
            "; no normalisation known",
        )
    if any(n is not None for n in shape[1:]):
        graph.register_forward_pre_hook(_DeclaredInput(path.name, name, shape))
    note = f"; {folded} Identity nodes on stored tensors folded away" if folded else ""
    return LoadedModel(
        graph.eval(),
        spec,
        "onnx",
        "as stored in the file",
        f"stored in {path.name} (converted by onnx2torch{note})",
        False,
        preprocessing=preprocessing,
        onnx_nodes=nodes,
    )


def fold_identity_initializers(graph: Any) -> int:
    """Fold away the ``Identity`` nodes of ``graph`` (an ``onnx.GraphProto``, changed in place)
    whose input is a stored tensor (an initializer); return how many were folded.

    The TorchScript exporter stores a tensor once when several operators use equal values (the
    zero biases of convolutions with folded batch norms) and hands it to the others through
    ``Identity`` nodes; onnx2torch reads operator weights from the stored tensors by name, so it
    fails on those names (``KeyError``). Each folded node's consumers read the stored tensor
    itself. An ``Identity`` whose output is one of the graph's outputs is kept.
    """
    stored = {tensor.name for tensor in graph.initializer}
    outputs = {value.name for value in graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            source = renamed.get(node.input[0], node.input[0]) if node.input else ""
            if source in stored and node.output[0] not in outputs:
                renamed[node.output[0]] = source
                continue
        kept.append(node)
    if not renamed:
        return 0
    for node in kept:
        _rename_inputs(node, renamed)
    del graph.node[:]
    graph.node.extend(kept)
    infos = [info for info in graph.value_info if info.name not in renamed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(renamed)


def _rename_inputs(node: Any, renamed: dict[str, str]) -> None:
    """Rename the inputs of ``node`` and of the nodes of its subgraphs (If and Loop bodies read
    names of the graph around them)."""
    node.input[:] = [renamed.get(name, name) for name in node.input]
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in sub.node:
                _rename_inputs(inner, renamed)


def declared_input(graph: Any) -> tuple[tuple[int | None, ...], str]:
    """The shape the first input of ``graph`` (an ``onnx.GraphProto``) declares, ``None`` for an
    axis of any size, and its name; ``((), "")`` when the graph declares none."""
    stored = {tensor.name for tensor in graph.initializer}
    for value in graph.input:
        if value.name in stored:  # old exporters list stored tensors among the inputs
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            return (), value.name
        return tuple(d.dim_value if d.dim_value > 0 else None for d in tensor.shape.dim), value.name
    return (), ""


def _failing_node(exc: BaseException) -> str:
    """``node 'NAME' (OP) `` for the node onnx2torch was converting when it raised ``exc``
    (read from its converter's frame), or ``""`` when the failure was not at a node."""
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("onnx_node")
        if tb.tb_frame.f_code.co_name == "convert" and node is not None:
            name = getattr(node, "name", "") or getattr(node, "unique_name", "")
            found = f"node '{name}' ({getattr(node, 'operation_type', '?')}) "
        tb = tb.tb_next
    return found


class _DeclaredInput:
    """A forward pre-hook that refuses an input whose shape differs from the one the ONNX file
    declares (the batch axis aside), as onnxruntime does: onnx2torch's modules would run on it
    and give outputs the file's model never gives. A :class:`CaptureError`, so the shape probes
    of :mod:`featuremaps.layouts.evidence` take it as a refused probe."""

    def __init__(self, file: str, name: str, shape: tuple[int | None, ...]) -> None:
        self.file, self.name, self.shape = file, name, shape

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        tensor = args[0] if args else None
        if not isinstance(tensor, torch.Tensor):
            return
        got = tuple(int(n) for n in tensor.shape)
        fits = len(got) == len(self.shape) and all(
            want is None or want == have for want, have in zip(self.shape[1:], got[1:], strict=True)
        )
        if not fits:
            text = "x".join("N" if n is None else str(n) for n in self.shape)
            raise CaptureError(
                f"the model refuses an input of shape {'x'.join(str(n) for n in got)}: "
                f"{self.file} declares its input '{self.name}' as {text} (onnxruntime refuses "
                "other shapes too); feed that shape: leave the resize to the model's "
                f"preprocessing, or give --size {self.shape[-2] or 'H'}x{self.shape[-1] or 'W'}"
            )
