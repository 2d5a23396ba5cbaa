"""The benchmark suite's smoke mode runs here so it cannot rot; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

RUN = Path(__file__).parents[1] / "benchmarks" / "run.py"


@pytest.mark.slow
def test_benchmark_smoke_mode_writes_every_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("fm_benchmarks", RUN)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
    assert "1. render vs recipe" in capsys.readouterr().out
