"""The report's class-map panel without a browser: its page model and HTML against the manifest.

The numbers shown are the manifest's, formatted by the page's rule (four significant digits); a
map that fails the sanity check carries the badge; strings from the manifest are escaped. What
only a browser shows (pictures loading, the link from the layer list) is in
test_report_cams_browser.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import featuremaps as fm
from featuremaps.report import build_report, report_files
from test_report import HOSTILE_NAMES, TEMPLATE_TAGS, _Tags

# The panel's own elements, besides the ones the rest of the page uses.
CAM_TAGS = {"section", "h3", "table", "thead", "tbody", "tr", "th", "td", "q", "code"}


def _number(value: float | None) -> str:
    """The page's number format (four significant digits; a dash for none)."""
    return "—" if value is None else f"{value:.4g}"


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory: pytest.TempPathFactory) -> fm.Visualization:
    from conftest import TinyNet

    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    options = fm.CamOptions(methods="gradcam,eigencam", layers="conv2,act")
    out = tmp_path_factory.mktemp("cams") / "out"
    [result] = fm.visualize(TinyNet().eval(), x, out=out, cams=options)
    return result


def _page(result: fm.Visualization) -> str:
    assert result.report is not None
    return Path(result.report).read_text(encoding="utf-8")


def _figures(html: str) -> list[str]:
    """The HTML of each map's figure in the panel, in page order."""
    return re.findall(r'<figure class="cam[ "].*?</figure>', html, flags=re.S)


def test_panel_lists_every_map_with_the_manifests_numbers(cam_run: fm.Visualization) -> None:
    html = _page(cam_run)
    cams = cam_run.manifest["cams"]
    assert len(cams) == 6  # conv2, act and act#2 (the second call), two methods each
    figures = _figures(html)
    assert len(figures) == len(cams)
    out = Path(str(cam_run.out_dir))
    layers_in_order = list(dict.fromkeys(c["layer"] for c in cams))
    grouped = [c for layer in layers_in_order for c in cams if c["layer"] == layer]
    for entry, figure in zip(grouped, figures, strict=True):
        assert f'data-method="{entry["method"]}"' in figure
        assert f'src="{entry["picture"]}"' in figure and (out / entry["picture"]).is_file()
        cells = re.findall(r'<td class="num">([^<]*)</td>', figure)
        assert cells == [
            _number(entry["deletion_auc"]),
            _number(entry["random_auc"]),
            _number(entry["insertion_auc"]),
            _number(entry["random_insertion_auc"]),
        ]
        low, high = entry["range"]
        assert f'<dd class="cam-range">{_number(low)} … {_number(high)}</dd>' in figure
        assert f"<code>{entry['array']}</code>" in figure
        target = entry["target"]
        if target["index"] is None:
            assert "none (class-agnostic)" in figure
        else:
            assert f"class {target['index']}" in figure
            assert f"score {_number(target['score'])}" in figure
            assert f"probability {_number(target['probability'])}" in figure
        rho = entry["sanity_rank_correlation"]
        assert f'<span class="num">{rho:.2f}</span>' in figure
        badges = re.findall(r'<span class="badge cam-badge"[^>]*>([^<]*)</span>', figure)
        assert badges == (["FAILS THE SANITY CHECK"] if entry["sanity_failed"] else [])
        assert ('<figure class="cam cam-failed"' in figure) == entry["sanity_failed"]
    # eigencam does not depend on the layers above: it fails by construction, gradcam does not.
    failing = [(c["layer"], c["method"]) for c in cams if c["sanity_failed"]]
    assert failing == [(layer, "eigencam") for layer in layers_in_order]


def test_layer_list_and_outline_link_to_each_layers_maps(cam_run: fm.Visualization) -> None:
    html = _page(cam_run)
    records = [r["name"] for r in cam_run.manifest["records"]]
    data = build_report(cam_run.manifest)
    assert [c.layer for c in data.cams] == ["act", "conv2", "act#2"]
    for group in data.cams:
        assert group.key == records.index(group.layer)
        assert f'<section class="cam-layer" id="{group.anchor}" data-key="{group.key}">' in html
        # From the layer list (outline) and from the layer's own section.
        assert html.count(f'href="#{group.anchor}"') == 2
        assert group.methods == ("gradcam", "eigencam") and group.failing == 1
    assert '<a href="#fm-cams">Class maps</a>' in html
    # Layers without maps have no link.
    assert html.count('<span class="cam-mark">') == len(data.cams)


def _with_cams(manifest: dict[str, Any], cams: list[dict[str, Any]]) -> dict[str, Any]:
    changed = copy.deepcopy(manifest)
    changed["cams"] = cams
    return changed


