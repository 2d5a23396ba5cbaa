"""fm.watch: looks between training steps, read back from TensorBoard's own event reader and from
the folder writer; the training run is untouched (no hooks between looks, modes and flags kept,
the loss curve bit-identical)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps._errors import OptionError
from featuremaps.watch import Look, watch
from featuremaps.watch_writers import FolderWriter, tags


def _net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Conv2d(6, 4, 3, stride=2),
        nn.Flatten(),
        nn.Linear(4 * 7 * 7, 3),
    )


def _probe() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))


def _train(model: nn.Module, steps: int, watcher: object | None = None) -> list[torch.Tensor]:
    """A seeded SGD loop on random data; returns each step's loss. ``watcher.step(k)`` is called
    with the number of optimiser steps taken so far, so its last look sees the final weights."""
    torch.manual_seed(3)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(steps):
        if watcher is not None:
            watcher.step(step)  # type: ignore[attr-defined]
        x = torch.randn(4, 3, 16, 16)
        y = torch.randint(0, 3, (4,))
        model.train()
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.detach().clone())
    if watcher is not None:
        watcher.step(steps)  # after the last optimiser step
    return losses


def _hooks(model: nn.Module) -> list[str]:
    """Every hook registered on any module of ``model`` or globally."""
    from torch.nn.modules import module as torch_module

    found = []
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            if getattr(m, attr, None):
                found.append(f"{name or 'model'}.{attr}")
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(torch_module, attr, None):
            found.append(attr)
    return found


def test_training_loss_is_bit_identical_with_and_without_the_watch() -> None:
    plain = _train(_net(), 12)
    model = _net()
    watcher = watch(model, _probe(), every=3)
    watched = _train(model, 12, watcher)
    assert watcher.looks == 5  # steps 0, 3, 6, 9, 12
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    # And the losses did change over training, so equality above is not trivial.
    assert not torch.equal(plain[0], plain[-1])


def test_no_hook_between_looks_and_modes_and_flags_as_before() -> None:
    model = _net()
    model[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    model.train()
    model[1].eval()  # a mixed state is restored as it was
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen_during: list[list[str]] = []

    class Spy:
        def write(self, look: Look) -> None:
            seen_during.append(_hooks(model))

        def close(self) -> None:
            pass

    watcher = watch(model, _probe(), every=2, writer=Spy())
    assert _hooks(model) == []
    for step in range(5):
        look = watcher.step(step)
        assert (look is not None) == (step % 2 == 0)
        assert _hooks(model) == [], f"hooks left after step {step}"
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert len(seen_during) == 3


def test_a_look_is_in_eval_mode_without_gradients() -> None:
    model = _net()
    model.train()
    seen: list[tuple[bool, bool]] = []

    def spy(module: nn.Module, args: object, output: torch.Tensor) -> None:
        seen.append((module.training, torch.is_grad_enabled()))

    handle = model[3].register_forward_hook(spy)
    try:
        watch(model, _probe(), every=1).look(0)
    finally:
        handle.remove()
    assert seen and all(state == (False, False) for state in seen)
    assert model.training


def _values_by_hand(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """Each child's output, computed by calling the children one after the other."""
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for child in model:
            x = child(x)
            out.append(x.clone().numpy())
    model.train(was)
    return out


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_tensorboard_events_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="needs the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _net()
    probe = _probe()
    watcher = watch(model, probe, every=2, writer=tmp_path / "tb", layers=["0", "2", "4", "6"])
    with watcher:
        _train(model, 4, watcher)  # looks at 0, 2, 4
    # The weights the last look saw are the final ones: draw them with run.
    [run] = fm.visualize(model, probe, layers=["0", "2", "4", "6"], report=False)
    expected = _values_by_hand(model, probe)

    events = EventAccumulator(
        str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0, "scalars": 0}
    )
    events.Reload()
    names = ["0", "2", "4", "6"]
    for name in names:
        tag = tags(name)
        assert [e.step for e in events.Images(tag["grid"])] == [0, 2, 4]
        assert [e.step for e in events.Histograms(tag["histogram"])] == [0, 2, 4]
        for key in ("dead_fraction", "mean_abs"):
            assert [e.step for e in events.Scalars(tag[key])] == [0, 2, 4]
        # The last image equals the PNG run draws for the same weights and probe batch.
        image = _decode(events.Images(tag["grid"])[-1].encoded_image_string)
        np.testing.assert_array_equal(image, _decode(run.grids[name].to_png()))
        # The histogram counts equal numpy's on its edges (the first edge: the minimum).
        values = expected[int(name)].ravel().astype(np.float64)
        hist = events.Histograms(tag["histogram"])[-1].histogram_value
        edges = np.array([hist.min, *hist.bucket_limit])
        counts, _ = np.histogram(values, bins=edges)
        np.testing.assert_array_equal(np.array(hist.bucket), counts)
        assert hist.num == values.size
        assert hist.min == values.min() and hist.max == values.max()
        # The scalars, against numpy on the same values.
        mean_abs = events.Scalars(tag["mean_abs"])[-1].value
        assert mean_abs == pytest.approx(np.abs(values).mean(), rel=1e-6)
    # The ReLU's dead channels: channels that are zero over the whole probe batch.
    relu = expected[2]
    dead = float(np.mean([(relu[:, c] == 0).all() for c in range(relu.shape[1])]))
    assert events.Scalars(tags("2")["dead_fraction"])[-1].value == pytest.approx(dead)


