"""The report's files as bytes: the HTML page from packaged templates, its assets and data scripts.

Second half of the ``report`` stage: :class:`~featuremaps.report.model.ReportData` in, a mapping
``relative path -> bytes`` out. Nothing here writes files (``featuremaps.io`` does).

The page must open from ``file://`` with no server. Browsers refuse ``fetch()`` of ``file://``
URLs, but they do run ``<script src>`` files from the same folder, so every piece of data loaded
later is a small script that calls ``featuremaps.layerData(...)`` or ``featuremaps.layerStats(...)``
defined by ``assets/report.js``. Layer names are user data (a module can be registered under any
string): the templates autoescape everything, data goes into the page only as JSON inside a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, and the
Content-Security-Policy runs script files only (no inline script, no event-handler attributes).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

from featuremaps.classmaps.trust import SANITY_THRESHOLD
from featuremaps.io import number_list_json
from featuremaps.render.colormap import DEFAULT_CMAP, DEFAULT_DIVERGING_CMAP, colormap_lut
from featuremaps.render.scaling import (
    constant_text,
    fixed_range,
    is_constant_range,
    is_signed_range,
)
from featuremaps.report.model import STATS_FILE, ReportData

__all__ = [
    "ASSETS_DIR",
    "CSP",
    "DIVERGING_CMAPS",
    "PRECISION",
    "RUN_PAGE",
    "SEQUENTIAL_CMAPS",
    "asset",
    "float16_copy",
    "layer_data_head",
    "layer_data_script",
    "layer_data_size",
    "layer_data_values",
    "prepare_templates",
    "render_files",
    "runs_index_files",
    "script_json",
    "stats_script",
    "template_environment",
]

ASSETS_DIR = "assets"
PRECISION = "float16"
SEQUENTIAL_CMAPS = ("viridis", "magma", "cividis", "gray")
DIVERGING_CMAPS = ("RdBu_r", "coolwarm")
# Diverging matplotlib maps a run may have asked for; any of them is offered for signed layers.
_DIVERGING_BASES = ("RdBu", "coolwarm", "bwr", "seismic", "PiYG", "PRGn", "BrBG", "PuOr", "RdGy")
_KNOWN_DIVERGING = frozenset(
    name
    for base in (*_DIVERGING_BASES, "RdYlBu", "RdYlGn", "Spectral")
    for name in (base, f"{base}_r")
)
# For a file:// page Chromium counts every file:// URL as 'self' (measured: a script in a parent
# folder loads too), so this does not confine the page to its folder. What it does: no inline
# script or style, no eval, no event-handler attributes, nothing from the network, data: or blob:.
# A path-restricted source would need the folder's absolute path and break moving the report.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)


def _finite_numbers(values: list[Any] | tuple[Any, ...]) -> bool:
    """Whether ``values`` are all plain floats and none is NaN/Inf: their sum is finite (a sum
    that overflows only sends the list the slow way)."""
    return set(map(type, values)) == {float} and math.isfinite(sum(values))


def _strict(value: Any) -> Any:
    """NaN/Inf floats become None, so the text is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and _finite_numbers(value):
            return value  # a statistics list without NaN/Inf: nothing to replace
        # Inline test for the plain floats that fill statistics lists: one call per channel
        # value cost a third of a second on resnet50.
        return [
            (v if math.isfinite(v) else None) if type(v) is float else _strict(v) for v in value
        ]
    return value


