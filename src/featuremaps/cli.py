"""Command line: parse arguments, call the public API, turn errors into one line and an exit code.

    featuremaps run [IMAGE ...] [--model SPEC] [--out DIR] ...   draw every layer (the default)
    featuremaps IMAGE ... [options]                              same as ``run``
    featuremaps layers [MODEL]                                   list layers with output shapes
    featuremaps stats DATA ... --model SPEC                      per-channel statistics over data
    featuremaps ablate DATA ... --model SPEC --layers L          zero low-ranked channels, measure
    featuremaps locate [IMAGE] --layer L --cell R,C --pixel Y,X  which input region a cell sees
    featuremaps slide SLIDE --model SPEC --layers L              maps over a whole-slide image

Exit codes: 0 success, 2 a user error (one line on stderr, no traceback), 130 interrupted, 141
the reader of the output went away (`featuremaps layers resnet50 | head`).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from featuremaps._errors import FeaturemapsError, FeaturemapsWarning, OptionError
from featuremaps._version import __version__
from featuremaps.stats import RANKABLE, TOP_K_ORDERS

if TYPE_CHECKING:
    from featuremaps.inputs import LoadedInput, Preprocessing
    from featuremaps.models import LoadedModel

__all__ = ["console_main", "main"]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        help="DEFAULT (zoo default), an enum name like IMAGENET1K_V1, none, or a weights file "
        "(.pth/.pt/.safetensors)",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow checkpoints that need full unpickling (can run code: only for trusted files). "
        "Note: a model spec 'pkg.mod:factory' or 'path/file.py:factory' always runs that code, "
        "with or without this flag",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="never try to download weights (use the torch hub cache or random weights)",
    )
    p.add_argument(
        "--size",
        help="resize: N (shorter side) or HxW; replaces the model's resize and crop, keeps its "
        "normalisation",
    )
    p.add_argument(
        "--normalize",
        help="imagenet, none, or MEAN,.../STD,...; replaces the model's normalisation, keeps its "
        "resize and crop",
    )
    p.add_argument(
        "--as-is",
        action="store_true",
        help="feed inputs exactly as read: arrays keep their values, images are scaled to [0, 1]; "
        "no resize, crop or normalisation",
    )


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="where the model runs: auto (a GPU when there is one, default), cpu, cuda, cuda:N, "
        "or mps",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="float32 (default), or bfloat16/float16 under autocast (the manifest and every "
        "legend say so)",
    )


def _add_containers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--containers", action="store_true", help="also capture modules that have children"
    )


def _build_run(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files or .npy arrays (default: the bundled sample photo)",
    )
    p.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(p)
    _add_device_options(p)
    _add_containers_option(p)
    p.add_argument("--out", "-o", default="featuremaps-out", help="output folder")
    p.add_argument(
        "--layers",
        "-l",
        action="append",
        help="name, glob, re:REGEX, or NAME#k; repeat or use commas (default: all leaves)",
    )
    p.add_argument("--type", action="append", dest="types", help="module class, e.g. Conv2d")
    p.add_argument(
        "--channels",
        default="32",
        help="N (first N), all, a list like 0,5,7, or top:K:STAT with STAT in "
        f"{', '.join(TOP_K_ORDERS)} (default: 32)",
    )
    p.add_argument(
        "--stats",
        metavar="FILE",
        help="stats.csv/stats.parquet from 'featuremaps stats': --channels top:K:STAT then ranks "
        "channels over that data set instead of this image",
    )
    p.add_argument("--columns", type=int, default=8, help="tiles per row (default: 8)")
    p.add_argument(
        "--scale",
        choices=("layer", "channel", "global", "fixed"),
        default="layer",
        help="colour scale shared per layer (default), per channel, across all layers, or fixed",
    )
    p.add_argument("--range", dest="value_range", help="LO,HI for --scale fixed")
    p.add_argument(
        "--cmap", help="matplotlib colormap (default: viridis; RdBu_r centred on 0 if signed)"
    )
    p.add_argument("--sample", type=int, default=0, help="batch sample to draw (default: 0)")
    p.add_argument(
        "--attention-patch",
        help="ROW,COL: the patch whose attention per head is drawn beside the class token's "
        "(default: the centre patch)",
    )
    p.add_argument(
        "--save-arrays", action="store_true", help="also write arrays.safetensors (float32)"
    )
    p.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write the HTML report (index.html and its float16 layer data in data/)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _build_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    p.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(p)
    _add_device_options(p)
    p.add_argument("--out", "-o", default="featuremaps-stats", help="output folder")
    p.add_argument("--layers", "-l", action="append", help="as for run")
    p.add_argument("--type", action="append", dest="types", help="as for run")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    p.add_argument("--workers", type=int, default=2, help="reader processes (2)")
    p.add_argument(
        "--near-zero", type=float, default=1e-6, help="|x| at most this counts as near zero"
    )
    p.add_argument(
        "--duplicates",
        type=float,
        metavar="R",
        help="also list channel pairs correlated at least R within a layer (costs C^2 per value)",
    )
    p.add_argument(
        "--rank-by", choices=RANKABLE, default="absmean",
        help="statistic that ranks channels within a layer (default: absmean)",
    )  # fmt: skip
    p.add_argument(
        "--no-plots", dest="plots", action="store_false",
        help="skip the per-layer histogram and ranked-channel charts (plots/)",
    )  # fmt: skip
    p.add_argument(
        "--parquet", action="store_true", default=None,
        help="require stats.parquet (needs the 'parquet' extra; by default it is written when "
        "pyarrow is installed)",
    )  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _build_ablate(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    p.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(p)
    _add_device_options(p)
    p.add_argument("--out", "-o", default="featuremaps-ablation", help="output folder")
    p.add_argument(
        "--layers", "-l", action="append", required=True,
        help="layers whose channels are zeroed (as for run; each gets K zeroed)",
    )  # fmt: skip
    p.add_argument(
        "--stat", default="absmean", choices=RANKABLE,
        help="ranking statistic; the lowest channels are zeroed first (default: absmean)",
    )  # fmt: skip
    p.add_argument("--k", default="0,8,16,32", help="channel counts K (default: 0,8,16,32)")
    p.add_argument(
        "--random", type=int, default=3, metavar="N", help="random-channel draws per K (3)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (0)")
    p.add_argument(
        "--stats",
        metavar="FILE",
        help="rank by this stats.csv/.parquet (default: statistics of DATA itself, in-sample)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    p.add_argument("--workers", type=int, default=2, help="reader processes (2)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _build_locate(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", help="image (default: the bundled sample photo)")
    p.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(p)
    p.add_argument("--layer", "-l", required=True, help="one record name, e.g. layer3.1.conv2")
    p.add_argument(
        "--cell", action="append", default=[], metavar="R,C", help="a cell of the map (repeatable)"
    )
    p.add_argument(
        "--pixel", action="append", default=[], metavar="Y,X",
        help="a pixel of the input as fed (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--overlay", type=int, metavar="CH",
        help="also draw channel CH over the input, each cell at its receptive-field centre",
    )  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.6, help="overlay opacity (0.6)")
    p.add_argument(
        "--threshold", type=float,
        help="hide cells below this fraction of the colour range (0..1; default: show all)",
    )  # fmt: skip
    p.add_argument(
        "--out", "-o", default="featuremaps-locate", help="folder for the --overlay picture"
    )


def _build_slide(p: argparse.ArgumentParser) -> None:
    p.add_argument("slide", metavar="SLIDE", help="whole-slide image (SVS, NDPI, MRXS, TIFF, ...)")
    p.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(p)
    p.add_argument(
        "--layers", "-l", action="append", required=True,
        help="record names to map, e.g. layer2 (repeat or use commas)",
    )  # fmt: skip
    p.add_argument("--out", "-o", default="featuremaps-slide", help="output folder")
    p.add_argument("--level", type=int, help="pyramid level to read (default: 0)")
    p.add_argument(
        "--mpp", type=float,
        help="micrometres per pixel to read at (picks the level); for a slide without a pixel "
        "size, the pixel size of its full resolution",
    )  # fmt: skip
    p.add_argument(
        "--channels", default="8",
        help="channels stored in the OME-TIFF and viewer: N (first N), all, or 0,5,7 (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--draw", help="stored channels drawn as RGB pyramids, e.g. 0,5 (default: the first)"
    )
    p.add_argument(
        "--tissue", default="auto",
        help="auto (Otsu on a thumbnail), none (every tile), or a mask picture (non-zero = tissue)",
    )  # fmt: skip
    p.add_argument("--regions", metavar="GEOJSON", help="QuPath GeoJSON annotations (level-0 px)")
    p.add_argument(
        "--coverage", choices=("centre", "area"), default="centre",
        help="a cell is in a region by its centre (default) or by its covered fraction",
    )  # fmt: skip
    p.add_argument("--tile", type=int, default=1024, help="tile core in pixels (default 1024)")
    p.add_argument(
        "--reader", choices=("auto", "openslide", "tifffile", "pillow"), default="auto",
        help="slide reader (default: OpenSlide for vendor formats, tifffile for other TIFFs)",
    )  # fmt: skip
    _add_device_options(p)
    p.add_argument(
        "--no-viewer", dest="viewer", action="store_false",
        help="do not write the Deep Zoom tiles and the OpenSeadragon page",
    )  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _cmd_slide(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    _check_layers(args.layers)
    draw = None
    if args.draw:
        try:
            draw = [int(v) for v in args.draw.split(",") if v.strip()]
        except ValueError:
            raise OptionError(f"--draw '{args.draw}' is not a list of channels like 0,5") from None
    if args.size:
        raise OptionError(
            f"--size {args.size} does not apply to slides, which are read as they are; pick the "
            "resolution with --mpp or --level"
        )
    loaded = _load_model(args, args.model)
    try:
        result = fm.slide_maps(
            loaded, args.slide, layers=args.layers, out=args.out, level=args.level,
            preprocessing=_preprocessing(args, loaded) if args.normalize else None,
            mpp=args.mpp, channels=args.channels, draw=draw, tissue=args.tissue,
            regions=args.regions, coverage=args.coverage, tile=args.tile, reader=args.reader,
            viewer=args.viewer, progress=not args.quiet and sys.stderr.isatty(),
            device=args.device, dtype=args.dtype,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"featuremaps: interrupted; finished tiles are kept, run the same command again to "
            f"resume ({Path(args.out).name} is written at the end)",
            file=sys.stderr,
        )
        return 130
    mode = "exact stitching" if result.exact else "APPROXIMATE stitching"
    print(f"{mode}: {result.locality['reason']}", file=out)
    print(
        f"{result.tissue_tiles} of {result.tiles} tiles with tissue; {result.computed} computed "
        f"({result.tiles_per_second:.2f} tiles/s), {result.resumed} resumed, "
        f"{len(result.failed)} failed",
        file=out,
    )
    for item in result.failed:
        print(f"tile ({item['row']}, {item['col']}) not read: {item['error']}", file=out)
    for layer in result.layers:
        rows, cols = layer["cells"]
        halo = layer["halo"]
        print(
            f"{layer['name']}: {rows}x{cols} cells of {layer['cell_mpp'][1]:.3g} µm, stride "
            f"{layer['stride'][1]}, halo {halo['before'][1]}/{halo['after'][1]} px",
            file=out,
        )
    if loaded.random_weights:
        print(f"note: RANDOM WEIGHTS ({loaded.weights_status})", file=out)
    print(f"results: {Path(args.out).resolve()}", file=out)
    if args.viewer:
        print(f"viewer: {(Path(args.out) / 'viewer' / 'index.html').resolve()}", file=out)
    return 0


def _build_layers(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="resnet18", help="model spec")
    p.add_argument("--input", help="image for the dry run (default: the bundled sample)")
    _add_model_options(p)
    _add_containers_option(p)


def _parse_channels(text: str) -> dict[str, object]:
    text = text.strip().lower()
    if text == "all":
        return {"max_channels": 1 << 30}
    if text.isdigit() and int(text) > 0:
        return {"max_channels": int(text)}
    if text.startswith("top:"):
        parts = text.split(":")
        if (
            len(parts) == 3
            and parts[1].isdigit()
            and int(parts[1]) > 0
            and parts[2] in TOP_K_ORDERS
        ):
            return {"max_channels": int(parts[1]), "order": parts[2]}
    elif "," in text:
        try:
            return {"channels": tuple(int(c) for c in text.split(",") if c.strip())}
        except ValueError:
            pass
    if text == "0":
        raise OptionError("--channels 0 would show nothing; for channel #0 alone write 0,")
    raise OptionError(
        f"--channels '{text}' is not understood; expected N, all, a list like 0,5,7, or "
        f"top:K:STAT with STAT one of {', '.join(TOP_K_ORDERS)}"
    )


def _parse_patch(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        row, column = (int(v) for v in text.split(","))
    except ValueError:
        raise OptionError(
            f"--attention-patch '{text}' is not ROW,COL (two whole numbers, e.g. 7,7)"
        ) from None
    return row, column


def _parse_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"--range '{text}' is not LO,HI (two numbers, e.g. -1,1)") from None
    if not lo < hi:
        raise OptionError(f"--range '{text}' needs LO < HI")
    return lo, hi


def _preprocessing(args: argparse.Namespace, loaded: LoadedModel) -> Preprocessing:
    """The model's preprocessing, with the steps given on the command line replacing its own."""
    from dataclasses import replace

    from featuremaps.inputs import Preprocessing, parse_normalize, parse_size

    base = loaded.input_preprocessing()
    if args.as_is:
        if args.size or args.normalize:
            raise OptionError(
                "--as-is feeds inputs exactly as read, so it cannot go with --size or "
                "--normalize; use one or the other"
            )
        return Preprocessing.unchanged()
    if args.size is None and args.normalize is None:
        return base
    given = []
    if base._transform is not None:
        # A recipe object (detection presets) cannot be taken apart; the options replace it.
        base = Preprocessing()
    if args.size is not None:
        base = replace(base, resize=parse_size(args.size), crop=None)
        given.append(f"--size {args.size}")
    if args.normalize is not None:
        norm = parse_normalize(args.normalize)
        base = replace(base, mean=norm[0] if norm else None, std=norm[1] if norm else None)
        given.append(f"--normalize {args.normalize}")
    kept = "" if base.source.startswith("ToTensor") else f", the rest from {base.source}"
    return replace(base, source=f"{' and '.join(given)}{kept}", from_model=False)


