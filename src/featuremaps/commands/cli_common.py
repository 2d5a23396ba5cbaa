"""What the command line of every command shares: its shape, option groups, option parsers, and
loading the model and inputs that the options name.

The command line's side of the flow's first steps (input -> model): each command module
(:mod:`featuremaps.commands.run`, ``stats``, ...) declares its :class:`Command` with the option
groups defined here, and its call turns the parsed options into a model, a preprocessing and
inputs with the helpers below before it calls its public function. :mod:`featuremaps.cli` lists
the commands and turns their errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from featuremaps._errors import OptionError
from featuremaps.commands.cam_files import CamOptions, region_target
from featuremaps.engine import EngineOptions
from featuremaps.inputs import (
    LoadedInput,
    Preprocessing,
    load_input_for,
    parse_normalize,
    parse_size,
    sample_image_path,
)
from featuremaps.io import folder_size
from featuremaps.models import LoadedModel, load_model
from featuremaps.stats import TOP_K_ORDERS

__all__ = [
    "Command",
    "add_cam_options",
    "add_containers_option",
    "add_device_options",
    "add_layer_options",
    "add_loader_options",
    "add_model_options",
    "add_out_option",
    "add_quiet_option",
    "add_run_cam_options",
    "check_data_options",
    "check_layers",
    "load_model_and_inputs",
    "load_model_from_args",
    "load_model_with_preprocessing",
    "parse_box",
    "parse_channels",
    "parse_pair",
    "parse_patch",
    "parse_range",
    "preprocessing_from_args",
    "print_preprocessing",
    "run_cam_options",
    "show_progress",
]


@dataclass(frozen=True)
class Command:
    """One command of the command line: its help, its options and the call that runs it.

    ``signed_values`` names its options whose value may start with "-" (a negative number):
    the command line joins "--range -1,1" into "--range=-1,1" for them.
    """

    help: str
    build: Callable[[argparse.ArgumentParser], None]
    call: Callable[[argparse.Namespace, TextIO], int]
    signed_values: tuple[str, ...] = ()


# -- option groups, in the order each command lists them --------------------------------------


def add_model_options(p: argparse.ArgumentParser, *, spec: bool = True) -> None:
    """--model (unless the command takes the spec as an argument), the weights and how inputs
    are prepared for the model."""
    if spec:
        p.add_argument("--model", "-m", default="resnet18", help="model spec (default: resnet18)")
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


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device and --dtype: where the model runs and in which precision."""
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


def add_containers_option(p: argparse.ArgumentParser) -> None:
    """--containers: modules with children are captured too."""
    p.add_argument(
        "--containers", action="store_true", help="also capture modules that have children"
    )


def add_out_option(p: argparse.ArgumentParser, default: str, help: str = "output folder") -> None:
    """--out: the command's output folder, named ``default`` unless given."""
    p.add_argument("--out", "-o", default=default, help=help)


def add_layer_options(
    p: argparse.ArgumentParser, layers_help: str = "as for run", types_help: str = "as for run"
) -> None:
    """--layers and --type: which layers are captured (by name or pattern, and by class)."""
    p.add_argument("--layers", "-l", action="append", help=layers_help)
    p.add_argument("--type", action="append", dest="types", help=types_help)


def add_loader_options(p: argparse.ArgumentParser) -> None:
    """--batch-size and --workers: how a data set is read."""
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
    p.add_argument(
        "--workers", type=int, default=2,
        help="reader processes, or Ray workers with --engine ray (2)",
    )  # fmt: skip


def add_engine_options(p: argparse.ArgumentParser, *, workers: bool = False) -> None:
    """--engine, --address, --gpus-per-worker and --threads-per-worker: where a data-set
    command's items run (:mod:`featuremaps.engine`); ``workers`` adds --workers (commands
    without the loader options)."""
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local",
        help="local (default: this process) or ray (a pool of Ray workers; the 'ray' extra)",
    )  # fmt: skip
    p.add_argument(
        "--address",
        help="Ray cluster address for --engine ray (default: RAY_ADDRESS, else a local Ray)",
    )
    if workers:
        p.add_argument("--workers", type=int, default=2, help="Ray workers for --engine ray (2)")
    p.add_argument(
        "--gpus-per-worker", type=float, default=0.0,
        help="GPUs each Ray worker asks for (default 0; 0.5 puts two on a GPU)",
    )  # fmt: skip
    p.add_argument(
        "--threads-per-worker", type=int,
        help="torch threads per Ray worker (default: this process's count, which gives the "
        "local engine's numbers bit for bit)",
    )  # fmt: skip


