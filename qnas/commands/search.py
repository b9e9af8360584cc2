"""`qnas search`: the multi-objective architecture search users come for."""

from __future__ import annotations

import argparse
import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qnas.commands._args import param_count, population, positive_float, positive_int, seed, study_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from qnas.scorer import ACT_RANGES
    from qnas.search import DEFAULT_SAMPLER, SAMPLERS

    p = subparsers.add_parser(
        "search",
        help="search architectures: quantized accuracy at --bits vs parameter count",
        description="Multi-objective Optuna search over a space: maximize the predicted trained top-1 at the target "
        "bit setting (the ranker, from the accuracy of GHN-predicted, fake-quantized parameters and cheap features; "
        "the raw GHN accuracy with --ranker none), minimize parameters, under --max-params. "
        "Re-running with the same --study continues it; many processes may share one --storage. Trials left "
        "RUNNING by a worker killed on this machine (kill -9, out of memory) are marked failed and re-run when "
        "any worker starts on the study; Ctrl-C and SIGTERM stop cleanly.",
    )
    p.add_argument("--bits", default="4", help="target setting: 8, 4, 2 (wBaB) or a name like w4a8 (default 4)")
    p.add_argument("--max-params", type=param_count, default=10_000_000, help="parameter bound, e.g. 1e6 (default 1e7)")
    p.add_argument("--trials", type=positive_int, default=None,
                   help="trials to run in this process, on top of those already in the study (default 50 when "
                   "neither --timeout nor --total-trials is given)")
    p.add_argument("--total-trials", type=positive_int, default=None, metavar="N",
                   help="run until the study has N complete trials, counting every earlier run and worker (the rest "
                   "of an interrupted search); with --trials, whichever comes first")
    p.add_argument("--timeout", type=positive_float, default=None, help="stop starting new trials after this many s")
    p.add_argument("--study", type=study_name, default="qnas",
                   help="study name: letters, digits, '.', '_', '-' (default qnas)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default sqlite:///studies/<study>.db; postgresql+psycopg2://..., "
                   "journal:path.log)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                   help=f"Optuna sampler (default {DEFAULT_SAMPLER}, chosen by benchmarks/search_efficiency.py)")
    p.add_argument("--population", type=population, default=20, help="NSGA-II population size, >= 2 (default 20)")
    p.add_argument("--seed", type=seed, default=0,
                   help="sampler seed in [0, 2**32) (default 0; give each concurrent worker its own: the sampler is "
                   "seeded with a hash of it and the trials already in the study)")
    p.add_argument("--space", default="convnets250k", help="search space (default convnets250k)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    p.add_argument("--data-dir", default=None, help="where the dataset files are (default: standard places)")
    p.add_argument("--predictor", default=None,
                   help="GHN checkpoint name or path (default: the shipped one for --dataset; 'random' for an "
                   "untrained GHN)")
    p.add_argument("--val-size", type=positive_int, default=1000,
                   help="validation images per candidate (default 1000)")
    p.add_argument("--bn-stats", choices=("batch", "calibrated"), default=None,
                   help="BatchNorm statistics when scoring: calibrated (frozen, deployable; the default) or batch "
                   "(per test batch of 64, the GHN-Q protocol)")
    p.add_argument("--granularity", choices=("channel", "tensor"), default="channel",
                   help="weight quantization scales: per output channel (default; what int8 runtimes deploy) or "
                   "per tensor (GHN-Q's protocol)")
    p.add_argument("--act-ranges", choices=ACT_RANGES, default="auto",
                   help="activation ranges: auto (default; min/max at 3+ bits, 99.5th percentile at 2 bits) or "
                   "minmax at every bit-width (GHN-Q's protocol)")
    p.add_argument("--first-last-bits", default="8", metavar="8|same",
                   help="first and last weight layers (and the input and the last layer's input) at 8 bits when the "
                   "target is lower (default; what finetune and export deploy), or 'same': at the target bits")
    p.add_argument("--ranker", default="auto",
                   help="what the search maximizes: 'auto' (default) the ranker shipped beside the predictor, which "
                   "predicts trained accuracy from the GHN's scores and cheap features; 'none' the raw GHN accuracy; "
                   "or a ranker JSON file")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from qnas.scorer import make_scorer
    from qnas.search import SearchConfig, parse_target, run_search
    from search_spaces import get_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress display says what matters
    target = parse_target(args.bits)
    space = get_space(args.space)
    console = Console(stderr=True)
    scorer = make_scorer(
        space=space, dataset=args.dataset, data_dir=args.data_dir, predictor=args.predictor,
        val_size=args.val_size, bn_stats=args.bn_stats, granularity=args.granularity,
        act_ranges=args.act_ranges, device=args.device, ranker=args.ranker, first_last_bits=args.first_last_bits,
    )
    trials = args.trials if args.trials or args.timeout or args.total_trials else 50
    cfg = SearchConfig(
        study=args.study, target=target, max_params=args.max_params, trials=trials,
        total_trials=args.total_trials, timeout=args.timeout,
        storage=args.storage, sampler=args.sampler, seed=args.seed, space=args.space, dataset=args.dataset,
        predictor=scorer.name, population_size=args.population, protocol=scorer.protocol,
        objective=scorer.objective_key(target), first_last_bits=scorer.first_last_bits,
    )
    if cfg.objective == "top1" and not args.quiet:
        why = "no ranker for this predictor" if scorer.ranker is None else f"the ranker has no model for {target}"
        console.print(f"note: {why}: maximizing the raw GHN accuracy")
    progress = Progress(
        TextColumn("[bold]search[/] {task.fields[study]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} trials/min  front {task.fields[front]}  "
                   "best {task.fields[target]} {task.fields[best]}"),
        TimeElapsedColumn(), console=console, disable=args.quiet,
    )
    start = time.perf_counter()
    best = {"acc": None}

    def on_trial(study, trial, summary) -> None:
        from qnas.search import pareto_front

        front = pareto_front(study)
        if front:
            best["acc"] = max(t.values[0] for t in front)
        rate = summary.trials_run / max(time.perf_counter() - start, 1e-9) * 60
        progress.update(task, advance=1, total=summary.planned, rate=rate, front=len(front),
                        best="-" if best["acc"] is None else f"{100 * best['acc']:.1f}%")

    # Optuna logs a trial failed by Ctrl-C with the full traceback; the summary already says "interrupted".
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(_drop_interrupt_traceback)
    try:
        with progress:
            task = progress.add_task("search", total=trials, study=args.study, rate=0.0, front=0, target=target,
                                     best="-")
            summary = run_search(cfg, scorer, space, scorer.input_shape, scorer.num_classes, on_trial=on_trial)
    finally:
        optuna_log.removeFilter(_drop_interrupt_traceback)

    _print_summary(console, cfg, summary)
    if summary.terminated:
        return 143
    return 130 if summary.interrupted else 0


def _drop_interrupt_traceback(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


def _print_summary(console: Console, cfg, summary) -> None:
    from rich.table import Table

    per_trial = summary.score_seconds / max(summary.scored, 1)
    console.print(
        f"{summary.trials_run} trials in {summary.seconds:.1f}s: {summary.scored} scored "
        f"({per_trial:.2f}s each), {summary.cached} duplicates served from the study, "
        f"{summary.infeasible} over the bound"
        + (f"; {summary.recovered} trials of killed workers marked failed and re-queued" if summary.recovered else "")
        + ("; terminated (SIGTERM)" if summary.terminated else "; interrupted" if summary.interrupted else "")
    )
    what = "predicted trained top-1" if cfg.objective == "pred_top1" else "GHN top-1"
    table = Table(title=f"Pareto front of study {cfg.study!r} ({what} at {cfg.target} vs params)")
    for col in ("trial", "params", f"{'pred.' if cfg.objective == 'pred_top1' else 'top1'} {cfg.target}",
                "GHN top1 fp32", "architecture"):
        table.add_column(col, overflow="fold")
    for t in summary.pareto:
        table.add_row(str(t.number), f"{t.user_attrs['params']:,}", f"{100 * t.values[0]:.1f}%",
                      f"{100 * t.user_attrs.get('top1_fp32', float('nan')):.1f}%", t.user_attrs["arch"])
    console.print(table)
