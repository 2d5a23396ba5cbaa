"""ONNX models (`--model model.onnx`): every node's output captured under the node's own ONNX
name, checked against onnxruntime on the same input, the final output and every intermediate one
(exposed by adding each node output to the graph's outputs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import featuremaps as fm
from featuremaps.cli import main


class Small(nn.Module):
    """Conv, BN, ReLU, max pool, a residual add, global pooling, flatten and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.stem(x))
        y = torch.relu(self.conv(y) + y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():  # BN statistics that are not the identity
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    with warnings.catch_warnings():
        # The TorchScript-based exporter works offline without onnxscript (the torch.export-based
        # default needs it); it warns that it is the legacy one. opset 17: what onnx2torch reads.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
            input_names=["image"], output_names=["logits"],
        )  # fmt: skip
    return path


def _onnxruntime_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every node output of the file, by output name, as onnxruntime computes them."""
    proto = onnx.load(str(path))
    known = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in known:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": x}), strict=True))


def test_every_node_output_matches_onnxruntime(onnx_file: Path) -> None:
    loaded = fm.load_model(str(onnx_file))
    assert loaded.source == "onnx" and loaded.onnx_nodes is not None
    proto = onnx.load(str(onnx_file))
    # Every node of the file has a module, keyed by the module path, under its own ONNX name.
    assert [n.name for n in loaded.onnx_nodes.values()] == [n.name for n in proto.graph.node]
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    records = fm.capture(loaded.model, x)
    expected = _onnxruntime_outputs(onnx_file, x.numpy())
    compared = set()
    for record in records:
        node = loaded.onnx_nodes[record.module]
        assert record.output_key is None and record.call == 1
        output = node.outputs[0]
        np.testing.assert_allclose(
            record.tensor.numpy(), expected[output], rtol=1e-4, atol=1e-5, err_msg=node.name
        )
        compared.add(output)
    # Every node output onnxruntime computed was captured, the final one ("logits") included.
    assert compared == set(expected) and "logits" in compared
    assert {proto.graph.node[i].op_type for i in range(len(proto.graph.node))} >= {
        "Conv", "Relu", "MaxPool", "Add", "Gemm"
    }  # fmt: skip


def test_run_names_onnx_nodes_in_the_manifest(onnx_file: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.npy"
    np.save(image, np.random.default_rng(0).random((3, 16, 16), dtype=np.float32))
    assert main(["run", str(image), "--model", str(onnx_file), "--out", str(tmp_path / "o")]) == 0
    import json

    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["model"]["source"] == "onnx"
    nodes = manifest["model"]["onnx_nodes"]
    proto = onnx.load(str(onnx_file))
    assert sorted(v["name"] for v in nodes.values()) == sorted(n.name for n in proto.graph.node)
    drawn = [r for r in manifest["records"] if r["image"]]
    assert drawn and all(nodes[r["module"]]["op_type"] for r in drawn)


def test_unreadable_onnx_file_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(fm.ModelError, match=r"'.*bad\.onnx' is not a readable ONNX model"):
        fm.load_model(str(bad))
    with pytest.raises(fm.ModelError, match=r"ONNX file '.*missing\.onnx' does not exist"):
        fm.load_model(str(tmp_path / "missing.onnx"))


def test_an_operator_onnx2torch_lacks_names_the_opset(onnx_file: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(onnx_file))
    proto.graph.node[0].op_type = "NoSuchOperator"
    odd = tmp_path / "odd.onnx"
    onnx.save(proto, str(odd))
    with pytest.raises(fm.ModelError, match=r"onnx2torch cannot convert '.*odd\.onnx' \(opset"):
        fm.load_model(str(odd))


def test_without_the_extra_the_error_names_it(
    onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import fails as if not installed
    with pytest.raises(fm.ModelError, match=r"needs the onnx extra: pip install 'featuremaps\["):
        fm.load_model(str(onnx_file))