def script_json(obj: Any) -> str:
    """JSON text that is safe inside ``<script>`` blocks and JavaScript string contexts.

    ``<``, ``>`` and ``&`` become ``\\u003c`` etc., so no value can close the script element or
    start a comment; U+2028/U+2029 are escaped because older JavaScript treats them as line ends.
    NaN/Inf become ``null`` (strict JSON).
    """
    text = json.dumps(_strict(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


FLOAT16_MAX = 65504.0
_SERIAL_PIECE = 1 << 15  # torch's parallel grain size (at::internal::GRAIN_SIZE)


def float16_copy(maps: np.ndarray, largest: float | None = None) -> tuple[np.ndarray, int]:
    """A little-endian float16 copy of ``maps`` and how many finite values overflowed to ±Inf.

    ``largest``, when the caller knows it, is a bound on the magnitude of the finite values
    (from statistics it already has): at most ``FLOAT16_MAX`` means nothing can overflow, and
    the count is skipped. float32 arrays are converted by torch when it is loaded: the same IEEE
    round-to-nearest-even as numpy's ``astype`` (tested), about ten times faster because it is
    vectorised.
    """
    arr = np.asarray(maps)
    torch = sys.modules.get("torch")
    with np.errstate(over="ignore"):
        if torch is not None and arr.dtype == np.float32 and arr.size:
            source = torch.from_numpy(np.ascontiguousarray(arr)).reshape(-1)
            out = torch.empty(source.shape, dtype=torch.float16)  # always a new array
            # Pieces no larger than torch's parallel grain run on this thread alone: a copy
            # split across the intra-op pool waits for a core that the writer thread (or the
            # model) keeps busy, and takes ten times longer than doing it here.
            for i in range(0, source.numel(), _SERIAL_PIECE):
                out[i : i + _SERIAL_PIECE].copy_(source[i : i + _SERIAL_PIECE])
            half = out.numpy().view("<f2").reshape(arr.shape)
        else:
            half = arr.astype("<f2")  # always a new array: the caller's buffer may change later
    if largest is not None and largest <= FLOAT16_MAX:
        return half, 0
    overflow = int(np.count_nonzero(np.isfinite(arr) & ~np.isfinite(half)))
    return half, overflow


def layer_data_script(
    stem: str,
    half: np.ndarray,
    overflow: int,
    ranges: Sequence[tuple[float | None, float | None]],
    head: bytes | None = None,
) -> bytes:
    """The data script of one record: its shown channels ``(k, H, W)`` as float16, base64.

    ``half`` and ``overflow`` come from :func:`float16_copy`. ``ranges`` are the exact
    (float32/float64) min and max of each shown channel, so per-channel colour scales and
    captions do not depend on the float16 rounding. ``head``: :func:`layer_data_head` of the
    same arguments, when the caller has it already.
    """
    half = np.ascontiguousarray(half, dtype="<f2")
    if head is None:
        head = layer_data_head(stem, half.shape, overflow, ranges)
    # Bytes all the way: the base64 text is large, and str round trips would copy it twice.
    return b"".join((head, base64_text(half.reshape(-1).view(np.uint8)).data, _DATA_TAIL))


#: Two base64 digits for each 12-bit value, as the two bytes of a little-endian uint16.
_BASE64_DIGITS = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", dtype=np.uint8
)
_BASE64_PAIRS = _BASE64_DIGITS[np.arange(4096) >> 6].astype("<u2") | (
    _BASE64_DIGITS[np.arange(4096) & 63].astype("<u2") << 8
)


def base64_text(data: np.ndarray) -> np.ndarray:
    """The standard base64 text (padded, no line breaks) of the bytes ``data`` (a 1-D uint8
    array), the same bytes as :func:`base64.b64encode`, as a uint8 array.

    Made by numpy, which lets go of the GIL in each step, at about 1.6 times the CPU time of
    :func:`base64.b64encode`, which holds the GIL throughout. A run encodes these scripts on
    its writer thread while the model's thread needs the GIL back after every torch and numpy
    call: the channel statistics of densenet121's records took 2.8 times as long beside a thread
    encoding with ``b64encode`` without pause, 1.2 times as long beside one encoding with numpy.

    Each three bytes are read as the top of a big-endian 32-bit word that starts there (a view
    with a stride of 3 bytes: no copy), and each 12-bit half of them becomes two digits from a
    table, a piece of the words at a time so that the indices stay in the processor's cache.
    The last three whole bytes (whose word would reach past the end) and the rest go through
    :func:`base64.b64encode`.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    words = max(len(data) // 3 - 1, 0)
    text = np.empty(4 * -(-len(data) // 3), dtype=np.uint8)
    pairs = text[: 4 * words].view("<u2").reshape(words, 2)
    big = np.ndarray((words,), dtype=">u4", buffer=data, strides=(3,)) if words else data[:0]
    index = np.empty(min(words, _BASE64_PIECE), dtype=np.uint32)
    for start in range(0, words, _BASE64_PIECE):
        piece = big[start : start + _BASE64_PIECE]
        at = index[: len(piece)]
        np.right_shift(piece, 20, out=at)
        np.take(_BASE64_PAIRS, at, out=pairs[start : start + len(piece), 0], mode="clip")
        np.right_shift(piece, 8, out=at)
        np.bitwise_and(at, 0xFFF, out=at)
        np.take(_BASE64_PAIRS, at, out=pairs[start : start + len(piece), 1], mode="clip")
    text[4 * words :] = np.frombuffer(base64.b64encode(data[3 * words :].tobytes()), np.uint8)
    return text


#: Words per piece in :func:`base64_text`: 128 KiB of indices.
_BASE64_PIECE = 1 << 15


_DATA_TAIL = b'");\n'


def layer_data_head(
    stem: str,
    shape: Sequence[int],
    overflow: int,
    ranges: Sequence[tuple[float | None, float | None]],
) -> bytes:
    """The text of a :func:`layer_data_script` before its base64 values."""
    meta: dict[str, Any] = {
        "shape": list(shape),
        "dtype": PRECISION,
        "byteorder": "little",
        "overflow": overflow,
    }
    pairs = [list(r) for r in ranges]
    if {type(v) for pair in pairs for v in pair} <= _RANGE_TYPES:
        # Plain floats (None for no finite value): the numbers' text as script_json writes it,
        # spliced in as the last key (script_json would walk every pair in Python).
        text = f'{script_json(meta)[:-1]},"ranges":{number_list_json(pairs)}}}'
    else:
        text = script_json({**meta, "ranges": pairs})
    return f'featuremaps.layerData({script_json(stem)},{text},"'.encode()


_RANGE_TYPES = frozenset({float, type(None)})


def layer_data_size(
    stem: str,
    shape: Sequence[int],
    overflow: int,
    ranges: Sequence[tuple[float | None, float | None]],
    head: bytes | None = None,
) -> int:
    """The size in bytes of :func:`layer_data_script` for float16 maps of ``shape``, without the
    maps (base64 turns every 3 bytes into 4 characters); ``head`` as there."""
    count = 2 * math.prod(shape)
    if head is None:
        head = layer_data_head(stem, shape, overflow, ranges)
    return len(head) + 4 * -(-count // 3) + len(_DATA_TAIL)


def layer_data_values(script: bytes, shape: Sequence[int]) -> np.ndarray:
    """The first values of a :func:`layer_data_script`, as float16 maps of ``shape`` (its
    leading channels): only the base64 text they need is decoded."""
    start = script.rindex(b'"', 0, len(script) - len(_DATA_TAIL)) + 1
    count = 2 * math.prod(shape)
    text = script[start : start + 4 * -(-count // 3)]
    return np.frombuffer(base64.b64decode(text)[:count], dtype="<f2").reshape(tuple(shape))


def stats_script(stem: str, stats: Mapping[str, Any]) -> bytes:
    """One record's part of the statistics script (every channel of the drawn sample): a call
    that hands them to the page; the script is these parts one after the other, in the order
    of the records (:data:`~featuremaps.report.model.STATS_FILE`)."""
    if all(isinstance(k, str) and isinstance(v, (list, tuple)) for k, v in stats.items()):
        # Lists of numbers: the text each list already has in this run's manifest, if any
        # (:func:`featuremaps.io.shared_number_text`); the same text script_json gives.
        body = ",".join(f"{_key_json(k)}:{_numbers(v)}" for k, v in stats.items())
        text = "{" + body + "}"
    else:
        text = script_json(stats)
    return f"featuremaps.layerStats({script_json(stem)},{text});\n".encode()


_NUMBER_TYPES = frozenset({int, float, type(None)})


@functools.lru_cache(maxsize=64)
def _key_json(key: str) -> str:
    """:func:`script_json` of a statistic's name (the same few names for every record)."""
    return script_json(key)


def _numbers(values: list[Any] | tuple[Any, ...]) -> str:
    if set(map(type, values)) <= _NUMBER_TYPES:
        return number_list_json(values)
    return script_json(values)


def _lut_hex(name: str) -> str:
    return bytes(np.asarray(colormap_lut(name), dtype=np.uint8).tobytes()).hex()


def _cmap_lists(run_cmap: str | None) -> tuple[list[str], list[str], str, str]:
    sequential, diverging = list(SEQUENTIAL_CMAPS), list(DIVERGING_CMAPS)
    seq_default, div_default = DEFAULT_CMAP, DEFAULT_DIVERGING_CMAP
    if run_cmap is not None:
        colormap_lut(run_cmap)  # a name the run accepted; fails loudly if it is not a colormap
        if run_cmap in _KNOWN_DIVERGING:
            if run_cmap not in diverging:
                diverging.append(run_cmap)
            div_default = run_cmap
        else:
            if run_cmap not in sequential:
                sequential.append(run_cmap)
            seq_default = run_cmap
    return sequential, diverging, seq_default, div_default


def _all_channels_factor(data: ReportData) -> float | None:
    """How many times larger the layer data would be with every channel instead of the shown."""
    shown = every = 0
    for e in data.layers:
        maps = e.maps_shape
        if e.record.data and maps:
            cells = math.prod(maps[1:])
            shown += len(e.shown) * cells
            every += maps[0] * cells
    return every / shown if shown else None


def client_config(data: ReportData) -> dict[str, Any]:
    """What report.js needs, as one JSON object embedded in the page."""
    sequential, diverging, seq_default, div_default = _cmap_lists(data.cmap)
    layers = [
        {
            "key": e.key,
            "name": e.record.name,
            "shape": list(e.maps_shape) if e.maps_shape else None,
            "signed": is_signed_range(e.low),
            "shown": list(e.data_shown),
            "low": e.low,
            "high": e.high,
            "rangeNote": e.range_note,
            "constantChannels": list(e.constant_channels),
            "data": e.record.data,
            "stem": e.stem,
            "stats": e.stats_file,
            "image": e.record.image,
            "geometry": dict(e.record.geometry) if e.record.geometry else None,
            "layout": e.record.layout,
            "filter": (data.filters or {}).get(e.record.module),
        }
        for e in data.layers
        if e.drawn
    ]
    return {
        "precision": PRECISION,
        "scale": data.scale,
        "fixed": list(data.fixed_range) if data.fixed_range else None,
        "fixedSigned": data.fixed_range is not None and fixed_range(*data.fixed_range).symmetric,
        "global": list(data.global_range) if data.global_range else None,
        "globalSigned": data.global_range is not None and is_signed_range(data.global_range[0]),
        # Judged in float32: the layers' ranges were measured on float32 (or coarser) values.
        "globalNote": constant_text("float32")
        if data.global_range is not None and is_constant_range(*data.global_range, "float32")
        else None,
        "columns": data.columns,
        "sample": data.sample,
        "selection": data.selection,
        "sequential": sequential,
        "diverging": diverging,
        "cmap": {"sequential": seq_default, "diverging": div_default},
        "luts": {name: _lut_hex(name) for name in dict.fromkeys(sequential + diverging)},
        "fed": data.header.picture_fed,
        "randomWeights": data.header.random_weights,
        "arrays": data.arrays,
        "allChannelsFactor": _all_channels_factor(data),
        "layers": layers,
    }


#: The template of a run's report page.
RUN_PAGE = "index.html"


@functools.cache
def template_environment() -> Any:
    """The jinja2 environment of every page under ``report/templates`` (values escaped, an
    unknown name an error). One per process: it keeps the templates it has compiled (the run's
    page takes about 0.08 s to compile, and importing jinja2 0.1 s)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("featuremaps.report", "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def prepare_templates(*names: str) -> None:
    """Compile the templates ``names`` ahead of their use (a run does it on its writer's thread
    while the model runs, instead of after it)."""
    environment = template_environment()
    for name in names:
        environment.get_template(name)


def asset(name: str) -> bytes:
    """The bytes of ``report/static/<name>``."""
    return (resources.files("featuremaps.report") / "static" / name).read_bytes()


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def render_files(data: ReportData, statistics: bool = True) -> dict[str, bytes]:
    """Every file of the report: ``index.html``, its assets, and (``statistics``) the records'
    statistics script (:data:`~featuremaps.report.model.STATS_FILE`, made of :func:`stats_script`
    parts), which a run writes itself from the parts it made as its records passed."""
    import markupsafe

    config = script_json(client_config(data))
    page = (
        template_environment()
        .get_template(RUN_PAGE)
        .render(
            report=data,
            csp=CSP,
            assets=ASSETS_DIR,
            precision=PRECISION,
            number=_number,
            # Already escaped for a <script> block by script_json; autoescaping it again would
            # turn its quotes into entities that JSON.parse cannot read.
            config=markupsafe.Markup(config),
            by_key={e.key: e for e in data.layers},
            sanity_threshold=SANITY_THRESHOLD,
            cam_samples=len({m.sample for c in data.cams for m in c.maps}) > 1,
        )
    )
    files = {
        "index.html": page.encode("utf-8"),
        f"{ASSETS_DIR}/report.js": asset("report.js"),
        f"{ASSETS_DIR}/report.css": asset("report.css"),
    }
    parts = [  # the records with a stats_file: a stem and statistics
        stats_script(entry.stem, entry.record.channel_stats)
        for entry in (data.layers if statistics else ())
        if entry.stem is not None and entry.record.channel_stats is not None
    ]
    if parts:
        files[STATS_FILE] = b"".join(parts)
    return files


def runs_index_files(runs: Sequence[tuple[str, ReportData]]) -> dict[str, bytes]:
    """A top-level page linking the report of each input's sub-folder."""
    page = (
        template_environment()
        .get_template("runs.html")
        .render(runs=runs, csp=CSP, assets=ASSETS_DIR)
    )
    return {"index.html": page.encode("utf-8"), f"{ASSETS_DIR}/report.css": asset("report.css")}
