"""ONNX files as models: ``--model model.onnx`` (the optional ``onnx`` extra).

Part of the "model" stage (inputs → **model** → capture → ...). The file is converted to a torch
``fx.GraphModule`` by ``onnx2torch``, in which every ONNX node is one submodule, called once, in
the graph's order; so capture records every node's output. onnx2torch renames nodes to make them
module paths (the leading ``/`` dropped, ``.`` turned into ``/``), so the loaded model keeps the
mapping back to each node's own ONNX name, operator and output names
(:attr:`~featuremaps.checkpoints.LoadedModel.onnx_nodes`); the manifest lists it.
"""

from __future__ import annotations

from pathlib import Path

from featuremaps._errors import ModelError
from featuremaps.checkpoints import LoadedModel, OnnxNode

__all__ = ["load_onnx"]


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
    try:
        graph = convert(proto)
    except NotImplementedError as exc:
        opset = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
        raise ModelError(
            f"onnx2torch cannot convert '{spec}' (opset {opset}): {exc}; export it with another "
            "opset (e.g. torch.onnx.export(..., opset_version=17))"
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
    return LoadedModel(
        graph.eval(),
        spec,
        "onnx",
        "as stored in the file",
        f"stored in {path.name} (converted by onnx2torch)",
        False,
        onnx_nodes=nodes,
    )
