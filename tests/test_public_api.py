"""The public surface: a pinned, sorted __all__, and notebook displays that escape user data."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

import featuremaps as fm
from conftest import NamedChain

EXPECTED = [
    "MANIFEST_NAME",
    "AblationPoint",
    "AblationResult",
    "CamOptions",
    "Capture",
    "CaptureError",
    "ClassMap",
    "EngineError",
    "FeaturemapsError",
    "FeaturemapsWarning",
    "FilterSheet",
    "Filters",
    "Grid",
    "GridLabel",
    "GridOptions",
    "InputError",
    "LayerError",
    "LayerInfo",
    "LayerRecord",
    "LoadedInput",
    "LoadedModel",
    "MapGeometry",
    "ModelError",
    "NonFiniteWarning",
    "NotRun",
    "OptionError",
    "OutputError",
    "Preprocessing",
    "PrunePoint",
    "PruneResult",
    "RandomWeightsWarning",
    "RecordSummary",
    "Region",
    "SavedStats",
    "SlideResult",
    "Target",
    "UntrustedCheckpointError",
    "Visualization",
    "__version__",
    "ablate",
    "cam",
    "capture",
    "collect_stats",
    "draw_overlay",
    "expected_axes",
    "expected_channels",
    "filters",
    "list_layers",
    "load_input",
    "load_model",
    "locate",
    "make_filter_sheet",
    "make_grid",
    "prune",
    "read_stats",
    "record_name",
    "sample_image_path",
    "slide_maps",
    "summarize",
    "visualize",
    "watch",
    "write_report",
    "zero_channels",
]


def test_exports_are_pinned_and_exist() -> None:
    assert fm.__all__ == EXPECTED
    for name in fm.__all__:
        assert hasattr(fm, name), name


def test_every_error_is_a_featuremaps_error() -> None:
    for name in fm.__all__:
        obj = getattr(fm, name)
        if isinstance(obj, type) and issubclass(obj, Warning):
            assert issubclass(obj, fm.FeaturemapsWarning)
        elif isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fm.FeaturemapsError)


HOSTILE_NAMES = ("<img src=x onerror=alert(1)>",)


def test_notebook_displays_escape_layer_names() -> None:
    c = fm.capture(NamedChain(HOSTILE_NAMES), torch.zeros(1, 1, 2, 2))
    for html in (c._repr_html_(), c[0]._repr_html_()):
        assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    [result] = fm.visualize(NamedChain(HOSTILE_NAMES), torch.zeros(1, 1, 2, 2))
    assert "<img src=x" not in result._repr_html_().replace("<img src='data:image/png", "")


def test_grid_png_display_decodes_to_its_pixels() -> None:
    grid = fm.make_grid(np.arange(12, dtype=np.float32).reshape(3, 2, 2))
    with Image.open(io.BytesIO(grid._repr_png_())) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), grid.pixels)
