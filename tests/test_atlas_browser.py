"""The atlas page in a real browser (Chromium through Playwright, from file://): every patch
loads, each channel shows its top cells best first with their values and its controls, and the
page raises no script or CSP error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featuremaps as fm
from featuremaps.commands.atlas import build_atlas
from featuremaps.report.atlas_page import atlas_anchor

pytestmark = pytest.mark.browser


def test_atlas_page_shows_every_channel_patches_values_and_controls(
    browser: Any, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(data / f"{i}.png")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    out = tmp_path / "atlas"
    run = tmp_path / "run"
    fm.visualize(model, str(data / "0.png"), out=run)
    build_atlas(model, [str(data)], out=out, k=3, controls=2, workers=0, run=run)
    written = json.loads((out / "atlas.json").read_text())
    layer = written["layers"]["0"]

    context = browser.new_context(viewport={"width": 1000, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / "atlas.html").resolve().as_uri())
        page.wait_for_load_state("load")
        section = f"section#{atlas_anchor('0')}"
        for c, cells in layer["channels"].items():
            channel = f"{section} div.atlas-channel[data-channel='{c}']"
            shown = page.eval_on_selector_all(
                f"{channel} figure.top figure.patch", "els => els.map(e => e.dataset.value)"
            )
            assert [float(v) for v in shown] == [e["value"] for e in cells]
            controls = page.locator(f"{channel} figure.controls figure.control")
            assert controls.count() == len(layer["controls"][c])
        sizes = page.eval_on_selector_all("figure.patch img", "els => els.map(e => e.naturalWidth)")
        kept = [
            v
            for x in written["layers"].values()
            for g in ("channels", "controls")
            for v in x[g].values()
        ]
        assert len(sizes) == sum(len(v) for v in kept)
        assert all(w == 3 for w in sizes)  # every patch loaded: 3x3 receptive fields
        # The run's report links each layer's view to its section of the atlas page.
        page.goto((run / "index.html").resolve().as_uri())
        page.wait_for_load_state("load")
        link = page.locator("section.layer:has(h2 a:text-is('0')) p.atlas-link a")
        assert link.count() == 1
        link.click()
        page.wait_for_load_state("load")
        assert page.url.endswith(f"atlas/atlas.html#{atlas_anchor('0')}")
        # The conv layer shows each channel's filter (3x3, drawn larger); the ReLU has none.
        filters = page.eval_on_selector_all(
            "figure.filter img", "els => els.map(e => e.naturalWidth)"
        )
        assert len(filters) == 3 and all(w > 0 for w in filters)
        assert written["layers"]["1"]["filters"] is None
        assert errors == []
    finally:
        context.close()
