"""Ways to combine the ranker's feature groups, under nested leave-one-out on ground truth v2.

``ridge-select`` (shipped until session 19) picks one subset of at most three feature groups
(``qnas.ranker.feature_groups``) by leave-one-out tau on its training rows. With ~20 rows that choice is
unstable, so this study compares it with lower-variance combinations of the same ridges:

* ``select``: ridge-select (``qnas.ranker.cross_val_predict(kind="ridge-select")``);
* ``avg-all``: the mean prediction of the ridges on all subsets of at most three groups (``qnas.ranker``'s
  kind since session 22, stored as one linear model; shipped since its rule was read in session 24);
* ``avg-top3``: the mean of the three subsets with the best inner leave-one-out tau;
* ``bag-select``: ``select`` run on 15 bootstrap resamples of the training rows, predictions averaged
  (``qnas.ranker``'s kind, shipped in sessions 19-23 by the first rule below);
* ``ridge``: one ridge over every feature (the kind the sensitivity rule weighs against ``select``);
* ``pool-select``: ``select`` fitted on one label pooled from FP32, W4A8 and W4A4 (``pooled_label``; at
  those targets only): after FAQ the three orders nearly agree, so their mean carries less noise.

Every prediction is out of fold (the held-out net in no fit and no choice) and relative to its model's
training mean, as ``benchmarks/ranking.py`` scores rankers. A study, not a shipped path (docs/ranking.md).

**The rules** (``benchmarks/ground_truth/ranker_rule*.json``, each fixed before the rows it reads were
seen): once enough nets trained after the table a rule was written on are in, its candidate procedure
replaces the incumbent only if its out-of-fold tau over those new nets alone is higher at every target of
the rule. This script reads every rule and prints its verdict (before then: how many new nets are in).
A rule is decided once: its JSON then records the reading (``read``: session, commit, what shipped), and
later runs print that decision beside today's figures on its new nets, never a fresh verdict (a rule re-read
until it agrees would be no rule). A rule's own targets (e.g. the drop ``drop_w4a4``) are computed for its
two procedures only.

    OMP_NUM_THREADS=1 python benchmarks/ranker_combinations.py

Last line: ``tau_<procedure>_<target>=<v> ... n=<archs>``, then per rule with enough new nets
``rule[_<name>]_ships=<procedure>``: the candidate if it won, else the incumbent, i.e. the rule changes
nothing (its JSON's ``decision`` says what either outcome means for the shipped ranker); for a rule already
read, ``rule[_<name>]_decided=<procedure>``, its recorded decision (a later rule may have replaced it since).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, existing_path, non_negative_int, run  # noqa: E402
from ground_truth import BUDGETS  # noqa: E402
from ranking import FEATURES, STORE, load_v2, tau  # noqa: E402

from qnas.ranker import SELECT_MAX_GROUPS, TARGETS, cross_val_predict, feature_groups, fit, loo_tau  # noqa: E402

PROCEDURES = ("select", "avg-all", "avg-top3", "bag-select", "ridge", "pool-select")
POOLED = ("fp32", "w4a8", "w4a4")  # the settings pool-select pools (docs/ranking.md, session 19)
RULES = Path(__file__).resolve().parent / "ground_truth"  # ranker_rule*.json


def _subsets(target: str) -> dict[str, list[str]]:
    """The columns of every subset of feature groups ``ridge-select`` chooses among."""
    groups = feature_groups(target)
    return {"+".join(combo): [c for g in combo for c in groups[g]]
            for k in range(1, SELECT_MAX_GROUPS + 1) for combo in itertools.combinations(groups, k)}


def _relative(rows: list[dict[str, float]], y: np.ndarray, new: list[dict[str, float]], target: str,
              **kind: object) -> np.ndarray:
    """A ranker fitted on (rows, y) at ``target``, scoring ``new`` relative to its training label mean."""
    return fit(rows, {target: y}, **kind).predict_many(new)[target] - y.mean()


def pooled_label(labels: np.ndarray, target: str) -> np.ndarray:
    """Rows x ``POOLED`` labels (NaN where not measured) -> one label per row: the mean of the columns, each
    standardized over these rows, in the units of ``target``'s column (a ridge on it predicts accuracy)."""
    z = (labels - np.nanmean(labels, 0)) / np.nanstd(labels, 0)
    own = labels[:, POOLED.index(target)]
    return np.nanmean(own) + np.nanstd(own) * np.nanmean(z, 1)


