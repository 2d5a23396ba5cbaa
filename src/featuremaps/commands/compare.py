"""The ``compare`` command: what changed between two inputs, or between two checkpoints.

Wires inputs → model(s) → capture → :mod:`featuremaps.compare` (pure numbers) → render (A | B |
B−A per layer) → io. Two modes:

* one input pair (two inputs through one model, or one input through two checkpoints): per
  layer and channel cosine, relative L2 change and rank; pictures; ``compare.json``,
  ``compare.csv`` and, with ``save_arrays``, ``difference.safetensors``;
* over a data set (``--data``, two checkpoints): per-layer linear CKA between the checkpoints,
  the layer × layer CKA matrix (streaming minibatch unbiased HSIC) and each channel's mean shift.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from featuremaps._errors import InputError, OptionError
from featuremaps.capture import LayerRecord, capture
from featuremaps.commands.cli_common import (
    Command,
    add_engine_options,
    add_layer_options,
    add_model_options,
    add_out_option,
    engine_from_args,
    load_model_from_args,
    preprocessing_from_args,
    print_closing,
    print_preprocessing,
)
from featuremaps.commands.common import resolve_input, resolve_model
from featuremaps.compare import LayerChange, compare_arrays
from featuremaps.compare_job import CKAJob, CKAResult, fold_cka
from featuremaps.engine import EngineOptions, ModelSpec
from featuremaps.inputs import Preprocessing, expected_channels, load_input_for
from featuremaps.io import OutputFolder, safe_filename
from featuremaps.layouts import channels_first
from featuremaps.manifest import header
from featuremaps.models import LoadedModel

__all__ = ["COMMAND", "COMPARE_CSV", "COMPARE_JSON", "DIFFERENCE", "compare", "compare_data"]

COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
DIFFERENCE = "difference.safetensors"
CKA_PNG = "cka.png"
#: Columns between the three pictures of a layer, in pixels (white).
GUTTER = 12


@dataclass
class _Side:
    records: dict[str, LayerRecord] = field(default_factory=dict)

    def keep(self, record: LayerRecord) -> None:
        self.records[record.name] = record


def _capture(model: nn.Module, tensor: torch.Tensor, layers: Any, types: Any) -> _Side:
    side = _Side()
    with torch.no_grad():
        capture(model, tensor, layers=layers, types=types, on_record=side.keep)
    return side


def _values(record: LayerRecord) -> np.ndarray | None:
    if record.tensor.is_complex():
        return None
    t = channels_first(record.layout_info, record.tensor)
    return None if t is None else t.detach().to("cpu", torch.float64).numpy()


def _maps(record: LayerRecord) -> np.ndarray | None:
    """One sample's drawable (C, H, W) maps, or None for a layout that is not drawn as maps."""
    try:
        maps = record.maps(0)
    except (InputError, OptionError):
        return None
    return maps if maps.ndim == 3 else None


