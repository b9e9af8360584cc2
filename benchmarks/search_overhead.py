"""Search overhead: Optuna's bookkeeping per trial (storage + sampler) vs scoring one candidate.

    OMP_NUM_THREADS=1 python benchmarks/search_overhead.py [--trials 100] [--postgres URL] [--archs 5]

* ``bookkeeping``: ``qnas.search.run_search`` with a zero-cost scorer, so everything a trial costs
  apart from scoring: the sampler, ``ask``/``tell``, the parameter constraint, our ~30 user attributes
  (one storage write each), the duplicate check that reads the study, and for RDB storages the
  heartbeat. Bound 1e7, so every trial is feasible and stores the full record. Storages: SQLite (the
  default, with the WAL pragmas ``qnas.search`` sets, on disk in ``--dir``), a journal file, and
  PostgreSQL when ``--postgres URL`` names a server (a fresh study there, deleted afterwards).
  Wall time: commits wait for the disk and the server, which CPU time would not show.
* ``scoring``: ``qnas.scorer.make_scorer`` (all five settings, ``--val-size`` images, the search's
  default) on ``--archs`` architectures of the ``id`` split spread by parameter count, after a warm-up.
  CPU time of this process: on a shared machine, wall time would inflate it by the other processes'
  load, and one-thread scoring is compute-bound, so CPU time is its wall time on an idle machine.

The share is ``bookkeeping / (bookkeeping + median scoring)`` per trial; the last line is
``storage_share=<share for SQLite>``.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas.predictors import default_predictor  # noqa: E402
from qnas.scorer import make_scorer  # noqa: E402
from qnas.search import SAMPLERS, SETTINGS, SearchConfig, open_storage, redact, run_search  # noqa: E402
from search_spaces import convnets250k  # noqa: E402


class ZeroScorer:
    """Scores nothing: what remains of a trial is Optuna's and qnas's bookkeeping."""

    name, version = "zero", "0"

    def score(self, genome) -> dict[str, float]:
        return {f"{k}_{s}": 0.5 for s in SETTINGS for k in ("top1", "top5")}


def bookkeeping(url: str, trials: int, sampler: str) -> dict[str, float]:
    """Seconds per trial (wall and CPU), overall and over the first and last fifth of the trials."""
    study = f"overhead-{time.time_ns()}"
    stamps: list[float] = []
    cfg = SearchConfig(study=study, storage=url, trials=trials, sampler=sampler, seed=0, max_params=10**7,
                       predictor=ZeroScorer.name)
    wall, cpu = time.perf_counter(), time.process_time()
    run_search(cfg, ZeroScorer(), convnets250k, (1, 28, 28), 10,
               on_trial=lambda *_: stamps.append(time.perf_counter()))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if url.startswith("postgresql"):
        optuna.delete_study(study_name=study, storage=open_storage(url))
    k = max(trials // 5, 1)
    return {"wall": wall / trials, "cpu": cpu / trials,
            "first": (stamps[k] - stamps[0]) / k, "last": (stamps[-1] - stamps[-1 - k]) / k}


def scoring(archs: int, val_size: int, predictor: str) -> list[tuple[int, float]]:
    """(params, CPU seconds) of scoring ``archs`` architectures of the id split spread by size."""
    scorer = make_scorer(space=convnets250k, predictor=predictor, val_size=val_size)
    split = sorted(convnets250k.load_split("id"), key=convnets250k.count_params)
    picks = [split[round(i * (len(split) - 1) / max(archs - 1, 1))] for i in range(archs)]
    scorer.score(split[len(split) // 4])  # warm-up: lazy imports, allocator, oneDNN primitive caches
    out = []
    for g in picks:
        t = time.process_time()
        scorer.score(g)
        out.append((convnets250k.count_params(g), time.process_time() - t))
    return out


def main() -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=positive_int, default=100, help="zero-cost trials per storage (default 100)")
    ap.add_argument("--sampler", choices=SAMPLERS, default="nsga2",
                    help="sampler of the bookkeeping runs (default nsga2)")
    ap.add_argument("--postgres", default=None, help="also measure this PostgreSQL URL (postgresql+psycopg2://...)")
    ap.add_argument("--dir", type=Path, default=None, help="where the SQLite/journal files go (default: a temp dir)")
    ap.add_argument("--archs", type=positive_int, default=5, help="id-split architectures to score (default 5)")
    ap.add_argument("--val-size", type=positive_int, default=1000,
                    help="validation images per candidate (default 1000)")
    ap.add_argument("--predictor", default=None, help="predictor (default: the shipped one, else random)")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    if args.trials < 2:
        ap.error("--trials: at least 2 (the first and last fifth are timed between trials)")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    random.seed(0)

    predictor = args.predictor or default_predictor("fashion-mnist")
    if predictor is None:
        # Same GHN config, same cost: an untrained GHN times scoring as well as a trained one.
        warnings.warn("no shipped predictor for fashion-mnist; timing scoring with --predictor random", stacklevel=1)
        predictor = "random"

    root = args.dir or Path(tempfile.mkdtemp(prefix="qnas-overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    storages = {"sqlite": f"sqlite:///{root / 'overhead.db'}", "journal": f"journal:{root / 'overhead.log'}"}
    if args.postgres:
        storages["postgresql"] = args.postgres
    book = {}
    for name, url in storages.items():
        book[name] = bookkeeping(url, args.trials, args.sampler)
        b = book[name]
        print(f"{name:10s} {1e3 * b['wall']:7.1f} ms/trial wall ({1e3 * b['cpu']:5.1f} CPU)  first fifth "
              f"{1e3 * b['first']:6.1f}, last fifth {1e3 * b['last']:6.1f} ms/trial  [{redact(url)}]", flush=True)

    scores = scoring(args.archs, args.val_size, predictor)
    for params, sec in scores:
        print(f"scoring {params:>10,} params: {sec:6.2f} s CPU ({args.val_size} images, {len(SETTINGS)} settings)")
    typical = statistics.median(s for _, s in scores)
    print(f"scoring median {typical:.2f} s, mean {statistics.fmean(s for _, s in scores):.2f} s "
          f"(predictor {predictor}, {args.trials} bookkeeping trials, sampler {args.sampler})")
    shares = {name: b["wall"] / (b["wall"] + typical) for name, b in book.items()}
    print("share of a trial spent on bookkeeping: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares.items()))
    print(f"storage_share={shares['sqlite']:.4f}")


if __name__ == "__main__":
    raise SystemExit(run(main))