def _print_preprocessing(pre: Preprocessing, out: TextIO) -> None:
    """Say which preprocessing the inputs get and how to change it (every command that reads)."""
    if pre.as_is:
        hint = "leave out --as-is to use the model's preprocessing"
    elif pre.steps():
        hint = "change it with --size, --normalize, or --as-is to feed inputs as read"
    else:
        hint = "set it with --size N and --normalize imagenet (or MEAN,.../STD,...)"
    print(f"preprocessing: {pre.summary()}; {hint}", file=out)


def _load_model(args: argparse.Namespace, spec: str) -> LoadedModel:
    from featuremaps import load_model

    offline = args.offline or None
    return load_model(spec, args.weights, trust_checkpoint=args.trust_checkpoint, offline=offline)


def _load(
    args: argparse.Namespace, spec: str, images: Sequence[str], out: TextIO | None
) -> tuple[LoadedModel, list[LoadedInput]]:
    """Load the model and the inputs; with ``out``, say which preprocessing they got."""
    import featuremaps as fm

    loaded = _load_model(args, spec)
    pre = _preprocessing(args, loaded)
    if out is not None:
        _print_preprocessing(pre, out)
    first = fm.expected_channels(loaded.model)
    axes = fm.expected_axes(loaded.model)
    paths = list(images) or [str(fm.sample_image_path())]
    inputs = [
        fm.load_input(
            p,
            channels=first[0] if first else None,
            layer_name=first[1] if first else None,
            preprocessing=pre,
            axes=axes[0] if axes else None,
        )
        for p in paths
    ]
    return loaded, inputs


