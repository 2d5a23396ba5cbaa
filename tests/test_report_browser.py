"""The HTML report in a real browser: Debian's Chromium driven by Playwright, pages from file://.

These tests need the ``chromium`` executable (``.ci/run`` installs it) and the ``playwright``
package (the ``dev`` extra). They fail, never skip, when either is missing. Screenshots go to
tests/actual/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from conftest import NamedChain
from featuremaps.render import overlay

pytestmark = pytest.mark.browser

ACTUAL = Path(__file__).resolve().parent / "actual"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(
            "the browser tests need Chromium and it is not installed; run .ci/run (it installs "
            "it) or `apt-get install chromium`"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need playwright; run `make test` or pip install -e '.[dev]'")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Opened:
    """A page with everything it complained about."""

    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def open_report(browser: Any) -> Iterator[Any]:
    contexts = []

    def open_(index: Path, width: int = 1280, height: int = 900) -> Opened:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        opened = Opened(page)
        page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: opened.errors.append(str(e)))

        def on_dialog(dialog: Any) -> None:
            opened.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(index.resolve().as_uri())
        # report.js sets this attribute when the first layer is drawn.
        page.wait_for_selector("html[data-first-layer-ms]", state="attached", timeout=15000)
        return opened

    yield open_
    for context in contexts:
        context.close()


class Small(nn.Module):
    """Signed and unsigned layers, a reused module (`act`, `act#2`) and an odd map size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.down = nn.Conv2d(6, 40, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.down(self.act(self.conv(x))))


@dataclass
class Run:
    index: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def key(self, name: str) -> int:
        return [r["name"] for r in self.manifest["records"]].index(name)

    def record(self, name: str) -> dict[str, Any]:
        return self.manifest["records"][self.key(name)]


def _run(model: nn.Module, x: torch.Tensor, out: Path, **kw: Any) -> Run:
    [result] = fm.visualize(model, x, out=out, **kw)
    assert result.report is not None
    with torch.no_grad():
        tensors = {r.name: r.tensor for r in fm.capture(model, x, layers=kw.get("layers"))}
    return Run(result.report, result.manifest, tensors)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Run:
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 3, 19, 23, generator=torch.Generator().manual_seed(1))
    return _run(model, x, tmp_path_factory.mktemp("small") / "out")


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory: pytest.TempPathFactory) -> Run:
    torch.manual_seed(0)
    loaded = fm.load_model("resnet18", "none")
    item = fm.load_input(fm.sample_image_path())
    [result] = fm.visualize(loaded, item, out=tmp_path_factory.mktemp("r18") / "out")
    assert result.report is not None
    with torch.no_grad():
        tensors = {
            r.name: r.tensor for r in fm.capture(loaded.model, item.tensor, layers="layer4.1.*")
        }
    return Run(result.report, result.manifest, tensors)


def _hover_cell(page: Any, selector: str, row: int, col: int, h: int, w: int) -> dict[str, str]:
    box = page.locator(selector).bounding_box()
    page.mouse.move(
        box["x"] + (col + 0.5) * box["width"] / w, box["y"] + (row + 0.5) * box["height"] / h
    )
    readout = page.locator("#fm-readout")
    return {
        "row": readout.get_attribute("data-row"),
        "col": readout.get_attribute("data-col"),
        "value": readout.get_attribute("data-value"),
        "text": readout.text_content(),
    }


def _check_readout(
    run: Run, name: str, channel: int, row: int, col: int, got: dict[str, str]
) -> None:
    assert (got["row"], got["col"]) == (str(row), str(col))
    exact = float(run.tensors[name][0, channel, row, col])
    shown = float(got["value"])
    # The page holds float16 copies: the value is exactly the float16 rounding of the output.
    assert shown == float(np.float16(exact))
    assert abs(shown - exact) <= 2**-11 * abs(exact) + 2**-24
    assert f"(row {row}, col {col})" in got["text"] and "float16" in got["text"]


def _pixel(page: Any, selector: str) -> list[int]:
    return list(
        page.locator(selector).evaluate(
            "c => Array.from(c.getContext('2d').getImageData(0, 0, 1, 1).data)"
        )
    )


