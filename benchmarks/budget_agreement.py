"""Which training budget ranks architectures like the longest one? (Decides ground truth v2's budget.)

    python benchmarks/budget_agreement.py [--store benchmarks/ground_truth/v2] [--threshold 0.85]

Reads the ``agreement`` phase of ``benchmarks/ground_truth.py`` (16 architectures trained at every
budget of ``BUDGETS``, from ground truth v1's 63 SGD steps to 5 epochs over 20,000 images) and, for each
budget, ranks the architectures finished at both it and the longest budget:

* Kendall tau-b (``scipy.stats.kendalltau``) against the longest budget at FP32 (the trained net),
  W4A4 (FAQ-finetuned from it, the deployed model) and W4A4 post-training quantized (PTQ, per-channel,
  first/last layer 8-bit: the start FAQ finetunes from), with a bootstrap 95% interval over
  architectures (``scipy.stats.bootstrap``, percentile, 2,000 resamples, seed 0);
* what the budget costs: CPU-hours of all its stages summed over the architectures;
* over all rows whose net learned (FP32 >= 15%): how often FAQ beats PTQ at W4A4 (why the truth is FAQ).

The truth budget is the cheapest whose tau to the longest is >= ``--threshold`` at FP32 and at W4A4
(the longest budget qualifies trivially), decided once all the agreement architectures are finished, or
earlier when no cheaper budget can reach the threshold whatever the unfinished ones give: its tau with
every pair they add concordant and untied (:func:`best_case_tau`) is still below it. The last line is
``budget_tau_<budget>=<min of FP32 and W4A4 tau> ... chosen=<budget> n=<architectures>``. With ``--write``,
a decided choice is written to the store's ``budget.json`` (what ``ground_truth.py`` and ``ranking.py`` read);
a different choice already there is never replaced.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, run  # noqa: E402
from ground_truth import BUDGETS, STORE, jobs, load_plan, read_result  # noqa: E402

N_BOOT = 2000  # bootstrap resamples of each interval
TARGETS = {  # column -> where it is in a result file
    "fp32": ("ptq", "test_top1_fp32"),
    "w4a4": ("faq_w4a4", "test_top1"),
    "w4a4_ptq": ("ptq", "test_top1_w4a4-channel-fl8"),
}


def tau(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y).statistic)


def best_case_tau(x: np.ndarray, y: np.ndarray, n_total: int) -> float:
    """The largest tau-b the ``n_total`` architectures can reach given the finished ``len(x)``: every pair
    an unfinished one adds concordant and untied (a tied or discordant pair lowers tau-b when tau < 1)."""
    i, j = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs = n_total * (n_total - 1) // 2
    added = pairs - len(i)
    return float((np.sum(sx * sy) + added) / np.sqrt((pairs - np.sum(sx == 0)) * (pairs - np.sum(sy == 0))))


def interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Bootstrap 95% interval of Kendall tau over architectures (pairs resampled together)."""
    if len(x) < 8:  # fewer architectures than that: resamples are mostly ties, the interval is meaningless
        return (float("nan"), float("nan"))
    res = stats.bootstrap((x, y), lambda a, b: stats.kendalltau(a, b).statistic, paired=True, vectorized=False,
                          n_resamples=N_BOOT, method="percentile", random_state=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=STORE, help=f"ground-truth store (default {STORE})")
    ap.add_argument("--threshold", type=float, default=0.85, help="tau to the longest budget (default 0.85)")
    ap.add_argument("--write", action="store_true", help="write a decided choice to the store's budget.json")
    args = ap.parse_args(argv)

    plan = load_plan(args.store)
    table: dict[str, dict[str, dict[str, float]]] = {b: {} for b in BUDGETS}  # budget -> arch -> column
    cpu: dict[str, float] = dict.fromkeys(BUDGETS, 0.0)
    for job in jobs(plan, "agreement", None):
        result = read_result(args.store, job.key)
        if result is None:
            continue
        # What the agreement phase measured (a truth-phase re-measurement with a newer quantizer is not it).
        stages = {**result["stages"], **result.get("superseded", {})}
        cpu[job.budget] += sum(s["provenance"]["cpu_seconds"] for s in stages.values()) / 3600
        row = {col: stages[stage][key] for col, (stage, key) in TARGETS.items() if stage in stages}
        if len(row) == len(TARGETS):
            table[job.budget][job.arch["id"]] = row
    longest = list(BUDGETS)[-1]
    ref = table[longest]
    print(f"reference: {longest} ({len(ref)} of {len(plan['agreement'])} architectures finished)")
    print(f"{'budget':8s} {'passes':>7s} {'n':>3s} " + " ".join(f"{c + ' tau [95% CI]':>24s}" for c in TARGETS)
          + f" {'CPU-h':>6s}")
    figures, chosen = {}, None
    n_common = 0
    planned = len(plan["agreement"])
    reachable = {}  # budget -> can it still reach the threshold at FP32 and W4A4?
    for name, budget in BUDGETS.items():
        common = sorted(set(table[name]) & set(ref))
        cells, taus = [], {}
        for col in TARGETS:
            x = np.array([table[name][a][col] for a in common])
            y = np.array([ref[a][col] for a in common])
            t = tau(x, y) if len(common) >= 3 else float("nan")
            lo, hi = interval(x, y) if name != longest else (t, t)
            taus[col] = t
            cells.append(f"{t:+.3f} [{lo:+.2f}, {hi:+.2f}]")
            if col in ("fp32", "w4a4") and len(common) >= 2:
                reachable[name] = reachable.get(name, True) and best_case_tau(x, y, planned) >= args.threshold
        print(f"{name:8s} {budget.passes:>7,d} {len(common):>3d} " + " ".join(f"{c:>24s}" for c in cells)
              + f" {cpu[name]:6.2f}")
        figures[name] = min(taus["fp32"], taus["w4a4"])
        # Decided only on the whole study: on a part of it the longest budget "agrees" with itself.
        complete = len(ref) == len(plan["agreement"])
        if chosen is None and complete and figures[name] >= args.threshold:
            chosen = name
        n_common = max(n_common, len(common)) if name == longest else n_common
    # Is FAQ (the W4A4 truth) above PTQ with the same 8-bit first/last layers? Rows whose net learned.
    rows = [r for t in table.values() for r in t.values() if r["fp32"] >= 0.15]
    gains = np.array([r["w4a4"] - r["w4a4_ptq"] for r in rows])
    if len(gains):
        print(f"FAQ above PTQ (w4a4-channel-fl8) in {int((gains > 0).sum())} of {len(gains)} rows; "
              f"median {100 * np.median(gains):+.1f} points, min {100 * gains.min():+.1f}, "
              f"max {100 * gains.max():+.1f}")
    status = ""
    if len(ref) < planned:
        cheaper = [b for b in BUDGETS if b != longest]
        if chosen is None and all(b in reachable and not reachable[b] for b in cheaper):
            chosen = longest
            status = (f" (decided with {len(ref)} of {planned} finished: no cheaper budget reaches the threshold "
                      "even if every unfinished pair agrees)")
        else:
            status = f" (undecided: {len(ref)} of {planned} finished)"
    print(f"chosen: the cheapest budget with tau >= {args.threshold} at FP32 and W4A4: {chosen}{status}")
    if args.write and chosen is not None:
        write_choice(args.store / "budget.json", {
            "budget": chosen, "threshold": args.threshold, "n": n_common,
            "tau_min_fp32_w4a4": {b: round(t, 4) for b, t in figures.items()},
            "command": "python benchmarks/budget_agreement.py --write"})
    print(" ".join(f"budget_tau_{b}={t:.3f}" for b, t in figures.items()) + f" chosen={chosen} n={n_common}")
    return 0


def write_choice(path: Path, choice: dict[str, object]) -> None:
    """Write the decided budget; an existing different decision stays (the truth phase may already use it)."""
    if path.exists():
        old = json.loads(path.read_text()).get("budget")
        if old != choice["budget"]:
            print(f"error: {path} already chose {old!r}, not {choice['budget']!r}; remove it to re-decide",
                  file=sys.stderr)
            raise SystemExit(2)
    path.write_text(json.dumps(choice, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(run(main))