def _check_layers(patterns: list[str] | None) -> None:
    if patterns is not None and not any(p.strip(" ,") for p in patterns):
        raise OptionError(
            "--layers was given but empty; name layers (see 'featuremaps layers MODEL') or "
            "leave the option out to capture every layer"
        )


def _check_scale(args: argparse.Namespace) -> None:
    """--range belongs to --scale fixed: given with another scale it would be ignored."""
    if args.value_range is not None and args.scale != "fixed":
        raise OptionError(
            f"--range {args.value_range} is used only with --scale fixed, but the scale is "
            f"'{args.scale}'; add --scale fixed, or drop --range"
        )
    if args.scale == "fixed" and args.value_range is None:
        raise OptionError("--scale fixed needs --range LO,HI, for example --range -1,1")
    if args.columns < 1:
        raise OptionError(f"--columns {args.columns} is not valid; expected 1 or more, e.g. 8")


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm
    from featuremaps.predictions import prediction_lines

    _check_layers(args.layers)
    _check_scale(args)
    grid = fm.GridOptions(
        columns=args.columns,
        scale=args.scale,
        value_range=_parse_range(args.value_range),
        cmap=args.cmap,
        **_parse_channels(args.channels),  # type: ignore[arg-type]
    )
    if not args.images:
        print(f"no image given; using the bundled sample {fm.sample_image_path()}", file=out)
    loaded, inputs = _load(args, args.model, args.images, out)
    for item in inputs:
        for line in item.conversions:
            print(f"{item.path.name}: {line}", file=out)
    if args.stats and "order" not in _parse_channels(args.channels):
        raise OptionError(
            f"--stats ranks channels for --channels top:K:STAT; got --channels {args.channels}"
        )
    results = fm.visualize(
        loaded,
        inputs,
        out=args.out,
        layers=args.layers,
        types=args.types,
        containers=args.containers,
        grid=grid,
        save_arrays=args.save_arrays,
        sample=args.sample,
        progress=not args.quiet and sys.stderr.isatty(),
        report=args.report,
        channel_stats=args.stats,
        device=args.device,
        dtype=args.dtype,
        attention_patch=_parse_patch(args.attention_patch),
    )
    for result in results:
        drawn = sum(1 for r in result.records if r.image)
        skipped = len(result.records) - drawn
        print(
            f"{result.out_dir}: {drawn} pictures, {skipped} records not drawn (reasons in "
            f"{fm.MANIFEST_NAME})",
            file=out,
        )
    for result in results:
        found = result.manifest.get("prediction")
        if found:
            for line in prediction_lines(found):
                print(line, file=out)
    if loaded.random_weights:
        print(f"note: RANDOM WEIGHTS ({loaded.weights_status})", file=out)
    print(f"results: {Path(args.out).resolve()}", file=out)
    if args.report:
        # The last line: the page to open (for several inputs, the one that links them all).
        print(f"report: {(Path(args.out) / 'index.html').resolve()}", file=out)
    return 0


