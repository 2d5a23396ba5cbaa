"""Slide readers: windows of RGB pixels from whole-slide and other large images, never the whole.

The input stage of a slide run (**reader** → tissue → forward → stitching → writers). Three
readers share one small interface (:class:`SlideReader`):

* :class:`OpenSlideReader` for vendor formats (SVS, NDPI, MRXS, SCN, ...) through
  ``openslide-python`` with ``openslide-bin`` (no system library needed);
* :class:`TiffReader` for generic, pyramidal and OME-TIFF files through ``tifffile``: only the
  tiles or strips a window touches are decoded (page pyramids and SubIFD pyramids both count as
  levels);
* :class:`ImageReader` for PNG, JPEG and other single pictures, which Pillow can only decode
  whole: read once (without the decompression-bomb limit of the single-image commands, since the
  user asked for a large image) and then served in windows.

The pixel size (µm per pixel at level 0) is read where the file has it: OpenSlide's
``openslide.mpp-x``, OME-XML ``PhysicalSizeX``, Aperio's ``MPP =``, or the TIFF resolution tags
(centimetre or inch units). When none is there, ``mpp`` is None and the caller asks for ``--mpp``.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from featuremaps._errors import InputError, OptionError

__all__ = [
    "ImageReader",
    "Level",
    "OpenSlideReader",
    "SlideReader",
    "TiffReader",
    "open_slide",
    "read_thumbnail",
]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


@dataclass(frozen=True)
class Level:
    """One resolution of a slide: its size and how many level-0 pixels one of its pixels spans."""

    width: int
    height: int
    downsample: float


class SlideReader(Protocol):
    """What the slide pipeline needs from a reader."""

    path: Path
    kind: str
    levels: tuple[Level, ...]
    mpp: tuple[float, float] | None
    mpp_source: str

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Pixels ``[rows) x [cols)`` of ``level`` (inside the level) as ``(h, w, 3)`` uint8."""
        ...

    def close(self) -> None: ...


def _to_rgb(block: np.ndarray) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA of 8 or 16 bits as RGB uint8; alpha over white."""
    a = np.asarray(block)
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif a.dtype != np.uint8:
        raise InputError(
            f"slide pixels of type {a.dtype}; expected 8- or 16-bit unsigned integers (RGB or "
            "grey). Convert the image, e.g. to an 8-bit RGB pyramidal TIFF"
        )
    a = a.astype(np.uint8, copy=False)
    if a.ndim == 2:
        a = a[:, :, None]
    samples = a.shape[2]
    if samples in (2, 4):
        alpha = a[:, :, -1:].astype(np.uint16)
        color = a[:, :, :-1].astype(np.uint16)
        a = ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        samples -= 1
    if samples == 1:
        a = np.repeat(a, 3, axis=2)
    elif samples != 3:
        raise InputError(f"slide pixels with {samples} samples; expected grey or RGB")
    return np.ascontiguousarray(a)


def _check_window(level: Level, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    if not (0 <= rows[0] < rows[1] <= level.height and 0 <= cols[0] < cols[1] <= level.width):
        raise InputError(
            f"window rows {rows}, columns {cols} is outside the level of "
            f"{level.height}x{level.width} pixels"
        )


def _tiff_resolution_mpp(page: Any) -> tuple[float, float] | None:
    """µm per pixel from the XResolution/YResolution tags (centimetre or inch units only)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    per = {2: 25400.0, 3: 10000.0}.get(unit)
    if per is None:
        return None
    values = []
    for name in ("XResolution", "YResolution"):
        num, den = tags[name].value
        if not num or not den:
            return None
        values.append(per / (num / den))
    # tifffile and others write 1 pixel per unit when nothing is known: not a pixel size.
    if values[0] >= per * 0.99 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


def _ome_mpp(tif: Any) -> tuple[float, float] | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    found = {}
    for axis in ("X", "Y"):
        size = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
        if size is None:
            return None
        factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(
            unit.group(1) if unit else "µm"
        )
        if factor is None:
            return None
        found[axis] = float(size.group(1)) * factor
    return found["X"], found["Y"]


def _aperio_mpp(page: Any) -> tuple[float, float] | None:
    text = page.description or ""
    if not text.startswith("Aperio"):
        return None
    match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", text)
    return (float(match.group(1)),) * 2 if match else None


