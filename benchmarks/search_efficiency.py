"""Search efficiency: hypervolume of the feasible front, each sampler after 200 trials vs random after 400.

    OMP_NUM_THREADS=1 python benchmarks/search_efficiency.py [--trials 200] [--random-trials 400]
        [--seeds 0,1,2] [--samplers nsga2,tpe] [--val-size 256] [--max-params 1e7] [--max-minutes M]
        [--cache scores.json]

Every run is ``qnas.search.run_search`` (the loop ``qnas search`` runs: same space, constraint, duplicate
check) on an in-memory Optuna storage, so database commits cost nothing here (their cost is
``benchmarks/search_overhead.py``'s subject). All runs and seeds share one scorer and one score cache
keyed by architecture string, so an architecture always gets the same score and is scored once:

* the shipped predictor for Fashion-MNIST (``--predictor`` to override; without a shipped one the
  untrained ``random`` GHN, with a warning: rankings are then meaningless, only the timing is real);
* only the target setting (``--target``, default w4a4: the search's first objective) on ``--val-size``
  fixed validation images, default 256. The benchmark compares samplers on one fixed deterministic
  objective, so subset noise hurts every sampler alike and biases none; it only has to keep the shape
  of the accuracy-vs-size landscape, which spans tens of points, while the standard error of an
  accuracy p measured on n images is sqrt(p(1-p)/n) <= 3.1 points at n=256 (printed below). Scoring
  at one setting on 256 images costs about 1/20 of a search trial's 5 settings x 1000 images.

Hypervolume: objectives top-1 (up) and log10(params) (down); only feasible trials (params <= bound).
Reference point: accuracy 0 and params = the bound, so a point (a, p) dominates the rectangle
a x log10(bound / p) ("accuracy x decades under the bound"). Log scale, because the front spans three
orders of magnitude and is read on a log axis; in linear params every net far under the bound would
count almost alike. ``--cache FILE`` keeps the scores on disk (rewritten atomically after each new
architecture, with the scorer's version, target and image count): a run killed part-way and started
again with the same file replays the scores it has (the samplers are seeded, so every run retraces its
trials) and scores only the rest; a file written by another scorer is refused.
The last line is ``hv_ratio=<median HV of the default sampler / median HV of random>``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, int_list, positive_float, positive_int  # noqa: E402
from benchcli import run as run_cli
from ground_truth import atomic_write  # noqa: E402

from qnas import search  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.predictors import default_predictor  # noqa: E402
from qnas.scorer import make_scorer  # noqa: E402
from qnas.search import DEFAULT_SAMPLER, SAMPLERS, SearchConfig, parse_target, run_search  # noqa: E402
from qnas.study import TrialAttrs  # noqa: E402
from search_spaces import convnets250k  # noqa: E402


class CachedScorer:
    """One scorer for every run: memoized by architecture string, timing the real scoring; with ``path``,
    the memo lives in that JSON file too (``--cache``), under a header that must match this scorer."""

    def __init__(self, scorer, path: Path | None = None) -> None:
        self.scorer, self.name, self.version = scorer, scorer.name, scorer.version
        self.path = path
        self.header = {"version": scorer.version, "protocol": scorer.protocol, "settings": list(scorer.settings),
                       "val_size": len(scorer.labels)}
        self.cache: dict[str, dict[str, float]] = {}
        self.seconds = 0.0
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                print(f"search_efficiency.py: error: --cache {path} is not a score cache: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            if not isinstance(saved, dict) or saved.get("header") != self.header:
                print(f"search_efficiency.py: error: {path} holds scores of another scorer "
                      f"(not {self.header}); give another --cache file", file=sys.stderr)
                raise SystemExit(2)
            self.cache, self.seconds = saved["scores"], saved["seconds"]

    def score(self, genome) -> dict[str, float]:
        arch = convnets250k.to_string(genome)
        if arch not in self.cache:
            t = time.perf_counter()
            self.cache[arch] = self.scorer.score(genome)
            self.seconds += time.perf_counter() - t
            if self.path is not None:
                atomic_write(self.path, json.dumps({"header": self.header, "seconds": self.seconds,
                                                    "scores": self.cache}))
        return self.cache[arch]


def hypervolume(points: list[tuple[float, int]], bound: int) -> float:
    """Area dominated by (accuracy, params) points with params <= bound, reference (0, bound), log10 params."""
    pts = sorted(((math.log10(bound / p), a) for a, p in points if p <= bound), reverse=True)
    area, best = 0.0, 0.0
    for x, a in pts:  # widest first: each point adds the strip its accuracy rises above the ones before
        if a > best:
            area += x * (a - best)
            best = a
    return area


def run(sampler: str, seed: int, trials: int, scorer: CachedScorer, args, timeout: float) -> list[tuple[float, int]]:
    """(accuracy, params) of each feasible trial in order; infeasible trials hold (nan, params)."""
    cfg = SearchConfig(study=f"{sampler}-{seed}", target=args.target, max_params=args.max_params, trials=trials,
                       timeout=timeout, storage="memory", sampler=sampler, seed=seed, predictor=scorer.name,
                       population_size=args.population)
    history: list[tuple[float, int]] = []

    def on_trial(study, trial, summary) -> None:
        a = TrialAttrs.of(trial)
        history.append((math.nan if a.infeasible else trial.values[0], a.params))

    with mock.patch.object(search, "open_storage", lambda url: optuna.storages.InMemoryStorage()):
        run_search(cfg, scorer, convnets250k, scorer.scorer.input_shape, scorer.scorer.num_classes, on_trial)
    return history


def hv_at(history: list[tuple[float, int]], n: int, bound: int) -> float:
    return hypervolume([(a, p) for a, p in history[:n] if not math.isnan(a)], bound)


def main() -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=positive_int, default=200, help="trials per run of each sampler (default 200)")
    ap.add_argument("--random-trials", type=positive_int, default=400,
                    help="trials per random-search run (default 400)")
    ap.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="sampler seeds, comma-separated (default 0,1,2)")
    ap.add_argument("--samplers", default="nsga2,tpe", help=f"samplers compared with random (default nsga2,tpe; "
                    f"the ratio on the last line is for qnas's default, {DEFAULT_SAMPLER})")
    ap.add_argument("--target", default="4", help="target setting, as qnas search --bits (default 4 = w4a4)")
    ap.add_argument("--max-params", type=positive_float, default=1e7,
                    help="parameter bound (default 1e7, as qnas search)")
    ap.add_argument("--population", type=positive_int, default=20,
                    help="NSGA-II population (default 20, as qnas search)")
    ap.add_argument("--val-size", type=positive_int, default=256, help="validation images per candidate (default 256)")
    ap.add_argument("--predictor", default=None, help="predictor (default: the shipped one for fashion-mnist)")
    ap.add_argument("--max-minutes", type=positive_float, default=None,
                    help="stop starting trials after this many minutes")
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep the scores in this JSON file; a killed run started again with it resumes")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    try:
        args.target = parse_target(args.target)
    except QnasError as exc:
        ap.error(f"--target: {exc}")
    args.max_params = int(args.max_params)
    seeds = args.seeds
    samplers = [s for s in args.samplers.split(",") if s and s != "random"]
    if not samplers or set(samplers) - set(SAMPLERS):
        ap.error(f"--samplers: one or more of {', '.join(s for s in SAMPLERS if s != 'random')} "
                 f"(random is always run), got {args.samplers!r}")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    predictor = args.predictor or default_predictor("fashion-mnist")
    if predictor is None:
        warnings.warn("no shipped predictor for fashion-mnist: scoring with an untrained GHN (--predictor random); "
                      "the hypervolumes then rank samplers on a meaningless objective", stacklevel=1)
        predictor = "random"
    base = make_scorer(space=convnets250k, predictor=predictor, val_size=args.val_size)
    scorer = CachedScorer(dataclasses.replace(base, settings=(args.target,)), args.cache)
    if scorer.cache:
        print(f"{len(scorer.cache)} scores replayed from {args.cache}", flush=True)
    se = math.sqrt(0.25 / args.val_size)
    print(f"predictor {predictor} ({base.version}); {args.val_size} images at {args.target} "
          f"(standard error of accuracy <= {100 * se:.1f} points); bound {args.max_params:,} params; "
          f"HV in accuracy x log10(bound/params)", flush=True)

    start = time.perf_counter()
    deadline = start + 60 * args.max_minutes if args.max_minutes else math.inf
    hv: dict[str, list[float]] = {s: [] for s in [*samplers, "random"]}
    complete = True
    plan = [(seed, sampler, args.random_trials if sampler == "random" else args.trials)
            for seed in seeds for sampler in [*samplers, "random"]]
    for i, (seed, sampler, n) in enumerate(plan):
        # Under --max-minutes each run gets the remaining time in proportion to its trials, so every
        # sampler and seed runs (cut short alike) instead of the last ones not at all.
        left = deadline - time.perf_counter()
        share = None if math.isinf(left) else max(left, 0.0) * n / sum(m for *_, m in plan[i:])
        if share is not None and share < 1.0:
            print(f"seed {seed} {sampler:6s}: skipped, out of time")
            complete = False
            continue
        t = time.perf_counter()
        history = run(sampler, seed, n, scorer, args, share)
        if len(history) < n:
            complete = False
        hv[sampler].append(hv_at(history, n, args.max_params))
        marks = sorted({m for m in (50, 100, 200) if m < len(history)} | {len(history)})
        curve = "  ".join(f"@{m} {hv_at(history, m, args.max_params):.3f}" for m in marks)
        feasible = sum(not math.isnan(a) for a, _ in history)
        print(f"seed {seed} {sampler:6s}: HV {hv[sampler][-1]:.4f} after {len(history)}/{n} trials "
              f"({feasible} feasible)  [{curve}]  {time.perf_counter() - t:.0f}s", flush=True)

    print(f"{len(scorer.cache)} distinct architectures scored in {scorer.seconds / 60:.1f} min; "
          f"total {(time.perf_counter() - start) / 60:.1f} min")
    if not complete:
        print("WARNING: the time budget cut some runs short; the figures below are not the benchmark's")
    medians = {s: statistics.median(v) for s, v in hv.items() if v}
    if "random" not in medians:
        sys.exit("no random-search run finished; nothing to compare")
    for s in samplers:
        if s in medians:
            print(f"median HV {s} ({args.trials} trials) {medians[s]:.4f} vs random ({args.random_trials}) "
                  f"{medians['random']:.4f}: ratio {medians[s] / medians['random']:.3f}")
    default = DEFAULT_SAMPLER if DEFAULT_SAMPLER in medians else samplers[0]
    print(f"hv_ratio={medians[default] / medians['random']:.4f}")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
