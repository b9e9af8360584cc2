"""`qnas search`: the multi-objective architecture search users come for."""

from __future__ import annotations

import argparse
import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from qnas.commands._args import (
    add_act_ranges_arg,
    add_head_args,
    param_count,
    population,
    positive_float,
    positive_int,
    predictor_name,
    seed,
    study_name,
)
from qnas.commands._output import pct, print_architectures

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from qnas.defaults import (
        DEFAULT_DATASET,
        DEFAULT_HEAD,
        DEFAULT_POPULATION,
        DEFAULT_SAMPLER,
        DEFAULT_SPACE,
        SAMPLERS,
    )

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
    p.add_argument("--bits", default="4",
                   help="target setting: 8, 4, 2 (wBaB), a name like w4a8, or fp32 (no quantization) (default 4)")
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
    p.add_argument("--population", type=population, default=DEFAULT_POPULATION,
                   help=f"NSGA-II population size, >= 2 (default {DEFAULT_POPULATION}); the first generation is random")
    p.add_argument("--seed", type=seed, default=0,
                   help="sampler seed in [0, 2**32) (default 0; give each concurrent worker its own: the sampler is "
                   "seeded with a hash of it and the trials already in the study)")
    p.add_argument("--space", default=DEFAULT_SPACE, help=f"search space (default {DEFAULT_SPACE})")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset (default {DEFAULT_DATASET})")
    p.add_argument("--data-dir", default=None, help="where the dataset files are (default: standard places)")
    p.add_argument("--predictor", type=predictor_name, default=None,
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
    add_act_ranges_arg(p)
    p.add_argument("--first-last-bits", default="8", metavar="8|same",
                   help="first and last weight layers (and the input and the last layer's input) at 8 bits when the "
                   "target is lower (default; what finetune and export deploy), or 'same': at the target bits")
    add_head_args(p, default=DEFAULT_HEAD, default_text=DEFAULT_HEAD,
                  fit_size_default="as many as the ranker's features were scored with, 1000 for the shipped one; "
                  "--val-size with --ranker none")
    p.add_argument("--ranker", default="auto",
                   help="what the search maximizes: 'auto' (default) the ranker shipped beside the predictor, which "
                   "predicts trained accuracy from the GHN's scores and cheap features; 'none' the raw GHN accuracy; "
                   "or a ranker JSON file")
    # Scoring runs on the CPU (candidates are small, scored one at a time): --device is kept for old scripts only.
    p.add_argument("--device", choices=("cpu",), default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no line per trial (the summary and the "
                   "front are still printed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import optuna

    from qnas.api import make_search
    from qnas.defaults import DEFAULT_SAMPLER

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress display says what matters
    console = Console(stderr=True, soft_wrap=True)  # progress and notes (and trial lines, on a terminal)
    out = Console(soft_wrap=True)
    planned = make_search(
        args.study, bits=args.bits, max_params=args.max_params, trials=args.trials, total_trials=args.total_trials,
        timeout=args.timeout, storage=args.storage, sampler=args.sampler, population=args.population, seed=args.seed,
        space=args.space, dataset=args.dataset, data_dir=args.data_dir, predictor=args.predictor,
        val_size=args.val_size, bn_stats=args.bn_stats, granularity=args.granularity, act_ranges=args.act_ranges,
        first_last_bits=args.first_last_bits, ranker=args.ranker, head=args.head, fit_size=args.fit_size,
    )
    cfg, scorer, target = planned.config, planned.scorer, planned.config.target
    if cfg.objective == "top1" and not args.quiet and not scorer.ranker_note:  # that one is a warning already
        why = "no ranker for this predictor" if scorer.ranker is None else f"the ranker has no model for {target}"
        console.print(f"note: {why}: maximizing the raw GHN accuracy")
    progress = Progress(
        TextColumn("[bold]search[/] {task.fields[study]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} trials/min  front {task.fields[front]}  "
                   "best {task.fields[target]} {task.fields[best]}"),
        TimeElapsedColumn(), console=console, disable=args.quiet,
    )
    # On a terminal the trial lines go above the progress bar; piped, they are stdout's lines.
    lines = progress.console if sys.stdout.isatty() else out
    start = time.perf_counter()
    best = {"acc": None}

    def on_trial(study, trial, summary) -> None:
        from qnas.study import pareto_front

        if summary.trials_run == 1 and cfg.sampler == DEFAULT_SAMPLER:
            _warn_random_generation(console, study, cfg, summary)
        front = pareto_front(study)
        if front:
            best["acc"] = max(t.values[0] for t in front)
        rate = summary.trials_run / max(time.perf_counter() - start, 1e-9) * 60
        progress.update(task, advance=1, total=summary.planned, rate=rate, front=len(front),
                        best="-" if best["acc"] is None else f"{pct(best['acc'])}%")
        if not args.quiet:
            lines.print(_trial_line(trial, cfg), markup=False, highlight=False, soft_wrap=True)

    # Optuna logs a trial failed by Ctrl-C or SIGTERM with the full traceback and a "failed with value None"
    # line; the summary already says "interrupted" / "terminated".
    optuna_log = logging.getLogger("optuna.study._optimize")
    drop_interrupts = _InterruptedTrialLogs()
    optuna_log.addFilter(drop_interrupts)
    try:
        with progress:
            task = progress.add_task("search", total=cfg.trials, study=args.study, rate=0.0, front=0, target=target,
                                     best="-")
            summary = planned.run(on_trial=on_trial)
    finally:
        optuna_log.removeFilter(drop_interrupts)

    error = scorer.ranker.mean_error(target) if cfg.objective == "pred_top1" else None
    _print_summary(console, out, cfg, summary, error)
    if summary.terminated:
        return 143
    return 130 if summary.interrupted else 0


def _warn_random_generation(console: Console, study, cfg, summary) -> None:
    """NSGA-II samples its first generation (``population`` trials) at random: say when that is all this run does."""
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    left = summary.planned if summary.planned is not None else 0
    if cfg.timeout is None and done - 1 + left < cfg.population_size:
        console.print(f"qnas: warning: the study will have {done - 1 + left} trials, fewer than the NSGA-II "
                      f"population ({cfg.population_size}): its first generation is random, so this is random search "
                      "(run more --trials or pass a smaller --population)", highlight=False, markup=False)


def _trial_line(trial, cfg) -> str:
    """One line per finished trial: number, what was maximized, raw GHN top-1, size, seconds, architecture."""
    from qnas.study import TrialAttrs

    a = TrialAttrs.of(trial)
    head = f"trial {trial.number}"
    if trial.state.name != "COMPLETE":
        return f"{head}: {trial.state.name.lower()}"
    params = a.params or 0
    if a.infeasible:
        return f"{head}: {params:,} params, over the bound {cfg.max_params:,}"
    what = "pred." if cfg.objective == "pred_top1" else "GHN"
    parts = [f"{cfg.target} {pct(trial.values[0])}% ({what})"]
    if cfg.objective == "pred_top1":
        parts.append(f"GHN {cfg.target} {pct(a.top1(cfg.target))}%")
    parts += [f"GHN fp32 {pct(a.top1('fp32'))}%", f"{params:,} params"]
    parts.append(f"duplicate of trial {a.scored_in_trial}" if a.scored_in_trial is not None
                 else f"{a.score_seconds:.1f}s")
    return f"{head}: {', '.join(parts)}  {a.arch or ''}"


class _InterruptedTrialLogs(logging.Filter):
    """Drops Optuna's two records of a trial failed by an interrupt: the traceback, then its value (None)."""

    def __init__(self) -> None:
        super().__init__()
        self.trials: set[str] = set()  # "Trial N" of each interrupted trial

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):  # SIGTERM's Terminated too
            self.trials.add(message.split(" failed", 1)[0])
            return False
        return message.split(" failed with value", 1)[0] not in self.trials


def _print_summary(console: Console, out: Console, cfg, summary, error: float | None = None) -> None:
    """The run's counts (stderr), then its Pareto front and architectures (stdout); ``error``: how far the
    ranker's prediction at the target is off on average, in points (``Ranker.mean_error``), said in the title."""
    from rich.table import Table

    from qnas.study import TrialAttrs

    per_trial = summary.score_seconds / max(summary.scored, 1)
    console.print(
        f"{summary.trials_run} trials in {summary.seconds:.1f}s: {summary.scored} scored "
        f"({per_trial:.2f}s each), {summary.cached} duplicates served from the study, "
        f"{summary.infeasible} over the bound"
        + (f"; {summary.recovered} trials of killed workers marked failed and re-queued" if summary.recovered else "")
        + ("; terminated (SIGTERM)" if summary.terminated else "; interrupted" if summary.interrupted else "")
    )
    what = "predicted trained top-1" if cfg.objective == "pred_top1" else "GHN top-1"
    table = Table(title=f"Pareto front of study {cfg.study!r} ({what} in % at {cfg.target} vs params)"
                  + ("" if error is None else f"; pred. is off by {error:.2f} points on average (out of fold)"))
    # The raw GHN accuracies stay beside the ranker's prediction: at the target, and at FP32.
    ghn = [s for s in dict.fromkeys([cfg.target if cfg.objective == "pred_top1" else None, "fp32"]) if s]
    for col in ("trial", "params", f"{'pred.' if cfg.objective == 'pred_top1' else 'top1'} {cfg.target}",
                *(f"GHN top1 {s}" for s in ghn)):
        table.add_column(col, justify="right", no_wrap=True)
    front = [TrialAttrs.of(t) for t in summary.pareto]
    for t, a in zip(summary.pareto, front):
        table.add_row(str(t.number), f"{a.params:,}", pct(t.values[0]), *(pct(a.top1(s)) for s in ghn))
    out.print(table)
    print_architectures(out, [(a.number, str(a.arch)) for a in front])