def _average(subsets: dict[str, list[str]], keys: list[str], rows: list[dict[str, float]], y: np.ndarray,
             train: np.ndarray, i: int, target: str) -> float:
    return float(np.mean([_relative([rows[j] for j in train], y[train], [rows[i]], target, kind="ridge",
                                    features=subsets[k])[0] for k in keys]))


def out_of_fold(procedure: str, target: str, feats: dict[str, dict[str, float]], archs: list[str],
                y: np.ndarray, seed: int, pooled: np.ndarray | None = None) -> np.ndarray:
    """``pooled``: for ``pool-select``, the rows' labels at every ``POOLED`` setting (``y`` is among them)."""
    kinds = {"select": "ridge-select", "bag-select": "bag-select", "avg-all": "avg-all",
             "ridge": "ridge"}  # qnas.ranker's own kinds
    if procedure in kinds:
        return cross_val_predict([feats[a] for a in archs], y, kind=kinds[procedure], folds=len(y), relative=True,
                                 target=target, seed=seed)
    rows = [feats[a] for a in archs]
    subsets = _subsets(target)
    columns = {k: np.array([[r[c] for c in cols] for r in rows]) for k, cols in subsets.items()}
    pred = np.empty(len(y))
    for i in range(len(y)):
        train = np.flatnonzero(np.arange(len(y)) != i)
        if procedure == "pool-select":
            assert pooled is not None, "pool-select needs the pooled labels"
            pred[i] = _relative([rows[j] for j in train], pooled_label(pooled[train], target), [rows[i]],
                                target, kind="ridge-select")[0]
        elif procedure == "avg-top3":
            inner = {k: loo_tau(x[train], y[train]) for k, x in columns.items()}
            pred[i] = _average(subsets, sorted(inner, key=lambda k: -inner[k])[:3], rows, y, train, i, target)
    return pred


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=existing_path, default=STORE,
                        help=f"the ground-truth v2 store (default {STORE})")
    parser.add_argument("--budget", choices=list(BUDGETS),
                        help="the training budget (default: the chosen one in the store's budget.json)")
    parser.add_argument("--features", type=existing_path, default=FEATURES, help=f"feature table (default {FEATURES})")
    parser.add_argument("--targets", default="fp32,w4a4,w2a2", help="settings (default fp32,w4a4,w2a2)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed of bag-select (default 0)")
    parser.add_argument("--rule", type=Path, action="append", default=None,
                        help=f"a pre-registered rule, repeatable (default: every {RULES}/ranker_rule*.json)")
    args = parser.parse_args(argv)
    try:
        rules = [read_rule(path) for path in (args.rule or sorted(RULES.glob("ranker_rule*.json")))]
    except ValueError as exc:
        parser.error(str(exc))
    targets = [t for t in args.targets.split(",") if t]
    if not targets or set(targets) - set(TARGETS):
        parser.error(f"--targets: settings of {', '.join(TARGETS)}, got {args.targets!r}")
    budget = args.budget or json.loads((args.store / "budget.json").read_text())["budget"]
    truth, _, _, what = load_v2(budget, args.store)
    feats = json.loads(args.features.read_text())["features"]
    print(f"ground truth {what}; nested leave-one-out Kendall tau", flush=True)
    figures, n = [], 0
    procedures = {t: [p for p in PROCEDURES if p != "pool-select" or t in POOLED]  # the study: every procedure
                  for t in targets}
    for rule in rules:  # a rule's own targets: its two procedures
        for t in rule["targets"]:
            procedures.setdefault(t, []).extend(p for p in (rule["incumbent"], rule["candidate"])
                                                if p not in procedures[t])
    ids = {a["arch"]: a["id"] for a in json.loads((args.store / "architectures.json").read_text())["architectures"]}
    short = [t for t in procedures if len([a for a in truth.get(t, {}) if a in feats]) < 8]
    if short:
        parser.error(f"--targets: fewer than 8 trained architectures with features at {', '.join(short)} "
                     f"(settings with rows: {', '.join(sorted(truth))})")
    preds: dict[str, dict[str, tuple[list[str], np.ndarray, np.ndarray]]] = {}
    for target, procs in procedures.items():
        archs = sorted(a for a in truth.get(target, {}) if a in feats)
        y = np.array([truth[target][a] for a in archs])
        n = max(n, len(archs))
        line = []
        for procedure in procs:
            pooled = np.array([[truth.get(s, {}).get(a, np.nan) for s in POOLED] for a in archs]) \
                if procedure == "pool-select" else None
            pred = out_of_fold(procedure, target, feats, archs, y, args.seed, pooled)
            t = tau(y, pred)
            preds.setdefault(target, {})[procedure] = ([ids.get(a, a) for a in archs], y, pred)
            line.append(f"{procedure} {t:+.3f}")
            figures.append(f"tau_{procedure.replace('-', '_')}_{target}={t:.3f}")
        print(f"{target:9s} (n={len(archs)}): " + ", ".join(line), flush=True)
    for rule in rules:
        figures += verdict(rule, preds)
    print(" ".join(figures) + f" n={n}")
    return 0


