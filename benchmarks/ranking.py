"""The measuring stick: does a scorer rank architectures like real training does?

    OMP_NUM_THREADS=1 python benchmarks/ranking.py --truth v2 --budget k10e2   # ground truth v2 (default)
    OMP_NUM_THREADS=1 python benchmarks/ranking.py --truth v1                  # v1: 63 SGD steps, id only
    ... ranking.py --store DIR    # another v2 store (architectures.json, results/, budget.json)

Reads a committed ground truth (``benchmarks/ground_truth.py``) and the ranker's features of its
architectures (``benchmarks/ranker_features.py``: the shipped GHN's accuracy and loss at every setting,
size, shape, proxies, embedding; computed as the search computes them) and ranks the architectures by:

* ``ranker (<kind>)``: ``qnas.ranker`` fitted on the other architectures and scoring this one
  (leave-one-out over architectures by default; ``--folds K`` for K-fold; the shipped kind is marked).
  Each out-of-fold score is relative to its fold model's mean prediction on its own training rows
  (``cross_val_predict(relative=True)``): pooling absolute predictions would also pool each fold's label
  mean, which anti-correlates with the held-out label and belongs to no single model's ranking. The
  pooled absolute figures are kept in ``--json`` (``absolute_out_of_fold``);
* ``size-only ranker``: the same model fitted on log parameters and log MACs only, the fair baseline
  that shows what everything else (proxies, shape, the GHN) adds; which feature groups ridge-select (one
  selection; bag-select, shipped in sessions 19-23, averages 15; the shipped avg-all makes no choice)
  chose in each leave-one-out fold is printed per target ("nested choices"), and with ``--ship`` the
  groups of the shipped models;
* ``GHN``: the raw GHN-predicted parameters' accuracy at the setting (the old score);
* ``params``, ``MACs``, ``synflow``, ``NASWOT``: one number per architecture, bigger is better;
* ``seed-1 retrain``: the same training with another seed, the noise ceiling (on its subset).

v2 also reports the hand-written ``user`` split (``qnas.user_split``, trained by ``ground_truth.py --phase
user``): the shipped kind fitted on all space architectures predicts them (out of distribution: no user
net among its training rows), beside the raw GHN, params and MACs.

Targets: trained top-1 at FP32, W4A4 and W2A2 (FAQ-finetuned from the trained FP32 net in v2; QAT in v1),
and the post-training quantization drop FP32 -> W4A4 / W2A2 (sensitivity: the ranker predicts it as
its FP32 minus its W4A4 / W2A2 PTQ-free prediction is not what is measured, so drops are ranked from
the GHN's own drop and from a ranker fitted on the drop). For each: Kendall tau-b and Spearman rho
(``scipy.stats``), top-10 overlap, and a bootstrap 95% interval of tau over architectures (2,000
resamples, seed 0). Last line:
``tau_score_w4a4=<v> tau_size_w4a4=<v> tau_ghn_w4a4=<v> tau_params_w4a4=<v> tau_macs_w4a4=<v> n=<archs>``
(then ``tau_user_score_w4a4``, ``_ghn_``, ``_params_``, ``_macs_`` once the user split is trained, and
``mae_score_w4a4``, ``mae_score_w2a2``: the shipped kind's pooled absolute out-of-fold prediction against the
trained top-1, mean absolute error in points, which is how far off the ``pred.`` a user reads is).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, existing_path, new_file, non_negative_int, run, write_new  # noqa: E402
from ground_truth import BUDGETS, git_commit, stale  # noqa: E402
from ranker_features import FEATURES  # noqa: E402

from qnas import user_split  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.ranker import MODEL_KINDS, TARGETS, cross_val_scores, feature_groups, fit, load_ranker  # noqa: E402

HERE = Path(__file__).resolve().parent / "ground_truth"
STORE = HERE / "v2"  # the committed v2 store (benchmarks/ground_truth.py's STORE)
SHIPPED_KIND = "avg-all"  # since session 24, by the rule of ground_truth/ranker_rule_avg.json (docs/ranking.md)
SHIPPED_LABEL = f"ranker ({SHIPPED_KIND}) [shipped]"  # its rows in the tables and --json
USER_RANKER = "ranker (fitted on the space)"  # the shipped kind's row on the user split
SELECT_KIND = "ridge-select"  # one selection: its fold choices are printed; drop rows keep it (ranker_rule_drop.json)
SIZE_FEATURES = ("log_params", "log_macs")
N_BOOT = 2000


def load_v1() -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, str], str]:
    """v1: targets by arch, the seed-1 replicate, splits, a description."""

    def read(path: Path) -> dict[str, dict[str, float]]:
        table = json.loads(path.read_text())
        out: dict[str, dict[str, float]] = {"fp32": {}, "w4a4": {}, "drop_w4a4": {}}
        for r in table["rows"]:
            if r["setting"] == "fp32":
                out["fp32"][r["arch"]] = r["test_top1"]
                out["drop_w4a4"][r["arch"]] = r["test_top1"] - r["test_top1_ptq_w4a4-channel"]
            elif r["setting"] == "w4a4-channel":
                out["w4a4"][r["arch"]] = r["test_top1"]
        return out

    truth = read(HERE / "v1" / "ground_truth.json")
    seed1 = read(HERE / "v1" / "seed1" / "ground_truth.json")
    splits = dict.fromkeys(truth["fp32"], "id")
    return truth, seed1, splits, "v1: 40 id nets <= 1M params, 63 SGD steps on 2,040 images (W4A4 by QAT)"


def read_v2(entries: list[dict], budget: str, seed: int, store: Path = STORE) -> dict[str, dict[str, float]]:
    """Targets by architecture string of the v2 store's rows of ``entries`` (plan entries: id, arch)."""
    out: dict[str, dict[str, float]] = {k: {} for k in ("fp32", "w8a8", "w4a8", "w4a4", "w2a2", "drop_w4a4",
                                                        "drop_w2a2")}
    for a in entries:
        path = store / "results" / f"{a['id']}_{budget}_s{seed}.json"
        if not path.exists():
            continue
        st = json.loads(path.read_text())["stages"]
        if "ptq" in st:
            p = st["ptq"]
            out["fp32"][a["arch"]] = p["test_top1_fp32"]  # no quantizer involved: any engine's measurement
        # Quantized accuracies only from the current engine (older stages wait for ground_truth.py's re-measurement).
        if "ptq" in st and not stale(st["ptq"]["provenance"]["git_commit"]):
            p = st["ptq"]
            out["w8a8"][a["arch"]] = p["test_top1_w8a8-channel"]  # 8 bits: post-training quantization
            out["w4a8"][a["arch"]] = p["test_top1_w4a8-channel-fl8"] if "test_top1_w4a8-channel-fl8" in p \
                else p["test_top1_w4a8-channel"]
            out["drop_w4a4"][a["arch"]] = p["test_top1_fp32"] - p["test_top1_w4a4-channel"]
            out["drop_w2a2"][a["arch"]] = p["test_top1_fp32"] - p["test_top1_w2a2-channel"]
        for s in ("w4a4", "w2a2"):
            if f"faq_{s}" in st and not stale(st[f"faq_{s}"]["provenance"]["git_commit"]):
                out[s][a["arch"]] = st[f"faq_{s}"]["test_top1"]
    return out


