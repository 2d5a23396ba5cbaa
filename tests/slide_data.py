"""Synthetic slides for the slide tests, written with tifffile: no real slide ships in a wheel.

Each writer takes an ``(H, W, 3)`` uint8 picture and writes it as one kind of file a user brings:
a tiled page pyramid (NewSubfileType 1 pages), an OME-style SubIFD pyramid, an Aperio-like
``.svs`` (tiled JPEG levels and the ``Aperio ...|MPP = ...`` description OpenSlide recognises),
or a flat stripped TIFF. JPEG tiles are written as YCbCr (what scanners write and libjpeg-based
readers expect).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tissue_picture(height: int = 600, width: int = 704, seed: int = 0) -> np.ndarray:
    """White glass with two textured pink-purple blobs (the rest stays background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    picture = np.full((height, width, 3), 245, dtype=np.uint8)
    for cy, cx, r in ((0.3, 0.3, 0.18), (0.7, 0.68, 0.22)):
        inside = (yy - cy * height) ** 2 + (xx - cx * width) ** 2 < (r * min(height, width)) ** 2
        coarse = rng.integers(0, 90, size=(height // 8 + 1, width // 8 + 1, 1))
        texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
        colour = np.array([190, 90, 170]) - texture
        picture[inside] = np.clip(colour, 0, 255)[inside].astype(np.uint8)
    return picture


def _halve(picture: np.ndarray) -> np.ndarray:
    h, w = picture.shape[0] // 2 * 2, picture.shape[1] // 2 * 2
    blocks = picture[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _resolution(mpp: float | None, scale: int) -> dict[str, object]:
    if mpp is None:
        return {}
    return {"resolution": (1e4 / (mpp * scale),) * 2, "resolutionunit": "CENTIMETER"}


def _options(jpeg: bool) -> dict[str, object]:
    if jpeg:
        return {"compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb"}
    return {"compression": "zlib", "photometric": "rgb"}


def write_page_pyramid(
    path: Path,
    picture: np.ndarray,
    *,
    mpp: float | None,
    levels: int = 3,
    jpeg: bool = True,
    tile: int = 128,
) -> Path:
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        level = picture
        for k in range(levels):
            tif.write(
                level, tile=(tile, tile), subfiletype=1 if k else 0, **_options(jpeg),
                **_resolution(mpp, 2**k),
            )  # fmt: skip
            level = _halve(level)
    return path


def write_subifd_pyramid(
    path: Path, picture: np.ndarray, *, mpp: float | None, levels: int = 3, jpeg: bool = False
) -> Path:
    import tifffile

    metadata = {"axes": "YXS"}
    if mpp is not None:
        metadata.update({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(
            picture, tile=(128, 128), subifds=levels - 1, metadata=metadata, **_options(jpeg),
            **_resolution(mpp, 1),
        )  # fmt: skip
        level = picture
        for k in range(1, levels):
            level = _halve(level)
            tif.write(
                level, tile=(128, 128), subfiletype=1, **_options(jpeg), **_resolution(mpp, 2**k)
            )
    return path


def write_svs(path: Path, picture: np.ndarray, *, mpp: float, levels: int = 2) -> Path:
    """An Aperio-like file: tiled JPEG level 0, a stripped thumbnail, then reduced levels."""
    import tifffile

    h, w = picture.shape[:2]
    head = "Aperio Image Library v12.0.15"
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            picture, tile=(256, 256), **_options(True),
            description=f"{head} \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/YCC Q=90|AppMag = 20|"
            f"MPP = {mpp}", metadata=None,
        )  # fmt: skip
        thumb = picture[::4, ::4]
        tif.write(
            thumb, description=f"{head} \r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}",
            metadata=None,
        )  # fmt: skip
        level = picture
        for _ in range(1, levels):
            level = _halve(level)
            tif.write(
                level, tile=(256, 256), **_options(True),
                description=f"{head} \r\n{w}x{h} -> {level.shape[1]}x{level.shape[0]}",
                metadata=None,
            )  # fmt: skip
    return path


def write_flat_tiff(path: Path, picture: np.ndarray, *, mpp: float | None) -> Path:
    import tifffile

    tifffile.imwrite(path, picture, rowsperstrip=64, **_resolution(mpp, 1))
    return path