def _check_loader(args: argparse.Namespace) -> None:
    if args.batch_size < 1 or args.workers < 0:
        raise OptionError(
            f"--batch-size {args.batch_size} / --workers {args.workers}: expected a batch of at "
            "least 1 and 0 or more workers"
        )


def _cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    _check_layers(args.layers)
    _check_loader(args)
    loaded = _load_model(args, args.model)
    pre = _preprocessing(args, loaded)
    _print_preprocessing(pre, out)
    summary = fm.collect_stats(
        loaded,
        args.data,
        out=args.out,
        layers=args.layers,
        types=args.types,
        preprocessing=pre,
        batch_size=args.batch_size,
        workers=args.workers,
        near_zero=args.near_zero,
        duplicates=args.duplicates,
        rank_by=args.rank_by,
        plots=args.plots,
        parquet=args.parquet,
        progress=not args.quiet and sys.stderr.isatty(),
        device=args.device,
        dtype=args.dtype,
    )
    inputs = summary["inputs"]
    for item in inputs["not_read"]:
        print(f"not read: {item['path']}: {item['reason']}", file=out)
    for reason, count in inputs["skipped"].items():
        print(f"skipped: {count} file{'s' if count != 1 else ''}: {reason}", file=out)
    dead = sum(len(layer["dead"]) for layer in summary["layers"])
    print(
        f"{inputs['read']} of {inputs['found']} inputs read at "
        f"{summary['images_per_second']:.1f} images/s; {len(summary['layers'])} layers, "
        f"{dead} dead channels",
        file=out,
    )
    print(f"results: {(Path(args.out) / 'stats.csv').resolve()}", file=out)
    return 0


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 0:
        raise OptionError(f"--k '{text}' is not understood; expected counts like 0,8,16,32")
    return ks


