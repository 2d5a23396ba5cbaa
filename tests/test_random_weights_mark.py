"""Every file every command writes says so when the model's weights are random.

Each command runs with ``shapes_cnn --weights none`` into a fresh folder, and the test walks every
file written and finds the mark where a reader of that kind of file looks:

* PNG: an ``iTXt`` chunk ``featuremaps:weights`` (Pillow's ``image.text``) holding the mark, and,
  on every drawn picture (maps, legends, charts, overlays), the red ``RANDOM WEIGHTS`` box in the
  pixels. Copies of the input and Deep Zoom tiles carry the chunk only: the input is not the
  model's, and a tile is a piece of a picture whose viewer page shows the mark.
* JPEG: the mark as the JPEG comment.
* JSON and GeoJSON: the model's description with ``random_weights: true``.
* TIFF: the first page's description (the OME-XML in an OME-TIFF, where the image name starts
  with the mark and a map annotation holds it).
* HTML pages and Deep Zoom descriptors: the mark in their text.
* ``.safetensors``: the mark in the metadata.
* Data tables (CSV, Parquet), ``.npy`` arrays and the report's data scripts hold numbers only: a
  JSON or page beside them that carries the mark must name them.
* Files copied unchanged from the package (scripts, styles, licences) are the same for every
  run: they are recognised by their bytes.

Any other file fails the test, so a new kind of output cannot leave without the mark.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featuremaps.cli import main
from featuremaps.manifest import MARK_KEY, RANDOM_WEIGHTS
from slide_data import tissue_picture, write_page_pyramid

MODEL = ["--model", "shapes_cnn", "--weights", "none"]


def _images(tmp: Path) -> Path:
    folder = tmp / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _run(tmp: Path, out: Path) -> list[str]:
    images = _images(tmp)
    return ["run", str(images / "0.png"), str(images / "1.png"), *MODEL, "--layers",
            "conv1,fc", "--save-arrays", "--out", str(out), "-q"]  # fmt: skip


def _stats(tmp: Path, out: Path) -> list[str]:
    return ["stats", str(_images(tmp)), *MODEL, "--layers", "conv1", "--workers", "0",
            "--out", str(out), "-q"]  # fmt: skip


def _ablate(tmp: Path, out: Path) -> list[str]:
    return ["ablate", str(_images(tmp)), *MODEL, "--layers", "conv1", "--k", "0,2", "--random",
            "1", "--workers", "0", "--out", str(out), "-q"]  # fmt: skip


def _locate(tmp: Path, out: Path) -> list[str]:
    return ["locate", str(_images(tmp) / "0.png"), *MODEL, "--layer", "conv2", "--overlay", "0",
            "--out", str(out)]  # fmt: skip


def _slide(tmp: Path, out: Path) -> list[str]:
    slide = write_page_pyramid(tmp / "s.tif", tissue_picture(160, 192), mpp=0.5)
    square = [[40.0, 40.0], [120.0, 40.0], [120.0, 120.0], [40.0, 120.0], [40.0, 40.0]]
    regions = tmp / "regions.geojson"
    polygon = {"type": "Polygon", "coordinates": [square]}
    regions.write_text(
        json.dumps([{"type": "Feature", "properties": {"name": "a"}, "geometry": polygon}])
    )
    return ["slide", str(slide), *MODEL, "--layers", "conv2", "--tile", "128", "--channels", "2",
            "--regions", str(regions), "--out", str(out), "-q"]  # fmt: skip


def _compare(tmp: Path, out: Path) -> list[str]:
    images = _images(tmp)
    return ["compare", str(images / "0.png"), str(images / "1.png"), *MODEL, "--save-arrays",
            "--out", str(out)]  # fmt: skip


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "run": _run,
    "stats": _stats,
    "ablate": _ablate,
    "locate --overlay": _locate,
    "slide": _slide,
    "compare": _compare,
}


def _packaged_files() -> set[bytes]:
    """The bytes of every file the package ships for copying next to a page."""
    found = set()
    for package in ("featuremaps.report", "featuremaps.slide"):
        for item in resources.files(package).joinpath("static").iterdir():
            if item.is_file():
                found.add(item.read_bytes())
    return found


def _stamped(path: Path) -> bool:
    """Whether the picture shows the red stamp box (as the legend draws it: (200, 0, 0))."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 40) & (pixels[..., 2] < 40)
    return int(red.sum()) > 50


def _unstamped_picture(rel: Path) -> bool:
    """Pictures that carry the mark in their metadata only: the input, Deep Zoom tiles, the
    compare page's maps (each pixel block is exactly one cell; the page shows the mark)."""
    return (
        rel.name in ("input.png", "input-fed.png")
        or any(p.endswith("_files") for p in rel.parts)
        or rel.parts[0] == "view"
    )