def engine_from_args(args: argparse.Namespace) -> EngineOptions:
    """The engine the options name (--workers is the Ray pool's size for --engine ray)."""
    if args.engine == "local":
        return EngineOptions()
    return EngineOptions(
        "ray",
        address=args.address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        threads=args.threads_per_worker,
    )


def engine_line(engine: dict[str, Any]) -> str:
    """One line from a summary's ``engine`` entry: workers, retries and where the time went."""
    seconds = engine["seconds"]
    parts = ", ".join(
        f"{k} {seconds[k]:.2f} s" for k in ("read", "model", "merge", "write") if k in seconds
    )
    retries = engine["retries"]
    return (
        f"engine {engine['name']}: {engine['items']} items on {engine['workers']} worker"
        f"{'s' if engine['workers'] != 1 else ''} ({engine['workers_started']} started), "
        f"{retries} retr{'ies' if retries != 1 else 'y'}; time: {parts} (read and model "
        f"summed over workers); the pass took {seconds.get('wall', 0.0):.2f} s"
    )


def add_cam_options(p: argparse.ArgumentParser) -> None:
    """The options of class maps that ``cam`` and ``run --cam`` share: target, output, region,
    smoothing and the trust numbers."""
    p.add_argument(
        "--target",
        default="top1",
        help="what the maps explain: top1 (the top class of each input), a class INDEX or "
        "NAME, or one per input separated by commas (default: top1)",
    )
    p.add_argument(
        "--output",
        metavar="KEY",
        help="the part of a dict/tuple output whose scores are explained, e.g. out",
    )
    p.add_argument(
        "--region",
        metavar="X0,Y0,X1,Y1",
        help="for dense (segmentation) outputs: sum the target class over this box of output "
        "cells (default: the cells where it is the top class)",
    )
    p.add_argument(
        "--smooth",
        action="store_true",
        help="draw maps interpolated between cell centres (the legend says so; default: each "
        "cell as a block, the map's own resolution)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=16,
        help="steps of the deletion/insertion curves (default: 16)",
    )
    p.add_argument(
        "--no-trust",
        dest="trust",
        action="store_false",
        help="skip the deletion/insertion curves",
    )
    p.add_argument(
        "--no-sanity",
        dest="sanity",
        action="store_false",
        help="skip the sanity check (the map after re-initialising the layers above)",
    )


def parse_box(text: str | None) -> tuple[int, int, int, int] | None:
    """--region ``X0,Y0,X1,Y1`` as four integers."""
    if text is None:
        return None
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise OptionError(
            f"--region '{text}' is not X0,Y0,X1,Y1 (four whole numbers, e.g. 0,0,16,16)"
        ) from None
    return x0, y0, x1, y1


def add_run_cam_options(p: argparse.ArgumentParser) -> None:
    """``run``'s --cam METHODS and --cam-layers, with the options of class maps."""
    p.add_argument(
        "--cam",
        metavar="METHODS",
        help="also compute class activation maps (gradcam, layercam, ... or all, "
        "comma-separated) and show them in the report; see 'featuremaps cam --help'",
    )
    p.add_argument(
        "--cam-layers",
        action="append",
        metavar="LAYER",
        help="layer calls the class maps explain (default: the last layer whose output has cells)",
    )
    add_cam_options(p)


def run_cam_options(args: argparse.Namespace) -> CamOptions | None:
    """``run``'s --cam and its options as :class:`CamOptions`, or None without --cam (the
    class-map options without --cam are refused)."""
    if args.cam is None:
        given = [o for o, v in (("--cam-layers", args.cam_layers), ("--output", args.output),
                                ("--region", args.region)) if v is not None]  # fmt: skip
        if given or args.target != "top1" or args.smooth:
            named = given[0] if given else ("--target" if args.target != "top1" else "--smooth")
            raise OptionError(
                f"{named} is an option of class maps; add --cam METHODS, e.g. --cam gradcam"
            )
        return None
    if "," in args.target:
        raise OptionError(
            f"--target {args.target}: run takes one target for all its inputs; use "
            "'featuremaps cam' for one per input"
        )
    target: int | str = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    return CamOptions(
        methods=args.cam,
        layers=args.cam_layers,
        target=region_target(target, parse_box(args.region)),
        output=args.output,
        trust=args.trust,
        sanity=args.sanity,
        steps=args.steps,
        smooth=args.smooth,
    )


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    """--quiet: no progress bar."""
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


# -- option values -----------------------------------------------------------------------------


def parse_channels(text: str) -> dict[str, object]:
    """--channels of ``run`` as :class:`~featuremaps.render.GridOptions` fields."""
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