def _cmd_ablate(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    _check_layers(args.layers)
    _check_loader(args)
    ks = _parse_ks(args.k)
    loaded = _load_model(args, args.model)
    pre = _preprocessing(args, loaded)
    _print_preprocessing(pre, out)
    result = fm.ablate(
        loaded,
        args.data,
        layers=args.layers,
        out=args.out,
        stat=args.stat,
        ks=ks,
        trials=args.random,
        seed=args.seed,
        channel_stats=args.stats,
        preprocessing=pre,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.quiet and sys.stderr.isatty(),
        device=args.device,
        dtype=args.dtype,
    )
    for path, reason in result.failed:
        print(f"not read: {path}: {reason}", file=out)
    print(
        f"{result.images} inputs, {len(result.channels)} layer(s); K lowest by {args.stat} "
        f"zeroed per layer vs {args.random} random draws (mean [min, max])",
        file=out,
    )
    print(f"{'K':>5} {'zeroed':>6}  {'agree':>6} {'random':>21}  {'KL':>8} {'random':>8}", file=out)
    for row in result.curve():
        rand = (
            f"{row['random_agreement_mean']:.3f} [{row['random_agreement_min']:.2f}, "
            f"{row['random_agreement_max']:.2f}]"
            if args.random
            else "-"
        )
        rand_kl = f"{row['random_kl_mean']:8.4f}" if args.random else "-"
        print(
            f"{row['k']:>5} {row['zeroed']:>6}  {row['ranked_agreement']:>6.3f} {rand:>21}  "
            f"{row['ranked_kl']:>8.4f} {rand_kl:>8}",
            file=out,
        )
    if loaded.random_weights:
        print(f"note: RANDOM WEIGHTS ({loaded.weights_status})", file=out)
    print(f"results: {(Path(args.out) / 'ablation.csv').resolve()}", file=out)
    return 0


def _pair(text: str, option: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"{option} '{text}' is not {what} (two numbers, e.g. 3,5)") from None
    return a, b


def _span(values: range) -> str:
    if not values:
        return "none"
    return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])


