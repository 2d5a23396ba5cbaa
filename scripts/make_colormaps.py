"""Write ``src/featuremaps/render/colormaps.json``: the lookup tables of the colormaps a default
run and its report use, so that drawing them does not import matplotlib (about 0.3 s of every
run). ``tests/test_render_colormap.py`` checks the file against matplotlib, so a matplotlib that
changes a map fails the suite instead of drawing stale colours; run this script again then.

    python scripts/make_colormaps.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

# The grid's defaults and the report's choices (featuremaps.report.render).
NAMES = ("viridis", "magma", "cividis", "gray", "RdBu_r", "coolwarm")
TARGET = Path(__file__).resolve().parents[1] / "src" / "featuremaps" / "render" / "colormaps.json"


def table(name: str) -> str:
    rgba = np.asarray(matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256)), dtype=np.float64)
    return bytes(np.rint(rgba[:, :3] * 255.0).astype(np.uint8).tobytes()).hex()


def main() -> None:
    data = {
        "about": "256-entry RGB lookup tables (hex, row by row) of matplotlib colormaps; made by "
        "scripts/make_colormaps.py",
        "matplotlib": matplotlib.__version__,
        "tables": {name: table(name) for name in NAMES},
    }
    TARGET.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