def test_outline_jump_channel_view_and_hover_read_out(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    key = small.key("act#2")
    page.click('#fm-outline a[title="act#2"]')
    assert page.url.endswith(f"#L{key}")
    assert page.get_attribute('#fm-outline a[title="act#2"]', "aria-current") == "location"
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
    shown = small.record("act#2")["channels_shown"]
    assert len(shown) == 32 and small.record("act#2")["shape"] == [1, 40, 9, 11]
    page.click(f'#L{key} figure.tile[data-index="5"]')
    assert page.locator("#fm-view").get_attribute("open") is not None
    assert page.locator("#fm-view-title").text_content() == f"act#2 · channel #{shown[5]} · 9×11"
    for row, col in ((0, 0), (4, 7), (8, 10)):
        got = _hover_cell(page, "#fm-view-map", row, col, 9, 11)
        _check_readout(small, "act#2", shown[5], row, col, got)
    # The overlay reads the same cell under the cursor.
    got = _hover_cell(page, "#fm-view-over", 4, 7, 9, 11)
    _check_readout(small, "act#2", shown[5], 4, 7, got)
    page.focus("#fm-view-opacity")
    page.keyboard.press("Home")
    assert page.locator("#fm-view-over").evaluate("c => c.style.opacity") == "0"
    page.click("#fm-view-close")
    assert page.locator("#fm-view").get_attribute("open") is None
    assert opened.errors == [] and opened.dialogs == []


def _opaque_cells(page: Any) -> int:
    """How many pixels of the overlay canvas (one per cell) are not fully transparent."""
    return int(
        page.locator("#fm-view-over").evaluate(
            "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
            ".filter((v, j) => j % 4 === 3 && v > 0).length"
        )
    )


def _set_threshold(page: Any, percent: int) -> None:
    page.locator("#fm-view-threshold").fill(str(percent))  # fires "input", like a drag


def test_threshold_slider_hides_weak_cells_of_the_overlay(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    name = "act#2"
    key = small.key(name)
    page.click(f'#fm-outline a[title="{name}"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
    # The shown channel with the largest values, so that a threshold of 0.5 splits its cells.
    shown = small.record(name)["channels_shown"]
    index = max(range(len(shown)), key=lambda i: float(small.tensors[name][0, shown[i]].max()))
    channel = shown[index]
    page.click(f'#L{key} figure.tile[data-index="{index}"]')
    h, w = small.record(name)["shape"][2:]
    over = page.locator("#fm-view-over")
    assert over.evaluate("c => [c.width, c.height]") == [w, h]
    # Threshold 0 (the default) shows every cell, fully.
    assert page.locator("#fm-view-threshold").input_value() == "0"
    assert _opaque_cells(page) == h * w
    assert page.locator("#fm-view-threshold-value").text_content() == (
        f"0.00 ({h * w} of {h * w} cells shown)"
    )
    # The maximum leaves only cells at the very top of the colour range (t >= 1).
    _set_threshold(page, 100)
    at_max = _opaque_cells(page)
    assert at_max <= 1 and over.get_attribute("data-hidden") == str(h * w - at_max)
    # Half way: exactly the cells Python's overlay(threshold=0.5) keeps, on the page's float16
    # values and with the page's range (layer scale: the range of all the layer's channels).
    layer = page.evaluate(
        f"JSON.parse(document.getElementById('fm-config').textContent).layers[{key}]"
    )
    values = small.tensors[name][0, channel].numpy().astype(np.float16).astype(np.float32)
    expected = overlay(
        np.zeros((h, w), np.uint8),
        values,
        None,
        threshold=0.5,
        value_range=(layer["low"], layer["high"]),
    ).cells_shown
    assert 0 < expected < h * w
    _set_threshold(page, 50)
    assert _opaque_cells(page) == expected
    assert page.locator("#fm-view-threshold-value").text_content() == (
        f"0.50 ({expected} of {h * w} cells shown)"
    )
    # The enlarged map beside it always shows every cell.
    assert (
        page.locator("#fm-view-map").evaluate(
            "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
            ".filter((v, j) => j % 4 === 3 && v === 255).length"
        )
        == h * w
    )
    # Back to 0: everything shows again, and the opacity slider still applies on top.
    page.focus("#fm-view-threshold")
    page.keyboard.press("Home")
    assert _opaque_cells(page) == h * w and over.get_attribute("data-hidden") == "0"
    assert over.evaluate("c => c.style.opacity") == "0.6"
    assert opened.errors == [] and opened.dialogs == []


def test_scale_and_colormap_switch_redraw_in_place(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    conv = f"#L{small.key('conv')}"
    legend = page.locator(f"{conv} .legend-scale")
    page.wait_for_selector(f"{conv} .tiles[data-state=drawn]")
    per_layer = legend.text_content()
    # conv is signed: centred on 0 with a diverging map, over the range of all its channels.
    stats = small.record("conv")["channel_stats"]
    m = max(-min(stats["min"]), max(stats["max"]))
    assert "scale: per layer" in per_layer and "colormap RdBu_r, centred on 0" in per_layer
    assert per_layer.endswith(f"range -{m:.4g} … {m:.4g}")
    assert page.locator(f"{conv} .bar-mid").text_content() == "0"
    first_tile = f"{conv} figure.tile canvas >> nth=0"
    before = _pixel(page, first_tile)

    page.select_option("#fm-scale", "channel")
    per_channel = legend.text_content()
    assert per_channel != per_layer and "scale: per channel" in per_channel
    assert page.locator(f"{conv} figure.tile .range >> nth=0").text_content() != ""
    assert _pixel(page, first_tile) != before

    page.select_option("#fm-scale", "global")
    lows = [min(r["channel_stats"]["min"]) for r in small.manifest["records"] if r["image"]]
    highs = [max(r["channel_stats"]["max"]) for r in small.manifest["records"] if r["image"]]
    g = max(-min(lows), max(highs))
    assert legend.text_content().endswith(f"range -{g:.4g} … {g:.4g}")
    assert "scale: global (all layers)" in legend.text_content()

    page.select_option("#fm-scale", "layer")
    assert legend.text_content() == per_layer and _pixel(page, first_tile) == before
    page.select_option("#fm-cmap-div", "coolwarm")
    assert "colormap coolwarm, centred on 0" in legend.text_content()
    assert _pixel(page, first_tile) != before
    # An unsigned layer follows the other colormap choice.
    act = f"#L{small.key('act')}"
    page.locator(act).scroll_into_view_if_needed()
    page.wait_for_selector(f"{act} .tiles[data-state=drawn]")
    page.select_option("#fm-cmap-seq", "magma")
    text = page.locator(f"{act} .legend-scale").text_content()
    assert "colormap magma ·" in text and "centred" not in text
    assert opened.errors == []


def test_statistics_table_sorts_in_the_browser(small: Run, open_report: Any) -> None:
    page = open_report(small.index).page
    key = small.key("down")
    section = f"#L{key}"
    page.locator(section).scroll_into_view_if_needed()
    page.click(f"{section} details.stats summary")
    page.wait_for_selector(f"{section} table.stats-table")
    rows = page.locator(f"{section} tbody tr")
    assert rows.count() == 40  # every channel, also the 8 not shown as tiles
    means = small.record("down")["channel_stats"]["mean"]

    def order() -> list[int]:
        return [int(c) for c in page.locator(f"{section} tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.channel)")]  # fmt: skip

    assert order() == list(range(40))
    page.click(f"{section} th button[data-key=mean]")
    assert order() == sorted(range(40), key=lambda c: (means[c], c))
    page.click(f"{section} th button[data-key=mean]")
    assert order() == sorted(range(40), key=lambda c: (-means[c], c))
    assert page.locator(f"{section} th[aria-sort=descending] button").text_content() == "mean"


HOSTILE_NAMES = (
    "<img src=x onerror=self['pwned']=1>",
    "</script><script>self['pwned']=2</script>",
    "\"'><svg onload=self['pwned']=3>",
    "javascript:self['pwned']=4",
)


def test_hostile_layer_names_never_run(tmp_path: Path, open_report: Any) -> None:
    torch.manual_seed(0)
    [result] = fm.visualize(NamedChain(HOSTILE_NAMES), torch.randn(1, 1, 5, 5), out=tmp_path / "h")
    opened = open_report(Path(str(result.report)))
    page = opened.page
    for key, name in enumerate(HOSTILE_NAMES):
        # Shown as text, exactly as registered.
        assert page.locator(f"#L{key} h2").text_content() == name
        link = page.locator(f'#fm-outline a[href="#L{key}"]')
        assert link.get_attribute("title") == name
        link.click()
        page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
        page.click(f"#L{key} figure.tile >> nth=0")
        assert page.locator("#fm-view-title").text_content().startswith(name)
        page.click("#fm-view-close")
    assert page.evaluate("typeof self.pwned") == "undefined"
    assert page.locator("svg, img[src=x]").count() == 0
    assert opened.dialogs == []
    assert opened.errors == []  # not even a blocked inline script (a CSP report)


def test_resnet18_every_layer_draws_from_file_urls(resnet18: Run, open_report: Any) -> None:
    opened = open_report(resnet18.index, width=1400, height=1000)
    page = opened.page
    first_ms = float(page.locator("html").get_attribute("data-first-layer-ms"))
    assert first_ms < 5000, f"first layer drawn after {first_ms} ms"
    ACTUAL.mkdir(exist_ok=True)
    page.screenshot(path=str(ACTUAL / "report.png"))
    banner = page.locator(".banner")
    assert "RANDOM WEIGHTS" in banner.text_content()

    drawn = [i for i, r in enumerate(resnet18.manifest["records"]) if r["data"]]
    assert len(drawn) == 59
    # fc's (1, 1000) logits are a bar strip: a PNG, no channel view.
    assert [r["name"] for r in resnet18.manifest["records"] if r["image"] and not r["data"]] == [
        "fc"
    ]
    for key in drawn:
        page.locator(f"#L{key} h2").scroll_into_view_if_needed()
        page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=10000)
    assert page.locator(".tiles[data-state=drawn]").count() == 59

    page.click("#fm-expand")
    name = "layer4.1.relu#2"
    key = resnet18.key(name)
    page.click(f'#fm-outline a[title="{name}"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    shown = resnet18.record(name)["channels_shown"]
    page.click(f'#L{key} figure.tile[data-index="3"]')
    h, w = resnet18.record(name)["shape"][2:]
    got = _hover_cell(page, "#fm-view-map", 10, 7, h, w)
    _check_readout(resnet18, name, shown[3], 10, 7, got)
    # The overlay sits where the cells' receptive fields are centred (stride 32, first centre on
    # pixel 0), not stretched: shifted up-left by half a stride on the 600x512 input.
    assert resnet18.record(name)["geometry"] == {
        "method": "analytic",
        "stride": [32.0, 32.0],
        "offset": [0.0, 0.0],
        "receptive_field": [435.0, 435.0],
    }
    over = page.locator("#fm-view-over")
    assert over.get_attribute("data-placed") == "geometry"
    box = over.evaluate("c => [c.style.left, c.style.top, c.style.width, c.style.height]")
    assert [float(v.rstrip("%")) for v in box] == pytest.approx(
        [100 * -15.5 / 512, 100 * -15.5 / 600, 100 * 16 * 32 / 512, 100 * 19 * 32 / 600],
        abs=1e-3,  # the browser keeps about 6 significant digits of a CSS percentage
    )
    assert "receptive-field geometry" in page.locator("#fm-view-place").text_content()
    page.screenshot(path=str(ACTUAL / "report-channel.png"))
    assert opened.errors == [] and opened.dialogs == []
    print(json.dumps({"resnet18_first_layer_ms": first_ms}))


class Tokens(nn.Module):
    """A patch embedding, one class token, a per-token Linear and a vector head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.cls_token = nn.Parameter(torch.ones(1, 1, 6))
        self.mix = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(self.mix(t))[:, 0])


def _image_loaded(page: Any, selector: str) -> bool:
    return bool(page.locator(selector).evaluate("img => img.complete && img.naturalWidth > 0"))


def test_token_and_vector_pictures_show_in_the_report(tmp_path: Path, open_report: Any) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    run = _run(Tokens().eval(), x, tmp_path / "tokens")
    mix = run.record("mix")
    assert mix["layout"] == "tokens(prefix=1, grid=3x4)" and mix["drawn_as"] == "token grid"
    assert run.record("head")["drawn_as"] == "bar strip"
    opened = open_report(run.index)
    page = opened.page
    # Tokens: the channel view of the patch maps, and the whole token picture below it.
    key = run.key("mix")
    page.click('#fm-outline a[title="mix"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
    assert page.locator(f"#L{key} figure.tile").count() == 6
    page.locator(f"#L{key} img.summary").scroll_into_view_if_needed()
    page.wait_for_function(
        f"document.querySelector('#L{key} img.summary').naturalWidth > 0", timeout=5000
    )
    assert _image_loaded(page, f"#L{key} img.summary")
    assert "tokens(prefix=1, grid=3x4)" in page.locator(f"#L{key} .meta").text_content()
    # A vector: its bar strip PNG.
    key = run.key("head")
    page.click('#fm-outline a[title="head"]')
    page.locator(f"#L{key} img.png").scroll_into_view_if_needed()
    page.wait_for_function(
        f"document.querySelector('#L{key} img.png').naturalWidth > 0", timeout=5000
    )
    assert page.locator(f"#L{key} img.png").get_attribute("src") == run.record("head")["image"]
    ACTUAL.mkdir(exist_ok=True)
    page.screenshot(path=str(ACTUAL / "report-tokens.png"), full_page=True)
    assert opened.errors == []
