"""Is the shipped ranker's Kendall tau above each baseline's? The paired bootstrap interval of the difference.

    OMP_NUM_THREADS=1 python benchmarks/ranking.py --truth v2 --json runs/rank_v2.json   # the scores (8 min)
    python benchmarks/tau_gap.py --scores runs/rank_v2.json [--target fp32,w4a4,w2a2]

``ranking.py`` prints each scorer's tau with its own bootstrap interval. Two such intervals can overlap while
one scorer is still reliably above the other on the same nets: their errors are correlated, because both
are read against the same noisy truth. The question "does the ranker rank better than MACs?" is about the
difference, so this resamples the architectures (2,000 resamples, seed 0), computes tau of the shipped
ranker's out-of-fold scores and of each baseline's on the same resample, and reports the percentile
interval of the difference. Baselines: the size-only ranker, the raw GHN, params, MACs, synflow, NASWOT.

A baseline is compared on the nets it scored (a non-finite score drops that net for it alone). Last line, per
target: ``gap_<target>=<smallest point difference>`` against ``vs_<target>=<that baseline>``,
``gap_lo_<target>=<the smallest lower bound over baselines>`` against ``vs_lo_<target>``, and ``n_<target>``,
the nets with a truth and the ranker's score.
A ``gap_lo`` above 0 means the ranker is above every baseline at 95% (each interval on its own).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchcli import ArgumentParser, run  # noqa: E402
from ranking import BASELINES, add_scores_arguments, read_scored_truth, tau  # noqa: E402

N_BOOT = 2000


def gaps(truth: np.ndarray, ours: np.ndarray, theirs: dict[str, np.ndarray],
         seed: int = 0) -> dict[str, dict[str, float]]:
    """Per baseline: our tau minus its tau on the nets both scored (finite scores), and the 95% percentile
    interval of that difference over paired resamples of those nets (the same resamples wherever they agree)."""
    out = {}
    ours_by_mask: dict[bytes, np.ndarray] = {}  # baselines that scored the same nets share our resampled taus
    for name, score in theirs.items():
        keep = np.isfinite(ours) & np.isfinite(score)
        t, a, b = truth[keep], ours[keep], score[keep]
        resamples = np.random.default_rng(seed).integers(0, len(t), (N_BOOT, len(t)))
        if keep.tobytes() not in ours_by_mask:
            ours_by_mask[keep.tobytes()] = np.array([tau(t[idx], a[idx]) for idx in resamples])
        diffs = ours_by_mask[keep.tobytes()] - np.array([tau(t[idx], b[idx]) for idx in resamples])
        lo, hi = np.nanpercentile(diffs, [2.5, 97.5])  # a resample with one distinct truth has no tau
        mine, its = tau(t, a), tau(t, b)
        out[name] = {"ours": mine, "theirs": its, "gap": mine - its, "lo": float(lo), "hi": float(hi),
                     "n": int(keep.sum())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scores_arguments(ap, "fp32,w4a4,w2a2")
    args = ap.parse_args(argv)
    scored, shipped_of, truth, targets = read_scored_truth(args, ap)

    last: list[str] = []
    for t in targets:
        by_label, shipped = scored[t], shipped_of[t]
        labels = [lab for lab in BASELINES if lab in by_label]
        archs = sorted(a for a in by_label[shipped] if a in truth.get(t, {}))
        if len(archs) < 8 or not labels:
            ap.error(f"--target {t}: {len(archs)} nets with a truth and the ranker's score and {len(labels)} "
                     "baselines in the scores; needs at least 8 nets and 1 baseline")
        y = np.array([truth[t][a] for a in archs])
        f = gaps(y, np.array([by_label[shipped][a] for a in archs], dtype=float),
                 {lab: np.array([by_label[lab].get(a, np.nan) for a in archs], dtype=float) for lab in labels})
        print(f"\n{t}: tau of {shipped} minus each baseline's on the nets both scored, {len(archs)} nets, "
              f"paired bootstrap 95% interval")
        print(f"  {'baseline':20s} {'nets':>5s} {'ours':>6s} {'theirs':>6s} {'gap':>7s} {'95% CI of the gap':>20s}")
        for lab in labels:
            v = f[lab]
            print(f"  {lab:20s} {v['n']:5d} {v['ours']:6.3f} {v['theirs']:6.3f} {v['gap']:+7.3f} "
                  f"[{v['lo']:+7.3f}, {v['hi']:+7.3f}]")
        closest = min(labels, key=lambda lab: f[lab]["gap"] if np.isfinite(f[lab]["gap"]) else -np.inf)
        weakest = min(labels, key=lambda lab: f[lab]["lo"] if np.isfinite(f[lab]["lo"]) else -np.inf)
        last += [f"gap_{t}={f[closest]['gap']:.3f}", f"vs_{t}={BASELINES[closest]}",
                 f"gap_lo_{t}={f[weakest]['lo']:.3f}", f"vs_lo_{t}={BASELINES[weakest]}", f"n_{t}={len(archs)}"]
    print(" ".join(last))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