def _json_marked(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    model = data.get("model")
    if model is None and isinstance(data.get("featuremaps"), dict):
        model = data["featuremaps"].get("model")  # a GeoJSON's foreign member
    return isinstance(model, dict) and model.get("random_weights") is True


def _problem(root: Path, path: Path, packaged: set[bytes], carriers: list[Path]) -> str | None:
    """Why ``path`` does not carry the mark, or None when it does."""
    rel = path.relative_to(root)
    suffix = path.suffix.lower()
    if suffix == ".png":
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(MARK_KEY, "")
        if RANDOM_WEIGHTS not in text:
            return f"no '{MARK_KEY}' text chunk with the mark (found {text!r})"
        if not _unstamped_picture(rel) and not _stamped(path):
            return "no red RANDOM WEIGHTS stamp in the pixels"
        return None
    if suffix in (".jpeg", ".jpg"):
        with Image.open(path) as image:
            comment = image.info.get("comment", b"")
        return None if RANDOM_WEIGHTS.encode() in comment else "no JPEG comment with the mark"
    if suffix in (".json", ".geojson"):
        ok = _json_marked(json.loads(path.read_text(encoding="utf-8")))
        return None if ok else "no model description with random_weights true"
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            description = tif.pages.first.description
            if tif.is_ome:
                import xml.etree.ElementTree as ET

                ns = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
                image = ET.fromstring(description).find("ome:Image", ns)
                name = "" if image is None else image.get("Name", "")
                if not name.startswith(RANDOM_WEIGHTS):
                    return f"the OME image name {name!r} does not start with the mark"
                if f'K="{MARK_KEY}"' not in description:
                    return "no OME-XML map annotation with the mark"
        return None if RANDOM_WEIGHTS in description else "no mark in the page description"
    if suffix in (".html", ".dzi"):
        ok = RANDOM_WEIGHTS in path.read_text(encoding="utf-8")
        return None if ok else "no mark in the text"
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as arrays:
            metadata = arrays.metadata() or {}
        return None if RANDOM_WEIGHTS in metadata.get(MARK_KEY, "") else "no mark in metadata"
    if path.read_bytes() in packaged:
        return None  # the same file for every run
    if suffix in (".csv", ".parquet", ".js", ".npy"):
        # Numbers only: a marked JSON or page in this folder or one above must name the file.
        for carrier in carriers:
            if carrier.parent in path.parents:
                named = path.relative_to(carrier.parent).as_posix()
                if named in carrier.read_text(encoding="utf-8"):
                    return None
        return "a data file that no marked JSON or page beside it names"
    return "a kind of file this test does not know: say where it carries the mark"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_file_of_a_random_weights_run_carries_the_mark(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = COMMANDS[command](tmp_path, out)
    assert main(argv) == 0, capsys.readouterr().err
    assert f"note: {RANDOM_WEIGHTS} (random" in capsys.readouterr().out
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files
    carriers = [
        p
        for p in files
        if (p.suffix == ".json" and _json_marked(json.loads(p.read_text(encoding="utf-8"))))
        or (p.suffix == ".html" and RANDOM_WEIGHTS in p.read_text(encoding="utf-8"))
    ]
    packaged = _packaged_files()
    problems = {}
    for path in files:
        problem = _problem(out, path, packaged, carriers)
        if problem is not None:
            problems[path.relative_to(out).as_posix()] = problem
    assert not problems, f"{len(problems)} of {len(files)} files without the mark: {problems}"


def test_trained_weights_leave_no_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _images(tmp_path) / "0.png"
    out = tmp_path / "out"
    assert main(["locate", str(image), "--model", "shapes_cnn", "--layer", "conv2",
                 "--overlay", "0", "--out", str(out)]) == 0  # fmt: skip
    with Image.open(out / "overlay.png") as picture:
        assert MARK_KEY not in getattr(picture, "text", {})
        assert picture.size == (64, 64)  # the input as fed, no stamp band
    assert json.loads((out / "locate.json").read_text())["model"]["random_weights"] is False


def test_the_mark_leaves_pixels_and_other_bytes_alone() -> None:
    import io

    from featuremaps.io import marked
    from featuremaps.render.encode import encode_indexed_png, encode_png, encode_tile

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    mark = "RANDOM WEIGHTS (µ: any text, UTF-8)"
    for data in (
        encode_png(rgb),
        encode_indexed_png(rng.integers(0, 16, (9, 7), dtype=np.uint8), palette),
        encode_tile(rgb, "jpeg"),
    ):
        with (
            Image.open(io.BytesIO(data)) as before,
            Image.open(io.BytesIO(marked(data, mark))) as after,
        ):
            assert np.array_equal(np.asarray(before), np.asarray(after))
            found = getattr(after, "text", {}).get(MARK_KEY) or after.info["comment"].decode()
            assert found == mark
    assert marked(b'{"tool": "featuremaps"}', mark) == b'{"tool": "featuremaps"}'
