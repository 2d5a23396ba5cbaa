"""The report's class-map panel in a real browser (Debian's Chromium via Playwright, file:// pages).

A tiny model's run with gradcam and eigencam maps: the pictures load, the numbers are the
manifest's, the eigencam maps carry the failing badge (eigencam does not depend on the layers
above, so the sanity check fails by construction), and the links from the layer list and the
page's navigation reach the panel. Same fixtures and requirements as test_report_browser.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import featuremaps as fm
import test_report_browser as shared
from conftest import TinyNet
from test_report_browser import ACTUAL, Opened, Run, _wait_until

pytestmark = pytest.mark.browser

# The browser of the report's browser tests.
browser = shared.browser


@pytest.fixture
def open_report(browser: Any) -> Iterator[Any]:
    """Like the report tests' opener, but it waits for the page's script, not for a layer to be
    drawn: the panel sits above the layers, so on a short window none may be near the screen."""
    contexts = []

    def open_(url: str, width: int = 1280, height: int = 900) -> Opened:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        opened = Opened(page)
        page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: opened.errors.append(str(e)))
        page.on("dialog", lambda d: (opened.dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        # report.js sets the sticky bar's height in the one synchronous run that wires the page.
        _wait_until(page, "document.documentElement.style.getPropertyValue('--bar') !== ''")
        return opened

    yield open_
    for context in contexts:
        context.close()


# Whether each class-map picture has loaded (an image, not a broken link).
LOADED = (
    "Array.from(document.querySelectorAll('#fm-cams img.cam-picture'))"
    ".map(i => i.complete && i.naturalWidth > 0)"
)


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    options = fm.CamOptions(methods="gradcam,eigencam", layers="conv2,act")
    out = tmp_path_factory.mktemp("cams") / "out"
    [result] = fm.visualize(TinyNet().eval(), x, out=out, cams=options)
    assert result.report is not None
    return Run(result.report, result.manifest, {})


def _in_view(page: Any, selector: str) -> bool:
    """Whether the element's top is on screen, below the sticky control bar."""
    return bool(
        page.locator(selector).evaluate(
            """e => {
              const top = e.getBoundingClientRect().top;
              const bar = document.getElementById("fm-controls").getBoundingClientRect().bottom;
              return top >= bar - 1 && top < window.innerHeight / 2;
            }"""
        )
    )


def test_panel_shows_pictures_numbers_and_the_failing_badge(cam_run: Run, open_report: Any) -> None:
    opened = open_report(cam_run.index.resolve().as_uri())
    page = opened.page
    cams = cam_run.manifest["cams"]
    figures = page.locator("#fm-cams figure.cam")
    assert figures.count() == len(cams) == 6
    layers = list(dict.fromkeys(c["layer"] for c in cams))
    grouped = [c for layer in layers for c in cams if c["layer"] == layer]
    for i, entry in enumerate(grouped):
        figure = figures.nth(i)
        picture = figure.locator("img.cam-picture")
        assert picture.get_attribute("src") == entry["picture"]
        picture.scroll_into_view_if_needed()
        _wait_until(page, f"{LOADED}[{i}]")
        numbers = figure.locator("td.num").all_text_contents()
        assert numbers == [
            f"{entry[k]:.4g}"
            for k in ("deletion_auc", "random_auc", "insertion_auc", "random_insertion_auc")
        ]
        badge = figure.locator(".cam-badge")
        assert badge.count() == (1 if entry["sanity_failed"] else 0)
        if entry["sanity_failed"]:
            assert badge.is_visible() and badge.text_content() == "FAILS THE SANITY CHECK"
            assert entry["method"] == "eigencam"
        assert (
            f"{entry['sanity_rank_correlation']:.2f}"
            in figure.locator(".cam-sanity").text_content()
        )
    # One common scale for every picture (at most 1:1), so the inputs under the maps match.
    scales = page.locator("#fm-cams img.cam-picture").evaluate_all(
        "imgs => imgs.map(i => [i.getBoundingClientRect().width, i.naturalWidth])"
    )
    # Each width is floor(natural * k) for one k: the intervals of k they allow overlap.
    low = max(shown / natural for shown, natural in scales)
    high = min((shown + 1) / natural for shown, natural in scales)
    assert 0 < low < high and low <= 1
    assert any(shown < natural for shown, natural in scales)  # the cards are narrower than 1:1
    page.locator("#fm-cams").screenshot(path=str(_actual("cam_panel.png")))
    assert opened.errors == [] and opened.dialogs == []


def _actual(name: str) -> Path:
    ACTUAL.mkdir(exist_ok=True)
    return ACTUAL / name


def test_layer_list_and_navigation_lead_to_the_panel(cam_run: Run, open_report: Any) -> None:
    opened = open_report(cam_run.index.resolve().as_uri(), height=500)
    page = opened.page
    records = [r["name"] for r in cam_run.manifest["records"]]
    key = records.index("conv2")
    anchor = page.locator(f'#fm-cams section.cam-layer[data-key="{key}"]').get_attribute("id")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    assert not _in_view(page, f"#{anchor}")
    page.click(f'#fm-outline li.entry[data-key="{key}"] .cam-mark a')
    _wait_until(page, f"location.hash === '#{anchor}'")
    assert _in_view(page, f"#{anchor}")
    assert page.get_attribute('#fm-outline a[title="conv2"]', "aria-current") == "location"
    # From the layer's own section too, and from the outline's head to the whole panel.
    page.click('#fm-outline a[title="act#2"]')
    page.click(f"#L{records.index('act#2')} .cam-link a")
    act2 = page.locator(f'#fm-cams section.cam-layer[data-key="{records.index("act#2")}"]')
    assert _in_view(page, f"#{act2.get_attribute('id')}")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.click("#fm-outline .outline-cams a")
    _wait_until(page, "location.hash === '#fm-cams'")
    assert _in_view(page, "#fm-cams")
    # A link to one layer's maps opens there.
    again = open_report(f"{cam_run.index.resolve().as_uri()}#{anchor}", height=500)
    assert _in_view(again.page, f"#{anchor}")
    assert again.page.url.endswith(f"#{anchor}")
    assert opened.errors == [] and again.errors == []