def read_rule(path: Path) -> dict:
    """A pre-registered rule from its JSON; ValueError naming the file if it is not one."""
    try:
        rule = json.loads(path.read_text())
        if {rule["incumbent"], rule["candidate"]} - set(PROCEDURES) or not rule["targets"] or not rule["seen"]:
            raise ValueError("an unknown procedure or an empty list")
        if "pool-select" in (rule["incumbent"], rule["candidate"]) and set(rule["targets"]) - set(POOLED):
            raise ValueError(f"pool-select ranks only {', '.join(POOLED)}")
        int(rule["min_new_nets"])
        str(rule.get("name", ""))
        read = rule.get("read")
        if read is not None:
            if not isinstance(read["session"], int) or not isinstance(read["commit"], str):
                raise ValueError("its 'read' needs a session number and a commit")
            if read["ships"] not in (rule["incumbent"], rule["candidate"]):
                raise ValueError(f"it was read as shipping {read['ships']!r}, neither of its procedures")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--rule {path}: not a readable rule ({exc})") from exc
    return rule


def verdict(rule: dict, preds: dict[str, dict[str, tuple[list[str], np.ndarray, np.ndarray]]]) -> list[str]:
    """Print a rule's verdict on the nets it has not seen (only once enough are in); its figures."""
    inc, cand, targets = rule["incumbent"], rule["candidate"], rule["targets"]
    name = f"rule_{rule['name']}" if rule.get("name") else "rule"
    seen = set(rule["seen"])
    new: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {t: {} for t in targets}
    for t in targets:
        for p, (ids, y, pred) in preds[t].items():
            keep = np.array([i not in seen for i in ids], dtype=bool)
            new[t][p] = (y[keep], pred[keep])
    counts = {t: len(new[t][inc][0]) for t in targets}
    read = rule.get("read")
    if min(counts.values()) < rule["min_new_nets"]:
        print(f"{name} ({cand} vs the incumbent {inc}): "
              + ", ".join(f"{t} {c} of {rule['min_new_nets']} new nets" for t, c in counts.items())
              + (f" in this store; read in session {read['session']} (commit {read['commit']}), {read['ships']} "
                 "decided" if read else " trained; not read yet"), flush=True)
        return [f"{name}_decided={read['ships']}"] if read else []
    taus = {t: {p: tau(*new[t][p]) for p in (inc, cand)} for t in targets}
    wins = all(taus[t][cand] > taus[t][inc] for t in targets)
    figures = ", ".join(f"{t} (n={counts[t]}) {inc} {taus[t][inc]:+.3f}, {cand} {taus[t][cand]:+.3f}" for t in targets)
    prefix = f"tau_new_{rule['name']}_" if rule.get("name") else "tau_new_"
    out = [f"{prefix}{p.replace('-', '_')}_{t}={taus[t][p]:.3f}" for t in targets for p in (inc, cand)]
    if read:  # decided once, when read: today's figures are for the record only
        print(f"{name} on the new nets only: {figures}; read in session {read['session']} "
              f"(commit {read['commit']}), {read['ships']} decided, not re-decided", flush=True)
        return out + [f"{name}_decided={read['ships']}"]
    print(f"{name} on the new nets only: {figures} -> ship {cand if wins else inc}", flush=True)
    return out + [f"{name}_ships={cand if wins else inc}"]


if __name__ == "__main__":
    raise SystemExit(run(main))
