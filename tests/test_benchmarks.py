"""The benchmark suite's smoke mode runs here so it cannot rot; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

RUN = Path(__file__).parents[1] / "benchmarks" / "run.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fm_benchmarks", RUN)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def check_stats(stats: dict[str, Any]) -> None:
    assert stats["images"]["count"] == 4
    assert [(row["model"], row["workers"]) for row in stats["rows"]] == [
        ("shapes_cnn", 2),
        ("shapes_cnn", 0),
    ]
    for row in stats["rows"]:
        assert set(row["images_per_s"]) == {"plain", "capture", "stats"}
        assert all(v > 0 for v in row["images_per_s"].values())
    [breakdown] = stats["breakdown"]
    assert breakdown["s"]["RunningStats.update"] > 0 and breakdown["values_per_image"] > 0


@pytest.mark.slow
def test_benchmark_smoke_mode_writes_every_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    out = tmp_path / "results.json"
    bench.main(["--smoke", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    assert results["render"]["skipped_for_recipe"]["layers"] == ["pool"]
    assert results["render"]["layers"] == 4 and results["render"]["ratio_total"] > 0
    assert set(results["capture"][0]["ratio"]) >= {"streamed", "kept"}
    assert results["end_to_end"]["pictures"] > 0
    assert set(results["end_to_end"]["median_s"]) >= {"capture", "render", "encode", "write"}
    assert results["memory"]["peak_rss_mib"]["plain"] > 0
    assert [row["channels"] for row in results["scaling"]["channels_shown"]] == [32, 256, 512]
    check_stats(results["stats"])
    engine = results["engine"]
    if "skipped" not in engine:  # the ray extra is installed
        assert engine["median"]["ray"]["items_per_s"] > 0 and engine["partial_bytes"] > 0
    [e2e] = results["e2e"]["rows"]
    assert set(e2e["ratio"]) == {"run", "layers"} and e2e["s"]["floor"]["median"] > 0
    assert results["e2e"]["import"]["heavy_imported"] == []
    gpu = results["gpu"]
    assert ("skipped" in gpu) != torch.cuda.is_available()
    watch = results["watch"]
    assert watch["looks"] == 2 and watch["ratio"]["loop"] > 0 and watch["ratio"]["look_vs_run"] > 0
    assert set(results["measured"]) == set(bench.SECTIONS)
    printed = capsys.readouterr().out
    assert "1. render vs recipe" in printed and "6. dataset stats" in printed
    assert "7. whole processes vs the floor" in printed


@pytest.mark.slow
def test_benchmark_only_keeps_the_other_sections_of_the_same_mode(tmp_path: Path) -> None:
    bench = load_bench()
    out = tmp_path / "results.json"
    memory = {
        "model": "tiny",
        "input": 64,
        "peak_rss_mib": {"model only": 1.0, "plain": 2.0, "streamed": 2.0},
        "ratio": 1.0,
        "ratio_above_model": 1.0,
    }
    earlier = {"smoke": True, "measured": {"memory": {"at": "then"}}, "memory": memory}
    out.write_text(json.dumps(earlier))
    bench.main(["--smoke", "--only", "stats", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["memory"] == memory and results["measured"]["memory"]["at"] == "then"
    check_stats(results["stats"])
    assert any(line.startswith("4. peak RSS") for line in results["table"])
    # Full-mode rows are never mixed with smoke rows.
    out.write_text(json.dumps({**earlier, "smoke": False}))
    bench.main(["--smoke", "--only", "stats", "--out", str(out)])
    assert "memory" not in json.loads(out.read_text())
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--only", "stats,nope", "--out", str(out)])


def test_each_whole_run_writes_a_new_folder_and_removes_none(tmp_path: Path) -> None:
    bench = load_bench()
    make = "import os, sys; os.makedirs(sys.argv[1]); open(sys.argv[1] + '/f', 'w').close()"
    run = bench.each_in_a_new_folder([sys.executable, "-c", make, str(tmp_path / "m-N")], {})
    seconds = [run() for _ in range(3)]
    assert all(s > 0 for s in seconds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0", "m-1", "m-2"]
    assert all((tmp_path / f"m-{i}" / "f").exists() for i in range(3))
