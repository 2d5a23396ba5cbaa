"""The engine layer without Ray: partials are folded in item order and never twice, the engine
options refuse nonsense, and asking for Ray without the extra is one line naming it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featuremaps._errors import EngineError, OptionError
from featuremaps.cli import main
from featuremaps.commands.common import resolve_model
from featuremaps.dataset import DatasetStats, StatsPartial, compute_dataset_stats, fold_stats
from featuremaps.datastats import RunningHistogram, RunningStats
from featuremaps.engine import EngineOptions, Merger, ModelSpec, run_job
from featuremaps.inputs import Preprocessing


def test_partials_are_folded_in_item_order_whatever_order_they_arrive() -> None:
    folded: list[tuple[int, str]] = []
    merger = Merger(4, lambda key, partial: folded.append((key, partial)))
    for key in (2, 0, 3, 1):
        merger.add(key, f"p{key}")
    merger.finish()
    assert folded == [(0, "p0"), (1, "p1"), (2, "p2"), (3, "p3")]


@pytest.mark.parametrize("second", [0, 2])  # already folded / still waiting for item 1
def test_a_partial_delivered_twice_is_refused(second: int) -> None:
    merger = Merger(3, lambda key, partial: None)
    merger.add(0, "a")
    merger.add(2, "c")
    with pytest.raises(EngineError, match=f"partial for item {second} arrived twice"):
        merger.add(second, "again")


def test_a_missing_or_unknown_item_is_named() -> None:
    merger = Merger(3, lambda key, partial: None)
    with pytest.raises(EngineError, match=r"a partial for item 5; expected items 0\.\.2"):
        merger.add(5, "x")
    merger.add(0, "a")
    merger.add(2, "c")
    with pytest.raises(EngineError, match=r"1 of 3 items never came back \(first: item 1\)"):
        merger.finish()


def test_merged_batch_partials_equal_one_pass_over_all_values() -> None:
    """The fold the engines share: partials of batches merge into numpy's numbers over all."""
    rng = np.random.default_rng(3)
    batches = [rng.normal(5, 2, (n, 3, 4, 4)).astype(np.float32) for n in (2, 5, 1)]
    batches[1][:, 1] = 0.0  # a channel of exact zeros in one batch
    total = DatasetStats()
    for batch in batches:
        stats, hist = RunningStats(3), RunningHistogram(16)
        stats.update(batch, histogram=hist)
        fold_stats(total, StatsPartial({"x": (stats, hist)}, {"x": "T"}, len(batch)), 1e-6, False)
    everything = np.concatenate(batches)
    per_channel = np.moveaxis(everything, 1, 0).reshape(3, -1).astype(np.float64)
    result = total.layers["x"].result()
    assert total.images == 8
    np.testing.assert_array_equal(result["count"], [per_channel.shape[1]] * 3)
    np.testing.assert_array_equal(result["min"], per_channel.min(axis=1))
    np.testing.assert_array_equal(result["max"], per_channel.max(axis=1))
    np.testing.assert_allclose(result["mean"], per_channel.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(result["std"], per_channel.std(axis=1), rtol=1e-10)
    np.testing.assert_array_equal(result["zeros"], (per_channel == 0).mean(axis=1))
    hist = total.histograms["x"].result()
    counts, _ = np.histogram(everything.astype(np.float64), bins=hist.edges)
    np.testing.assert_array_equal(hist.counts, counts)


def test_the_local_engine_reads_in_reader_processes_and_folds_every_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    paths = sorted(tmp_path.glob("*.png"))
    model = torch.nn.Conv2d(3, 2, 3).eval()
    kw = {"channels": 3, "preprocessing": Preprocessing.unchanged(), "batch_size": 2}
    alone = compute_dataset_stats(model, paths, workers=0, **kw)  # type: ignore[arg-type]
    readers = compute_dataset_stats(model, paths, workers=2, **kw)  # type: ignore[arg-type]
    assert alone.engine is not None and alone.engine.items == 5  # unsized images: one per item
    for name, stats in alone.layers.items():
        for key, value in stats.result().items():
            np.testing.assert_array_equal(value, readers.layers[name].result()[key])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "spark"}, "--engine 'spark' is unknown; expected local or ray"),
        ({"name": "ray", "workers": 0}, "--workers 0 for the ray engine; expected 1 or more"),
        ({"gpus_per_worker": -1.0}, "--gpus-per-worker -1.0; expected 0 or more"),
        ({"threads": 0}, "--threads-per-worker 0; expected 1 or more"),
    ],
)
def test_engine_options_refuse_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        EngineOptions(**kwargs)  # type: ignore[arg-type]


def test_a_model_object_cannot_be_sent_to_workers() -> None:
    loaded = resolve_model(torch.nn.Conv2d(3, 2, 3))
    with pytest.raises(OptionError, match="given as a Python object; pass a spec"):
        ModelSpec.from_loaded(loaded)


def test_a_spec_keeps_what_the_workers_need() -> None:
    loaded = resolve_model("shapes_cnn")
    spec = ModelSpec.from_loaded(loaded, device="cpu")
    assert (spec.spec, spec.device) == ("shapes_cnn", "cpu")
    again, placement = spec.load()
    for a, b in zip(
        loaded.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert placement.device.type == "cpu"


class _Nothing:
    def open(self) -> None: ...

    def read(self, item: object) -> object:
        return item

    def compute(self, data: object) -> object:
        return data

    def describe_compute(self) -> None:
        return None


def test_ray_without_the_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when not installed
    with pytest.raises(EngineError, match=r"needs Ray, which is not installed; pip install "
                       r"'featuremaps\[ray\]'"):  # fmt: skip
        run_job(_Nothing(), [1], lambda key, partial: None, EngineOptions("ray"))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    code = main(["stats", str(tmp_path / "a.png"), "-m", "shapes_cnn", "--engine", "ray", "-q",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "pip install 'featuremaps[ray]'" in err[0]


def test_a_cohort_of_slides_goes_to_one_folder_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tifffile", reason="the slide extra is not installed")
    from slide_data import tissue_picture, write_page_pyramid

    slides = [
        write_page_pyramid(tmp_path / f"{name}.tif", tissue_picture(64, 80, seed), mpp=0.5,
                           jpeg=False, levels=1)
        for seed, name in enumerate(("first", "second"))
    ]  # fmt: skip
    argv = ["slide", *map(str, slides), "-m", "shapes_cnn", "--layers", "relu1", "--tile", "32",
            "--tissue", "none", "--no-viewer", "-q", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("first", "second"):
        manifest = tmp_path / "out" / name / "slide.json"
        assert manifest.is_file() and f"{name}.tif -> {tmp_path / 'out' / name}" in printed
    regions = tmp_path / "r.geojson"
    regions.write_text('{"type": "FeatureCollection", "features": []}')
    assert main([*argv, "--regions", str(regions)]) == 2
    assert "belongs to one slide, and 2 slides were given" in capsys.readouterr().err
