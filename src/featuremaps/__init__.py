"""featuremaps: capture every layer of a PyTorch model and draw truthful pictures of it.

    >>> import featuremaps as fm
    >>> records = fm.capture(model, x)                    # exact values, one record per call
    >>> fm.visualize("resnet18", "photo.jpg", out="maps")  # pictures, manifest.json, index.html

:func:`filters` reads the weights behind a Conv or Linear layer's channels and
:func:`make_filter_sheet` draws them. Discover names with :func:`list_layers`; everything raised
on purpose is a :class:`FeaturemapsError`. :func:`watch` looks at a model's maps every N steps
while it trains (TensorBoard or a folder; a Lightning callback in
:mod:`featuremaps.integrations.lightning`).
"""

from featuremaps import _collector

# Importing this package imports torch: its objects are made without the cyclic collector
# walking them again and again (see featuremaps._collector).
with _collector.paused():
    from featuremaps._errors import (
        CaptureError,
        EngineError,
        FeaturemapsError,
        FeaturemapsWarning,
        InputError,
        LayerError,
        ModelError,
        NonFiniteWarning,
        OptionError,
        OutputError,
        RandomWeightsWarning,
        UntrustedCheckpointError,
    )
    from featuremaps._version import __version__
    from featuremaps.ablation import AblationPoint, AblationResult
    from featuremaps.capture import (
        Capture,
        LayerRecord,
        NotRun,
        capture,
        record_name,
        zero_channels,
    )
    from featuremaps.classmaps import ClassMap, Region, Target
    from featuremaps.commands.ablate import ablate
    from featuremaps.commands.cam import cam
    from featuremaps.commands.cam_files import CamOptions
    from featuremaps.commands.layers import LayerInfo, list_layers
    from featuremaps.commands.locate import draw_overlay, locate
    from featuremaps.commands.prune import prune
    from featuremaps.commands.run import Visualization, visualize
    from featuremaps.commands.slide import SlideResult, slide_maps
    from featuremaps.commands.stats import collect_stats
    from featuremaps.dataset import SavedStats, read_stats
    from featuremaps.filters import Filters, filters
    from featuremaps.geometry import MapGeometry
    from featuremaps.inputs import (
        LoadedInput,
        Preprocessing,
        expected_axes,
        expected_channels,
        load_input,
        sample_image_path,
    )
    from featuremaps.manifest import MANIFEST as MANIFEST_NAME
    from featuremaps.manifest import RecordSummary
    from featuremaps.models import LoadedModel, load_model
    from featuremaps.pruning import PrunePoint, PruneResult
    from featuremaps.render import Grid, GridLabel, GridOptions, make_grid
    from featuremaps.render.filters import FilterSheet, make_filter_sheet
    from featuremaps.report import write_report
    from featuremaps.stats import summarize
    from featuremaps.watch import watch

__all__ = [
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