def parse_patch(text: str | None) -> tuple[int, int] | None:
    """--attention-patch ROW,COL, or None when not given."""
    if text is None:
        return None
    try:
        row, column = (int(v) for v in text.split(","))
    except ValueError:
        raise OptionError(
            f"--attention-patch '{text}' is not ROW,COL (two whole numbers, e.g. 7,7)"
        ) from None
    return row, column


def parse_range(text: str | None) -> tuple[float, float] | None:
    """--range LO,HI with LO < HI, or None when not given."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"--range '{text}' is not LO,HI (two numbers, e.g. -1,1)") from None
    if not lo < hi:
        raise OptionError(f"--range '{text}' needs LO < HI")
    return lo, hi


def parse_pair(text: str, option: str, what: str) -> tuple[float, float]:
    """Two numbers ``a,b`` given to ``option``; ``what`` names them in the error (``R,C``)."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"{option} '{text}' is not {what} (two numbers, e.g. 3,5)") from None
    return a, b


def check_layers(patterns: list[str] | None) -> None:
    """Refuse --layers given but empty (leaving it out means every layer)."""
    if patterns is not None and not any(p.strip(" ,") for p in patterns):
        raise OptionError(
            "--layers was given but empty; name layers (see 'featuremaps layers MODEL') or "
            "leave the option out to capture every layer"
        )


def check_data_options(args: argparse.Namespace) -> None:
    """The options of a command that reads a data set: --layers, --batch-size and --workers."""
    check_layers(args.layers)
    if args.batch_size < 1 or args.workers < 0:
        raise OptionError(
            f"--batch-size {args.batch_size} / --workers {args.workers}: expected a batch of at "
            "least 1 and 0 or more workers"
        )


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar unless --quiet, and only on a terminal."""
    return not args.quiet and sys.stderr.isatty()


# -- the model, its preprocessing and the inputs the options name -----------------------------


def preprocessing_from_args(args: argparse.Namespace, loaded: LoadedModel) -> Preprocessing:
    """The model's preprocessing, with the steps given on the command line replacing its own."""
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
    if base.transform is not None:
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


def print_preprocessing(pre: Preprocessing, out: TextIO) -> None:
    """Say which preprocessing the inputs get and how to change it (every command that reads)."""
    if pre.as_is:
        hint = "leave out --as-is to use the model's preprocessing"
    elif pre.steps():
        hint = "change it with --size, --normalize, or --as-is to feed inputs as read"
    else:
        hint = "set it with --size N and --normalize imagenet (or MEAN,.../STD,...)"
    print(f"preprocessing: {pre.summary()}; {hint}", file=out)


def load_model_from_args(args: argparse.Namespace, spec: str) -> LoadedModel:
    """The model ``spec`` with the weights and trust the options give."""
    offline = args.offline or None
    return load_model(spec, args.weights, trust_checkpoint=args.trust_checkpoint, offline=offline)


def load_model_with_preprocessing(
    args: argparse.Namespace, spec: str, out: TextIO | None
) -> tuple[LoadedModel, Preprocessing]:
    """Load the model and its preprocessing as the options change it; with ``out``, say which
    preprocessing the inputs get."""
    loaded = load_model_from_args(args, spec)
    pre = preprocessing_from_args(args, loaded)
    if out is not None:
        print_preprocessing(pre, out)
    return loaded, pre


def load_model_and_inputs(
    args: argparse.Namespace, spec: str, images: Sequence[str], out: TextIO | None
) -> tuple[LoadedModel, list[LoadedInput]]:
    """Load the model and the inputs; with ``out``, say which preprocessing they got."""
    loaded, pre = load_model_with_preprocessing(args, spec, out)
    paths = list(images) or [str(sample_image_path())]
    inputs = [load_input_for(p, loaded.model, pre) for p in paths]
    return loaded, inputs


def print_weights_note(loaded: LoadedModel, out: TextIO) -> None:
    """Say that the weights are random, when they are (every command that ran the model)."""
    if loaded.random_weights:
        print(f"note: {loaded.mark}", file=out)


def print_closing(
    loaded: LoadedModel, folder: str | Path, results: str | Path, out: TextIO
) -> None:
    """The lines a command that wrote a folder ends with: the random-weights note (when they
    are random), how much the folder takes on disk, and where its results are."""
    print_weights_note(loaded, out)
    path = Path(folder).resolve()
    print(f"size: {folder_size(path) / 1e6:.1f} MB in {path}", file=out)
    print(f"results: {Path(results).resolve()}", file=out)
