"""The run's writer thread: its queue is bounded by what the waiting jobs hold, and its last jobs
keep the run's thread limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torchvision.models import VisionTransformer

import featuremaps as fm
from featuremaps.commands.run_files import BackgroundWriter, held_bytes
from featuremaps.render.grid import GridLabel, GridOptions, make_grid
from featuremaps.render.panels import Composite
from featuremaps.render.tokens import plan_token_picture


def _returns_soon(call: Callable[[], object], seconds: float) -> bool:
    done = threading.Thread(target=call, daemon=True)
    done.start()
    done.join(seconds)
    return not done.is_alive()


def _blocked_until(gate: threading.Event, call: Callable[[], object]) -> bool:
    """Whether ``call`` waits while ``gate`` is shut and returns once it opens."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(0.3)
    waited = thread.is_alive()
    gate.set()
    thread.join(10)
    return waited and not thread.is_alive()


def test_small_jobs_queue_past_the_limit_within_the_budget() -> None:
    gate = threading.Event()
    writer = BackgroundWriter({"encode": 0.0, "write": 0.0}, limit=2, budget=100)
    try:
        writer.run(gate.wait, held=10)  # the writer is stuck on this one until the gate opens
        # Five more jobs, 60 bytes in all: past the limit of 2, within the budget; none waits.
        assert _returns_soon(lambda: [writer.run(lambda: None, held=10) for _ in range(5)], 5)
        # 110 bytes would wait: this one waits for the stuck job (and those before it).
        assert _blocked_until(gate, lambda: writer.run(lambda: None, held=50))
        writer.wait()
        assert not writer.busy()
    finally:
        gate.set()
        writer.close()


def test_the_first_jobs_always_queue_whatever_they_hold() -> None:
    gate = threading.Event()
    writer = BackgroundWriter({"encode": 0.0, "write": 0.0}, limit=3, budget=100)
    try:
        writer.run(gate.wait, held=1000)
        assert _returns_soon(lambda: [writer.run(lambda: None, held=1000) for _ in range(2)], 5)
        assert _blocked_until(gate, lambda: writer.run(lambda: None, held=1))
    finally:
        gate.set()
        writer.close()


def test_a_failed_job_is_raised_by_a_later_call() -> None:
    writer = BackgroundWriter({"encode": 0.0, "write": 0.0})

    def fail() -> None:
        raise OSError("disk full")

    try:
        writer.run(fail, held=0).exception(10)  # done, failed
        try:
            writer.run(lambda: None, held=0)
        except OSError as error:
            assert "disk full" in str(error)
        else:
            raise AssertionError("the failure was not raised")
    finally:
        writer.close()


def test_held_bytes_counts_the_arrays_a_waiting_picture_keeps() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((8, 6, 5)).astype(np.float32)
    grid = make_grid(maps, GridOptions(), label=GridLabel("x", "Conv2d", (1, 8, 6, 5)))
    assert held_bytes(grid) == grid.indices.nbytes > 0
    rgb = np.zeros((7, 9, 3), dtype=np.uint8)
    assert held_bytes(Composite(rgb)) == rgb.nbytes
    patches = rng.standard_normal((16, 4, 4)).astype(np.float32)
    plan = plan_token_picture(
        patches, np.zeros((0, 16), np.float32), GridOptions(), GridLabel("t", "Linear", (1, 16, 16))
    )
    expected = plan.patches.nbytes + plan.norm.nbytes + plan.tail.nbytes + plan.grid.indices.nbytes
    assert held_bytes(plan) == expected
    assert plan.patches.nbytes >= patches.nbytes
    assert held_bytes(b"not a picture") == 0


def test_token_pcas_still_queued_when_the_forward_ends_take_one_blas_thread_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run holds numpy's BLAS to one thread while its writer works; the PCAs left in the
    # writer's queue when the forward ends must not get the threads back (with two, their
    # explained variances differed in the last digits from one run to the next).
    import featuremaps.render.tokens as tokens

    real, seen = tokens.token_pca, []

    def slow_pca(patches: np.ndarray, k: int = 3, *, dtype: object = None) -> object:
        time.sleep(0.05)  # so that several are still queued when the forward ends
        seen.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
        return real(patches, k, dtype=dtype)

    monkeypatch.setattr(tokens, "token_pca", slow_pca)
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    with threadpool_limits(2, user_api="blas"):
        fm.visualize(vit, torch.rand(1, 3, 32, 32), out=tmp_path, progress=False)
    assert len(seen) >= 4
    assert set(seen) == {1}