def test_a_run_without_class_maps_gets_the_page_it_had(cam_run: fm.Visualization) -> None:
    without = copy.deepcopy(cam_run.manifest)
    del without["cams"]
    page = report_files(without)["index.html"]
    assert page == report_files(_with_cams(without, []))["index.html"]
    for marker in (b"fm-cams", b'class="cam', b"#cams-", b"Class maps"):
        assert marker not in page
    assert build_report(without).cams == ()


def test_hostile_names_in_class_maps_are_escaped(cam_run: fm.Visualization) -> None:
    base = cam_run.manifest["cams"][0]
    cams = []
    for i, name in enumerate(HOSTILE_NAMES):
        entry = copy.deepcopy(base)
        entry["layer"] = name
        entry["method"] = name
        entry["target"] = {"index": i, "name": name, "score": 1.0, "output": name, "region": name}
        entry["notes"] = [name]
        entry["cells"] = name
        cams.append(entry)
    manifest = _with_cams(cam_run.manifest, cams)
    # The first hostile name is also a drawn record's: its maps are linked from the layer list.
    manifest["records"][0]["name"] = HOSTILE_NAMES[0]
    html = report_files(manifest)["index.html"].decode()
    for name in HOSTILE_NAMES:
        assert name not in html
    assert "<q>&lt;img src=x onerror=alert(1)&gt;</q>" in html
    assert '<a href="#layer=%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in html
    assert 'title="class maps of &lt;img src=x onerror=alert(1)&gt;: ' in html
    tags = _Tags(html).tags
    assert {tag for tag, _ in tags} <= TEMPLATE_TAGS | CAM_TAGS
    for tag, attrs in tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    assert [a["data-method"] for t, a in tags if t == "figure" and "data-method" in a] == list(
        HOSTILE_NAMES
    )
    scripts = re.findall(r"<script[^>]*>", html)
    assert scripts == [
        '<script type="application/json" id="fm-config">',
        '<script src="assets/report.js" defer>',
    ]


def test_maps_without_a_picture_or_a_correlation_say_so(cam_run: fm.Visualization) -> None:
    entry = copy.deepcopy(cam_run.manifest["cams"][0])
    volume = {
        **entry,
        "shape": [2, 3, 4],
        "picture": None,
        "reason": "a 3-D map; its values are in the array",
        "array": "cams/0009_v-gradcam-s0.npy",
        "sanity_rank_correlation": None,
        "sanity_failed": None,
        "deletion_auc": None,
        "insertion_auc": None,
        "random_auc": None,
        "random_insertion_auc": None,
    }
    constant = {**entry, "sanity_rank_correlation": None, "sanity_failed": False}
    html = report_files(_with_cams(cam_run.manifest, [volume, constant]))["index.html"].decode()
    first, second = _figures(html)
    assert "<img" not in first
    assert "No picture: a 3-D map; its values are in the array." in first
    assert "<code>cams/0009_v-gradcam-s0.npy</code>" in first and "2×3×4" in first
    assert "deletion and insertion curves not measured" in first and "<table" not in first
    for figure in (first, second):
        assert 'class="cam-sanity cam-neutral"' in figure and "FAILS" not in figure
    assert "no rank correlation" in first
    assert "constant (no rank order left), so it changed entirely" in second


def test_paths_of_an_inputs_sub_folder_are_relative_to_its_report(
    cam_run: fm.Visualization,
) -> None:
    entry = copy.deepcopy(cam_run.manifest["cams"][0])
    prefixed = {**entry, "picture": "img1/" + entry["picture"], "array": "img1/" + entry["array"]}
    [group] = build_report(_with_cams(cam_run.manifest, [prefixed]), "img1/").cams
    assert group.maps[0].picture == entry["picture"] and group.maps[0].array == entry["array"]


def test_the_panel_round_trips_through_the_manifest_file(cam_run: fm.Visualization) -> None:
    out = Path(str(cam_run.out_dir))
    manifest = json.loads((out / "manifest.json").read_text())
    assert report_files(manifest)["index.html"] == (out / "index.html").read_bytes()


def test_maps_of_a_layer_the_run_did_not_draw_and_a_target_without_a_name() -> None:
    manifest = {
        "tool": "featuremaps",
        "records": [],
        "cams": [
            {
                "layer": "0",
                "method": "gradcam",
                "sample": 0,
                "target": {"index": 2, "name": None, "score": 0.5},
                "array": "cams/0000_0-gradcam-s0.npy",
                "shape": [8, 8],
                "range": [0.0, 1.0],
                "layout": "NCHW",
                "picture": "cams/0000_0-gradcam-s0.png",
            }
        ],
    }
    [group] = build_report(manifest).cams
    assert group.key is None
    html = report_files(manifest)["index.html"].decode()
    assert '<section class="cam-layer" id="cams-0">' in html and "<q>" not in html
    assert "class 2 · score 0.5" in html