def test_dead_fraction_counts_channels_zero_over_the_whole_batch() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU())
    with torch.no_grad():
        model[0].weight[:] = torch.tensor([1.0, -1.0, 0.0]).reshape(3, 1, 1, 1)
        model[0].bias[:] = torch.tensor([0.0, 0.0, -1.0])
    x = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), -1.0)])
    look = watch(model, x, every=1).look(0)
    # Channel 0 fires on sample 0, channel 1 on sample 1, channel 2 never: one dead of three.
    assert look.get("1").dead_fraction == pytest.approx(1 / 3)
    assert look.get("1").mean_abs == pytest.approx(8 / 24)  # 8 ones among 2 x 3 x 4 values


def test_folder_writer_and_timeline(tmp_path: Path) -> None:
    from featuremaps.cli import main

    model = _net()
    with watch(model, _probe(), every=2, writer=FolderWriter(tmp_path / "w"), layers="2") as w:
        _train(model, 4, w)
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert [entry["step"] for entry in manifest["looks"]] == [0, 2, 4]
    last = json.loads((tmp_path / "w" / manifest["looks"][-1]["look"]).read_text())
    [layer] = last["layers"]
    png = (tmp_path / "w" / layer["image"]).read_bytes()
    [run] = fm.visualize(model, _probe(), layers="2", report=False)
    np.testing.assert_array_equal(_decode(png), _decode(run.grids["2"].to_png()))
    out = io.StringIO()
    assert main(["report-timeline", str(tmp_path / "w")], out=out) == 0
    page = (tmp_path / "w" / "timeline.html").read_text()
    for entry in manifest["looks"]:
        look = json.loads((tmp_path / "w" / entry["look"]).read_text())
        assert look["layers"][0]["image"] in page
    assert 'type="range"' in page
    assert "dead" in page


def test_report_timeline_refuses_a_folder_without_looks(tmp_path: Path) -> None:
    from featuremaps.commands.report_timeline import write_timeline

    with pytest.raises(fm.OutputError, match="not a featuremaps watch folder"):
        write_timeline(tmp_path)


@pytest.mark.parametrize("every", [0, -3, 1.5, True])
def test_every_must_be_a_positive_step_count(every: object) -> None:
    with pytest.raises(OptionError, match="is not a step count; expected an integer of 1"):
        watch(_net(), _probe(), every=every)  # type: ignore[arg-type]


def test_probe_must_be_a_tensor_and_sample_in_it() -> None:
    with pytest.raises(OptionError, match="got a probe batch of type list; expected a tensor"):
        watch(_net(), [1, 2], every=1)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="sample 5 asked for, but the probe batch holds 2"):
        watch(_net(), _probe(), every=1, sample=5)


def test_unknown_writer_is_refused() -> None:
    with pytest.raises(OptionError, match="got writer=int; expected a SummaryWriter"):
        watch(_net(), _probe(), every=1, writer=3)


def test_missing_tensorboard_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    message = r"needs the tensorboard package.*featuremaps\[tensorboard"
    with pytest.raises(OptionError, match=message):
        watch(_net(), _probe(), every=1, writer=tmp_path / "tb")


class _Tokens(nn.Module):
    """A patch embedding, a class token in front, then a Linear on the tokens (B, 1+N, C)."""

    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
        self.mix = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1)
        return self.mix(tokens)  # type: ignore[no-any-return]


def _layout_cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(4)
    return {
        "signal": (
            nn.Sequential(nn.Conv1d(2, 4, 5, stride=2), nn.ReLU(), nn.Conv1d(4, 3, 3)),
            torch.randn(2, 2, 64),
        ),
        "volume": (
            nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU()),
            torch.randn(2, 1, 6, 8, 8),
        ),
        "tokens": (_Tokens(), torch.randn(2, 3, 16, 16)),
    }


@pytest.mark.parametrize("case", ["signal", "volume", "tokens"])
def test_every_layout_is_drawn_as_run_draws_it(case: str) -> None:
    model, x = _layout_cases()[case]
    look = watch(model, x, every=1).look(0)
    [run] = fm.visualize(model, x, report=False)
    drawn = [layer for layer in look.layers if layer.picture is not None]
    assert {layer.name for layer in drawn} == set(run.grids)
    for layer in drawn:
        np.testing.assert_array_equal(layer.picture.pixels, run.grids[layer.name].pixels)
    expected = {"signal": "signal heat map", "volume": "volume montage", "tokens": "token grid"}
    assert expected[case] in {record.drawn_as for record in run.records}


def test_missing_lightning_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "featuremaps.integrations.lightning", raising=False)
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(OptionError, match=r"needs PyTorch Lightning.*featuremaps\[lightning\]"):
        importlib.import_module("featuremaps.integrations.lightning")
