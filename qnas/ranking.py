"""Rank correlation between two scorings of the same architectures (scipy-free).

    kendall_tau(truth, predicted)      # tau-b: ties in either list are accounted for
    spearman_rho(truth, predicted)     # Pearson correlation of average ranks
    top_k_overlap(truth, predicted, 5) # how many of the truly best k are among the predicted best k

All three take two equal-length sequences of numbers where *higher is better*; they return floats
(``nan`` where the correlation is undefined, e.g. one list is constant). A NaN inside the inputs is
an error, not a silently dropped pair: a scorer that produced NaN is broken and should say so.
Pairwise O(n^2) work is vectorized with numpy; fine up to a few thousand architectures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qnas.errors import QnasError

__all__ = ["average_ranks", "kendall_tau", "spearman_rho", "top_k_overlap"]


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise QnasError(f"rank correlation needs two equal-length 1-D lists, got shapes {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise QnasError("rank correlation got NaN scores; the scorer that produced them is broken")
    return a, b


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)).

    n0 = n(n-1)/2 pairs; a pair tied in x (or y) counts in ties_x (ties_y) and is neither
    concordant nor discordant. Equals scipy.stats.kendalltau's default (variant "b").
    """
    a, b = _pair(x, y)
    n = len(a)
    if n < 2:
        return math.nan
    iu = np.triu_indices(n, k=1)
    with np.errstate(invalid="ignore"):  # inf - inf is nan: equal infinities (e.g. dead nets' -inf)
        sa = np.sign(a[:, None] - a[None, :])[iu]
        sb = np.sign(b[:, None] - b[None, :])[iu]
    sa[np.isnan(sa)] = 0.0  # ... which are ties
    sb[np.isnan(sb)] = 0.0
    n0 = len(sa)
    untied_a, untied_b = n0 - int((sa == 0).sum()), n0 - int((sb == 0).sum())
    if untied_a == 0 or untied_b == 0:
        return math.nan
    return float((sa * sb).sum() / math.sqrt(untied_a * untied_b))


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``x`` ascending, tied values sharing the mean of their ranks."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    start = 0
    while start < len(a):  # walk runs of equal values; each gets the mean of its positions
        stop = start + 1
        while stop < len(a) and sorted_a[stop] == sorted_a[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of start+1 .. stop
        start = stop
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks (exact with ties)."""
    a, b = _pair(x, y)
    if len(a) < 2:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return math.nan if denom == 0.0 else float((ra * rb).sum() / denom)


def top_k_overlap(truth: Sequence[float], predicted: Sequence[float], k: int = 5) -> int:
    """How many of the ``k`` best by ``truth`` are also among the ``k`` best by ``predicted``.

    Ties at the k-th place are broken by position (stable sort), the same way for both lists.
    """
    a, b = _pair(truth, predicted)
    if not 0 < k <= len(a):
        raise QnasError(f"top-k overlap needs 1 <= k <= {len(a)}, got k={k}")
    best_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    best_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(best_a & best_b)
