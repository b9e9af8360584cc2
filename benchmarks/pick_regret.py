"""What a user of ``--max-params`` gets: under a parameter bound, how far below the best net is the pick?

    OMP_NUM_THREADS=1 python benchmarks/ranking.py --truth v2 --json runs/rank_v2.json   # the scores (10 min)
    python benchmarks/pick_regret.py --scores runs/rank_v2.json [--target w4a4,w2a2] [--top 1,3]

Kendall tau (``ranking.py``) weighs every pair of nets alike; a search under ``--max-params B`` only keeps
its best few candidates below B. This reads ``ranking.py --json``'s per-architecture scores (the ranker's
out of fold, the size-only ranker's, the raw GHN's, params, MACs, NASWOT) and the ground truth they were
scored against, and for every bound B at a ground-truth net's own parameter count (the nets at or below
it, from ``MIN_CANDIDATES`` on) takes each scorer's top k there:

* ``regret@k`` = the best trained accuracy below B minus the best among the scorer's top k, in points
  (k=1: what the search's top trial gives; k=3: the best of ``qnas finetune --top-k 3``); tied scores at
  the cut count as a uniformly random pick among them (the expected value, computed exactly);
* averaged over the bounds, with a bootstrap 95% interval over nets (2,000 resamples, seed 0: the
  resample's bounds are recomputed), and the paired interval of the ranker's regret minus each baseline's.

Bounds are nested (every net below a small bound is also below the larger ones), so the mean over them
weighs small nets more; params and MACs pick the biggest net below the bound, the "take the biggest
that fits" rule. Last line: ``regret_<scorer>_<target>=<points>`` at k=1 for the shipped ranker
(``score``), ``size``, ``ghn``, ``params``, ``macs``, then ``bounds_<target>=<n>``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcli import ArgumentParser, run  # noqa: E402
from ranking import BASELINES, add_scores_arguments, read_scored_truth  # noqa: E402

MIN_CANDIDATES = 5  # a bound with fewer nets below it leaves nothing to choose
N_BOOT = 2000


def bound_ends(sorted_params: np.ndarray) -> list[int]:
    """For sizes in ascending order, the index of the last net below each bound (>= MIN_CANDIDATES below)."""
    n = len(sorted_params)
    # A bound admits every net of its size: only the last of equal sizes ends one.
    return [i for i in range(MIN_CANDIDATES - 1, n) if i + 1 == n or sorted_params[i + 1] != sorted_params[i]]


def expected_best(truth: np.ndarray, score: np.ndarray, k: int) -> float:
    """The expected best ``truth`` among the top ``k`` by ``score``, ties at the cut broken uniformly at random
    (scores measured on 1,000 images tie often; a fixed tie-break would favour whichever net sorts first)."""
    k = min(k, len(score))
    cut = np.sort(score)[::-1][k - 1]
    above = truth[score > cut]
    tied = np.sort(truth[score == cut])[::-1]
    m, g = k - len(above), len(tied)  # m of the g tied nets are picked
    best_above = float(above.max()) if len(above) else -np.inf
    # the best of a uniform m-subset of the tied nets is the j-th best of them with this probability
    return sum(math.comb(g - 1 - j, m - 1) / math.comb(g, m) * max(best_above, float(tied[j]))
               for j in range(g - m + 1))


def mean_regret(truth: np.ndarray, params: np.ndarray, score: np.ndarray, k: int) -> float:
    """Regret@k in points, averaged over the bounds at each net's parameter count."""
    order = np.argsort(params, kind="stable")
    truth, params, score = truth[order], params[order], score[order]
    regrets = [truth[: i + 1].max() - expected_best(truth[: i + 1], score[: i + 1], k) for i in bound_ends(params)]
    return 100.0 * float(np.mean(regrets)) if regrets else float("nan")


def figures(truth: np.ndarray, params: np.ndarray, scores: dict[str, np.ndarray], k: int,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean regret@k per scorer with a bootstrap interval, and the first scorer's paired difference to each."""
    rng = np.random.default_rng(seed)
    names = list(scores)
    point = {n: mean_regret(truth, params, s, k) for n, s in scores.items()}
    boots = np.empty((N_BOOT, len(names)))
    for b in range(N_BOOT):
        idx = rng.integers(0, len(truth), len(truth))
        boots[b] = [mean_regret(truth[idx], params[idx], scores[n][idx], k) for n in names]
    out = {}
    for j, n in enumerate(names):
        lo, hi = np.nanpercentile(boots[:, j], [2.5, 97.5])
        dlo, dhi = np.nanpercentile(boots[:, 0] - boots[:, j], [2.5, 97.5])
        out[n] = {"regret": point[n], "lo": float(lo), "hi": float(hi), "diff_lo": float(dlo), "diff_hi": float(dhi)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scores_arguments(ap, "w4a4,w2a2")
    ap.add_argument("--top", default="1,3", help="k of regret@k, comma-separated (default 1,3)")
    args = ap.parse_args(argv)
    try:
        tops = [int(k) for k in args.top.split(",") if k]
    except ValueError:
        ap.error(f"--top: not a list of integers: {args.top!r}")
    if not tops or min(tops) < 1:
        ap.error("--top: every k must be at least 1")
    scored, shipped_of, truth, targets = read_scored_truth(args, ap)
    plan = json.loads((args.store / "architectures.json").read_text())["architectures"]
    size = {a["arch"]: float(a["params"]) for a in plan}

    last: list[str] = []
    for t in targets:
        by_label, shipped = scored[t], shipped_of[t]
        labels = [shipped] + [lab for lab in BASELINES if lab in by_label]
        archs = sorted(a for a in by_label[shipped] if a in truth[t] and a in size)
        y = np.array([truth[t][a] for a in archs])
        p = np.array([size[a] for a in archs])
        s = {lab: np.array([by_label[lab][a] for a in archs]) for lab in labels}
        n_bounds = len(bound_ends(np.sort(p)))
        for k in tops:
            f = figures(y, p, s, k)
            print(f"\n{t}: regret@{k} in points below the best trained net under each bound "
                  f"({len(archs)} nets, {n_bounds} bounds; lower is better)")
            print(f"  {'scorer':28s} {'regret':>7s} {'95% CI':>16s} {'ranker minus it':>20s}")
            for lab, v in f.items():
                diff = "" if lab == shipped else f"[{v['diff_lo']:+.2f}, {v['diff_hi']:+.2f}]"
                print(f"  {lab:28s} {v['regret']:7.2f} [{v['lo']:6.2f}, {v['hi']:6.2f}] {diff:>20s}")
            if k == 1:
                last += [f"regret_score_{t}={f[shipped]['regret']:.2f}"]
                last += [f"regret_{BASELINES[lab]}_{t}={f[lab]['regret']:.2f}" for lab in labels[1:]
                         if BASELINES[lab] not in ("naswot", "synflow")]
        last.append(f"bounds_{t}={n_bounds}")
    print(" ".join(last))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
