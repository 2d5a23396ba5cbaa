"""The watch timeline page in a real browser (Chromium through Playwright, from file://): the
slider swaps each layer's picture for the chosen step, with no script or CSP error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from featuremaps.commands.report_timeline import read_looks, write_timeline
from featuremaps.watch import watch
from featuremaps.watch_writers import FolderWriter

pytestmark = pytest.mark.browser

ACTUAL = Path(__file__).resolve().parent / "actual"


def test_timeline_slider_shows_each_step(browser: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    folder = tmp_path / "looks"
    with watch(model, torch.randn(2, 3, 12, 12), every=1, writer=FolderWriter(folder)) as w:
        for step in range(3):
            w.step(step * 10)  # steps 0, 10, 20 (every=1: each call is due)
            with torch.no_grad():
                model[0].weight.mul_(-1.5)  # the pictures change from look to look
    page_path = write_timeline(folder)
    looks = read_looks(folder)
    images = [look["layers"][1]["image"] for look in looks]

    context = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        section = "section.timeline-layer[data-index='1']"
        picture = page.locator(f"{section} [data-role=picture]")
        assert picture.get_attribute("src") == images[-1]
        for at in (0, 1, 2):
            page.eval_on_selector(
                f"{section} [data-role=slider]",
                "(el, at) => { el.value = at; el.dispatchEvent(new Event('input')); }",
                at,
            )
            assert picture.get_attribute("src") == images[at]
            assert page.locator(f"{section} [data-role=step]").inner_text() == str(at * 10)
            page.wait_for_function(
                "el => el.complete && el.naturalWidth > 0", arg=picture.element_handle()
            )
        ACTUAL.mkdir(exist_ok=True)
        page.screenshot(path=str(ACTUAL / "watch_timeline.png"), full_page=True)
        assert errors == []
    finally:
        context.close()
