"""Pure rendering: activation arrays in, uint8 pixels out; numbers in, chart PNG bytes out.

The flow inside this stage is scaling (which value range) -> colormap (which colour) -> grid
(which tiles, where, with which captions and legend), or -> overlay (one channel over the input,
placed by receptive-field geometry); pictures of maps are computed in numpy, without matplotlib
figures. Charts with axes and text (statistics histograms, ranked channels, ablation curves) are
drawn by matplotlib in :mod:`featuremaps.render.plots`, imported on first use. Nothing here writes
files.
"""

from featuremaps.render.colormap import (
    DEFAULT_CMAP,
    DEFAULT_DIVERGING_CMAP,
    NAN_COLOR,
    colorize,
    colormap_lut,
)
from featuremaps.render.grid import Grid, GridLabel, GridOptions, make_grid, select_channels
from featuremaps.render.overlay import Overlay, overlay
from featuremaps.render.scaling import (
    ScaleMode,
    ValueRange,
    channel_ranges,
    compute_range,
    is_signed,
    merge_ranges,
    normalize,
    normalize_channels,
)

__all__ = [
    "DEFAULT_CMAP",
    "DEFAULT_DIVERGING_CMAP",
    "NAN_COLOR",
    "Grid",
    "GridLabel",
    "GridOptions",
    "Overlay",
    "ScaleMode",
    "ValueRange",
    "channel_ranges",
    "colorize",
    "colormap_lut",
    "compute_range",
    "is_signed",
    "make_grid",
    "merge_ranges",
    "normalize",
    "normalize_channels",
    "overlay",
    "select_channels",
]
