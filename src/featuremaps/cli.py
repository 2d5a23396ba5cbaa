"""Command line: parse arguments, call the public API, turn errors into one line and an exit code.

    featuremaps run [IMAGE ...] [--model SPEC] [--out DIR] ...   draw every layer (the default)
    featuremaps IMAGE ... [options]                              same as ``run``
    featuremaps layers [MODEL]                                   list layers with output shapes

Exit codes: 0 success, 2 a user error (one line on stderr, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from featuremaps import __version__
from featuremaps._errors import FeaturemapsError, FeaturemapsWarning, OptionError

if TYPE_CHECKING:
    from featuremaps.inputs import LoadedInput, Preprocessing
    from featuremaps.models import LoadedModel

__all__ = ["main"]

COMMANDS = ("run", "layers", "stats")
STATS = ("mean", "max", "std", "absmean")


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
        help="allow checkpoints that need full unpickling (can run code: only for trusted files)",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="never try to download weights (use the torch hub cache or random weights)",
    )
    p.add_argument("--size", help="resize: N (shorter side) or HxW; replaces the weights' preset")
    p.add_argument(
        "--normalize",
        help="imagenet, none, or MEAN,.../STD,...; replaces the weights' preset normalisation",
    )
    p.add_argument(
        "--containers", action="store_true", help="also capture modules that have children"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featuremaps",
        description="Capture every layer of a PyTorch model on real inputs and draw truthful "
        "channel grids with a manifest of numbers.",
    )
    parser.add_argument("--version", action="version", version=f"featuremaps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="draw the selected layers of a model for images (default)")
    run.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files or .npy arrays (default: the bundled sample photo)",
    )
    run.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(run)
    run.add_argument("--out", "-o", default="featuremaps-out", help="output folder")
    run.add_argument(
        "--layers",
        "-l",
        action="append",
        help="name, glob, re:REGEX, or NAME#k; repeat or use commas (default: all leaves)",
    )
    run.add_argument("--type", action="append", dest="types", help="module class, e.g. Conv2d")
    run.add_argument(
        "--channels",
        default="32",
        help="N (first N), all, a list like 0,5,7, or top:K:STAT with STAT in mean, max, std, "
        "absmean (default: 32)",
    )
    run.add_argument("--columns", type=int, default=8, help="tiles per row (default: 8)")
    run.add_argument(
        "--scale",
        choices=("layer", "channel", "global", "fixed"),
        default="layer",
        help="colour scale shared per layer (default), per channel, across all layers, or fixed",
    )
    run.add_argument("--range", dest="value_range", help="LO,HI for --scale fixed")
    run.add_argument(
        "--cmap", help="matplotlib colormap (default: viridis; RdBu_r centred on 0 if signed)"
    )
    run.add_argument("--sample", type=int, default=0, help="batch sample to draw (default: 0)")
    run.add_argument(
        "--save-arrays", action="store_true", help="also write arrays.safetensors (float32)"
    )
    run.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not write the HTML report (index.html and its float16 layer data in data/)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    stats = sub.add_parser(
        "stats", help="per-channel statistics of every layer over a folder or list of images"
    )
    stats.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    stats.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
    _add_model_options(stats)
    stats.add_argument("--out", "-o", default="featuremaps-stats", help="output folder")
    stats.add_argument("--layers", "-l", action="append", help="as for run")
    stats.add_argument("--type", action="append", dest="types", help="as for run")
    stats.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    stats.add_argument("--workers", type=int, default=2, help="reader processes (2)")
    stats.add_argument(
        "--near-zero", type=float, default=1e-6, help="|x| at most this counts as near zero"
    )
    stats.add_argument(
        "--duplicates",
        type=float,
        metavar="R",
        help="also list channel pairs correlated at least R within a layer (costs C^2 per value)",
    )
    stats.add_argument(
        "--rank-by", choices=("absmean", "mean", "std", "max"), default="absmean",
        help="statistic that ranks channels within a layer (default: absmean)",
    )  # fmt: skip
    stats.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    layers = sub.add_parser("layers", help="list a model's layers with their output shapes")
    layers.add_argument("model", nargs="?", default="resnet18", help="model spec")
    layers.add_argument("--input", help="image for the dry run (default: the bundled sample)")
    _add_model_options(layers)
    return parser


def _parse_channels(text: str) -> dict[str, object]:
    text = text.strip().lower()
    if text == "all":
        return {"max_channels": 1 << 30}
    if text.isdigit() and int(text) > 0:
        return {"max_channels": int(text)}
    if text.startswith("top:"):
        parts = text.split(":")
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) > 0 and parts[2] in STATS:
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
        f"top:K:STAT with STAT one of {', '.join(STATS)}"
    )


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
    from featuremaps.inputs import Preprocessing, parse_normalize, parse_size

    if args.size is None and args.normalize is None:
        return loaded.input_preprocessing()
    size = parse_size(args.size) if args.size else None
    norm = parse_normalize(args.normalize) if args.normalize else None
    return Preprocessing(
        resize=size,
        crop=None,
        mean=norm[0] if norm else None,
        std=norm[1] if norm else None,
        source="command-line options (--size/--normalize)",
    )


def _load(
    args: argparse.Namespace, spec: str, images: Sequence[str]
) -> tuple[LoadedModel, list[LoadedInput]]:
    import featuremaps as fm

    loaded = fm.load_model(
        spec, args.weights, trust_checkpoint=args.trust_checkpoint, offline=args.offline or None
    )
    pre = _preprocessing(args, loaded)
    first = fm.expected_channels(loaded.model)
    paths = list(images) or [str(fm.sample_image_path())]
    inputs = [
        fm.load_input(
            p,
            channels=first[0] if first else None,
            layer_name=first[1] if first else None,
            preprocessing=pre,
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


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    _check_layers(args.layers)
    grid = fm.GridOptions(
        columns=args.columns,
        scale=args.scale,
        value_range=_parse_range(args.value_range),
        cmap=args.cmap,
        **_parse_channels(args.channels),  # type: ignore[arg-type]
    )
    if not args.images:
        print(f"no image given; using the bundled sample {fm.sample_image_path()}", file=out)
    loaded, inputs = _load(args, args.model, args.images)
    for item in inputs:
        for line in item.conversions:
            print(f"{item.path.name}: {line}", file=out)
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
    )
    for result in results:
        drawn = sum(1 for r in result.records if r.image)
        skipped = len(result.records) - drawn
        print(
            f"{result.out_dir}: {drawn} pictures, {skipped} records not drawn (reasons in "
            f"{fm.MANIFEST_NAME})",
            file=out,
        )
    if loaded.random_weights:
        print(f"note: RANDOM WEIGHTS ({loaded.weights_status})", file=out)
    print(f"results: {Path(args.out).resolve()}", file=out)
    if args.report:
        # The last line: the page to open (for several inputs, the one that links them all).
        print(f"report: {(Path(args.out) / 'index.html').resolve()}", file=out)
    return 0


def _cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    _check_layers(args.layers)
    if args.batch_size < 1 or args.workers < 0:
        raise OptionError(
            f"--batch-size {args.batch_size} / --workers {args.workers}: expected a batch of at "
            "least 1 and 0 or more workers"
        )
    loaded = fm.load_model(
        args.model,
        args.weights,
        trust_checkpoint=args.trust_checkpoint,
        offline=args.offline or None,
    )
    summary = fm.collect_stats(
        loaded,
        args.data,
        out=args.out,
        layers=args.layers,
        types=args.types,
        preprocessing=_preprocessing(args, loaded) if args.size or args.normalize else None,
        batch_size=args.batch_size,
        workers=args.workers,
        near_zero=args.near_zero,
        duplicates=args.duplicates,
        rank_by=args.rank_by,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    inputs = summary["inputs"]
    for item in inputs["not_read"]:
        print(f"not read: {item['path']}: {item['reason']}", file=out)
    dead = sum(len(layer["dead"]) for layer in summary["layers"])
    print(
        f"{inputs['read']} of {inputs['found']} inputs read at "
        f"{summary['images_per_second']:.1f} images/s; {len(summary['layers'])} layers, "
        f"{dead} dead channels",
        file=out,
    )
    print(f"results: {(Path(args.out) / 'stats.csv').resolve()}", file=out)
    return 0


def _cmd_layers(args: argparse.Namespace, out: TextIO) -> int:
    import featuremaps as fm

    loaded, inputs = _load(args, args.model, [args.input] if args.input else [])
    infos = fm.list_layers(
        loaded.model,
        inputs[0].tensor,
        containers=args.containers,
    )
    rows = [("name", "call", "type", "output shape")]
    for info in infos:
        shape = "x".join(map(str, info.shape)) if info.shape else "never ran"
        rows.append((info.name, str(info.call), info.module_type, shape))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}", file=out)
    ran = sum(1 for i in infos if i.shape)
    print(
        f"{ran} records from {len({i.module for i in infos})} modules of {args.model} "
        f"on input {tuple(inputs[0].tensor.shape)}",
        file=out,
    )
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")  # `featuremaps photo.jpg` means `featuremaps run photo.jpg`
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(out)
        return 0
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
            if args.command == "layers":
                return _cmd_layers(args, out)
            if args.command == "stats":
                return _cmd_stats(args, out)
            return _cmd_run(args, out)
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


if __name__ == "__main__":
    sys.exit(main())
