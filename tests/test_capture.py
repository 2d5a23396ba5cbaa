"""Capture: exact values (recomputation oracle), the naming rule, streaming, modes, odd outputs."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, NamedTuple

import pytest
import torch
import torchvision
from torch import nn

import featuremaps as fm
from featuremaps import layouts


def _leaf_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[Any, ...]]:
    """Oracle side: copy every leaf module's *inputs* before it runs, keyed by record name."""
    seen: dict[str, int] = {}
    inputs: dict[str, tuple[Any, ...]] = {}
    handles = []
    for path, module in model.named_modules():
        if path and not list(module.children()):

            def pre(mod: nn.Module, args: tuple[Any, ...], path: str = path) -> None:
                seen[path] = seen.get(path, 0) + 1
                name = fm.record_name(path, seen[path])
                inputs[name] = tuple(a.clone() if torch.is_tensor(a) else a for a in args)

            handles.append(module.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return inputs


def _reference_hook_values(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a reference-keeping extractor returns (the common bug the oracle must catch)."""
    seen: dict[str, int] = {}
    kept: dict[str, torch.Tensor] = {}
    handles = []
    for path, module in model.named_modules():
        if path and not list(module.children()):

            def hook(mod: nn.Module, a: Any, out: torch.Tensor, path: str = path) -> None:
                seen[path] = seen.get(path, 0) + 1
                kept[fm.record_name(path, seen[path])] = out.detach()

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return kept


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg11", "densenet121", "mobilenet_v2"])
def test_every_record_equals_a_recomputation_of_its_module(name: str) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    captured = fm.capture(model, x)
    inputs = _leaf_inputs(model, x)
    modules = dict(model.named_modules())

    assert captured.total == len(inputs) == len(captured.records)
    for record in captured:
        with torch.no_grad():
            expected = modules[record.module](*inputs[record.name])
        torch.testing.assert_close(record.tensor, expected, rtol=0, atol=0, msg=record.name)

    # The same oracle flags the reference-keeping approach, so this test can fail.
    naive = _reference_hook_values(model, x)
    wrong = [n for n, r in ((r.name, r) for r in captured) if not torch.equal(naive[n], r.tensor)]
    assert wrong, f"{name}: expected in-place ops to corrupt kept references"


def test_resnet18_reuse_naming_rule_literally() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    names = fm.capture(model, torch.randn(1, 3, 32, 32)).names()
    assert len(names) == 60  # 52 leaf modules + 8 second calls of the blocks' shared relu
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert names[4:11] == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu#2",
        "layer1.1.conv1",
    ]
    assert [n for n in names if "#" in n] == [
        f"layer{i}.{j}.relu#2" for i in range(1, 5) for j in range(2)
    ]
    assert not any(n.endswith("#1") or "#3" in n for n in names)


class Outputs(nn.Module):
    """Leaf modules with tuple, nested, dict and None outputs, plus one that never runs."""

    class Split(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[Any, ...]:
            return x[:, :1], (x[:, 1:2], None)

    class Head(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"boxes": x.mean((2, 3)), "scores": x.amax((2, 3))}

    def __init__(self) -> None:
        super().__init__()
        self.split = self.Split()
        self.head = self.Head()
        self.act = nn.ReLU()
        self.unused = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> Any:
        a, (b, _) = self.split(x)
        a = self.act(self.act(self.act(a)))
        return self.head(a), self.head(b)


def test_tuple_dict_outputs_reuse_and_never_run() -> None:
    captured = fm.capture(Outputs(), torch.randn(1, 3, 4, 4))
    assert captured.names() == [
        "split.0",
        "split.1.0",
        "act",
        "act#2",
        "act#3",
        "head.boxes",
        "head.scores",
        "head#2.boxes",
        "head#2.scores",
    ]
    rec = captured.get("head#2.scores")
    assert (rec.module, rec.call, rec.output_key, rec.module_type) == ("head", 2, "scores", "Head")
    assert [r.index for r in captured] == list(range(9))
    assert [(n.module, n.module_type) for n in captured.not_run] == [("unused", "Conv2d")]
    assert "never called" in captured.not_run[0].reason


def test_streaming_hands_records_over_one_by_one(
    tiny: nn.Module, image_batch: torch.Tensor
) -> None:
    seen: list[str] = []
    result = fm.capture(tiny, image_batch, on_record=lambda r: seen.append(r.name))
    assert result.records == () and result.total == len(seen) == 7
    assert seen == fm.capture(tiny, image_batch).names()
    assert seen[:3] == ["conv1", "bn1", "act"] and "act#2" in seen


def test_in_place_values_are_exact_on_tiny_model(
    tiny: nn.Module, image_batch: torch.Tensor
) -> None:
    c = fm.capture(tiny, image_batch)
    with torch.no_grad():
        bn = tiny.bn1(tiny.conv1(image_batch))
    torch.testing.assert_close(c.get("bn1").tensor, bn, rtol=0, atol=0)
    assert c.get("bn1").tensor.min() < 0  # the in-place ReLU that followed did not reach it


def test_modes_are_restored_and_grad_is_off(tiny: nn.Module, image_batch: torch.Tensor) -> None:
    tiny.train()
    tiny.bn1.eval()  # a mixed state must survive, not just the root flag
    running = tiny.bn1.running_mean.clone()
    c = fm.capture(tiny, image_batch.requires_grad_())
    assert tiny.training and not tiny.bn1.training and tiny.conv1.training
    assert all(not r.tensor.requires_grad for r in c)
    assert torch.equal(running, tiny.bn1.running_mean)  # eval mode: statistics untouched
    c = fm.capture(tiny, image_batch, grad=True)
    assert c.get("conv1").tensor.requires_grad is False  # records are detached copies


def test_multihead_attention_out_proj_is_listed_as_never_run() -> None:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    c = fm.capture(layer.eval(), torch.randn(1, 5, 8))
    assert "self_attn.out_proj" in [n.module for n in c.not_run]
    assert c.get("linear1").layout == "NLD"


class _SkipsAndBorrows(nn.Module):
    """Uses ``proj``'s weights without calling it, and skips the parameter-free ``drop``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.proj.weight, self.proj.bias)


def test_why_a_module_never_ran_depends_on_whether_it_has_weights() -> None:
    reasons = {n.module: n.reason for n in fm.capture(_SkipsAndBorrows(), torch.ones(1, 4)).not_run}
    assert "may use its weights directly" in reasons["proj"]
    assert "weights directly" not in reasons["drop"] and "it has no weights" in reasons["drop"]


def test_torchscript_gives_the_output_and_says_why_nothing_else(
    tiny: nn.Module, image_batch: torch.Tensor
) -> None:
    with pytest.warns(FutureWarning):
        scripted = torch.jit.script(tiny)
    c = fm.capture(scripted, image_batch)
    assert c.names() == ["output"]
    torch.testing.assert_close(c[0].tensor, tiny(image_batch))
    assert {n.module for n in c.not_run} >= {"conv1", "fc"}
    assert all("TorchScript" in n.reason for n in c.not_run)


def test_forward_failure_names_module_and_input_shape(tiny: nn.Module) -> None:
    match = r"failed in 'conv1' \(Conv2d\) at .*conftest.py:\d+ \(in forward\) on input of shape"
    with pytest.raises(fm.CaptureError, match=match):
        fm.capture(tiny, torch.randn(1, 5, 8, 8))


def test_inputs_of_wrong_kind_are_refused(tiny: nn.Module) -> None:
    with pytest.raises(fm.InputError, match="expected a tensor, a tuple"):
        fm.capture(tiny, [1, 2, 3])


@pytest.mark.parametrize(
    ("ndim", "module_type", "layout"),
    [(4, "Conv2d", "NCHW"), (5, "Conv3d", "NCDHW"), (3, "Conv1d", "NCL"), (3, "Linear", "NLD"),
     (2, "Linear", "NC"), (1, "X", "N"), (0, "X", "scalar"), (6, "X", "undecided"),
     (4, "Linear", "undecided"), (4, "LayerNorm", "undecided")],
)  # fmt: skip
def test_layout_names(ndim: int, module_type: str, layout: str) -> None:
    assert layouts.decide((2,) * ndim, module_type).name == layout


def test_streaming_without_copy_sees_exact_values_during_the_callback(
    tiny: nn.Module, image_batch: torch.Tensor
) -> None:
    seen: dict[str, torch.Tensor] = {}
    live: dict[str, torch.Tensor] = {}

    def consume(record: fm.LayerRecord) -> None:
        seen[record.name] = record.tensor.clone()  # what a consumer reads during the call
        live[record.name] = record.tensor  # kept past the call: not protected

    fm.capture(tiny, image_batch, on_record=consume, copy=False)
    exact = fm.capture(tiny, image_batch)
    for record in exact:
        torch.testing.assert_close(seen[record.name], record.tensor, rtol=0, atol=0)
    # bn1's live output was later ReLU-ed in place: the documented reason to consume or clone.
    assert live["bn1"].min() >= 0 and exact.get("bn1").tensor.min() < 0


# -- selections that match nothing, outputs without tensors, failures in the model's own code --


@pytest.mark.parametrize("pattern", ["act#3", "a*#3", "act#0", "conv1#2"])
def test_a_call_pattern_beyond_the_calls_made_is_an_error(tiny: nn.Module, pattern: str) -> None:
    with pytest.raises(fm.LayerError, match=r"matches no call in TinyNet: '.*' ran \d+ times?"):
        fm.capture(tiny, torch.randn(1, 3, 8, 8), layers=pattern)


def test_call_one_pattern_picks_the_first_call(tiny: nn.Module) -> None:
    x = torch.randn(1, 3, 8, 8)
    assert fm.capture(tiny, x, layers="act#1").names() == ["act"]
    assert fm.capture(tiny, x, layers="conv1#1").names() == ["conv1"]
    assert fm.capture(tiny, x, layers="act#2").names() == ["act#2"]


@dataclasses.dataclass
class _HeadOutput:
    logits: torch.Tensor
    note: str = "not a tensor"


class _Pair(NamedTuple):
    first: torch.Tensor
    second: torch.Tensor


class _DataclassHead(nn.Module):
    def forward(self, x: torch.Tensor) -> _HeadOutput:
        return _HeadOutput(x.mean((2, 3)))


class _PairMaker(nn.Module):
    def forward(self, x: torch.Tensor) -> _Pair:
        return _Pair(x + 1, x * 2)


class _Logger(nn.Module):
    def forward(self, x: torch.Tensor) -> None:
        return None


class _Images:
    """Like torchvision detection's ImageList: an object that holds tensors, not a tensor."""

    def __init__(self, tensors: torch.Tensor) -> None:
        self.tensors = tensors


class _Batcher(nn.Module):
    def forward(self, x: torch.Tensor) -> _Images:
        return _Images(x)


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.batch = _Batcher()
        self.conv = nn.Conv2d(3, 4, 3)
        self.log = _Logger()
        self.pair = _PairMaker()
        self.head = _DataclassHead()

    def forward(self, x: torch.Tensor) -> _HeadOutput:
        y = self.conv(self.batch(x).tensors)
        self.log(y)
        return self.head(self.pair(y).second)


def test_outputs_without_tensors_are_listed_with_their_type() -> None:
    x = torch.randn(1, 3, 8, 8)
    result = fm.capture(_Mixed(), x)
    assert [(n.name, n.returned) for n in result.no_tensor] == [
        ("batch", "_Images"),
        ("log", "NoneType"),
    ]
    assert "returned NoneType, not a tensor" in result.no_tensor[1].reason
    infos = {i.name: i for i in fm.list_layers(_Mixed(), x)}
    assert infos["batch"].returned == "_Images" and infos["batch"].ran
    assert infos["log"].returned == "NoneType" and infos["log"].shape is None


def test_tensors_inside_dataclasses_and_named_tuples_are_recorded() -> None:
    x = torch.randn(1, 3, 8, 8)
    result = fm.capture(_Mixed(), x)
    y = result.get("conv").tensor
    assert result.names() == ["conv", "pair.first", "pair.second", "head.logits"]
    assert torch.equal(result.get("pair.first").tensor, y + 1)
    assert torch.equal(result.get("pair.second").tensor, y * 2)
    assert torch.equal(result.get("head.logits").tensor, (y * 2).mean((2, 3)))


class _ReshapesWrongly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        flat = y.view(1, 10)  # the bug: in the model's own code, not in a module
        return self.fc(flat)


def test_a_failure_in_the_model_own_code_is_reported_where_it_happened() -> None:
    line = inspect.getsourcelines(_ReshapesWrongly.forward)[1] + 2
    here = re.escape(f"{__file__}:{line} (in forward)")
    expected = (
        rf"failed in its own forward code, outside any submodule at {here}, after its module "
        r"'conv' returned, on input of shape \(1, 3, 8, 8\): RuntimeError: shape '\[1, 10\]' is "
        r"invalid for input of size 144$"
    )
    with pytest.raises(fm.CaptureError, match=expected):
        fm.capture(_ReshapesWrongly(), torch.randn(1, 3, 8, 8))