def load_v2(budget: str, store: Path = STORE) -> tuple[
        dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, str], str]:
    plan = json.loads((store / "architectures.json").read_text())
    splits = {a["arch"]: a["split"] for a in plan["architectures"]}
    entries = plan["architectures"]
    what = f"v2 at budget {budget}: {len(splits)} nets of all four splits"
    return read_v2(entries, budget, 0, store), read_v2(entries, budget, 1, store), splits, what


def user_split_figures(truth: dict[str, dict[str, float]], user: dict[str, dict[str, float]],
                       feats: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Tau on the hand-written user split: the shipped kind fitted on every space architecture, predicting
    networks of families the space never holds (no user net in its training rows), beside GHN and size."""
    out: dict[str, dict[str, dict[str, Any]]] = {}  # figure() per scorer; the ranker's also its "error"
    for target in ("fp32", "w4a4"):
        archs = sorted(a for a in user.get(target, {}) if a in feats)
        train = sorted(a for a in truth.get(target, {}) if a in feats)
        if len(archs) < 8 or len(train) < 8:
            continue
        model = fit([feats[a] for a in train], {target: [truth[target][a] for a in train]}, kind=SHIPPED_KIND)
        y = np.array([user[target][a] for a in archs])
        rows = [feats[a] for a in archs]
        scores = {USER_RANKER: np.array([model.predict(r)[target] for r in rows]),
                  "GHN": np.array([r[f"ghn_top1_{target}"] for r in rows]),
                  "params": np.array([r["log_params"] for r in rows]),
                  "MACs": np.array([r["log_macs"] for r in rows])}
        out[target] = {label: figure(y, pred) for label, pred in scores.items()}
        out[target][USER_RANKER]["error"] = abs_error(y, scores[USER_RANKER], archs)
    return out


# The baselines' score labels in --json (and the tables) -> their names on the readers' last lines.
BASELINES = {"size-only ranker": "size", "GHN": "ghn", "params": "params", "MACs": "macs", "synflow": "synflow",
             "NASWOT": "naswot"}


def read_scores(path: Path) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """``--json``'s per-architecture scores (target -> scorer label -> arch -> score) and, per target, the
    shipped ranker's label (it ends in ``[shipped]``); a file that is not one is a one-line error."""
    if not path.is_file():
        raise QnasError(f"no scores file {path} (write one with ranking.py --json)")
    try:
        scored = json.loads(path.read_text())["scores"]
        shipped = {t: next(lab for lab in by_label if lab.endswith("[shipped]")) for t, by_label in scored.items()}
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
        raise QnasError(f"{path} is not a ranking.py --json output (no 'scores' with a shipped ranker)") from None
    return scored, shipped


def add_scores_arguments(ap: argparse.ArgumentParser, targets: str) -> None:
    """The command line every reader of ``--json`` shares (pick_regret.py, tau_gap.py)."""
    ap.add_argument("--scores", type=Path, required=True, help="ranking.py --json output (per-architecture scores)")
    ap.add_argument("--store", type=existing_path, default=STORE, help=f"the ground-truth store (default {STORE})")
    ap.add_argument("--budget", choices=list(BUDGETS), default=None,
                    help="the training budget (default: the store's budget.json)")
    ap.add_argument("--target", default=targets, help=f"targets, comma-separated (default {targets})")


def read_scored_truth(args: argparse.Namespace, ap: argparse.ArgumentParser) -> tuple[
        dict[str, dict[str, dict[str, float]]], dict[str, str], dict[str, dict[str, float]], list[str]]:
    """:func:`add_scores_arguments`' inputs read and checked: the scores, each target's shipped label, the
    seed-0 truth and the targets; a bad one is a one-line error before any work."""
    targets = [t for t in args.target.split(",") if t]
    if not targets:
        ap.error("--target: give at least one setting, e.g. w4a4")
    scored, shipped_of = read_scores(args.scores)
    for t in targets:
        if t not in scored:
            ap.error(f"--target {t}: not in {args.scores} (has {', '.join(scored) or 'no target'})")
    if not all((args.store / f).is_file() for f in ("architectures.json", "budget.json")):
        ap.error(f"no ground-truth store at {args.store} (architectures.json or budget.json missing)")
    budget = args.budget or json.loads((args.store / "budget.json").read_text())["budget"]
    truth, _, _, what = load_v2(budget, args.store)
    print(f"ground truth {what}; scores from {args.scores}", flush=True)
    return scored, shipped_of, truth, targets


def tau(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.kendalltau(x, y).statistic)


def tau_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    res = stats.bootstrap((x, y), lambda a, b: stats.kendalltau(a, b).statistic, paired=True, vectorized=False,
                          n_resamples=N_BOOT, method="percentile", random_state=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def top_k(truth: np.ndarray, pred: np.ndarray, k: int) -> int:
    return len(set(np.argsort(-truth, kind="stable")[:k]) & set(np.argsort(-pred, kind="stable")[:k]))


def figure(truth: np.ndarray, pred: np.ndarray, k: int = 10) -> dict[str, float]:
    """Every figure of one scorer on one target: tau with its bootstrap interval, rho, top-k overlap, n."""
    lo, hi = tau_interval(truth, pred)
    return {"tau": tau(truth, pred), "rho": float(stats.spearmanr(truth, pred).statistic),
            "top10": top_k(truth, pred, k), "lo": lo, "hi": hi, "n": len(truth)}


def abs_error(truth: np.ndarray, pred: np.ndarray, archs: list[str]) -> dict[str, float | str]:
    """How far a predicted top-1 (a fraction) is from the trained one, in points: what ``pred.`` means to a user."""
    diff = 100 * (pred - truth)
    worst = int(np.argmax(np.abs(diff)))
    return {"mae": float(np.mean(np.abs(diff))), "p90": float(np.percentile(np.abs(diff), 90)),
            "bias": float(np.mean(diff)), "worst": float(diff[worst]), "worst_arch": archs[worst]}


def print_error(label: str, e: dict) -> None:
    print(f"  {label}: mean absolute error {e['mae']:.2f} points (90th percentile {e['p90']:.2f}, "
          f"mean {e['bias']:+.2f}, worst {e['worst']:+.2f} on {e['worst_arch']})")


def groups_of(features: tuple[str, ...], target: str) -> str:
    """The names of the feature groups (``qnas.ranker.feature_groups``) a ridge-select model uses."""
    return "+".join(g for g, cols in feature_groups(target).items() if set(cols) <= set(features)) or "all"


def nested_choices(rows: list[dict[str, float]], y: np.ndarray, target: str) -> dict[str, int]:
    """How often each group choice of ridge-select occurs over the leave-one-out folds, most often first."""
    counts: dict[str, int] = {}
    for i in range(len(y)):
        keep = [j for j in range(len(y)) if j != i]
        model = fit([rows[j] for j in keep], {target: y[keep]}, kind=SELECT_KIND)
        choice = groups_of(model.models[target].features, target)
        counts[choice] = counts.get(choice, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def print_rows(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}  (n={next(iter(rows.values()))['n']})")
    print(f"  {'scorer':28s} {'tau':>7s} {'95% CI':>16s} {'rho':>7s} {'top-10':>7s}")
    for label, f in rows.items():
        print(f"  {label:28s} {f['tau']:+7.3f} [{f['lo']:+.2f}, {f['hi']:+.2f}] {f['rho']:+7.3f} "
              f"{f['top10']:>4d}/10" + (f"  (n={f['n']})" if "ceiling" in label else ""))


def ship(args: argparse.Namespace, truth: dict[str, dict[str, float]], feats: dict[str, dict[str, float]],
         table: dict, figures: dict, absolute: dict, what: str) -> None:
    """Fit the shipped kind on every architecture with features, per setting target, and write it."""
    targets = {t: v for t, v in truth.items() if not t.startswith("drop_") and len(v) >= 8}
    common = sorted(set().union(*(set(v) for v in targets.values())) & set(feats))  # each target: its own rows
    # +dirty: the fit's code, features or truth differ from that commit, so it would not reproduce from it
    commit = git_commit(("benchmarks/ranking.py", "benchmarks/ground_truth", "qnas/ranker.py"))
    provenance = {"ground_truth": what, "kind": SHIPPED_KIND, "targets": {t: TARGETS.get(t, "?") for t in targets},
                  "architectures": {t: sum(a in v for a in common) for t, v in targets.items()},
                  "git_commit": commit,
                  "command": "python benchmarks/ranking.py " + " ".join(sys.argv[1:]),
                  "features": {"predictor": table["predictor"], "val_size": table["val_size"],
                               "protocol": table["protocol"]}}
    # "mae": how far its predicted top-1 is off out of fold (Ranker.mean_error), beside the rank figures
    metrics = {t: {**figures[t].get(SHIPPED_LABEL, {}), "mae": absolute[t][SHIPPED_LABEL]["error"]["mae"]}
               for t in targets if t in figures}
    ranker = fit([feats[a] for a in common], {t: [v.get(a, math.nan) for a in common] for t, v in targets.items()},
                 kind=SHIPPED_KIND, predictor_digest=table["predictor_digest"], provenance=provenance,
                 metrics={"out_of_fold": metrics})
    ranker.save(args.ship)
    print(f"shipped ranker ({SHIPPED_KIND}, targets {', '.join(targets)}, {len(common)} architectures) -> {args.ship}: "
          + ", ".join(f"{t} {groups_of(ranker.models[t].features, t)}" for t in targets))


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--truth", choices=("v1", "v2"), default="v2", help="ground truth (default v2)")
    ap.add_argument("--store", type=existing_path, default=STORE, help=f"v2: the ground-truth store (default {STORE})")
    ap.add_argument("--budget", choices=list(BUDGETS), default=None,
                    help="v2: the training budget (default: the chosen one in the store's budget.json)")
    ap.add_argument("--features", type=existing_path, default=FEATURES, help=f"feature table (default {FEATURES})")
    ap.add_argument("--folds", type=non_negative_int, default=0,
                    help="cross-validation folds (default 0: leave-one-out, one model per architecture)")
    ap.add_argument("--kinds", default=",".join(MODEL_KINDS),
                    help=f"ranker models to compare ({', '.join(MODEL_KINDS)}; the shipped {SHIPPED_KIND} always)")
    ap.add_argument("--json", type=new_file, default=None, help="also write every score and figure here (a new file)")
    ap.add_argument("--compare", type=existing_path, default=None,
                    help="also rank with this fitted ranker JSON as it is (e.g. an earlier shipped one, from git show)")
    ap.add_argument("--ship", type=Path, default=None,
                    help="also fit the shipped ranker on all architectures and write it here "
                         "(e.g. qnas/predictors/fashion-mnist.ranker.json)")
    args = ap.parse_args(argv)
    if args.ship is not None and not args.ship.parent.is_dir():  # checked now, not after minutes of fitting
        ap.error(f"no directory {args.ship.parent} to write {args.ship.name} in")
    unknown = [k for k in args.kinds.split(",") if k and k not in MODEL_KINDS]
    if unknown:
        ap.error(f"--kinds: unknown {', '.join(unknown)} (of {', '.join(MODEL_KINDS)})")

    user: dict[str, dict[str, float]] = {}
    if args.truth == "v1":
        truth, seed1, splits, what = load_v1()
    else:
        budget = args.budget or json.loads((args.store / "budget.json").read_text())["budget"]
        truth, seed1, splits, what = load_v2(budget, args.store)
        user = read_v2([{"id": f"user-{n}", "arch": user_split.PREFIX + n} for n in user_split.names()], budget, 0,
                       args.store)
    table = json.loads(args.features.read_text())
    feats = table["features"]
    kinds = [k for k in args.kinds.split(",") if k]
    kinds += [SHIPPED_KIND] * (SHIPPED_KIND not in kinds)  # the last line reports the shipped kind
    print(f"ground truth {what}; features of predictor {table['predictor']} "
          f"(weights sha256 {table['predictor_digest'][:12]}), {table['val_size']} validation images")

    compared = None if args.compare is None else load_ranker(args.compare)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    absolute: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in truth}  # pooled absolute OOF, for the record
    all_scores: dict[str, dict[str, dict[str, float]]] = {}
    choices: dict[str, dict[str, int]] = {}
    for target, by_arch in truth.items():
        archs = sorted(a for a in by_arch if a in feats)
        if len(archs) < 8:
            continue
        y = np.array([by_arch[a] for a in archs])
        rows = [feats[a] for a in archs]
        folds = args.folds or len(archs)
        setting = target.removeprefix("drop_")
        scores: dict[str, np.ndarray] = {}
        # The drop is not shipped: its rows use the drop rule's incumbent in place of the shipped kind.
        main_kind = SELECT_KIND if target.startswith("drop_") else SHIPPED_KIND
        for kind in dict.fromkeys(main_kind if k == SHIPPED_KIND else k for k in kinds):
            label = f"ranker ({kind})" + (" [shipped]" if kind == main_kind else "")
            pooled, scores[label] = cross_val_scores(rows, y, kind=kind, folds=folds, target=target)
            absolute[target][label] = figure(y, pooled)
            if label == SHIPPED_LABEL:  # its predicted top-1 is what users read as "pred.": how far off
                absolute[target][label]["error"] = abs_error(y, pooled, archs)
        if compared is not None and target in compared.targets:
            scores[f"{args.compare.name} (as fitted)"] = compared.predict_many(rows)[target]
        scores["size-only ranker"] = cross_val_scores(rows, y, kind=main_kind, features=SIZE_FEATURES,
                                                      folds=folds)[1]
        ghn = np.array([r[f"ghn_top1_{setting}"] for r in rows])
        if target.startswith("drop_"):
            ghn = np.array([r["ghn_top1_fp32"] for r in rows]) - ghn
        scores["GHN"] = ghn
        scores["params"] = np.array([r["log_params"] for r in rows])
        scores["MACs"] = np.array([r["log_macs"] for r in rows])
        scores["synflow"] = np.array([r["log_synflow"] for r in rows])
        scores["NASWOT"] = np.array([r["naswot"] for r in rows])
        figures[target] = {}
        choices[target] = nested_choices(rows, y, target)
        all_scores[target] = {k: dict(zip(archs, v.tolist())) for k, v in scores.items()}
        figures[target].update({label: figure(y, pred) for label, pred in scores.items()})
        rep = [a for a in archs if a in seed1.get(target, {})]
        if len(rep) >= 5:
            yr, pr = np.array([by_arch[a] for a in rep]), np.array([seed1[target][a] for a in rep])
            figures[target]["seed-1 retrain (ceiling)"] = figure(yr, pr, min(10, len(rep)))

    for target, rows in figures.items():
        print_rows(target, rows)
        folds = choices[target]
        ghn = sum(c for k, c in folds.items() if "ghn" in k)
        print(f"  nested choices of {SELECT_KIND}: " + ", ".join(f"{k} {c}" for k, c in folds.items())
              + f" (a GHN group in {ghn} of {sum(folds.values())} folds)")
        if SHIPPED_LABEL in absolute[target]:  # not on the drops, whose shipped row is ridge-select's
            print_error("its predicted top-1 (absolute, out of fold)", absolute[target][SHIPPED_LABEL]["error"])
    user_figures = user_split_figures(truth, user, feats)
    for target, rows in user_figures.items():
        print_rows(f"user split, {target} (hand-written nets)", rows)
        print_error("the ranker's predicted top-1", rows[USER_RANKER]["error"])
    if args.json is not None:
        write_new(args.json, json.dumps({"figures": figures, "nested_choices": choices,
                                         "absolute_out_of_fold": absolute,
                                         "user_split": user_figures, "scores": all_scores},
                                        indent=1) + "\n")

    if args.ship is not None:
        ship(args, truth, feats, table, figures, absolute, what)

    def fig(target: str, label: str) -> str:
        v = figures.get(target, {}).get(label, {}).get("tau", math.nan)
        return f"{v:.3f}"

    n = next(iter(figures.get("w4a4", {}).values()), {}).get("n", 0)
    print(f"tau_score_w4a4={fig('w4a4', SHIPPED_LABEL)} tau_size_w4a4={fig('w4a4', 'size-only ranker')} "
          f"tau_ghn_w4a4={fig('w4a4', 'GHN')} tau_params_w4a4={fig('w4a4', 'params')} "
          f"tau_macs_w4a4={fig('w4a4', 'MACs')} n={n}"
          + "".join(f" tau_user_{k}_w4a4={user_figures['w4a4'][label]['tau']:.3f}"
                    for k, label in (("score", USER_RANKER), ("ghn", "GHN"), ("params", "params"),
                                     ("macs", "MACs")) if "w4a4" in user_figures)
          + "".join(f" mae_score_{t}={absolute[t][SHIPPED_LABEL]['error']['mae']:.2f}" for t in ("w4a4", "w2a2")
                    if SHIPPED_LABEL in absolute.get(t, {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
