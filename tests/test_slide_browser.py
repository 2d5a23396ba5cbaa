"""The slide viewer in a real browser: Debian's Chromium driven by Playwright, file://, offline.

Needs the ``chromium`` executable and ``playwright`` (the ``dev`` extra); fails, never skips, when
either is missing. Screenshots go to tests/actual/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from slide_data import tissue_picture, write_page_pyramid

pytestmark = pytest.mark.browser

ACTUAL = Path(__file__).resolve().parent / "actual"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("the browser tests need Chromium: run .ci/run or `apt-get install chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need playwright; pip install -e '.[dev]'")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=ARGS)
        yield chromium
        chromium.close()


def _model() -> fm.LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1)
    ).eval()
    pre = fm.Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), source="test")
    return fm.LoadedModel(net, "net", "factory", "as given", "test weights", True,
                          preprocessing=pre)  # fmt: skip


def _shot(page: Any) -> np.ndarray:
    box = page.locator("#viewer").bounding_box()
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _wait_until(page: Any, expression: str, seconds: float = 10.0) -> None:
    """Poll ``expression`` from the test side. Playwright's own ``wait_for_function`` polls with
    ``eval`` inside the page, which the viewer's CSP (no 'unsafe-eval') refuses."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {seconds} s: {expression}")
        page.wait_for_timeout(50)


def test_viewer_opens_offline_and_shows_the_overlay(browser: Any, tmp_path: Path) -> None:
    picture = tissue_picture(600, 704)
    slide = write_page_pyramid(tmp_path / "s.tif", picture, mpp=0.5)
    fm.slide_maps(_model(), slide, layers="2", out=tmp_path / "out", tile=256, channels="all")
    index = tmp_path / "out" / "viewer" / "index.html"
    context = browser.new_context(viewport={"width": 1000, "height": 800}, offline=True)
    requested: list[str] = []
    errors: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: requested.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    _wait_until(page, "Number(document.body.dataset.tilesLoaded || 0) >= 4", 20.0)
    page.wait_for_timeout(500)
    assert page.locator("header .stamp").inner_text() == "RANDOM WEIGHTS"
    assert "exact" in page.locator("footer").inner_text()

    page.locator("#opacity").fill("0")
    _wait_until(page, "document.body.dataset.opacity === '0'")
    page.wait_for_timeout(400)
    bare = _shot(page)
    page.locator("#opacity").fill("100")
    _wait_until(page, "document.body.dataset.opacity === '1'")
    page.wait_for_timeout(400)
    full = _shot(page)
    ACTUAL.mkdir(exist_ok=True)
    Image.fromarray(full.astype(np.uint8)).save(ACTUAL / "slide_viewer.png")
    Image.fromarray(bare.astype(np.uint8)).save(ACTUAL / "slide_viewer_bare.png")

    # Without the overlay the page shows the slide (white glass, pink-purple tissue); with it,
    # every computed tile is covered by the map's colours, and the two tiles that are all glass
    # (never computed: top-right and bottom-left of the 3 x 3 grid) stay bare.
    changed = np.abs(full - bare).sum(axis=2) > 30
    tissue = (bare[:, :, 1] < 150) & (bare[:, :, 0] > 60)
    assert tissue.mean() > 0.05
    assert changed[tissue].mean() > 0.9

    def screen(x0: int, y0: int, x1: int, y1: int) -> tuple[slice, slice]:
        corners = page.evaluate(
            """([x0, y0, x1, y1]) => {
                const item = window.featuremapsViewer.world.getItemAt(0);
                const a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x0, y0));
                const b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x1, y1));
                return [a.x, a.y, b.x, b.y];
            }""",
            [x0 / 2, y0 / 2, x1 / 2, y1 / 2],  # the slide picture is at half resolution
        )
        ax, ay, bx, by = (round(v) for v in corners)
        return slice(max(ay, 0) + 3, by - 3), slice(max(ax, 0) + 3, bx - 3)

    for rect in ((512, 0, 704, 256), (0, 512, 256, 600)):
        bare_tile = screen(*rect)
        assert changed[bare_tile].size > 1000 and not changed[bare_tile].any()
    assert changed[screen(256, 256, 512, 512)].mean() > 0.99
    assert page.locator("#opacity-value").inner_text() == "100%"
    assert not errors
    assert all(url.startswith("file://") for url in requested)
    context.close()
