"""In a notebook, printing a result must not dump pixels or tensors: every result type has a
short repr that names what it holds."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

import featuremaps as fm
from featuremaps.dataset import DatasetStats, SavedStats
from featuremaps.stats import channel_stats

DUMPS = re.compile(r"tensor\(|array\(|\[\[|\.\.\.\]|dtype=")


def _short(obj: object, *names: str) -> str:
    text = repr(obj)
    assert len(text) < 240, text
    assert "\n" not in text and not DUMPS.search(text), text
    for name in names:
        assert name in text, (name, text)
    return text


def test_capture_and_records(tiny: nn.Module, image_batch: torch.Tensor) -> None:
    records = fm.capture(tiny, torch.randn(1, 3, 64, 64))
    assert _short(records, "Capture(", "conv1", "fc").startswith("Capture(7 records")
    _short(records[0], "LayerRecord('conv1'", "Conv2d", "(1, 8, 64, 64)", "float32", "NCHW")
    streamed = fm.capture(tiny, image_batch, on_record=lambda r: None)
    _short(streamed, "(streamed)")


def test_visualization_grid_and_summary(tiny: nn.Module, tmp_path: Path) -> None:
    x = torch.randn(1, 3, 96, 96)
    [memory] = fm.visualize(tiny, x, layers="conv1")
    _short(memory, "Visualization(", "1 drawn", "1 grids in memory")
    _short(memory.grids["conv1"], "Grid(", "8 of 8 channels", "scale layer")
    _short(memory.records[0], "RecordSummary('conv1'", "channel grid")
    [written] = fm.visualize(tiny, x, out=tmp_path / "o")
    _short(written, "out_dir=")
    _short(channel_stats(np.zeros((4, 3, 3), np.float32)), "ChannelStats(4 channels")


def test_loaded_model_input_and_overlay(tmp_path: Path) -> None:
    loaded = fm.load_model("shapes_cnn")
    _short(loaded, "LoadedModel('shapes_cnn'", "parameters")
    assert "<table>" in loaded._repr_html_()
    item = fm.load_input(fm.sample_image_path())
    _short(item, "LoadedInput('grace_hopper.jpg'", "(1, 3, 600, 512)")
    picture = fm.draw_overlay(loaded, item, "conv1", 0)
    _short(picture, "Overlay(", "cells")


def test_ablation_and_data_set_results(tmp_path: Path) -> None:
    from featuremaps.ablation import AblationPoint, AblationResult

    point = AblationPoint("ranked", 0, 0, 0, 1.0, 0.0, 0.0, masks={"conv1": ()})
    result = AblationResult([point], {"conv1": 8}, {"conv1": list(range(8))}, "absmean", (0,), 0, 4)
    _short(result, "AblationResult(1 layers", "absmean")
    _short(DatasetStats(images=3), "DatasetStats(0 layers, 3 images")
    _short(SavedStats(tmp_path / "stats.csv", {"a": {"mean": np.zeros(512)}}), "1 layers")
