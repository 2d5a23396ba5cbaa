"""The compare page in a real browser (Chromium through Playwright, from file://): pointing at
a cell of A, B or B−A reads A's, B's and B−A's values of that same cell, with no script or CSP
error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from featuremaps.commands.compare import compare

pytestmark = pytest.mark.browser

ACTUAL = Path(__file__).resolve().parent / "actual"


def test_hover_reads_a_b_and_difference_at_the_same_cell(browser: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)).eval()
    a, b = torch.rand(1, 3, 6, 8), torch.rand(1, 3, 6, 8)
    result = compare(model, a, b, out=tmp_path / "o", layers=["0"], chosen=[1])
    with torch.no_grad():
        xa, xb = model(a)[0, 1].double(), model(b)[0, 1].double()
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "o" / result["page"]).resolve().as_uri())
        page.wait_for_load_state("load")
        maps = page.locator("section.compare-layer [data-role=map]")
        assert maps.count() == 3
        readout = page.locator("section.compare-layer [data-role=readout]")
        for picture, (row, col) in zip(range(3), [(0, 0), (2, 5), (5, 7)], strict=True):
            box = maps.nth(picture).bounding_box()
            assert box is not None
            # The centre of cell (row, col) on a 6 x 8 map drawn as exact blocks.
            x = box["x"] + (col + 0.5) * box["width"] / 8
            y = box["y"] + (row + 0.5) * box["height"] / 6
            page.mouse.move(x, y)
            text = readout.inner_text()
            va, vb = float(xa[row, col]), float(xb[row, col])
            assert text.startswith(f"cell ({row}, {col}): "), text
            assert f"A {va:.5g}" in text and f"B {vb:.5g}" in text, (text, va, vb)
            assert f"B−A {vb - va:.5g}" in text, (text, vb - va)
        ACTUAL.mkdir(exist_ok=True)
        page.screenshot(path=str(ACTUAL / "compare_page.png"), full_page=True)
        assert errors == []
    finally:
        context.close()
