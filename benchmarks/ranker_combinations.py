"""Ways to combine the ranker's feature groups, under nested leave-one-out on ground truth v2.

The shipped ``ridge-select`` picks one subset of at most three feature groups
(``qnas.ranker.feature_groups``) by leave-one-out tau on its training rows. With ~20 rows that choice is
unstable, so this study compares it with three lower-variance combinations of the same ridges:

* ``select``: the shipped procedure (``qnas.ranker.cross_val_predict(kind="ridge-select")``);
* ``avg-all``: the mean prediction of the ridges on all subsets of at most three groups;
* ``avg-top3``: the mean of the three subsets with the best inner leave-one-out tau;
* ``bag-select``: ``select`` run on 15 bootstrap resamples of the training rows, predictions averaged.

Every prediction is out of fold (the held-out net in no fit and no choice) and relative to its model's
training mean, as ``benchmarks/ranking.py`` scores rankers. A study, not a shipped path (docs/ranking.md).

    OMP_NUM_THREADS=1 python benchmarks/ranker_combinations.py

Last line: ``tau_<procedure>_<target>=<v> ... n=<archs>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ranking import FEATURES, STORE, load_v2, tau  # noqa: E402

from qnas.ranker import cross_val_predict, feature_groups  # noqa: E402

ALPHAS = np.logspace(-2, 3, 21)  # the shipped ridge's grid (qnas.ranker)
PROCEDURES = ("select", "avg-all", "avg-top3", "bag-select")
BAGS = 15


def _fit_relative(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """A standardized RidgeCV fitted on (x, y), predicting x_new relative to its training mean."""
    from sklearn.linear_model import RidgeCV

    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    model = RidgeCV(alphas=ALPHAS).fit((x - mean) / scale, y)
    return model.predict((x_new - mean) / scale) - y.mean()


def _loo_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall tau of exact leave-one-out ridge predictions, relative to each fold's label mean."""
    from sklearn.linear_model import RidgeCV

    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    model = RidgeCV(alphas=ALPHAS, store_cv_results=True, scoring="neg_mean_squared_error")
    model.fit((x - mean) / scale, y)
    loo = model.cv_results_[:, list(ALPHAS).index(model.alpha_)]
    t = tau(y, loo - (y.sum() - y) / (len(y) - 1))
    return t if np.isfinite(t) else -np.inf


def _subsets(target: str, feats: dict[str, dict[str, float]], archs: list[str]) -> dict[str, np.ndarray]:
    groups = feature_groups(target)
    out = {}
    for k in range(1, 4):
        for combo in itertools.combinations(groups, k):
            cols = [c for g in combo for c in groups[g]]
            out["+".join(combo)] = np.array([[feats[a][c] for c in cols] for a in archs])
    return out


def _average(xs: dict[str, np.ndarray], keys: list[str], y: np.ndarray, train: np.ndarray, i: int) -> float:
    return float(np.mean([_fit_relative(xs[k][train], y[train], xs[k][[i]])[0] for k in keys]))


def out_of_fold(procedure: str, target: str, feats: dict[str, dict[str, float]], archs: list[str],
                y: np.ndarray, seed: int) -> np.ndarray:
    if procedure == "select":
        return cross_val_predict([feats[a] for a in archs], y, kind="ridge-select", folds=len(y),
                                 relative=True, target=target)
    xs = _subsets(target, feats, archs)
    rng = np.random.default_rng(seed)
    pred = np.empty(len(y))
    for i in range(len(y)):
        train = np.flatnonzero(np.arange(len(y)) != i)
        if procedure == "avg-all":
            pred[i] = _average(xs, list(xs), y, train, i)
        elif procedure == "avg-top3":
            inner = {k: _loo_tau(x[train], y[train]) for k, x in xs.items()}
            pred[i] = _average(xs, sorted(inner, key=lambda k: -inner[k])[:3], y, train, i)
        else:  # bag-select
            bags = []
            for _ in range(BAGS):
                rows = np.unique(rng.choice(train, len(train)))
                inner = {k: _loo_tau(x[rows], y[rows]) for k, x in xs.items()}
                best = max(inner, key=inner.get)
                p = _fit_relative(xs[best][rows], y[rows], np.vstack([xs[best][[i]], xs[best][train]]))
                bags.append(p[0] - p[1:].mean())  # relative to the bag model's mean over all training rows
            pred[i] = float(np.mean(bags))
    return pred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=STORE, help=f"the ground-truth v2 store (default {STORE})")
    parser.add_argument("--budget", help="the training budget (default: the chosen one in the store's budget.json)")
    parser.add_argument("--features", type=Path, default=FEATURES, help=f"feature table (default {FEATURES})")
    parser.add_argument("--targets", default="fp32,w4a4,w2a2", help="settings (default fp32,w4a4,w2a2)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed of bag-select (default 0)")
    args = parser.parse_args(argv)
    budget = args.budget or json.loads((args.store / "budget.json").read_text())["budget"]
    truth, _, _, what = load_v2(budget, args.store)
    feats = json.loads(args.features.read_text())["features"]
    print(f"ground truth {what}; nested leave-one-out Kendall tau", flush=True)
    figures, n = [], 0
    for target in args.targets.split(","):
        archs = sorted(a for a in truth.get(target, {}) if a in feats)
        y = np.array([truth[target][a] for a in archs])
        n = max(n, len(archs))
        line = []
        for procedure in PROCEDURES:
            t = tau(y, out_of_fold(procedure, target, feats, archs, y, args.seed))
            line.append(f"{procedure} {t:+.3f}")
            figures.append(f"tau_{procedure.replace('-', '_')}_{target}={t:.3f}")
        print(f"{target:5s} (n={len(archs)}): " + ", ".join(line), flush=True)
    print(" ".join(figures) + f" n={n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