def _cmd_locate(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    loaded, [item] = _load(args, args.model, [args.image] if args.image else [], out)
    geo = fm.locate(loaded, item, args.layer)
    height, width = item.tensor.shape[-2:]
    h, w = geo.shape
    print(
        f"{args.layer}: {h}x{w} cells over the input as fed ({height}x{width}, "
        f"{item.path.name}); stride {geo.y.stride:g}x{geo.x.stride:g}, first cell centred at "
        f"({geo.y.offset:g}, {geo.x.offset:g}), receptive field {geo.y.size:g}x{geo.x.size:g} "
        f"({geo.method})",
        file=out,
    )
    for text in args.cell:
        r, c = _pair(text, "--cell", "R,C")
        if not (r.is_integer() and c.is_integer() and 0 <= r < h and 0 <= c < w):
            raise OptionError(f"--cell {text} is not a cell of the {h}x{w} map of {args.layer}")
        y0, x0, y1, x1 = geo.cell_region(int(r), int(c))
        cy, cx = geo.cell_center(int(r), int(c))
        inside = geo.clipped_region(int(r), int(c), height, width)
        print(
            f"cell ({int(r)}, {int(c)}) is centred on input ({cy:g}, {cx:g}) and sees rows "
            f"{y0:g}..{y1:g}, columns {x0:g}..{x1:g} (inside the image: rows {inside[0]:g}.."
            f"{inside[2]:g}, columns {inside[1]:g}..{inside[3]:g})",
            file=out,
        )
    for text in args.pixel:
        y, x = _pair(text, "--pixel", "Y,X")
        if not (0 <= y < height and 0 <= x < width):
            raise OptionError(f"--pixel {text} is outside the {height}x{width} input as fed")
        rows, cols = geo.cells_seeing(y, x)
        near = geo.nearest_cell(y, x)
        print(
            f"pixel ({y:g}, {x:g}) lies in the receptive field of cells in rows {_span(rows)}, "
            f"columns {_span(cols)} ({len(rows) * len(cols)} cells); the nearest centre is cell "
            f"{near}",
            file=out,
        )
    if args.overlay is not None:
        picture = fm.draw_overlay(
            loaded, item, args.layer, args.overlay, alpha=args.alpha, threshold=args.threshold,
            geometry=geo, out=args.out,
        )  # fmt: skip
        print(f"overlay: {picture.caption}", file=out)
        print(f"results: {Path(args.out).resolve()}", file=out)
    return 0


def _cmd_layers(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    loaded, inputs = _load(args, args.model, [args.input] if args.input else [], None)
    infos = fm.list_layers(
        loaded.model,
        inputs[0].tensor,
        containers=args.containers,
    )
    rows = [("name", "call", "type", "output shape")]
    for info in infos:
        if info.returned is not None:
            shape = f"returned {info.returned} (no tensor)"
        else:
            shape = "x".join(map(str, info.shape)) if info.shape else "never ran"
        rows.append((info.name, str(info.call), info.module_type, shape))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}", file=out)
    ran = sum(1 for i in infos if i.shape)
    others = sum(1 for i in infos if i.returned is not None)
    print(
        f"{ran} records from {len({i.module for i in infos})} modules of {args.model} "
        f"on input {tuple(inputs[0].tensor.shape)}"
        + (f"; {others} calls returned no tensor" if others else ""),
        file=out,
    )
    _print_preprocessing(inputs[0].preprocessing, out)  # as applied to this input
    return 0


@dataclass(frozen=True)
class Command:
    """One command of the command line: its help, its options and the call that runs it."""

    help: str
    build: Callable[[argparse.ArgumentParser], None]
    call: Callable[[argparse.Namespace, TextIO], int]


#: The commands, in the order ``featuremaps --help`` lists them; ``run`` is the default.
COMMANDS: dict[str, Command] = {
    "run": Command(
        "draw the selected layers of a model for images (default)", _build_run, _cmd_run
    ),
    "layers": Command("list a model's layers with their output shapes", _build_layers, _cmd_layers),
    "stats": Command(
        "per-channel statistics of every layer over a folder or list of images",
        _build_stats,
        _cmd_stats,
    ),
    "ablate": Command(
        "zero the K lowest-ranked channels of layers and measure how the output changes, "
        "against K random channels",
        _build_ablate,
        _cmd_ablate,
    ),
    "locate": Command(
        "which input region a cell of a layer sees, and which cells see an input pixel",
        _build_locate,
        _cmd_locate,
    ),
    "slide": Command(
        "feature maps over a whole-slide image: tiled, exactly stitched, pyramidal files, "
        "region statistics",
        _build_slide,
        _cmd_slide,
    ),
}
DESCRIPTION = (
    "Capture every layer of a PyTorch model on real inputs and draw truthful channel grids with "
    "a manifest of numbers."
)
# Options whose value may start with "-" (a negative number): "--range -1,1" is read as
# "--range=-1,1", which argparse would otherwise take for an unknown option.
_SIGNED_VALUES = ("--range",)


def _parser(name: str) -> argparse.ArgumentParser:
    command = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=f"featuremaps {name}", description=command.help[:1].upper() + command.help[1:] + "."
    )
    command.build(parser)
    return parser


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: featuremaps [COMMAND] [options] [IMAGE ...]",
        "",
        DESCRIPTION,
        "",
        "commands (without one, 'run' is meant: featuremaps photo.jpg --model resnet50):",
    ]
    lines += [f"  {name:<{width}}  {c.help}" for name, c in COMMANDS.items()]
    lines += ["", "featuremaps COMMAND --help shows a command's options; --version its version."]
    return "\n".join(lines)


