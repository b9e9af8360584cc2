"""Rank correlations against hand-computed values and a brute-force pairwise reference."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from qnas.errors import QnasError
from qnas.ranking import average_ranks, kendall_tau, spearman_rho, top_k_overlap


def _tau_b_brute(x: list[float], y: list[float]) -> float:
    """Kendall tau-b by the textbook definition, one pair at a time."""
    conc = disc = tie_x = tie_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        tie_x += dx == 0
        tie_y += dy == 0
        if dx * dy > 0:
            conc += 1
        elif dx * dy < 0:
            disc += 1
    n0 = len(x) * (len(x) - 1) // 2
    return (conc - disc) / math.sqrt((n0 - tie_x) * (n0 - tie_y))


def _rho_brute(x: list[float], y: list[float]) -> float:
    """Spearman rho: ranks by counting (ties averaged), then the Pearson formula."""

    def ranks(v: list[float]) -> list[float]:
        return [sum(u < a for u in v) + (sum(u == a for u in v) + 1) / 2 for a in v]

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_perfect_and_reversed_orderings() -> None:
    x = [0.1, 0.5, 0.2, 0.9, 0.7]
    y = [10 * v + 3 for v in x]  # any increasing transform
    assert kendall_tau(x, y) == pytest.approx(1.0)
    assert spearman_rho(x, y) == pytest.approx(1.0)
    assert kendall_tau(x, [-v for v in y]) == pytest.approx(-1.0)
    assert spearman_rho(x, [-v for v in y]) == pytest.approx(-1.0)


def test_known_values_with_ties() -> None:
    # Hand count: 2 concordant, 6 discordant, 2 pairs tied in x, 1 tied in y -> -4 / sqrt(8 * 9).
    assert kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-4 / math.sqrt(72))
    # y ranks 1, 2, 3.5, 5, 3.5 against 1..5 -> 8 / sqrt(10 * 9.5).
    assert spearman_rho([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_matches_brute_force_on_random_data_with_ties() -> None:
    rng = random.Random(0)
    for trial in range(30):
        n = rng.randint(2, 40)
        levels = rng.choice([3, 10, 1000])  # few levels -> many ties
        x = [float(rng.randrange(levels)) for _ in range(n)]
        y = [float(rng.randrange(levels)) for _ in range(n)]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        assert kendall_tau(x, y) == pytest.approx(_tau_b_brute(x, y), abs=1e-12), trial
        assert spearman_rho(x, y) == pytest.approx(_rho_brute(x, y), abs=1e-12), trial


def test_undefined_and_infinite_cases() -> None:
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman_rho([1, 2, 3], [4, 4, 4]))
    assert math.isnan(kendall_tau([1], [2]))
    # Dead nets score -inf under NASWOT: equal infinities are ties, not NaN.
    inf = math.inf
    expected = _tau_b_brute([1, 2, 3, 4], [-9, -9, 0.5, 0.7])
    assert kendall_tau([1, 2, 3, 4], [-inf, -inf, 0.5, 0.7]) == pytest.approx(expected)
    with pytest.raises(QnasError, match="NaN"):
        kendall_tau([1, 2, 3], [1, math.nan, 2])
    with pytest.raises(QnasError, match="equal-length"):
        spearman_rho([1, 2, 3], [1, 2])


def test_top_k_overlap() -> None:
    truth = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert top_k_overlap(truth, truth, 5) == 5
    assert top_k_overlap(truth, [-v for v in truth], 5) == 3  # best 5 vs worst 5 of 7 share 3
    assert top_k_overlap(truth, [0, 0, 0, 0, 0, 1, 1], 2) == 0
    with pytest.raises(QnasError, match="k="):
        top_k_overlap(truth, truth, 8)
