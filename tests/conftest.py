"""Shared fixtures: tiny models and inputs built in code, every RNG seeded, no downloads; and
the Chromium that browser tests drive (Debian's, through Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import settings
from torch import nn

#: How the browser tests start Chromium.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test module; a missing one fails the test
    (CI installs it) rather than skipping it."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("the browser tests need Chromium; run .ci/run or `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need playwright; run `make test` or pip install -e '.[dev]'")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# CI replays the same examples every run (a red CI must mean a changed program, not a new draw);
# local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_and_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    torch.manual_seed(0)
    # Weight downloads cannot work in tests; fail over at once instead of waiting for DNS.
    monkeypatch.setenv("FEATUREMAPS_OFFLINE", "1")
    yield


class TinyNet(nn.Module):
    """Conv → BN → in-place ReLU → conv, with a reused activation and an `+=` skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        z = self.conv2(y)
        z += y
        z = self.act(z)
        return self.fc(torch.flatten(self.pool(z), 1))


@pytest.fixture
def tiny() -> TinyNet:
    return TinyNet().eval()


@pytest.fixture
def image_batch() -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class NamedChain(nn.Module):
    """1x1 convolutions registered under the given (possibly hostile) names, run in order."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        for name in names:
            self.add_module(name, nn.Conv2d(1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            x = getattr(self, name)(x)
        return x


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is present; elsewhere they skip, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
