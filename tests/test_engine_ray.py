"""`--engine ray` gives what `--engine local` gives: stats, ablation curves and slide maps, on a
local Ray (one per test session, 2 CPUs), also when a worker is killed in the middle of a run.

The local engine is checked against numpy elsewhere (test_dataset.py, test_ablation.py,
test_slide.py); here it is the oracle. Skipped when the ``ray`` extra is not installed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'featuremaps[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'featuremaps[ray]'")

import ray
import ray.data

from featuremaps.cli import main
from ray_models import DRIVER_PID, KILL_FLAG

MODEL = f"{Path(__file__).with_name('ray_models.py')}:build"
#: A test that runs longer than this failed: a scheduling stall must not hang CI.
WALL_CLOCK_S = 120


@pytest.fixture(scope="session")
def kill_flag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One local Ray for the whole session; yields the flag file that kills one worker."""
    flag = tmp_path_factory.mktemp("ray") / "kill-one-worker"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ[KILL_FLAG] = str(flag)  # read by the workers, which inherit this environment
    os.environ[DRIVER_PID] = str(os.getpid())
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=150 * 2**20,
        logging_level=logging.WARNING,
    )
    # A stalled pool fails after a minute instead of Ray Data's default of 30.
    ray.data.DataContext.get_current().execution_no_progress_timeout_s = 60
    yield flag
    ray.shutdown()


@pytest.fixture(autouse=True)
def _wall_clock() -> Iterator[None]:
    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"a Ray test ran past {WALL_CLOCK_S} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(WALL_CLOCK_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i in range(7):
        pixels = rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "broken.png").write_text("not a picture")
    (folder / "notes.txt").write_text("passed over: not an image suffix")
    return folder


def _stats(data: Path, out: Path, *engine: str) -> tuple[list[dict[str, str]], dict[str, object]]:
    argv = ["stats", str(data), "-m", MODEL, "--size", "16x16", "--batch-size", "3"]
    assert main([*argv, "--out", str(out), "--no-plots", "-q", *engine]) == 0
    with (out / "stats.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def local_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local") / "out"


@pytest.fixture(scope="module")
def local_stats(data: Path, local_out: Path) -> tuple[list[dict[str, str]], dict[str, object]]:
    return _stats(data, local_out, "--workers", "0")


def _assert_same_stats(
    local: tuple[list[dict[str, str]], dict[str, object]],
    remote: tuple[list[dict[str, str]], dict[str, object]],
) -> None:
    rows_a, summary_a = local
    rows_b, summary_b = remote
    assert len(rows_a) == len(rows_b) > 0
    exact = ("layer", "channel", "count", "min", "max", "zeros", "near_zeros", "nonfinite", "dead")
    for a, b in zip(rows_a, rows_b, strict=True):
        assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
        for key in ("mean", "std", "absmean"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-10, abs=0)
    layers_a, layers_b = summary_a["layers"], summary_b["layers"]
    assert isinstance(layers_a, list) and isinstance(layers_b, list)
    assert [x["histogram"] for x in layers_a] == [x["histogram"] for x in layers_b]
    assert summary_a["inputs"] == summary_b["inputs"]  # found, read, not read with reasons, skipped


def test_stats_on_ray_equal_the_local_engine(
    kill_flag: Path, data: Path, tmp_path: Path, local_stats: tuple[list[dict[str, str]], dict]
) -> None:
    remote = _stats(data, tmp_path / "out", "--engine", "ray", "--workers", "2")
    _assert_same_stats(local_stats, remote)
    _, summary = remote
    not_read = summary["inputs"]["not_read"]  # type: ignore[index]
    assert [Path(x["path"]).name for x in not_read] == ["broken.png"]
    assert summary["inputs"]["skipped"] == {"suffix '.txt' is not an image or .npy": 1}  # type: ignore[index]
    engine = summary["engine"]
    assert engine["name"] == "ray" and engine["workers"] == 2 and engine["retries"] == 0  # type: ignore[index]
    assert engine["items"] == 3  # 8 files in batches of 3  # type: ignore[index]


def test_a_worker_killed_mid_run_changes_nothing_and_is_counted(
    kill_flag: Path, data: Path, tmp_path: Path, local_stats: tuple[list[dict[str, str]], dict]
) -> None:
    kill_flag.write_text("the first worker to run a batch dies")
    remote = _stats(data, tmp_path / "out", "--engine", "ray", "--workers", "2")
    assert not kill_flag.exists()  # a worker took it, and died
    _assert_same_stats(local_stats, remote)
    engine = remote[1]["engine"]
    assert engine["retries"] >= 1  # type: ignore[index]
    assert engine["workers_started"] >= 3  # the dead worker was replaced  # type: ignore[index]


