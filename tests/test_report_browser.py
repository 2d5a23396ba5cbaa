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
from urllib.parse import quote

import numpy as np
import pytest
import torch
from torch import nn

import featuremaps as fm
from conftest import NamedChain
from featuremaps.render import overlay
from test_report import Fixed

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


def _wait_until(page: Any, expression: str, seconds: float = 10.0) -> None:
    """Poll ``expression`` from the test side. Playwright's own ``wait_for_function`` polls with
    ``eval`` inside the page, which the report's CSP (no 'unsafe-eval') rightly refuses."""
    import time

    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {seconds} s: {expression}")
        page.wait_for_timeout(50)


def test_outline_jump_channel_view_and_hover_read_out(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    key = small.key("act#2")
    page.click('#fm-outline a[title="act#2"]')
    assert page.url.split("#")[1].startswith("layer=act%232&")
    assert page.get_attribute('#fm-outline a[title="act#2"]', "aria-current") == "location"
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
    shown = small.record("act#2")["channels_shown"]
    assert len(shown) == 32 and small.record("act#2")["shape"] == [1, 40, 9, 11]
    page.click(f'#L{key} figure.tile[data-index="5"]')
    assert page.locator("#fm-view").get_attribute("open") is not None
    page.click("#fm-zoom-fit")
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
    # Another layer's table comes from the same script, which the page asked for once.
    other = f"#L{small.key('conv')}"
    page.locator(other).scroll_into_view_if_needed()
    page.click(f"{other} details.stats summary")
    page.wait_for_selector(f"{other} table.stats-table")
    channels = len(small.record("conv")["channel_stats"]["mean"])
    assert page.locator(f"{other} tbody tr").count() == channels
    scripts = page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))")
    assert [s for s in scripts if s and "stats" in s] == ["data/stats.js"]


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
        link = page.locator(f'#fm-outline a[data-key="{key}"]')
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


# ------------------------------------------------------------------ exploring the report


def _config(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("JSON.parse(document.getElementById('fm-config').textContent)"))


def _pixels(page: Any, selector: str) -> np.ndarray:
    """A canvas's pixels as an (H, W, 4) uint8 array."""
    w, h, data = page.locator(selector).evaluate(
        "c => [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width,"
        " c.height).data)]"
    )
    return np.array(data, dtype=np.uint8).reshape(h, w, 4)


