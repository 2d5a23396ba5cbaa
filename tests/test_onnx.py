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


class Twin(nn.Module):
    """Two convolutions without bias, each before a batch norm of four channels at its initial
    statistics: the exporter folds the norms into the convolutions, whose biases (all zero) are
    then equal and stored once, the second reading it through an Identity node."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _export(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
            input_names=["image"],
        )  # fmt: skip
    return path


def test_initializers_shared_through_identity_nodes_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _export(Twin(), tmp_path / "twin.onnx", (1, 3, 8, 8))
    proto = onnx.load(str(path))
    stored = {t.name for t in proto.graph.initializer}
    shared = [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in stored]
    assert shared  # the exporter did share a stored tensor through an Identity node
    loaded = fm.load_model(str(path))
    assert "1 Identity nodes on stored tensors folded away" in loaded.weights_status
    assert loaded.onnx_nodes is not None
    assert [n.op_type for n in loaded.onnx_nodes.values()] == ["Conv", "Relu", "Conv"]
    # Every remaining node's output is the one onnxruntime computes from the file as stored.
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expected = _onnxruntime_outputs(path, x.numpy())
    records = fm.capture(loaded.model, x)
    assert len(records) == 3
    for record in records:
        node = loaded.onnx_nodes[record.module]
        np.testing.assert_allclose(
            record.tensor.numpy(), expected[node.outputs[0]], rtol=1e-4, atol=1e-5
        )


def test_a_conversion_failure_names_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from onnx import TensorProto, helper, numpy_helper

    # A convolution whose weights are computed (Neg of a stored tensor): onnx2torch reads
    # convolution weights only from stored tensors and fails with a KeyError.
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Neg", ["w"], ["w_neg"], name="negate"),
            helper.make_node("Conv", ["x", "w_neg"], ["y"], name="the_conv"),
        ],
        "computed_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    path = tmp_path / "computed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(fm.ModelError, match=r"cannot convert node 'the_conv' \(Conv\) of '.*"):
        fm.load_model(str(path))
    image = tmp_path / "x.npy"
    np.save(image, np.zeros((1, 5, 5), np.float32))
    assert main(["run", str(image), "--model", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "node 'the_conv' (Conv)" in err and "KeyError" in err


def test_a_declared_input_size_is_fed_and_others_refused(
    onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # small.onnx declares 1x3x16x16; a 24x20 picture is resized and cropped to it (as for an
    # architecture that fixes its input size), and the line says so.
    image = tmp_path / "x.npy"
    np.save(image, np.random.default_rng(0).random((3, 24, 20), dtype=np.float32))
    assert main(["run", str(image), "--model", str(onnx_file), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "resize shorter side 16" in out and "centre crop 16" in out
    assert "declared by small.onnx as 1x3x16x16" in out
    import json

    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["input"]["fed_shape"] == [1, 3, 16, 16]
    # Another size, asked for, is refused, as onnxruntime refuses it.
    argv = ["run", str(image), "--model", str(onnx_file), "--size", "24x20"]
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "declares its input 'image' as 1x3x16x16" in err and "Traceback" not in err
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?i)dimension"):
        session.run(None, {"image": np.zeros((1, 3, 24, 20), np.float32)})
    loaded = fm.load_model(str(onnx_file))
    with pytest.raises(fm.CaptureError, match=r"declares its input 'image' as 1x3x16x16"):
        fm.capture(loaded.model, torch.rand(1, 3, 24, 20))