class TiffReader:
    """Windows of a (pyramidal, OME) TIFF through tifffile, decoding only the touched tiles."""

    kind = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            base = self._tif.series[0].levels[0].keyframe
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
            raise InputError(f"cannot read '{path}' as a TIFF: {exc}") from None
        self._pages = self._find_levels(base)
        w0, h0 = base.imagewidth, base.imagelength
        self.levels = tuple(
            Level(p.imagewidth, p.imagelength, w0 / p.imagewidth) for p in self._pages
        )
        for p in self._pages:
            self._check_page(p)
        self.mpp: tuple[float, float] | None = None
        self.mpp_source = "none"
        found: list[tuple[str, tuple[float, float] | None]] = [
            ("OME-XML PhysicalSizeX/Y", _ome_mpp(self._tif)),
            ("Aperio description MPP", _aperio_mpp(base)),
            ("TIFF resolution tags", _tiff_resolution_mpp(base)),
        ]
        for source, value in found:
            if value is not None:
                self.mpp, self.mpp_source = value, source
                break
        del h0

    def _find_levels(self, base: Any) -> list[Any]:
        series = self._tif.series[0]
        pages = [level.keyframe for level in series.levels]
        if len(pages) == 1:
            # A plain page pyramid that tifffile did not group: later pages that are reduced
            # copies (NewSubfileType bit 0) with the same samples, each smaller than the last.
            import tifffile

            for page in self._tif.pages[1:]:
                last = pages[-1]
                if isinstance(page, tifffile.TiffPage) and (
                    page.subfiletype & 1
                    and page.samplesperpixel == base.samplesperpixel
                    and page.imagewidth < last.imagewidth
                    and page.imagelength < last.imagelength
                ):
                    pages.append(page)
        return pages

    def _check_page(self, page: Any) -> None:
        if page.planarconfig != 1 and page.samplesperpixel > 1:
            raise InputError(
                f"'{self.path.name}' stores colour planes separately (planar configuration 2); "
                "expected interleaved RGB"
            )
        if page.imagedepth > 1:
            raise InputError(f"'{self.path.name}' is a volume; expected a 2-D slide")

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        page = self._pages[level]
        _check_window(self.levels[level], rows, cols)
        th, tw = (
            (page.tilelength, page.tilewidth)
            if page.is_tiled
            else (page.rowsperstrip, page.imagewidth)
        )
        th = min(th, page.imagelength)
        per_row = math.ceil(page.imagewidth / tw)
        samples = page.samplesperpixel
        out = np.empty((rows[1] - rows[0], cols[1] - cols[0], samples), dtype=page.dtype)
        decode = page.decode
        fh = self._tif.filehandle
        for ty in range(rows[0] // th, (rows[1] - 1) // th + 1):
            for tx in range(cols[0] // tw, (cols[1] - 1) // tw + 1):
                index = ty * per_row + tx
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                if count:
                    fh.seek(offset)
                    data = fh.read(count)
                else:
                    data = None
                segment, (_, _, y, x, _), _ = decode(data, index, jpegtables=page.jpegtables)
                if segment is None:
                    segment = np.zeros((1, th, tw, samples), dtype=page.dtype)
                seg = segment.reshape(segment.shape[-3:])
                y0, x0 = max(rows[0], y), max(cols[0], x)
                y1 = min(rows[1], y + seg.shape[0])
                x1 = min(cols[1], x + seg.shape[1])
                out[y0 - rows[0] : y1 - rows[0], x0 - cols[0] : x1 - cols[0]] = seg[
                    y0 - y : y1 - y, x0 - x : x1 - x
                ]
        return _to_rgb(out)

    def close(self) -> None:
        self._tif.close()


class OpenSlideReader:
    """Windows of any format OpenSlide reads (SVS, NDPI, MRXS, SCN, generic tiled TIFF, ...)."""

    kind = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise InputError(f"OpenSlide cannot read '{path}': {exc}") from None
        self.levels = tuple(
            Level(w, h, float(d))
            for (w, h), d in zip(
                self._slide.level_dimensions, self._slide.level_downsamples, strict=True
            )
        )
        props = self._slide.properties
        try:
            mpp = (
                float(props[openslide.PROPERTY_NAME_MPP_X]),
                float(props[openslide.PROPERTY_NAME_MPP_Y]),
            )
        except (KeyError, ValueError):
            mpp = None
        self.mpp = mpp if mpp and all(v > 0 for v in mpp) else None
        self.mpp_source = (
            f"OpenSlide ({props.get(openslide.PROPERTY_NAME_VENDOR, 'unknown')})"
            if self.mpp
            else "none"
        )
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        _check_window(self.levels[level], rows, cols)
        d = self.levels[level].downsample
        region = self._slide.read_region(
            (round(cols[0] * d), round(rows[0] * d)), level, (cols[1] - cols[0], rows[1] - rows[0])
        )
        return _to_rgb(np.asarray(region))

    def close(self) -> None:
        self._slide.close()


class ImageReader:
    """A PNG, JPEG or other single picture, decoded whole once and served in windows."""

    kind = "pillow"

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.path = path
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # the slide command reads large pictures on purpose
        try:
            with Image.open(path) as image:
                info = image.info
                self._pixels = _to_rgb(
                    np.asarray(
                        image.convert("RGBA")
                        if image.mode in ("P", "LA", "PA")
                        else image.convert("RGB")
                        if image.mode not in ("RGB", "RGBA", "L", "I;16")
                        else image
                    )
                )
        except OSError as exc:
            raise InputError(f"cannot read '{path}' as an image: {exc}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        h, w = self._pixels.shape[:2]
        self.levels: tuple[Level, ...] = (Level(w, h, 1.0),)
        self.mpp = None
        self.mpp_source = "none"
        dpi = info.get("dpi")
        if dpi and dpi[0] and dpi[0] > 1.5 and abs(dpi[0] - 72) > 1e-6 and abs(dpi[0] - 96) > 1e-6:
            self.mpp = (25400.0 / dpi[0], 25400.0 / dpi[1])
            self.mpp_source = "image dpi"

    def read(self, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        _check_window(self.levels[level], rows, cols)
        window: np.ndarray = self._pixels[rows[0] : rows[1], cols[0] : cols[1]].copy()
        return window

    def close(self) -> None:
        del self._pixels


def openslide_available() -> bool:
    """Whether openslide-python (and a library for it) can be imported."""
    if importlib.util.find_spec("openslide") is None:
        return False
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def open_slide(path: str | Path, reader: str = "auto") -> SlideReader:
    """Open ``path`` with ``reader`` (``auto``, ``openslide``, ``tifffile`` or ``pillow``).

    ``auto`` gives vendor formats to OpenSlide, other TIFFs to tifffile and anything else to
    Pillow.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"slide '{path}' does not exist or is not a file; give a slide file")
    if reader not in ("auto", "openslide", "tifffile", "pillow"):
        raise OptionError(f"reader '{reader}' is unknown; use auto, openslide, tifffile or pillow")
    if reader == "auto":
        vendor = None
        if openslide_available():
            import openslide

            vendor = openslide.OpenSlide.detect_format(str(p))
        if vendor and vendor != "generic-tiff":
            reader = "openslide"
        elif p.suffix.lower() in _TIFF_SUFFIXES or _is_tiff(p):
            reader = "tifffile"
        elif vendor:
            reader = "openslide"
        else:
            reader = "pillow"
    if reader == "openslide":
        if not openslide_available():
            raise InputError(
                f"'{p.name}' needs OpenSlide; pip install 'featuremaps[slide]' (openslide-python "
                "and openslide-bin)"
            )
        return OpenSlideReader(p)
    if reader == "tifffile":
        if importlib.util.find_spec("tifffile") is None:
            raise InputError(f"'{p.name}' needs tifffile; pip install 'featuremaps[slide]'")
        return TiffReader(p)
    return ImageReader(p)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_thumbnail(reader: SlideReader, level: int, max_side: int) -> tuple[np.ndarray, float]:
    """A picture of ``level`` at most ``max_side`` pixels on its long side, and its downsample
    relative to ``level`` (a whole number: box averages of a finer level, read in strips).

    The coarsest level at least as large as the picture is read, so a pyramid costs little and a
    flat image is never held whole at full resolution.
    """
    base = reader.levels[level]
    factor = max(1, math.ceil(max(base.width, base.height) / max_side))
    candidates: Sequence[int] = [
        k
        for k, lv in enumerate(reader.levels)
        if lv.downsample / base.downsample <= factor + 1e-6 and k >= level
    ] or [level]
    source = max(candidates, key=lambda k: reader.levels[k].downsample)
    src = reader.levels[source]
    rel = src.downsample / base.downsample
    step = max(1, round(factor / rel))
    out_h, out_w = math.ceil(src.height / step), math.ceil(src.width / step)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    band = step * max(1, 2048 // step)
    for y0 in range(0, src.height, band):
        y1 = min(y0 + band, src.height)
        strip = reader.read(source, (y0, y1), (0, src.width)).astype(np.float32)
        hh, ww = math.ceil((y1 - y0) / step), out_w
        padded = np.full((hh * step, ww * step, 3), np.nan, dtype=np.float32)
        padded[: y1 - y0, : src.width] = strip
        blocks = padded.reshape(hh, step, ww, step, 3)
        out[y0 // step : y0 // step + hh] = np.rint(np.nanmean(blocks, axis=(1, 3))).astype(
            np.uint8
        )
    return out, step * rel