class Bounds(nn.Module):
    """An unsigned layer and a signed layer whose values sit exactly on their range ends."""

    def __init__(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        super().__init__()
        self.pos = Fixed(pos)
        self.neg = Fixed(neg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neg(x) + 0 * self.pos(x).sum()


def test_values_equal_to_a_bound_get_that_bounds_colour(tmp_path: Path, open_report: Any) -> None:
    from featuremaps.render.colormap import colormap_lut

    # 0.568 is not a float16: its copy is 0.5679, below the float32 bound it equals.
    assert float(np.float16(0.568)) < float(np.float32(0.568))
    pos = torch.full((1, 3, 4, 5), 0.568)
    pos[0, 1] = torch.linspace(0.1234567, 0.568, 20).reshape(4, 5)  # min at (0,0), max at (3,4)
    pos[0, 2] = torch.linspace(0.2, 0.4, 20).reshape(4, 5)
    neg = torch.linspace(-0.568, 0.3, 40).reshape(1, 2, 4, 5).clone()
    neg[0, 1] = -0.333  # a constant signed channel
    [result] = fm.visualize(Bounds(pos, neg).eval(), torch.zeros(1, 1, 4, 5), out=tmp_path / "b")
    opened = open_report(Path(str(result.report)))
    page = opened.page
    names = [r["name"] for r in result.manifest["records"]]
    p, n = f"#L{names.index('pos')}", f"#L{names.index('neg')}"
    viridis = colormap_lut("viridis")
    rdbu = colormap_lut("RdBu_r")

    def rgb(selector: str) -> np.ndarray:
        return _pixels(page, selector)[..., :3]

    page.locator(n).scroll_into_view_if_needed()
    page.wait_for_selector(f"{n} .tiles[data-state=drawn]")
    for scale in ("layer", "channel"):
        page.select_option("#fm-scale", scale)
        tiles = [rgb(f"{p} figure.tile canvas >> nth={i}") for i in range(3)]
        if scale == "layer":
            # The layer's maximum is 0.568: every cell of the constant channel is on it.
            assert (tiles[0] == viridis[255]).all()
        else:
            # A constant range: the low end, as featuremaps.render.scaling paints the PNGs.
            assert (tiles[0] == viridis[0]).all()
            assert (tiles[1][0, 0] == viridis[0]).all()
        assert (tiles[1][3, 4] == viridis[255]).all()  # the maximum, equal to the bound
        signed = [rgb(f"{n} figure.tile canvas >> nth={i}") for i in range(2)]
        # Centred on 0: -0.568 is the low end of (-0.568, 0.568) in both scales.
        assert (signed[0][0, 0] == rdbu[0]).all()
        if scale == "channel":
            assert (signed[1] == rdbu[0]).all()  # -0.333 is the low end of (-0.333, 0.333)
    assert opened.errors == []


def test_outline_follows_execution_order_with_the_module_tree(
    resnet18: Run, open_report: Any
) -> None:
    page = open_report(resnet18.index).page
    page.click("#fm-expand")
    titles = page.locator('#fm-outline summary[title="layer4.1"] + ul > li.entry > a').evaluate_all(
        "links => links.map(a => a.title)"
    )
    # The oracle: the manifest lists records in the order their calls returned.
    ran = [r["name"] for r in resnet18.manifest["records"] if r["name"].startswith("layer4.1.")]
    assert titles == ran == [
        "layer4.1.conv1", "layer4.1.bn1", "layer4.1.relu", "layer4.1.conv2", "layer4.1.bn2",
        "layer4.1.relu#2",
    ]  # fmt: skip
    # The sub-module with children of its own stays a foldable node where its first call ran.
    block = page.locator('#fm-outline summary[title="layer4.0"] + ul > li').evaluate_all(
        "items => items.map(li => li.matches('.node') ? li.querySelector('summary').title"
        " : li.querySelector('a').title)"
    )
    assert block == [
        "layer4.0.conv1", "layer4.0.bn1", "layer4.0.relu", "layer4.0.conv2", "layer4.0.bn2",
        "layer4.0.downsample", "layer4.0.relu#2",
    ]  # fmt: skip
    keys = [resnet18.key(n) for n in ran]
    assert keys == sorted(keys)


def test_random_weights_mark_on_every_picture_and_in_the_sticky_bar(
    resnet18: Run, small: Run, open_report: Any
) -> None:
    name = "layer4.1.relu#2"
    key = resnet18.key(name)
    link = f"{resnet18.index.resolve().as_uri()}#layer={quote(name)}&channel=3"
    opened = open_report(resnet18.index)
    page = opened.page
    page.goto(link)
    page.wait_for_selector("#fm-view[open]")
    # The sticky bar says it wherever the page is scrolled to.
    badge = page.locator("#fm-rw-badge")
    assert badge.text_content() == "RANDOM WEIGHTS" and badge.is_visible()
    assert 0 <= badge.bounding_box()["y"] < 100
    for where in ("#fm-view .view-frame", "#fm-view-overlay"):
        assert page.locator(f"{where} .rw-mark").is_visible()
    assert page.locator("#fm-view .rw-line").is_visible()
    page.keyboard.press("p")
    assert page.locator("#fm-pins figure.pin .rw-mark").count() == 1
    page.keyboard.press("Escape")
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    for section in page.locator("section.layer .tiles[data-state=drawn]").all():
        tiles = section.locator("figure.tile")
        assert tiles.count() > 0
        assert section.locator("figure.tile .rw-mark").count() == tiles.count()
    mark = page.locator(f"#L{key} figure.tile .rw-mark >> nth=0")
    assert mark.text_content() == "RANDOM WEIGHTS" and mark.is_visible()
    assert opened.errors == []
    # A model with its own weights carries no mark.
    plain = open_report(small.index).page
    assert plain.locator(".rw-mark:visible, #fm-rw-badge").count() == 0


def _state(page: Any) -> dict[str, Any]:
    return {
        "title": page.locator("#fm-view-title").text_content(),
        "open": page.locator("#fm-view").get_attribute("open") is not None,
        "scale": page.locator("#fm-scale").input_value(),
        "cmap": page.locator("#fm-cmap-seq").input_value(),
        "zoom": page.locator("#fm-view-port").get_attribute("data-zoom"),
        "pins": page.locator("#fm-pins figure.pin").evaluate_all(
            "figs => figs.map(f => [f.dataset.key, f.dataset.channel])"
        ),
    }


def test_address_round_trip_link_and_reload(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    name = "act#2"
    key = small.key(name)
    shown = small.record(name)["channels_shown"]
    page.select_option("#fm-scale", "channel")
    page.select_option("#fm-cmap-seq", "magma")
    page.click(f'#fm-outline a[title="{name}"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    page.click(f'#L{key} figure.tile[data-index="5"]')
    page.click("#fm-zoom-one")
    page.click("#fm-zoom-in")
    page.click("#fm-view-pin")
    page.keyboard.press("ArrowRight")
    before = _state(page)
    assert before["title"] == f"act#2 · channel #{shown[6]} · 9×11" and before["zoom"] == "1.25"
    assert before["pins"] == [[str(key), str(shown[5])]]
    url = page.url
    assert f"#layer=act%232&channel={shown[6]}&scale=channel&cmap=magma&" in url
    assert f"&zoom=1.25&pin={shown[5]}@act%232" in url
    # The link in a fresh page, and a reload, show the same thing.
    fresh = open_report(small.index).page
    fresh.goto(url)
    fresh.wait_for_selector("#fm-view[open]")
    assert _state(fresh) == before
    page.reload()
    page.wait_for_selector("#fm-view[open]")
    assert _state(page) == before
    # Closing the view keeps the layer and the settings in the address, not the channel.
    page.click("#fm-view-close")
    _wait_until(page, "!location.hash.includes('channel=')")  # "close" is a queued event
    assert page.url.split("#")[1] == (
        f"layer=act%232&scale=channel&cmap=magma&div=RdBu_r&pin={shown[5]}@act%232"
    )
    # Links from before records were named in the address still land on their layer.
    page.goto(f"{small.index.resolve().as_uri()}#L{key}")
    assert page.get_attribute(f'#fm-outline a[title="{name}"]', "aria-current") == "location"
    assert page.url.split("#")[1].startswith("layer=act%232&")
    assert opened.errors == []


def _outline_text(record: dict[str, Any]) -> str:
    shape = "×".join(str(n) for n in record["shape"]) if record["shape"] else "never ran"
    return f"{record['name']} {record['type']} {shape} {shape.replace('×', 'x')}".lower()


def test_search_filters_the_outline_by_name_type_and_shape(resnet18: Run, open_report: Any) -> None:
    opened = open_report(resnet18.index)
    page = opened.page
    records = resnet18.manifest["records"]
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "fm-search"
    for query in ("relu", "batchnorm2d", "512x19x16", "layer3 conv 256×"):
        page.locator("#fm-search").fill(query)
        expected = [
            r["name"] for r in records if all(t in _outline_text(r) for t in query.lower().split())
        ]
        assert expected, query
        shown = page.locator("#fm-outline li.entry:not(.filtered-out) > a").evaluate_all(
            "links => links.map(a => a.title)"
        )
        assert sorted(shown) == sorted(expected), query
        assert all(page.locator(f'#fm-outline a[title="{n}"]').is_visible() for n in shown)
        assert page.locator("#fm-search-count").text_content() == (
            f"{len(expected)} of {len(records)}"
        )
    # Enter jumps to the first match (outline order), and j/k step through the matches.
    page.keyboard.press("Enter")
    first = shown[0]
    assert page.url.split("#")[1].startswith(f"layer={quote(first)}&")
    top = page.locator(f"#L{resnet18.key(first)}").bounding_box()["y"]
    assert 0 <= top < 150
    page.keyboard.press("j")
    assert page.url.split("#")[1].startswith(f"layer={quote(shown[1])}&")
    # Escape clears the search: every entry is back.
    page.focus("#fm-search")
    page.keyboard.press("Escape")
    assert page.locator("#fm-outline li.entry.filtered-out").count() == 0
    assert page.locator("#fm-search-count").text_content() == ""
    assert opened.errors == []


def test_keys_step_between_layers_and_channels(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    names = [r["name"] for r in small.manifest["records"]]

    def layer_in_address() -> str:
        return page.url.split("#layer=")[1].split("&")[0].replace("%23", "#")

    def address_names(layer: str) -> None:
        # The address is rewritten after the key's own event: poll it, then compare.
        for _ in range(100):
            if "#layer=" in page.url and layer_in_address() == layer:
                break
            page.wait_for_timeout(50)
        assert layer_in_address() == layer

    page.keyboard.press("j")
    address_names(names[0])
    page.keyboard.press("j")
    page.keyboard.press("j")
    address_names(names[2])
    page.keyboard.press("k")
    address_names(names[1])
    name = "act#2"
    key = small.key(name)
    shown = small.record(name)["channels_shown"]
    page.click(f'#fm-outline a[title="{name}"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    page.click(f'#L{key} figure.tile[data-index="0"]')
    title = page.locator("#fm-view-title")
    page.keyboard.press("ArrowLeft")  # already the first: stays
    assert title.text_content() == f"act#2 · channel #{shown[0]} · 9×11"
    for i in (1, 2, 3):
        page.keyboard.press("ArrowRight")
        assert title.text_content() == f"act#2 · channel #{shown[i]} · 9×11"
    page.keyboard.press("ArrowLeft")
    assert title.text_content() == f"act#2 · channel #{shown[2]} · 9×11"
    # The map follows: it shows the float16 copy of the new channel.
    h, w = 9, 11
    got = _hover_cell(page, "#fm-view-map", 2, 3, h, w)
    _check_readout(small, name, shown[2], 2, 3, got)
    assert opened.errors == []


def test_pinned_channels_side_by_side_match_their_tiles(small: Run, open_report: Any) -> None:
    opened = open_report(small.index)
    page = opened.page
    key = small.key("down")
    page.click('#fm-outline a[title="down"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    for index in (4, 9):
        page.click(f'#L{key} figure.tile[data-index="{index}"]')
        page.keyboard.press("p")
        page.keyboard.press("Escape")
    # One from another layer, too.
    conv = small.key("conv")
    page.click('#fm-outline a[title="conv"]')
    page.wait_for_selector(f"#L{conv} .tiles[data-state=drawn]")
    page.click(f'#L{conv} figure.tile[data-index="2"]')
    page.click("#fm-view-pin")
    pins = page.locator("#fm-pins figure.pin")
    assert pins.count() == 3
    assert page.locator("#fm-view-pin").get_attribute("aria-pressed") == "true"
    for i, (k, index) in enumerate(((key, 4), (key, 9), (conv, 2))):
        pin = _pixels(page, f"#fm-pins figure.pin >> nth={i} >> canvas")
        tile = _pixels(page, f'#L{k} figure.tile[data-index="{index}"] canvas')
        assert np.array_equal(pin, tile)
    # Side by side: one row, left to right.
    boxes = [pins.nth(i).bounding_box() for i in range(3)]
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"]
    page.click("#fm-pins figure.pin >> nth=0 >> button.pin-drop")
    assert pins.count() == 2
    assert opened.errors == []


def test_zoom_pan_and_the_receptive_field_of_the_hovered_cell(
    resnet18: Run, open_report: Any
) -> None:
    opened = open_report(resnet18.index)
    page = opened.page
    name = "layer1.0.conv1"  # 150x128 cells, stride 4
    key = resnet18.key(name)
    h, w = resnet18.record(name)["shape"][2:]
    page.click("#fm-expand")
    page.click(f'#fm-outline a[title="{name}"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    page.click(f'#L{key} figure.tile[data-index="0"]')
    port = page.locator("#fm-view-port")
    fit = float(port.get_attribute("data-zoom"))
    assert fit == 480 // max(h, w)  # the 480 px box, by a whole factor (every cell alike)
    page.click("#fm-zoom-one")
    assert port.get_attribute("data-zoom") == "1"
    assert page.locator("#fm-view-map").evaluate("c => c.getBoundingClientRect().width") == w
    page.click("#fm-zoom-in")
    assert port.get_attribute("data-zoom") == "1.25"
    page.click("#fm-zoom-out")
    page.click("#fm-zoom-fit")
    assert float(port.get_attribute("data-zoom")) == fit
    # The wheel zooms about the cursor: the cell under it stays under it.
    box = port.bounding_box()
    x, y = box["x"] + 200, box["y"] + 150
    page.mouse.move(x, y)
    readout = page.locator("#fm-readout")
    cell = (readout.get_attribute("data-row"), readout.get_attribute("data-col"))
    for _ in range(6):
        page.mouse.wheel(0, -100)
    zoom = float(port.get_attribute("data-zoom"))
    assert zoom == pytest.approx(fit * 1.25**6)
    page.mouse.move(x + 1, y)
    page.mouse.move(x, y)
    assert (readout.get_attribute("data-row"), readout.get_attribute("data-col")) == cell
    # Dragging pans by the distance moved.
    left = port.evaluate("p => p.scrollLeft")
    page.mouse.down()
    page.mouse.move(x - 60, y)
    page.mouse.up()
    assert port.evaluate("p => p.scrollLeft") == pytest.approx(left + 60, abs=1)
    # The hovered cell's receptive field, on the input beside the map.
    page.click("#fm-zoom-fit")
    g = resnet18.record(name)["geometry"]
    for row, col in ((0, 0), (70, 33)):
        got = _hover_cell(page, "#fm-view-map", row, col, h, w)
        assert (got["row"], got["col"]) == (str(row), str(col))
        cy = g["offset"][0] + g["stride"][0] * row
        cx = g["offset"][1] + g["stride"][1] * col
        ry, rx = g["receptive_field"]
        field = json.loads(page.locator("#fm-view-rf").get_attribute("data-box"))
        assert field == [cy - (ry - 1) / 2, cx - (rx - 1) / 2, ry, rx]
        # Drawn where that is on the picture of the input (600x512 px as fed).
        rf = page.locator("#fm-view-rf").bounding_box()
        image = page.locator("#fm-view-input").bounding_box()
        assert rf["x"] == pytest.approx(image["x"] + field[1] * image["width"] / 512, abs=1)
        assert rf["y"] == pytest.approx(image["y"] + field[0] * image["height"] / 600, abs=1)
        assert rf["width"] == pytest.approx(rx * image["width"] / 512, abs=1)
        text = page.locator("#fm-view-rf-text").text_content()
        assert text.startswith(f"cell ({row}, {col}) sees input rows ")
    _hover_cell(page, "#fm-view-map", 0, 0, h, w)
    assert "partly beyond the image (padding)" in page.locator("#fm-view-rf-text").text_content()
    assert opened.errors == []


@pytest.fixture(scope="module")
def with_arrays(tmp_path_factory: pytest.TempPathFactory) -> Run:
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 3, 19, 23, generator=torch.Generator().manual_seed(1))
    return _run(model, x, tmp_path_factory.mktemp("arrays") / "out", save_arrays=True)


def test_any_channel_opens_from_the_statistics_table(
    with_arrays: Run, small: Run, open_report: Any
) -> None:
    name = "down"  # 40 channels, 32 drawn as tiles
    shown = with_arrays.record(name)["channels_shown"]
    hidden = 35
    assert hidden not in shown
    for run, has_arrays in ((small, False), (with_arrays, True)):
        opened = open_report(run.index)
        page = opened.page
        key = run.key(name)
        section = f"#L{key}"
        page.locator(section).scroll_into_view_if_needed()
        page.click(f"{section} details.stats summary")
        page.wait_for_selector(f"{section} table.stats-table")
        assert page.locator(f"{section} tbody button.open").count() == 40
        # A shown channel opens from the report's data.
        page.click(f'{section} tbody button.open[data-channel="{shown[3]}"]')
        assert page.locator("#fm-view-title").text_content().endswith(f"#{shown[3]} · 9×11")
        page.click("#fm-view-close")
        page.click(f'{section} tbody button.open[data-channel="{hidden}"]')
        assert page.locator("#fm-view-title").text_content() == f"down · channel #{hidden} · 9×11"
        text = page.locator("#fm-view-missing-text").text_content()
        assert f"Channel #{hidden} is not drawn as a tile" in text
        # Its statistics are there even without its values.
        stats = page.locator("#fm-view-stats").text_content()
        assert stats.startswith(f"channel #{hidden} (all values, exact): mean ")
        if not has_arrays:
            assert "--save-arrays" in text and page.locator("#fm-arrays-file").count() == 0
            continue
        arrays = run.index.parent / "arrays.safetensors"
        page.set_input_files("#fm-arrays-file", str(arrays))
        page.wait_for_selector("#fm-view-port[data-zoom]", state="attached")
        _wait_until(page, "!document.getElementById('fm-view').classList.contains('missing')")
        got = _hover_cell(page, "#fm-view-map", 2, 3, 9, 11)
        exact = float(run.tensors[name][0, hidden, 2, 3])
        assert float(got["value"]) == exact  # the float32 value itself, not a float16 copy
        assert "exact float32" in got["text"]
        # With the arrays file read, the arrow keys step through every channel.
        page.keyboard.press("ArrowRight")
        title = "document.getElementById('fm-view-title').textContent"
        _wait_until(page, f"{title}.endsWith('#{hidden + 1} · 9×11')")
        assert opened.errors == []


def test_laptop_and_phone_layouts(resnet18: Run, open_report: Any) -> None:
    ACTUAL.mkdir(exist_ok=True)
    laptop = open_report(resnet18.index, width=1366, height=768).page
    laptop.screenshot(path=str(ACTUAL / "report-1366x768.png"))
    # The main column is used: the first layer's tiles reach past its middle.
    main = laptop.locator("#fm-main").bounding_box()
    tiles = laptop.locator("#L0 .tiles figure.tile").evaluate_all(
        "figs => figs.map(f => f.getBoundingClientRect().right)"
    )
    assert max(tiles) > main["x"] + 0.75 * main["width"]
    # Folding the header leaves the layers most of the screen, and is kept on reload.
    laptop.click("#fm-header-toggle")
    assert laptop.locator("#fm-facts").is_hidden()
    laptop.reload()
    laptop.wait_for_selector("html[data-first-layer-ms]", state="attached")
    assert laptop.locator("#fm-facts").is_hidden()
    assert laptop.locator("#fm-main").bounding_box()["y"] < 200
    laptop.screenshot(path=str(ACTUAL / "report-1366x768-folded.png"))
    laptop.click("#fm-header-toggle")
    assert laptop.locator("#fm-facts").is_visible()

    phone = open_report(resnet18.index, width=400, height=800).page
    name = "conv1"  # a 300x256 map
    phone.click(f'#fm-outline a[title="{name}"]')
    phone.wait_for_selector("#L0 .tiles[data-state=drawn]")
    phone.click('#L0 figure.tile[data-index="0"]')
    phone.screenshot(path=str(ACTUAL / "report-400-channel.png"))
    fits = phone.evaluate(
        "() => { const r = s => document.querySelector(s).getBoundingClientRect();"
        " return [r('#fm-view').left, r('#fm-view').right, r('#fm-view-port').right,"
        " r('#fm-view-overlay').right, document.documentElement.scrollWidth]; }"
    )
    left, right, port, overlay, scroll_width = fits
    assert left >= 0 and right <= 400 and port <= right and overlay <= right
    assert scroll_width <= 400
    dialog = phone.locator("#fm-view")
    assert dialog.evaluate("d => d.scrollWidth <= d.clientWidth")
    phone.click("#fm-view-close")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 400
    phone.screenshot(path=str(ACTUAL / "report-400.png"))


def test_density_control_changes_columns_and_is_kept(resnet18: Run, open_report: Any) -> None:
    page = open_report(resnet18.index, width=1366, height=768).page

    def columns() -> int:
        return int(
            page.locator("#L0 .tiles").evaluate(
                "t => getComputedStyle(t).gridTemplateColumns.split(' ').length"
            )
        )

    page.wait_for_selector("#L0 .tiles[data-state=drawn]")
    counts = {}
    for density in ("large", "medium", "small", "run"):
        page.select_option("#fm-density", density)
        counts[density] = columns()
    assert counts["small"] > counts["medium"] > counts["large"] >= 1
    assert counts["run"] == resnet18.manifest["render"]["columns"]
    page.select_option("#fm-density", "small")
    page.reload()
    page.wait_for_selector("#L0 .tiles[data-state=drawn]")
    assert page.locator("#fm-density").input_value() == "small" and columns() == counts["small"]
    page.select_option("#fm-density", "medium")


def test_dark_theme_follows_the_system_setting(browser: Any, small: Run) -> None:
    colours = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme)
        page = context.new_page()
        page.goto(small.index.resolve().as_uri())
        page.wait_for_selector("html[data-first-layer-ms]", state="attached")
        colours[scheme] = page.evaluate(
            "() => [getComputedStyle(document.body).backgroundColor,"
            " getComputedStyle(document.body).color]"
        )
        if scheme == "dark":
            ACTUAL.mkdir(exist_ok=True)
            page.screenshot(path=str(ACTUAL / "report-dark.png"))
        context.close()

    def luminance(css: str) -> float:
        r, g, b = (int(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
        return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255

    assert luminance(colours["light"][0]) > 0.9 and luminance(colours["light"][1]) < 0.2
    assert luminance(colours["dark"][0]) < 0.15 and luminance(colours["dark"][1]) > 0.8


def test_prediction_panel_lists_the_top_answers(
    small: Run, tmp_path: Path, open_report: Any
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(small.index.parent, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    top = [
        {"index": 948, "label": "Granny Smith", "probability": 0.61},
        {"index": 3, "label": "<img src=x onerror=self['pwned']=1>", "probability": 0.2},
        {"index": 7, "label": "cock", "probability": 0.05},
    ]
    for random_weights in (False, True):
        manifest["prediction"] = {
            "source": "softmax of the model's 1000 outputs; ImageNet-1k categories",
            "random_weights": random_weights,
            "meaningless": random_weights,
            "top": top,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        fm.write_report(folder)
        opened = open_report(folder / "index.html")
        page = opened.page
        panel = page.locator("#fm-prediction")
        items = panel.locator("ol.prediction-top > li")
        assert items.count() == 3
        for i, t in enumerate(top):
            li = items.nth(i)
            assert li.locator(".p-label").text_content() == t["label"]
            assert li.locator(".p-index").text_content() == f"#{t['index']}"
            assert li.locator(".p-prob").text_content() == f"{100 * t['probability']:.1f}%"
            width = li.locator(".p-fill").evaluate("e => e.style.width")
            assert float(width.rstrip("%")) == pytest.approx(100 * t["probability"])
        warning = panel.locator(".prediction-warning")
        assert warning.count() == int(random_weights)
        if random_weights:
            assert "RANDOM WEIGHTS" in warning.text_content()
        assert page.evaluate("typeof self.pwned") == "undefined"
        assert opened.errors == []
    # Without a prediction (models without known categories) there is no panel.
    assert open_report(small.index).page.locator("#fm-prediction").count() == 0


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
    _wait_until(page, f"document.querySelector('#L{key} img.summary').naturalWidth > 0", 5.0)
    assert _image_loaded(page, f"#L{key} img.summary")
    assert "tokens(prefix=1, grid=3x4)" in page.locator(f"#L{key} .meta").text_content()
    # A vector: its bar strip PNG.
    key = run.key("head")
    page.click('#fm-outline a[title="head"]')
    page.locator(f"#L{key} img.png").scroll_into_view_if_needed()
    _wait_until(page, f"document.querySelector('#L{key} img.png').naturalWidth > 0", 5.0)
    assert page.locator(f"#L{key} img.png").get_attribute("src") == run.record("head")["image"]
    ACTUAL.mkdir(exist_ok=True)
    page.screenshot(path=str(ACTUAL / "report-tokens.png"), full_page=True)
    assert opened.errors == []


def _volume_model() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(1, 2), nn.Conv2d(12, 2, 3),
    ).eval()  # fmt: skip
    return model, torch.randn(1, 1, 4, 10, 10, generator=torch.Generator().manual_seed(3))


def _signal_model() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv1d(2, 6, 5, stride=2, padding=2), nn.ReLU(), nn.Unflatten(1, (1, 6)),
        nn.Conv2d(1, 2, 3),
    ).eval()  # fmt: skip
    return model, torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(
    ("build", "layout", "drawn_as"),
    [(_volume_model, "NCDHW", "volume montage"), (_signal_model, "NCL", "signal heat map")],
    ids=["volume", "signal"],
)
def test_row_pictures_show_in_the_report(
    tmp_path: Path, open_report: Any, build: Any, layout: str, drawn_as: str
) -> None:
    torch.manual_seed(0)
    # A 2-D layer after it gives the page a tile layer, which marks the page as drawn.
    model, x = build()
    run = _run(model, x, tmp_path / "run")
    record = run.record("0")
    assert record["layout"] == layout and record["drawn_as"] == drawn_as
    assert record["data"] is None  # not channel tiles: the page shows the picture itself
    opened = open_report(run.index)
    page = opened.page
    key = run.key("0")
    page.click('#fm-outline a[title="0"]')
    page.locator(f"#L{key} img.png").scroll_into_view_if_needed()
    _wait_until(page, f"document.querySelector('#L{key} img.png').naturalWidth > 0", 5.0)
    assert _image_loaded(page, f"#L{key} img.png")
    assert page.locator(f"#L{key} img.png").get_attribute("src") == record["image"]
    assert page.locator(f"#L{key} img.png").get_attribute("alt") == f"{drawn_as} of 0"
    assert layout in page.locator(f"#L{key} .meta").text_content()
    assert opened.errors == []


def test_attention_pictures_show_in_the_report(tmp_path: Path, open_report: Any) -> None:
    from test_attention_capture import TinyViT

    torch.manual_seed(0)
    model = TinyViT().eval()  # a class token, 4x3 patches, one attention layer of 2 heads
    run = _run(model, torch.randn(1, 3, 16, 12), tmp_path / "attention")
    name = "self_attention.attention"
    record = run.record(name)
    assert record["layout"] == "attention(N, heads, L, S; prefix=1, grid=4x3)"
    assert record["drawn_as"] == "attention map" and record["image"] is not None
    assert record["layout_evidence"].startswith("recomputed")
    opened = open_report(run.index)
    page = opened.page
    key = run.key(name)
    page.locator(f"#L{key}").scroll_into_view_if_needed()
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
    assert page.locator(f"#L{key} figure.tile").count() == 2  # one tile per head
    assert "attention(N, heads, L, S" in page.locator(f"#L{key} .meta").text_content()
    assert opened.errors == []


def test_a_layer_reduced_by_the_data_budget_shows_the_channels_kept(
    tmp_path: Path, open_report: Any
) -> None:
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    run = _run(model, x, tmp_path / "out", report_budget=0.15)
    cut = [r for r in run.manifest["records"] if r["data_channels"]]
    assert cut and all(0 < r["data_channels"] < len(r["channels_shown"]) for r in cut)
    record = cut[0]
    key = run.key(record["name"])
    opened = open_report(run.index)
    page = opened.page
    page.locator(f"#L{key}").scroll_into_view_if_needed()
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]")
    # One tile per channel the data keeps, each the drawn channel of that position.
    tiles = page.locator(f"#L{key} figure.tile")
    assert tiles.count() == record["data_channels"]
    channels = tiles.evaluate_all("ts => ts.map(t => Number(t.dataset.channel))")
    assert channels == record["channels_shown"][: record["data_channels"]]
    selection = page.locator(f"#L{key} .legend-selection").text_content()
    assert f"the first {record['data_channels']} of the" in selection
    assert "report budget" in page.locator(f"#L{key} .warning").first.text_content()
    assert "over its budget of 0.15 MiB" in page.locator("ul.warnings").text_content()
    # A kept channel opens, and its value under the cursor is the float16 of the exact one.
    last = record["data_channels"] - 1
    page.click(f'#L{key} figure.tile[data-index="{last}"]')
    h, w = record["shape"][2:]
    got = _hover_cell(page, "#fm-view-map", 3, 4, h, w)
    _check_readout(run, record["name"], record["channels_shown"][last], 3, 4, got)


def test_legends_say_n_a_and_constant_as_the_pictures_do(tmp_path: Path, open_report: Any) -> None:
    from featuremaps.render.colormap import colormap_lut
    from test_report import flat_and_empty_run

    result = flat_and_empty_run(tmp_path / "o")
    opened = open_report(Path(str(result.report)))
    page = opened.page
    names = [r["name"] for r in result.manifest["records"]]
    flat, empty = f"#L{names.index('flat')}", f"#L{names.index('empty')}"
    for selector in (flat, empty):
        page.locator(selector).scroll_into_view_if_needed()
        page.wait_for_selector(f"{selector} .tiles[data-state=drawn]")

    def legend(selector: str) -> tuple[str, str, str]:
        return (
            page.locator(f"{selector} .bar-low").text_content() or "",
            page.locator(f"{selector} .bar-high").text_content() or "",
            page.locator(f"{selector} .legend-scale").text_content() or "",
        )

    low, high, text = legend(empty)
    assert (low, high) == ("n/a", "n/a")
    assert "range n/a (no finite values: every cell is NaN/Inf)" in text
    assert "0 … 0" not in text
    low, high, text = legend(flat)
    assert low == high == "27.71"
    assert text.endswith(" · constant (spread below float32 resolution)")
    tile = _pixels(page, f"{flat} figure.tile canvas >> nth=0")[..., :3]
    assert (tile == colormap_lut("viridis")[0]).all()  # the one constant colour
    page.select_option("#fm-scale", "channel")
    _wait_until(page, f"document.querySelector('{flat} figure.tile figcaption') !== null")
    caption = page.locator(f"{flat} figure.tile >> nth=0").text_content() or ""
    assert "const 27.71" in caption
    assert opened.errors == []


@pytest.fixture(scope="module")
def small_filters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, nn.Module]:
    torch.manual_seed(0)
    model = Small().eval()
    x = torch.randn(1, 3, 19, 23, generator=torch.Generator().manual_seed(1))
    return _run(model, x, tmp_path_factory.mktemp("filters") / "out", filters=True), model


def _element_pixels(page: Any, selector: str) -> np.ndarray:
    """What the browser shows of an element (its border box), as (H, W, 3) uint8."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(page.locator(selector).screenshot())) as image:
        return np.asarray(image.convert("RGB"))


def test_channel_view_shows_the_channels_filter_beside_its_map(
    small_filters: tuple[Run, nn.Module], open_report: Any
) -> None:
    run, model = small_filters
    opened = open_report(run.index)
    page = opened.page
    for name, index in (("down", 5), ("conv", 2)):
        key = run.key(name)
        page.click(f'#fm-outline a[title="{name}"]')
        page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
        channel = run.record(name)["channels_shown"][index]
        page.click(f'#L{key} figure.tile[data-index="{index}"]')
        figure = page.locator("#fm-view-filter")
        assert figure.is_visible() and figure.get_attribute("data-channel") == str(channel)
        # The filter is the channel's part of the layer's sheet, as the sheet itself says.
        sheet = fm.make_filter_sheet(fm.filters(model, name))
        box = sheet.box(channel)
        assert box is not None
        canvas = "#fm-view-filter-map"
        page.wait_for_selector(
            f"{canvas}[data-box='{json.dumps(list(box), separators=(',', ':'))}']"
        )
        zy, zx = json.loads(page.get_attribute(canvas, "data-zoom") or "")
        assert zx >= 1 and zy >= 1
        y, x, h, w = box
        expected = sheet.pixels[y : y + h, x : x + w].repeat(zy, axis=0).repeat(zx, axis=1)
        # The screenshot of the element holds its 1 px border and, where the element does not
        # sit on whole pixels, one more row or column: the canvas is inside, drawn exactly.
        shown = _element_pixels(page, canvas)
        assert any(
            np.array_equal(shown[dy : dy + len(expected), dx : dx + expected.shape[1]], expected)
            for dy in (0, 1, 2)
            for dx in (0, 1, 2)
        ), f"the filter drawn ({shown.shape}) is not the sheet's crop ({expected.shape})"
        # The words: what the picture shows, its scale, and this filter's norms from the stats.
        l1 = run.record(name)["channel_stats"]["filter_l1"][channel]
        text = page.locator("#fm-view-filter-text")
        _wait_until(
            page, "document.getElementById('fm-view-filter-text').textContent.includes('L1')"
        )
        assert text.text_content().startswith(f"filter #{channel} (L1 {l1:.4g} · L2 ")
        assert "one range over the layer's weights" in text.text_content() or (
            "one symmetric range over all 6 filters" in text.text_content()
        )
        page.click("#fm-view-close")
    # A layer without filters (a ReLU) shows none.
    key = run.key("act")
    page.click('#fm-outline a[title="act"]')
    page.wait_for_selector(f"#L{key} .tiles[data-state=drawn]", timeout=5000)
    page.click(f'#L{key} figure.tile[data-index="0"]')
    assert not page.locator("#fm-view-filter").is_visible()
    assert opened.errors == [] and opened.dialogs == []