def _join_signed_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SIGNED_VALUES and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    The first argument names the command; anything else (an image, an option) means ``run``.
    Options may come before, between or after the images.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help(), file=out)
        return 0
    if argv[0] == "--version":
        print(f"featuremaps {__version__}", file=out)
        return 0
    name = argv[0] if argv[0] in COMMANDS else "run"
    rest = argv[1:] if argv[0] in COMMANDS else argv
    args = _parser(name).parse_intermixed_args(_join_signed_values(rest))
    with warnings.catch_warnings():
        warnings.simplefilter("always", FeaturemapsWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
            # Our own warnings are for the user: one plain line. Others keep their usual form.
            if issubclass(category, FeaturemapsWarning):
                print(f"featuremaps: warning: {message}", file=sys.stderr)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            return COMMANDS[name].call(args, out)
        except FeaturemapsError as exc:
            print(f"featuremaps: error: {exc}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as exc:
            # torch's CPU allocator raises RuntimeError ("can't allocate memory"), CUDA an
            # OutOfMemoryError (a RuntimeError); anything else is a bug and keeps its traceback.
            text = str(exc).lower()
            if not isinstance(exc, MemoryError) and "allocate" not in text and "memory" not in text:
                raise
            print(
                "featuremaps: error: out of memory; select fewer layers (--layers) or use a "
                "smaller input (--size)",
                file=sys.stderr,
            )
            return 2
        except KeyboardInterrupt:
            print("featuremaps: interrupted; nothing was written", file=sys.stderr)
            return 130
        finally:
            warnings.showwarning = previous


_CLOSED_PIPE = 128 + 13  # the status of a program that SIGPIPE ended


def console_main() -> NoReturn:
    """The ``featuremaps`` program: :func:`main`, then an exit without the interpreter's teardown.

    A process that has imported torch spends about a second at exit freeing modules and running
    the native libraries' destructors (``python -c "import torch, torchvision"``: 1.2-1.4 s
    longer than the same import ended by ``os._exit``, on a 2-core machine), time in which no
    file is written or read. When the command has returned, its files are written and closed and
    its thread pools joined, so the process ends here: the exit handlers registered with
    :mod:`atexit` run as usual (coverage, multiprocessing, logging), the standard streams are
    flushed, and :func:`os._exit` skips the rest. A thread other than the main one that is still
    running keeps the ordinary exit, which waits for it; an exception keeps it too.

    A reader that goes away (``featuremaps layers resnet50 | head``) ends the program quietly
    with the status a program killed by SIGPIPE has, 141, as other command-line tools do.
    """
    try:
        code = main()
    except BrokenPipeError:
        # Anything still buffered for the closed pipe is dropped, not reported at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = _CLOSED_PIPE
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> NoReturn:
    if any(_running(t) for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away before the last lines
            code = code or _CLOSED_PIPE
        except (OSError, ValueError):  # a stream closed or failing: as Python's own exit
            code = code or 120
    os._exit(code)


def _running(thread: threading.Thread) -> bool:
    """Whether ``thread`` may still have work that the ordinary exit would wait for. The
    statistics' sweep threads only ever work inside a call that has returned: they are idle."""
    if thread is threading.main_thread() or thread.daemon or not thread.is_alive():
        return False
    stats = sys.modules.get("featuremaps.datastats")  # not imported: none of its threads exist
    return stats is None or not thread.name.startswith(stats.SWEEP_THREADS)


if __name__ == "__main__":
    console_main()
