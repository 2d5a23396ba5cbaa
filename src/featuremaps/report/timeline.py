"""The watch timeline page as bytes: each layer's picture across steps, and its dead channels.

The report stage for :func:`featuremaps.watch`'s folder writer: plain data in
(:class:`TimelineLayer`, built by ``featuremaps report-timeline`` from the looks' JSON), a
mapping ``relative path -> bytes`` out, from a packaged template. Nothing here writes files. As
for the run report, the page opens from ``file://``: no inline script (the slider is
``assets/timeline.js``), data only as escaped JSON, the same Content-Security-Policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from featuremaps.report.render import ASSETS_DIR, CSP, asset, script_json, template_environment

__all__ = ["CHART_HEIGHT", "CHART_WIDTH", "TimelineLayer", "chart_points", "timeline_files"]

CHART_WIDTH = 320
CHART_HEIGHT = 80


@dataclass(frozen=True)
class TimelineLayer:
    """One layer over the looks: the steps, the PNG of each (None: not drawn) and the
    fraction of dead channels at each."""

    name: str
    module_type: str
    steps: tuple[int, ...]
    images: tuple[str | None, ...]
    dead_fraction: tuple[float, ...]


def chart_points(steps: tuple[int, ...], values: tuple[float, ...]) -> str:
    """SVG polyline points of ``values`` (fractions, 0 at the bottom, 1 at the top) over
    ``steps`` (first step at the left edge, last at the right)."""
    first, last = (steps[0], steps[-1]) if steps else (0, 0)
    span = max(last - first, 1)
    points = []
    for step, value in zip(steps, values, strict=True):
        x = (step - first) / span * CHART_WIDTH
        y = (1.0 - min(max(value, 0.0), 1.0)) * CHART_HEIGHT
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)


def timeline_files(title: str, layers: list[TimelineLayer]) -> dict[str, bytes]:
    """``timeline.html`` and its script: a slider over steps per layer and a dead-channel chart."""
    import markupsafe

    environment = template_environment()
    data = [{"steps": list(layer.steps), "images": list(layer.images)} for layer in layers]
    page = environment.get_template("timeline.html").render(
        title=title,
        layers=layers,
        csp=CSP,
        assets=ASSETS_DIR,
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        points=chart_points,
        data=markupsafe.Markup(script_json(data)),
    )
    return {
        "timeline.html": page.encode("utf-8"),
        f"{ASSETS_DIR}/timeline.js": asset("timeline.js"),
        f"{ASSETS_DIR}/report.css": asset("report.css"),
    }
