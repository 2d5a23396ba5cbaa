"""The ``ablate`` command: zero the lowest-ranked channels of layers and measure the change.

Wires the ablation stage together (inputs → model → ranking statistics → masks → output change
→ chart → manifest → io); the measurement itself is :mod:`featuremaps.ablation`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch
from torch import nn

from featuremaps._errors import OptionError
from featuremaps.ablation import AblationResult
from featuremaps.commands.cli_common import (
    Command,
    add_device_options,
    add_engine_options,
    add_loader_options,
    add_model_options,
    add_out_option,
    add_quiet_option,
    check_data_options,
    engine_from_args,
    engine_line,
    load_model_with_preprocessing,
    print_closing,
    show_progress,
)
from featuremaps.commands.common import place_model
from featuremaps.dataset import SavedStats, read_stats
from featuremaps.engine import EngineOptions, ModelSpec
from featuremaps.inputs import Preprocessing, expected_channels
from featuremaps.io import OutputFolder
from featuremaps.manifest import ABLATION, header
from featuremaps.models import LoadedModel
from featuremaps.selection import as_patterns, keep_record, select_modules
from featuremaps.stats import RANKABLE

__all__ = ["ABLATION_CSV", "ABLATION_PNG", "COMMAND", "ablate"]

ABLATION_CSV = "ablation.csv"
ABLATION_PNG = "ablation.png"


def ablate(
    model: nn.Module | LoadedModel | str,
    data: Sequence[str],
    *,
    layers: str | Sequence[str],
    out: str | Path | None = None,
    stat: str = "absmean",
    ks: Sequence[int] = (0, 8, 16, 32),
    trials: int = 3,
    seed: int = 0,
    channel_stats: SavedStats | str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = False,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    engine: EngineOptions | str | None = None,
) -> AblationResult:
    """Zero the K lowest-ranked channels of ``layers`` and measure the model's output change.

    The ranking is ``stat`` per channel: from ``channel_stats`` (a saved ``stats.csv`` or
    ``stats.parquet``, ideally made on other images) or, without it, from statistics computed
    first on the same ``data`` (an in-sample ranking; the summary says which). For each K the
    masked model is compared with the unmasked one on every readable input (top-1 agreement,
    mean |Δlogit|, KL divergence), and ``trials`` random K-channel masks per layer give the
    control. With ``out``, writes ``ablation.csv`` (one row per point), ``ablation.json`` (the
    curve, the layers, their lowest-ranked channels, the inputs) and ``ablation.png`` (the curve,
    ranked against the random band). ``device`` and ``dtype`` are as for
    :func:`featuremaps.visualize`. ``engine`` is as for :func:`featuremaps.collect_stats`: it
    runs the ranking statistics and the measurement passes, and ``ablation.json``'s ``engine``
    says how. See :mod:`featuremaps.ablation`.
    """
    from tqdm import tqdm

    from featuremaps.ablation import check_classifier, check_options, measure_ablation
    from featuremaps.dataset import check_image_model, compute_dataset_stats, find_inputs
    from featuremaps.render.plots import plot_ablation

    if stat not in RANKABLE:
        raise OptionError(
            f"--stat '{stat}' is not a statistic; expected one of {', '.join(RANKABLE)}"
        )
    check_options(ks, trials)
    options = engine if isinstance(engine, EngineOptions) else EngineOptions(engine or "local")
    loaded, placement = place_model(model, device, dtype)
    spec = (
        None
        if options.name == "local"
        else ModelSpec.from_loaded(loaded, "auto" if device is None else str(device), dtype)
    )
    check_image_model(loaded.model, "ablate")
    patterns = as_patterns(layers)
    if patterns is None:
        raise OptionError("ablation needs --layers: the layers whose channels are zeroed")
    select_modules(loaded.model, patterns, None, False, loaded.cli_spec)  # unknown names fail here
    paths = find_inputs(data)
    pre = preprocessing or loaded.input_preprocessing()
    first = expected_channels(loaded.model)
    saved = read_stats(channel_stats) if isinstance(channel_stats, (str, Path)) else channel_stats
    folder = OutputFolder(out, loaded.mark) if out is not None else None
    ranking_engine = None

    def status(line: str) -> None:
        bar.set_postfix_str(line, refresh=False)

    with (
        folder or contextlib.nullcontext(),
        tqdm(desc="ablation", unit=" pass", disable=not progress, leave=False) as bar,
    ):
        if saved is not None:
            values = {
                name: numbers[stat]
                for name, numbers in saved.layers.items()
                if keep_record(name, name.rpartition("#")[0] or name, patterns)
            }
            source = f"statistics file {saved.path}"
            missing = [
                p for p in patterns if not any(keep_record(n, n.rpartition("#")[0] or n, (p,))
                                               for n in values)
            ]  # fmt: skip
            if missing:
                raise OptionError(
                    f"the statistics file '{saved.path}' has no layer matching --layers "
                    f"{','.join(missing)}; run 'featuremaps stats' with those layers first"
                )
        else:
            # The output must be class scores: find out on one input, not after a whole pass.
            check_classifier(loaded.model, paths, first[0] if first else None, pre, placement)
            bar.set_description("ranking")
            ranking_engine = None
            ranking = compute_dataset_stats(
                loaded.model, paths, channels=first[0] if first else None, preprocessing=pre,
                layers=patterns, batch_size=batch_size, workers=workers,
                model_label=loaded.cli_spec, placement=placement, engine=options, spec=spec,
                status=status,
            )  # fmt: skip
            values = {name: s.result()[stat] for name, s in ranking.layers.items()}
            ranking_engine = ranking.engine
            source = "the same inputs (in-sample: computed first on the data measured)"
        bar.set_description("ablation")
        result = measure_ablation(
            loaded.model, paths, values, ks=ks, stat=stat, channels=first[0] if first else None,
            preprocessing=pre, trials=trials, seed=seed, batch_size=batch_size,
            workers=workers, progress=bar.update, placement=placement, engine=options,
            spec=spec, status=status,
        )  # fmt: skip
        result.ranking = source
        written = time.perf_counter()
        if folder is not None:
            summary = {
                **header(loaded.describe()),
                "preprocessing": pre.describe(),
                "compute": (
                    result.engine.compute
                    if result.engine is not None and result.engine.compute
                    else placement.describe()
                ),
                "inputs": {
                    "found": len(paths),
                    "read": result.images,
                    "not_read": [{"path": p, "reason": why} for p, why in result.failed],
                },
                "ranking": {"stat": stat, "source": source, "zeroed_first": "lowest"},
                "layers": [
                    {"name": n, "channels": c, "lowest_ranked": result.order[n][: max(ks)]}
                    for n, c in result.channels.items()
                ],
                "trials": trials,
                "seed": seed,
                "seconds": result.seconds,
                "curve": result.curve(),
                "files": [ABLATION_CSV, ABLATION_PNG],
            }
            folder.write_csv(ABLATION_CSV, result.rows())
            picture = plot_ablation(
                result.curve(), model=loaded.spec, layers=list(result.channels),
                images=result.images, stat=stat, trials=trials,
                random_weights=loaded.random_weights, ranking=source,
            )  # fmt: skip
            folder.write_bytes(ABLATION_PNG, picture)
            if result.engine is not None:
                result.engine.seconds["write"] = time.perf_counter() - written
                summary["engine"] = {
                    "measurement": result.engine.describe(),
                    "ranking": None if ranking_engine is None else ranking_engine.describe(),
                }
            folder.write_json(ABLATION, summary)
    return result


# -- the command line ---------------------------------------------------------------------------


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA", help="files, folders or globs")
    add_model_options(p)
    add_device_options(p)
    add_out_option(p, "featuremaps-ablation")
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
    add_loader_options(p)
    add_engine_options(p)
    add_quiet_option(p)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 0:
        raise OptionError(f"--k '{text}' is not understood; expected counts like 0,8,16,32")
    return ks


def _execute(args: argparse.Namespace, out: TextIO) -> int:
    check_data_options(args)
    ks = _parse_ks(args.k)
    loaded, pre = load_model_with_preprocessing(args, args.model, out)
    result = ablate(
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
        progress=show_progress(args),
        device=args.device,
        dtype=args.dtype,
        engine=engine_from_args(args),
    )
    for path, reason in result.failed:
        print(f"not read: {path}: {reason}", file=out)
    print(
        f"{result.images} inputs, {len(result.channels)} layer(s); K lowest by {args.stat} "
        f"zeroed per layer vs {args.random} random draws (mean [min, max])",
        file=out,
    )
    in_sample = "" if args.stats else "; give --stats FILE made on other inputs for a fair test"
    print(f"ranking by {args.stat} from {result.ranking}{in_sample}", file=out)
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
    if result.engine is not None:
        print(engine_line(result.engine.describe()), file=out)
    print_closing(loaded, args.out, Path(args.out) / ABLATION_CSV, out)
    return 0


COMMAND = Command(
    "zero the K lowest-ranked channels of layers and measure how the output changes, "
    "against K random channels",
    _add_options,
    _execute,
)
