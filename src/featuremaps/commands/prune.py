"""The ``prune`` command: remove the lowest-ranked channels for real and measure what it gives.

Wires the pruning stage together (inputs → model → ranking statistics → coupled groups →
pruned copies → parameters, MACs, time, agreement → saved model, chart, ``prune.json`` → io);
the structural work is :mod:`featuremaps.pruning` (Torch-Pruning's dependency graph), loading
the saved model back is :mod:`featuremaps.exported`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from featuremaps._errors import InputError, OptionError
from featuremaps.commands.cli_common import (
    Command,
    add_device_options,
    add_loader_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    check_data_options,
    load_model_with_preprocessing,
    print_closing,
)
from featuremaps.commands.common import place_model
from featuremaps.dataset import SavedStats, read_stats
from featuremaps.inputs import Preprocessing, expected_channels
from featuremaps.io import OutputFolder
from featuremaps.manifest import PRUNE, header
from featuremaps.models import LoadedModel
from featuremaps.pruning import PrunePoint, PruneResult
from featuremaps.stats import RANKABLE

__all__ = ["COMMAND", "PRUNE_CSV", "PRUNE_PNG", "prune"]

PRUNE_CSV = "prune.csv"
PRUNE_PNG = "prune.png"


def prune(
    model: nn.Module | LoadedModel | str,
    data: Sequence[str],
    *,
    ratio: float | Sequence[float] | None = None,
    k: int | None = None,
    layers: str | Sequence[str] | None = None,
    by: str = "std",
    out: str | Path | None = None,
    channel_stats: SavedStats | str | Path | None = None,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    workers: int = 2,
    device: str | torch.device | None = None,
    dtype: str | None = None,
) -> PruneResult:
    """Remove the lowest-ranked output channels of ``model``'s layers and measure the result.

    Channels are ranked by ``by`` (a statistic of :data:`featuremaps.stats.RANKABLE`) from
    ``channel_stats`` (a saved ``stats.csv``/``.parquet``) or, without it, from statistics
    computed first on ``data`` (in-sample). Layers coupled by the network (a residual addition,
    a concatenation, a depthwise convolution, a BatchNorm) form one group; a group's score per
    channel is the statistic summed over its members, and each group loses ``ratio`` of its
    channels (floor; several ratios make a sweep) or ``k`` of them, never all. ``layers``
    (patterns of Conv/Linear layers) limits pruning to their groups; a named layer that cannot
    be pruned is refused (:class:`~featuremaps.LayerError`, with the reason). Each pruned model
    is compared with the original on ``data`` (top-1 agreement, or mean cosine of the outputs),
    with parameters, MACs (torch's FLOP counter on one input) and the median latency ratio; the
    control removes as many random channels per group (drawn with ``seed``).

    With ``out``, writes ``pruned.pt2`` (the first ratio's ranked model, a ``torch.export``
    program with free batch size; ``pruned.pt`` TorchScript where export fails), ``prune.json``
    (the numbers, ``removed`` and the random control), ``prune.csv`` (one row per point) and
    ``prune.png`` (agreement against MACs). Needs the ``prune`` extra (Torch-Pruning).
    """
    from featuremaps.dataset import (
        check_image_model,
        compute_dataset_stats,
        find_inputs,
        make_loader,
    )
    from featuremaps.inputs import load_input
    from featuremaps.pruning import (
        apply_pruning,
        choose_channels,
        count_macs,
        count_params,
        find_groups,
        import_torch_pruning,
        measure_agreement,
        measure_latency,
        score_groups,
    )
    from featuremaps.selection import as_patterns

    import_torch_pruning()
    if by not in RANKABLE:
        raise OptionError(f"--by '{by}' is not a statistic; expected one of {', '.join(RANKABLE)}")
    ratios: list[float | None] = (
        [None] if ratio is None else [ratio] if isinstance(ratio, (int, float)) else list(ratio)
    )
    if (ratio is None) == (k is None) or not ratios:
        raise OptionError("give --ratio R (a fraction of each layer) or --k K (channels), not both")
    choose_channels([], None, ratio=ratios[0], k=k)  # refuses a bad ratio or k before any work
    for r in ratios[1:]:
        choose_channels([], None, ratio=r)
    loaded, placement = place_model(model, device, dtype)
    check_image_model(loaded.model, "prune")
    paths = find_inputs(data)
    pre = preprocessing or loaded.input_preprocessing()
    first = expected_channels(loaded.model)
    channels = first[0] if first else None
    example = _first_input(paths, channels, pre, load_input)
    example = placement.inputs(example)
    patterns = as_patterns(layers)
    groups, skipped = find_groups(loaded.model, example, patterns)
    if not groups and not skipped:
        raise OptionError(
            f"{loaded.spec} has no Conv or Linear layer modules to prune (a TorchScript or "
            "exported model keeps none); prune the model as Python code (a zoo name or "
            "'package.module:factory')"
        )
    if not groups:
        root, why = next(iter(skipped.items()))
        raise OptionError(
            f"no layer of {loaded.spec} can be pruned: all {len(skipped)} are left whole "
            f"('{root}': {why}); see 'featuremaps prune --help'"
        )
    members = sorted({n for g in groups for n in g.outputs})
    saved = read_stats(channel_stats) if isinstance(channel_stats, (str, Path)) else channel_stats
    if saved is not None:
        values = {n: saved.layers[n][by] for n in members if n in saved.layers}
        source = f"statistics file {saved.path}"
    else:
        ranking = compute_dataset_stats(
            loaded.model, paths, channels=channels, preprocessing=pre, layers=members,
            batch_size=batch_size, workers=workers, model_label=loaded.cli_spec,
            placement=placement,
        )  # fmt: skip
        values = {n: s.result()[by] for n, s in ranking.layers.items()}
        source = "the same inputs (in-sample: computed first on the data measured)"
    scores = score_groups(groups, values)

    original = loaded.model.eval()
    params_before = count_params(original)
    macs_before = count_macs(original, example)
    pruned: list[tuple[str, float | None, Any]] = []
    for r in ratios:
        for selection, s in (("ranked", scores), ("random", None)):
            chosen = choose_channels(groups, s, ratio=r, k=k if r is None else None, seed=seed)
            pruned.append((selection, r, apply_pruning(original, example, groups, chosen)))
    cuda = placement.device.type == "cuda"
    loader = make_loader(paths, channels, pre, batch_size, workers, pin_memory=cuda)
    agreement, metric, images, failed = measure_agreement(
        original, [p.model for _, _, p in pruned], loader, placement
    )
    if images == 0:
        raise InputError(f"none of the {len(paths)} inputs could be read; check the files")
    points = []
    for (selection, r, p), agree in zip(pruned, agreement, strict=True):
        before, after = measure_latency(original, p.model, example)
        points.append(
            PrunePoint(
                selection, r, k if r is None else None, count_params(p.model),
                count_macs(p.model, example), after / before, agree, p.equivalence,
                removed=p.removed, per_group=p.per_group,
            )
        )  # fmt: skip
    result = PruneResult(
        points, params_before, macs_before, metric, by, source, images,
        [g.root for g in groups], skipped, failed, model=pruned[0][2].model,
    )  # fmt: skip
    if out is not None:
        _write(result, loaded, pre, placement, example, Path(out))
    return result


def _first_input(paths: Sequence[Path], channels: int | None, pre: Preprocessing, load: Any) -> Any:
    """The first readable input as a batch of one: the graph, MACs and timings are taken on it."""
    from featuremaps._errors import FeaturemapsError

    reasons = []
    for path in paths:
        try:
            return load(path, channels=channels, preprocessing=pre).tensor
        except FeaturemapsError as exc:
            reasons.append(str(exc))
    raise InputError(
        f"none of the {len(paths)} inputs could be read (first: {reasons[0] if reasons else '-'})"
        "; check the files"
    )


def _summary(point: PrunePoint, result: PruneResult) -> dict[str, Any]:
    return {
        "ratio": point.ratio,
        "k": point.k,
        "params_before": result.params_before,
        "params_after": point.params,
        "macs_before": result.macs_before,
        "macs_after": point.macs,
        "latency_ratio": point.latency_ratio,
        "agreement": point.agreement,
        "equivalence": point.equivalence,
        "removed": point.removed,
        "removed_per_group": point.per_group,
    }


def _write(
    result: PruneResult,
    loaded: LoadedModel,
    pre: Preprocessing,
    placement: Any,
    example: torch.Tensor,
    out: Path,
) -> None:
    import copy

    from featuremaps.exported import describe_preprocessing, export_model
    from featuremaps.render.plots import plot_pruning

    model = copy.deepcopy(result.model).to("cpu").float() if result.model is not None else None
    info = {
        "pruned_from": loaded.spec,
        "weights_status": f"{loaded.weights_status}; pruned by featuremaps",
        "random_weights": loaded.random_weights,
        "preprocessing": describe_preprocessing(pre),
    }
    ranked = result.point("ranked")
    with OutputFolder(out, loaded.mark) as folder:
        files = [PRUNE_CSV, PRUNE_PNG]
        if model is not None:
            data, kind = export_model(model, example.to("cpu").float(), info)
            result.saved = "pruned.pt2" if kind == "pt2" else "pruned.pt"
            folder.write_bytes(result.saved, data)
            files.insert(0, result.saved)
        summary = {
            **header(loaded.describe()),
            "preprocessing": pre.describe(),
            "compute": placement.describe(),
            "inputs": {
                "read": result.images,
                "not_read": [{"path": p, "reason": why} for p, why in result.failed],
            },
            "ranking": {"stat": result.stat, "source": result.ranking, "removed_first": "lowest"},
            "metric": result.metric,
            "saved_model": result.saved,
            **_summary(ranked, result),
            "control": _summary(result.point("random"), result),
            "sweep": [{"selection": p.selection, **_summary(p, result)} for p in result.points],
            "groups": result.groups,
            "left_whole": result.skipped,
            "files": files,
        }
        folder.write_json(PRUNE, summary)
        folder.write_csv(PRUNE_CSV, result.rows())
        folder.write_bytes(
            PRUNE_PNG,
            plot_pruning(
                result.rows(), model=loaded.spec, macs_before=result.macs_before,
                metric=result.metric, stat=result.stat, images=result.images,
                random_weights=loaded.random_weights, ranking=result.ranking,
            ),
        )  # fmt: skip


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    add_model_options(p)
    add_device_options(p)
    add_out_option(p, "featuremaps-prune")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument(
        "--ratio", help="fraction of each layer group's channels removed; several (0.1,0.2,0.4) "
        "make a sweep, the first one's model is saved",
    )  # fmt: skip
    amount.add_argument("--k", type=int, help="channels removed per layer group")
    p.add_argument(
        "--layers", "-l", action="append",
        help="Conv/Linear layers whose groups are pruned (default: every group that can be)",
    )  # fmt: skip
    p.add_argument(
        "--by", default="std", choices=RANKABLE,
        help="ranking statistic; the lowest channels are removed first (default: std)",
    )  # fmt: skip
    p.add_argument(
        "--stats", metavar="FILE",
        help="rank by this stats.csv/.parquet (default: statistics of DATA itself, in-sample)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the random control (0)")
    add_loader_options(p)
    add_quiet_option(p)


def _parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        ratios = []
    if not ratios:
        raise OptionError(f"--ratio '{text}' is not understood; expected fractions like 0.1,0.2")
    return ratios


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_data_options(args)
    ratios = _parse_ratios(args.ratio) if args.ratio is not None else None
    loaded, pre = load_model_with_preprocessing(args, args.model, out)
    result = prune(
        loaded, args.data, ratio=ratios, k=args.k, layers=args.layers, by=args.by, out=args.out,
        channel_stats=args.stats, seed=args.seed, preprocessing=pre,
        batch_size=args.batch_size, workers=args.workers, device=args.device, dtype=args.dtype,
    )  # fmt: skip
    for path, reason in result.failed:
        print(f"not read: {path}: {reason}", file=out)
    print(
        f"{result.images} inputs, {len(result.groups)} layer group(s) pruned "
        f"({len(result.skipped)} left whole, see prune.json); ranking by {args.by} from "
        f"{result.ranking}",
        file=out,
    )
    metric = "agree" if result.metric == "top1_agreement" else "cosine"
    print(f"{'removed':>9} {'selection':>9} {'params':>8} {'MACs':>8} {'time':>6} {metric:>7}",
          file=out)  # fmt: skip
    for p in result.points:
        step = f"k={p.k}" if p.ratio is None else f"{p.ratio:g}"
        print(
            f"{step:>9} {p.selection:>9} {p.params / result.params_before:>8.1%} "
            f"{p.macs / result.macs_before:>8.1%} {p.latency_ratio:>6.2f} {p.agreement:>7.3f}",
            file=out,
        )
    print_closing(loaded, args.out, Path(args.out) / PRUNE, out)
    return 0


COMMAND = Command(
    "remove the lowest-ranked channels through the model's couplings, save the smaller model and "
    "measure its size, speed and agreement against removing random channels",
    _add_options,
    _execute,
)