def test_ablation_on_ray_equals_the_local_engine(
    kill_flag: Path,
    data: Path,
    tmp_path: Path,
    local_out: Path,
    local_stats: tuple[list[dict[str, str]], dict],
) -> None:
    # Ranked by the statistics file of the local run (the in-sample ranking pass is the stats
    # engine tested above): one Ray pass here, the measurement.
    argv = [
        "ablate", str(data), "-m", MODEL, "--size", "16x16", "--batch-size", "3",
        "--layers", "conv1,conv2", "--k", "0,1,3", "--random", "2", "-q",
        "--stats", str(local_out / "stats.csv"),
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b"), "--engine", "ray"]) == 0
    a, b = (tmp_path / "a" / "ablation.csv").read_text(), (tmp_path / "b" / "ablation.csv")
    assert a == b.read_text()
    ja = json.loads((tmp_path / "a" / "ablation.json").read_text())
    jb = json.loads((tmp_path / "b" / "ablation.json").read_text())
    assert ja["curve"] == jb["curve"] and ja["layers"] == jb["layers"]
    assert ja["inputs"] == jb["inputs"]
    assert jb["engine"]["measurement"]["name"] == "ray"
    assert jb["engine"]["measurement"]["items"] == 3


def test_slide_on_ray_equals_the_local_engine(kill_flag: Path, tmp_path: Path) -> None:
    import tifffile

    from slide_data import tissue_picture, write_page_pyramid

    slide = write_page_pyramid(
        tmp_path / "s.tif", tissue_picture(96, 128), mpp=0.5, jpeg=False, levels=1
    )
    square = [[20.0, 10.0], [90.0, 10.0], [90.0, 70.0], [20.0, 70.0], [20.0, 10.0]]
    regions = tmp_path / "regions.geojson"
    regions.write_text(
        json.dumps([{"type": "Feature", "properties": {"name": "r"},
                     "geometry": {"type": "Polygon", "coordinates": [square]}}])
    )  # fmt: skip
    argv = [
        "slide", str(slide), "-m", MODEL, "--layers", "conv2", "--tile", "32", "--tissue",
        "none", "--channels", "all", "--regions", str(regions), "--no-viewer", "-q",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b"), "--engine", "ray"]) == 0
    ma = json.loads((tmp_path / "a" / "slide.json").read_text())
    mb = json.loads((tmp_path / "b" / "slide.json").read_text())
    assert mb["engine"]["name"] == "ray" and mb["engine"]["items"] > 0
    assert ma["tiles"]["done"] == mb["tiles"]["done"] and ma["tiles"]["failed"] == []
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tif"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.tif"))
    assert any("ome" in str(name) for name in files)
    for name in files:
        stored_a = tifffile.imread(tmp_path / "a" / name)
        stored_b = tifffile.imread(tmp_path / "b" / name)
        assert stored_a.dtype == stored_b.dtype
        assert stored_a.tobytes() == stored_b.tobytes()  # bit for bit, NaN included
    for table in ("stats.csv", "regions.csv"):
        assert (tmp_path / "a" / table).read_text() == (tmp_path / "b" / table).read_text()


def test_atlas_on_ray_equals_the_local_engine(kill_flag: Path, data: Path, tmp_path: Path) -> None:
    argv = [
        "atlas", str(data), "-m", MODEL, "--size", "16x16", "--batch-size", "3",
        "--layers", "conv1,conv2", "--top", "4", "--controls", "2", "-q",
    ]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a"), "--workers", "0"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b"), "--engine", "ray", "--workers", "2"]) == 0
    ja = json.loads((tmp_path / "a" / "atlas.json").read_text())
    jb = json.loads((tmp_path / "b" / "atlas.json").read_text())
    assert ja["layers"] == jb["layers"] and ja["inputs"] == jb["inputs"]  # same cells, same crops
    for name in ("conv1", "conv2"):
        for patch in (e["patch"] for c in ja["layers"][name]["channels"].values() for e in c):
            assert (tmp_path / "a" / patch).read_bytes() == (tmp_path / "b" / patch).read_bytes()
    assert jb["engine"]["name"] == "ray" and jb["engine"]["items"] == 3


def test_compare_cka_on_ray_equals_the_local_engine(
    kill_flag: Path, data: Path, tmp_path: Path
) -> None:
    import torch

    from ray_models import build

    other = build()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    weights = tmp_path / "b.pth"
    torch.save(other.state_dict(), weights)
    argv = ["compare", "--data", str(data), "-m", MODEL, "--weights-b", str(weights),
            "--size", "16x16", "--batch-size", "4"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    local = json.loads((tmp_path / "local" / "compare.json").read_text())
    remote = json.loads((tmp_path / "ray" / "compare.json").read_text())
    assert remote["engine"]["name"] == "ray" and local["engine"]["name"] == "local"
    assert remote["inputs"] == local["inputs"]
    assert (remote["cka_batches"], remote["cka_left_out"]) == (local["cka_batches"], 3)
    np.testing.assert_allclose(
        remote["cka_matrix"]["values"], local["cka_matrix"]["values"], rtol=1e-10, atol=0
    )
    assert min(layer["cka"] for layer in local["layers"]) < 0.999  # B is another checkpoint
    for a, b in zip(local["layers"], remote["layers"], strict=True):
        np.testing.assert_allclose(b["mean_shift"], a["mean_shift"], rtol=1e-10, atol=1e-15)