def _pictures(
    change: LayerChange,
    a: LayerRecord,
    b: LayerRecord,
    channels: int,
    chosen: Sequence[int] | None,
    stamp: str | None = None,
) -> bytes | None:
    """A | B | B−A of one layer as one PNG: A and B on one shared scale, B−A on a diverging
    scale centred on 0; the channels with the largest change unless ``chosen`` names them."""
    from featuremaps.render import GridLabel, GridOptions, make_grid
    from featuremaps.render.colormap import DEFAULT_DIVERGING_CMAP
    from featuremaps.render.encode import encode_png

    ma, mb = _maps(a), _maps(b)
    if ma is None or mb is None or ma.shape != mb.shape:
        return None
    ma, mb = ma.astype(np.float64), mb.astype(np.float64)
    diff = mb - ma
    total = ma.shape[0]
    picked = (
        tuple(c for c in chosen if 0 <= c < total)
        if chosen is not None
        else tuple(change.largest(channels))
    )
    if not picked:
        return None
    note = "explicit list" if chosen is not None else "largest |B-A| first"
    both = np.concatenate([ma[list(picked)].ravel(), mb[list(picked)].ravel()])
    finite = both[np.isfinite(both)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        hi = lo + 1.0
    reach = float(np.nanmax(np.abs(diff[list(picked)]))) if diff.size else 0.0
    reach = reach if reach > 0 and np.isfinite(reach) else 1.0
    shape = tuple(a.shape)
    grids = []
    for title, maps, scale, cmap in (
        ("A", ma, (lo, hi), None),
        ("B", mb, (lo, hi), None),
        ("B-A", diff, (-reach, reach), DEFAULT_DIVERGING_CMAP),
    ):
        options = GridOptions(
            max_channels=len(picked),
            columns=min(4, len(picked)),
            channels=picked,
            channels_note=note,
            scale="fixed",
            value_range=scale,
            cmap=cmap,
        )
        label = GridLabel(f"{change.layer} ({title})", a.module_type, shape, stamp=stamp)
        grids.append(make_grid(maps, options, label=label).pixels)
    height = max(g.shape[0] for g in grids)
    parts: list[np.ndarray] = []
    for g in grids:
        pad = np.full((height - g.shape[0], g.shape[1], 3), 255, dtype=np.uint8)
        parts.extend([np.vstack([g, pad]), np.full((height, GUTTER, 3), 255, dtype=np.uint8)])
    return encode_png(np.hstack(parts[:-1]))


def _view(
    folder: OutputFolder,
    index: int,
    change: LayerChange,
    a: LayerRecord,
    b: LayerRecord,
    chosen: Sequence[int] | None,
) -> Any:
    """The compare page's entry of one layer (its channel with the largest change, or the first
    ``chosen``), with its three pictures written; None for a layer not drawn as maps."""
    from featuremaps.render.encode import encode_png
    from featuremaps.report.compare_view import CompareView, view_pictures

    ma, mb = _maps(a), _maps(b)
    if ma is None or mb is None or ma.shape != mb.shape:
        return None
    channel = chosen[0] if chosen and 0 <= chosen[0] < ma.shape[0] else change.largest(1)[0]
    xa, xb = np.asarray(ma[channel], np.float64), np.asarray(mb[channel], np.float64)
    names = []
    for suffix, rgb in zip((".a.png", ".b.png", ".diff.png"), view_pictures(xa, xb), strict=True):
        names.append(folder.write_bytes("view/" + safe_filename(index, change.layer, suffix),
                                        encode_png(rgb)))  # fmt: skip
    return CompareView(
        change.layer, channel, xa, xb, (names[0], names[1], names[2]),
        change.cosine, change.relative_l2,
    )  # fmt: skip


def compare(
    model: nn.Module | LoadedModel | str,
    a: str | Path | torch.Tensor,
    b: str | Path | torch.Tensor | None = None,
    *,
    model_b: nn.Module | LoadedModel | str | None = None,
    out: str | Path,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    channels: int = 8,
    chosen: Sequence[int] | None = None,
    pictures: bool = True,
    save_arrays: bool = False,
) -> dict[str, Any]:
    """Compare every selected layer of input ``a`` with input ``b`` through ``model``, or of
    ``a`` through ``model`` (A) and ``model_b`` (B, the same architecture), and write ``out``.

    Writes ``compare.json`` (``layers``: per compared record ``layer``, ``cosine``,
    ``relative_l2`` ``|B−A| / |A|`` and ``channels`` with each channel's ``cosine``,
    ``relative_l2`` and ``rank`` (1 = largest ``|B−A|``); ``only_a`` and ``only_b``: records
    present on one side only; ``mismatched``: one line per shape mismatch), ``compare.csv`` (one
    row per layer and channel), with ``pictures`` per layer ``pictures/NNNN_<name>.png`` (A | B |
    B−A: A and B on one shared scale, B−A diverging and centred on 0; ``channels`` channels with
    the largest change unless ``chosen`` lists them), and with ``save_arrays``
    ``difference.safetensors``: B − A of every compared record under its name, float32, at the
    record's full shape. Returns what ``compare.json`` holds.

    Raises:
        OptionError: neither a second input nor a second model, or both.
    """
    if (b is None) == (model_b is None):
        raise OptionError(
            "compare needs either a second input (A.jpg B.jpg) or a second checkpoint "
            f"(--weights-b/--model-b); got {'both' if b is not None else 'neither'}"
        )
    loaded_a = resolve_model(model)
    loaded_b = resolve_model(model_b) if model_b is not None else loaded_a
    pre = preprocessing or loaded_a.input_preprocessing()
    tensor_a, info_a = _input(a, loaded_a, pre)
    tensor_b, info_b = _input(b, loaded_b, pre) if b is not None else (tensor_a, info_a)
    side_a = _capture(loaded_a.model, tensor_a, layers, types)
    side_b = _capture(loaded_b.model, tensor_b, layers, types)
    only_a = [n for n in side_a.records if n not in side_b.records]
    only_b = [n for n in side_b.records if n not in side_a.records]
    changes: list[LayerChange] = []
    mismatched: list[str] = []
    folder = OutputFolder(out, loaded_a.mark or loaded_b.mark)
    stamp = loaded_a.stamp or loaded_b.stamp
    with folder:
        arrays = folder.arrays(DIFFERENCE) if save_arrays else None
        files: dict[str, str] = {}
        views = []
        for index, (name, ra) in enumerate(side_a.records.items()):
            rb = side_b.records.get(name)
            if rb is None:
                continue
            if ra.shape != rb.shape:
                mismatched.append(
                    f"layer '{name}' has shape {ra.shape} in A and {rb.shape} in B; not compared"
                )
                continue
            va, vb = _values(ra), _values(rb)
            if va is None or vb is None:
                continue
            change = compare_arrays(va, vb, name)
            changes.append(change)
            if arrays is not None:
                arrays.add(name, rb.tensor.detach().double() - ra.tensor.detach().double())
            if pictures:
                png = _pictures(change, ra, rb, channels, chosen, stamp)
                if png is not None:
                    files[name] = folder.write_bytes(
                        "pictures/" + safe_filename(index, name, ".png"), png
                    )
                view = _view(folder, index, change, ra, rb, chosen)
                if view is not None:
                    views.append(view)
        if arrays is not None:
            arrays.close()
        if views:
            from featuremaps.report.compare_view import COMPARE_PAGE, compare_page_files

            title = f"{loaded_a.spec}: {_label(info_a)} vs {_label(info_b)}"
            for relative, data in compare_page_files(title, views, folder.mark).items():
                folder.write_bytes(relative, data)
        result = {
            **header(_marked(loaded_a, loaded_b).describe()),
            "mode": "inputs" if model_b is None else "checkpoints",
            "a": {"input": info_a, "model": loaded_a.describe()},
            "b": {"input": info_b, "model": loaded_b.describe()},
            "layers": [{**c.describe(), "picture": files.get(c.layer)} for c in changes],
            "only_a": only_a,
            "only_b": only_b,
            "mismatched": mismatched,
            "page": COMPARE_PAGE if views else None,
            "files": [COMPARE_CSV, *([DIFFERENCE] if save_arrays else [])],
        }
        folder.write_json(COMPARE_JSON, result)
        folder.write_csv(
            COMPARE_CSV,
            [
                {"layer": c.layer, **ch.describe(), "layer_cosine": c.cosine}
                for c in changes
                for ch in c.channels
            ],
        )
    return result


def _named(loaded: LoadedModel) -> str:
    """A model and its weights in a few words, for a chart's title."""
    return f"{loaded.spec}, weights {Path(str(loaded.weights)).name}"


def _label(info: dict[str, Any]) -> str:
    return str(info.get("path") or info.get("kind") or "input")


def _marked(a: LoadedModel, b: LoadedModel) -> LoadedModel:
    """The model whose description heads the output: one with random weights, when there is."""
    return b if b.random_weights and not a.random_weights else a


def _input(
    item: str | Path | torch.Tensor, loaded: LoadedModel, pre: Preprocessing
) -> tuple[torch.Tensor, dict[str, Any]]:
    if isinstance(item, torch.Tensor):
        resolved = resolve_input(item, loaded)  # adds a batch axis to one sample
        return resolved.tensor, resolved.info
    loaded_input = load_input_for(item, loaded.model, pre)
    return loaded_input.tensor, loaded_input.describe()


def compare_data(
    model: nn.Module | LoadedModel | str,
    model_b: nn.Module | LoadedModel | str,
    data: Sequence[str],
    *,
    out: str | Path,
    layers: str | Sequence[str] | None = None,
    types: str | Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    engine: EngineOptions | str | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Compare two checkpoints over a data set: per-layer linear CKA between A and B, the layer
    × layer CKA matrix (rows: A's layers, columns: B's), and each channel's mean shift (mean of
    B − mean of A over every sample and cell), written to ``compare.json``; with ``plots`` the
    matrix as a heat map, ``cka.png`` (``cka_picture``).

    The CKA is the minibatch estimator of Nguyen, Raghu & Kornblith (2021) with minibatches of
    ``batch_size`` inputs in file order (a last batch under 4 inputs is left out and counted in
    ``cka_left_out``); memory holds one batch's Gram matrices, never the data. Every layout
    with a channel axis is flattened (channels first, then the other axes) the same way for
    both models. ``engine`` (``"local"``, ``"ray"`` or
    :class:`featuremaps.engine.EngineOptions`) picks where the minibatches run (Ray workers load
    both models from their specs); both give the same numbers, merged in minibatch order. The
    inputs must come out of the preprocessing at one size (a model's resize and crop, or
    ``--size``) to be stacked into minibatches.
    """
    from featuremaps.dataset import batch_paths, scan_inputs
    from featuremaps.engine import run_job

    if batch_size < 4:
        raise OptionError(
            f"--batch-size {batch_size} for CKA; expected at least 4 (the unbiased HSIC "
            "estimator needs 4 samples per minibatch)"
        )
    loaded_a, loaded_b = resolve_model(model), resolve_model(model_b)
    options = engine if isinstance(engine, EngineOptions) else EngineOptions(engine or "local")
    remote = options.name != "local"
    pre = preprocessing or loaded_a.input_preprocessing()
    paths = scan_inputs(data).paths
    first = expected_channels(loaded_a.model)
    job = CKAJob(
        ModelSpec.from_loaded(loaded_a) if remote else None,
        ModelSpec.from_loaded(loaded_b) if remote else None,
        first[0] if first else None, pre, layers, types,
        None if remote else loaded_a.model, None if remote else loaded_b.model,
    )  # fmt: skip
    if len(paths) > 1 and max(len(b) for b in batch_paths(paths, pre, batch_size)) == 1:
        raise OptionError(
            f"the preprocessing ({pre.summary()}) does not give one input size, so {len(paths)} "
            "inputs cannot share CKA minibatches; expected a resize to one size: add --size HxW"
        )
    total = CKAResult()
    batches = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    report = run_job(job, batches, lambda _key, partial: fold_cka(total, partial), options)
    sums = total.sums
    if sums is None:
        raise InputError(f"none of the {len(paths)} inputs could be read; expected images")
    matrix = sums.matrix()
    paired = sums.paired()
    folder = OutputFolder(out, loaded_a.mark or loaded_b.mark)
    with folder:
        result = {
            **header(_marked(loaded_a, loaded_b).describe()),
            "mode": "data",
            "a": {"model": loaded_a.describe()},
            "b": {"model": loaded_b.describe()},
            "inputs": {"found": len(paths), "read": total.images, "not_read": total.failed},
            "engine": report.describe(),
            "cka_batches": sums.batches,
            "cka_left_out": sums.left_out,
            "layers": [
                {
                    "layer": name,
                    "cka": paired[name],
                    "mean_shift": total.mean_shift(name),
                }
                for name in sums.layers_a
                if name in paired
            ],
            "cka_matrix": {
                "rows": sums.layers_a,
                "columns": sums.layers_b,
                "values": matrix.tolist(),
            },
            "only_a": [n for n in sums.layers_a if n not in sums.layers_b],
            "only_b": [n for n in sums.layers_b if n not in sums.layers_a],
        }
        if plots:
            from featuremaps.render.plots import plot_cka

            result["cka_picture"] = folder.write_bytes(
                CKA_PNG,
                plot_cka(
                    matrix, sums.layers_a, sums.layers_b,
                    title=f"linear CKA over {sums.samples} inputs\nA: {_named(loaded_a)}"
                    f"\nB: {_named(loaded_b)}",
                    random_weights=loaded_a.random_weights or loaded_b.random_weights,
                ),
            )  # fmt: skip
        folder.write_json(COMPARE_JSON, result)
    return result


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="A (and B, for two inputs)")
    add_model_options(p)
    p.add_argument("--weights-b", help="weights file of checkpoint B (same architecture)")
    p.add_argument("--model-b", help="model spec of B (default: --model)")
    p.add_argument("--data", nargs="+", help="files, folders or globs: CKA over a data set")
    add_out_option(p, "featuremaps-compare")
    add_layer_options(p)
    add_engine_options(p, workers=True)
    p.add_argument("--batch-size", type=int, default=16, help="CKA minibatch size (16)")
    p.add_argument(
        "--max-channels", type=int, default=8, help="channels drawn per layer (8, largest change)"
    )
    p.add_argument("--channels", help="channels to draw, e.g. 0,3,5 (instead of the largest)")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="numbers only")
    p.add_argument(
        "--save-arrays", action="store_true", help="write B - A of every layer (safetensors)"
    )


def _channel_list(text: str) -> list[int]:
    try:
        chosen = [int(c) for c in text.split(",")]
    except ValueError:
        chosen = []
    if not chosen or min(chosen) < 0:
        raise OptionError(
            f"--channels {text!r}; expected channel numbers (0 or more) separated by commas, "
            "e.g. 0,3,5"
        )
    return chosen


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    loaded = load_model_from_args(args, args.model)
    pre = preprocessing_from_args(args, loaded)
    print_preprocessing(pre, out)
    model_b: LoadedModel | None = None
    if args.weights_b is not None or args.model_b is not None:
        from featuremaps.models import load_model

        model_b = load_model(
            args.model_b or args.model,
            args.weights_b if args.weights_b is not None else args.weights,
            trust_checkpoint=args.trust_checkpoint,
            offline=args.offline or None,
        )
    if args.data:
        if model_b is None or args.inputs:
            raise OptionError(
                "--data compares two checkpoints over a data set; expected --weights-b or "
                "--model-b and no INPUT arguments"
            )
        result = compare_data(
            loaded, model_b, args.data, out=args.out, layers=args.layers,
            types=args.types, preprocessing=pre, batch_size=args.batch_size,
            engine=engine_from_args(args), plots=args.pictures,
        )  # fmt: skip
        for layer in result["layers"]:
            print(f"{layer['layer']}: CKA {layer['cka']:.4f}", file=out)
    else:
        if len(args.inputs) != (1 if model_b is not None else 2):
            raise OptionError(
                f"{len(args.inputs)} input(s) given; expected two (A B) with one model, or one "
                "with --weights-b/--model-b"
            )
        chosen = _channel_list(args.channels) if args.channels else None
        result = compare(
            loaded, args.inputs[0], args.inputs[1] if model_b is None else None,
            model_b=model_b, out=args.out, layers=args.layers, types=args.types,
            preprocessing=pre, channels=args.max_channels, chosen=chosen,
            pictures=args.pictures, save_arrays=args.save_arrays,
        )  # fmt: skip
        for layer in result["layers"]:
            print(
                f"{layer['layer']}: cosine {layer['cosine']:.4f}, "
                f"relative L2 {layer['relative_l2']:.4g}",
                file=out,
            )
        for line in result["mismatched"]:
            print(line, file=out)
    for side in ("a", "b"):
        for name in result[f"only_{side}"]:
            print(f"only in {side.upper()}: {name}", file=out)
    if model_b is not None and model_b.random_weights and not loaded.random_weights:
        print(f"note: B: {model_b.mark}", file=out)
    print_closing(loaded, args.out, Path(args.out) / COMPARE_JSON, out)
    return 0


COMMAND = Command(
    "what changed between two inputs or two checkpoints: per-layer change, pictures, CKA",
    _add_options,
    _execute,
)
