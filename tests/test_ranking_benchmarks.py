"""The ranking benchmarks (benchmarks/ranking.py, budget_agreement.py, ranker_combinations.py,
pick_regret.py, tau_gap.py) on a tiny synthetic v2 store: 12 real convnets250k architectures whose trained accuracy is
a monotone function of their (synthetic) log parameters, every budget of the agreement study, the
hand-written user split, and a feature table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import load_benchmark

from qnas import ranker, user_split
from qnas.defaults import SETTINGS
from search_spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
N_ARCHS, N_AGREEMENT, N_SEED1 = 12, 10, 6
BUDGET = "k10e2"  # the store's budget.json: a copy of the longest budget's rows in the agreement study
GRAPH_FEATURES = ("weight_layers", "depth", "has_bn", "frac_k1", "frac_k3", "frac_k5plus", "log_ch_mean",
                  "log_ch_max", "log_ch_min",
                  *(f"n_{op}" for op in ("conv", "group_conv", "dil_conv", "linear", "bn", "max_pool", "avg_pool",
                                         "add", "concat")))


ranking = load_benchmark("ranking")
budget_agreement = load_benchmark("budget_agreement")
ranker_combinations = load_benchmark("ranker_combinations")
pick_regret = load_benchmark("pick_regret")
tau_gap = load_benchmark("tau_gap")


def _truth(log_params: float) -> tuple[float, float]:
    """(FP32, W4A4) trained top-1: monotone in log parameters."""
    return 0.70 + 0.04 * log_params, 0.60 + 0.05 * log_params


def _features(rng: np.random.Generator, log_params: float) -> dict[str, float]:
    """Plausible values of every feature qnas.ranker.candidate_features computes; the GHN's are noise."""
    log_macs = log_params + rng.uniform(1.5, 2.5)
    feats: dict[str, float] = {}
    for i, s in enumerate(SETTINGS):
        feats[f"ghn_top1_{s}"] = float(rng.uniform(0.5, 0.8) - 0.03 * i)
        feats[f"ghn_loss_{s}"] = float(rng.uniform(0.5, 1.5))
    feats.update(log_params=log_params, log_macs=log_macs, log_bytes_w4a4=log_params - 0.3,
                 log_bytes_w2a2=log_params - 0.6, log_bitops_w4a4=log_macs + 1.2, log_bitops_w2a2=log_macs + 0.6,
                 log_synflow=float(rng.uniform(5, 12)), naswot=float(rng.uniform(500, 2000)))
    feats.update({name: float(rng.uniform(0, 8)) for name in GRAPH_FEATURES})
    feats.update({f"ghn_emb_{i}": float(rng.normal()) for i in range(8)})
    return feats


def _result(entry: dict, budget: str, seed: int, fp32: float, w4a4: float) -> dict:
    """A result row as benchmarks/ground_truth.py's Worker writes it (the fields the benchmarks read)."""
    prov = {"provenance": {"cpu_seconds": 60.0, "git_commit": "0" * 40}}
    ptq = {"test_top1_fp32": fp32, "test_top1_w8a8-channel": fp32 - 0.002, "test_top1_w4a8-channel": fp32 - 0.01,
           "test_top1_w4a4-channel": w4a4 - 0.06, "test_top1_w2a2-channel": 0.3,
           "test_top1_w4a4-channel-fl8": w4a4 - 0.02, "test_top1_w2a2-channel-fl8": 0.35}
    return {"key": f"{entry['id']}_{budget}_s{seed}", "id": entry["id"], "arch": entry["arch"], "budget": budget,
            "seed": seed, "stages": {"fp32": {"val_top1": fp32, **prov}, "ptq": {**ptq, **prov},
                                     "faq_w4a4": {"test_top1": w4a4, "test_top1_before": w4a4 - 0.02, **prov}}}


def _store(tmp_path: Path, *, user: bool = True) -> tuple[Path, Path]:
    """A v2 store and a feature table; the truth at every budget but the two shortest is :func:`_truth`."""
    rng = np.random.default_rng(0)
    space = get_space("convnets250k")
    archs = [{"id": f"id-{i:03d}", "split": "id", "index": i, "arch": space.to_string(g)}
             for i, g in enumerate(space.load_split("id")[:N_ARCHS])]
    users = [{"id": f"user-{n}", "arch": user_split.PREFIX + n} for n in user_split.names()] if user else []
    log_params = {a["arch"]: float(rng.uniform(4.0, 6.5)) for a in archs + users}
    for a in archs:
        a["params"] = round(10 ** log_params[a["arch"]])
    store = tmp_path / "v2"
    (store / "results").mkdir(parents=True)
    ids = [a["id"] for a in archs]
    plan = {"space": "convnets250k", "dataset": "fashion-mnist", "architectures": archs,
            "agreement": ids[:N_AGREEMENT], "seed1": ids[:N_SEED1]}
    (store / "architectures.json").write_text(json.dumps(plan))
    (store / "budget.json").write_text(json.dumps({"budget": BUDGET}))

    def write(entry: dict, budget: str, seed: int, fp32: float, w4a4: float) -> None:
        row = _result(entry, budget, seed, fp32, w4a4)
        (store / "results" / f"{row['key']}.json").write_text(json.dumps(row))

    for a in archs[:N_AGREEMENT]:  # the agreement study: noise at the shortest budgets, k20e2 not run
        for budget in ("s63", "k10e1"):
            write(a, budget, 0, *rng.uniform(0.6, 0.9, 2))
        write(a, "k20e5", 0, *_truth(log_params[a["arch"]]))
    for a in archs + users:  # the truth phase at BUDGET (and the user phase)
        write(a, BUDGET, 0, *_truth(log_params[a["arch"]]))
    for a in archs[:N_SEED1]:
        write(a, BUDGET, 1, *(np.array(_truth(log_params[a["arch"]])) + rng.normal(0, 0.005, 2)))
    table = {"predictor_digest": "0" * 64, "predictor": "synthetic", "feature_version": 1, "val_size": 1000,
             "protocol": "calibrated/channel/a2p99.5/fl8/w8sym",
             "features": {arch: _features(rng, lp) for arch, lp in log_params.items()}}
    features = tmp_path / "features.json"
    features.write_text(json.dumps(table))
    return store, features


def _figures(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split())


@pytest.fixture(autouse=True)
def _few_resamples(monkeypatch):
    for mod in (ranking, budget_agreement, pick_regret, tau_gap):  # the intervals' resamples dominate the run time
        monkeypatch.setattr(mod, "N_BOOT", 50)
    monkeypatch.setattr(ranker, "BAGS", 3)  # and the shipped kind's bootstrap fits


def test_ranking_on_a_synthetic_store(tmp_path, capsys):
    store, features = _store(tmp_path)
    out_json = tmp_path / "ranking.json"
    assert ranking.main(["--store", str(store), "--features", str(features), "--kinds", "ridge-select",
                         "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    figures = _figures(out.strip().splitlines()[-1])
    assert {"tau_score_w4a4", "tau_size_w4a4", "tau_ghn_w4a4", "tau_params_w4a4", "tau_macs_w4a4", "n",
            "tau_user_score_w4a4", "tau_user_ghn_w4a4", "tau_user_params_w4a4", "tau_user_macs_w4a4",
            "mae_score_w4a4"} == set(figures)  # the synthetic store has no W2A2 stage
    assert figures["n"] == str(N_ARCHS) and f"at budget {BUDGET}" in out  # the budget from the store's budget.json
    assert float(figures["tau_params_w4a4"]) == 1.0  # the truth is a monotone function of log parameters
    assert float(figures["tau_score_w4a4"]) > 0.6 and float(figures["tau_user_params_w4a4"]) == 1.0
    assert "seed-1 retrain (ceiling)" in out and "user split, w4a4" in out
    # the truth follows log parameters, which only the size group carries: most folds choose it
    choices = json.loads(out_json.read_text())["nested_choices"]["w4a4"]
    assert sum(choices.values()) == N_ARCHS and sum(c for k, c in choices.items() if "size" in k) > N_ARCHS // 2
    assert "nested choices of ridge-select" in out
    written = json.loads(out_json.read_text())
    assert written["figures"]["w4a4"][f"ranker ({ranking.SHIPPED_KIND}) [shipped]"]["n"] == N_ARCHS
    assert written["user_split"]["w4a4"]["params"]["n"] == len(user_split.names())
    # how far the predicted top-1 is off, in points: on the last line as in the record, and printed per target
    error = written["absolute_out_of_fold"]["w4a4"][f"ranker ({ranking.SHIPPED_KIND}) [shipped]"]["error"]
    assert figures["mae_score_w4a4"] == f"{error['mae']:.2f}" and 0 < error["mae"] <= abs(error["worst"])
    assert f"mean absolute error {error['mae']:.2f} points" in out
    assert "error" in written["user_split"]["w4a4"]["ranker (fitted on the space)"]


def test_the_absolute_error_is_in_points_and_names_the_worst_net():
    e = ranking.abs_error(np.array([0.90, 0.80, 0.70]), np.array([0.91, 0.78, 0.70]), ["a", "b", "c"])
    assert e["mae"] == pytest.approx(1.0) and e["bias"] == pytest.approx(-1 / 3)
    assert e["worst"] == pytest.approx(-2.0) and e["worst_arch"] == "b"


def test_ranker_combinations_on_a_synthetic_store(tmp_path, capsys, monkeypatch):
    store, features = _store(tmp_path)
    rule = _rule(tmp_path / "r.json", store, N_ARCHS, 6)  # every net seen: never read
    assert ranker_combinations.main(["--store", str(store), "--features", str(features), "--targets", "w4a4",
                                     "--rule", str(rule)]) == 0
    figures = _figures(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {f"tau_{p.replace('-', '_')}_w4a4" for p in ranker_combinations.PROCEDURES} | {"n"}
    assert figures["n"] == str(N_ARCHS)
    # The truth is monotone in log parameters, which the size group carries: every combination ranks it.
    assert all(float(v) > 0.6 for k, v in figures.items() if k != "n")
    with pytest.raises(SystemExit) as exc:  # a setting without rows: one line, exit 2
        ranker_combinations.main(["--store", str(store), "--features", str(features), "--targets", "w3a3"])
    assert exc.value.code == 2 and "w3a3" in capsys.readouterr().err


def _rule(path: Path, store: Path, n_seen: int, min_new: int, **fields: object) -> Path:
    ids = [a["id"] for a in json.loads((store / "architectures.json").read_text())["architectures"]]
    path.write_text(json.dumps({"incumbent": "select", "candidate": "avg-all", "targets": ["w4a4"],
                                "min_new_nets": min_new, "seen": ids[:n_seen], **fields}))
    return path


def test_the_preregistered_rule_is_read_only_on_enough_unseen_nets(tmp_path, capsys, monkeypatch):
    store, features = _store(tmp_path)
    monkeypatch.setattr(ranker_combinations, "PROCEDURES", ("select", "avg-all"))  # the rule's two, fast
    args = ["--store", str(store), "--features", str(features), "--targets", "w4a4"]
    # 4 new nets of the 6 the rule asks for: counted, not read
    assert ranker_combinations.main(args + ["--rule", str(_rule(tmp_path / "r.json", store, 8, 6))]) == 0
    out = capsys.readouterr().out
    assert "w4a4 4 of 6 new nets trained; not read yet" in out and "rule_ships" not in out
    assert ranker_combinations.main(args + ["--rule", str(_rule(tmp_path / "r.json", store, 6, 6))]) == 0
    figures = _figures(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["rule_ships"] in {"select", "avg-all"}
    # the verdict follows the taus on the new nets: the candidate must beat the incumbent
    new = {p: float(figures[f"tau_new_{p.replace('-', '_')}_w4a4"]) for p in ("select", "avg-all")}
    assert figures["rule_ships"] == ("avg-all" if new["avg-all"] > new["select"] else "select")
    (tmp_path / "bad.json").write_text(json.dumps({"incumbent": "select", "candidate": "magic"}))
    with pytest.raises(SystemExit) as exc:
        ranker_combinations.main(args + ["--rule", str(tmp_path / "bad.json")])
    assert exc.value.code == 2 and "bad.json" in capsys.readouterr().err


def test_a_rule_already_read_keeps_its_recorded_decision(tmp_path, capsys, monkeypatch):
    store, features = _store(tmp_path)
    monkeypatch.setattr(ranker_combinations, "PROCEDURES", ("select", "avg-all"))
    args = ["--store", str(store), "--features", str(features), "--targets", "w4a4"]
    for ships in ("select", "avg-all"):  # whatever today's new nets say, the reading stands
        read = {"session": 7, "commit": "abc1234", "ships": ships}
        assert ranker_combinations.main(args + ["--rule", str(_rule(tmp_path / "r.json", store, 6, 6, read=read))]) == 0
        out = capsys.readouterr().out
        figures = _figures(out.strip().splitlines()[-1])
        assert figures["rule_decided"] == ships and "rule_ships" not in figures and "tau_new_avg_all_w4a4" in figures
        assert f"read in session 7 (commit abc1234), {ships} decided, not re-decided" in out
    # a store with fewer new nets than the rule asked for (another machine's, a subset): still its decision
    few = _rule(tmp_path / "r.json", store, 8, 6, read={"session": 7, "commit": "abc1234", "ships": "avg-all"})
    assert ranker_combinations.main(args + ["--rule", str(few)]) == 0
    out = capsys.readouterr().out
    assert _figures(out.strip().splitlines()[-1])["rule_decided"] == "avg-all" and "not read yet" not in out
    for read, why in (({"session": 7, "commit": "abc1234", "ships": "ridge"}, "neither of its procedures"),
                      ({"commit": "abc1234", "ships": "select"}, "session"),
                      ({"session": "seven", "commit": "abc1234", "ships": "select"}, "a session number")):
        bad = _rule(tmp_path / "bad.json", store, 6, 6, read=read)
        with pytest.raises(SystemExit) as exc:
            ranker_combinations.main(args + ["--rule", str(bad)])
        assert exc.value.code == 2 and why in capsys.readouterr().err


def test_a_named_rule_on_its_own_targets_beside_the_committed_ones(tmp_path, capsys, monkeypatch):
    store, features = _store(tmp_path)
    monkeypatch.setattr(ranker_combinations, "PROCEDURES", ("select", "avg-all", "ridge"))
    drop = _rule(tmp_path / "drop.json", store, 6, 6, name="drop", candidate="ridge", targets=["drop_w4a4"])
    kept = _rule(tmp_path / "r.json", store, 6, 7)  # 6 new nets of 7: not read
    assert ranker_combinations.main(["--store", str(store), "--features", str(features), "--targets", "w4a4",
                                     "--rule", str(drop), "--rule", str(kept)]) == 0
    out = capsys.readouterr().out
    figures = _figures(out.strip().splitlines()[-1])
    # the drop target is computed for the rule's two procedures only; the study's target for all three
    assert {k for k in figures if k.endswith("_drop_w4a4") and k.startswith("tau_") and "new" not in k} == {
        "tau_select_drop_w4a4", "tau_ridge_drop_w4a4"} and "tau_ridge_w4a4" in figures
    new = {p: float(figures[f"tau_new_drop_{p}_drop_w4a4"]) for p in ("select", "ridge")}
    assert figures["rule_drop_ships"] == ("ridge" if new["ridge"] > new["select"] else "select")
    assert "rule_ships" not in figures and "rule (avg-all vs the incumbent select): w4a4 6 of 7" in out


def test_the_committed_rules_are_readable():
    paths = sorted((ROOT / "benchmarks" / "ground_truth").glob("ranker_rule*.json"))
    assert [p.name for p in paths] == [
        "ranker_rule.json", "ranker_rule_avg.json", "ranker_rule_drop.json", "ranker_rule_pool.json"]
    for path in paths:  # well-formed, naming only procedures the study has, and each read once already
        assert ranker_combinations.read_rule(path)["seen"] and ranker_combinations.read_rule(path)["read"]["commit"]


def test_the_pooled_label_is_in_the_targets_units_and_skips_missing_settings(tmp_path):
    own = np.array([0.80, 0.85, 0.90, 0.95])
    same = np.column_stack([own * 2 + 1, own - 0.1, own])  # three settings in one order: the label is w4a4's own
    assert np.allclose(ranker_combinations.pooled_label(same, "w4a4"), own)
    noisy = same.copy()
    noisy[:, 0] = [0.95, 0.80, 0.85, 0.90]  # FP32 ranks the first net best: the pooled label lifts it
    noisy[1, 1] = np.nan  # a net without a W4A8 row is pooled over the two settings it has
    pooled = ranker_combinations.pooled_label(noisy, "w4a4")
    assert np.all(np.isfinite(pooled))
    assert pooled[0] > own[0] and np.argmax(pooled) == 3
    rule = tmp_path / "pool.json"
    rule.write_text(json.dumps({"incumbent": "select", "candidate": "pool-select", "targets": ["w2a2"],
                                "min_new_nets": 1, "seen": ["id-000"]}))
    with pytest.raises(ValueError, match="pool-select ranks only"):
        ranker_combinations.read_rule(rule)


def test_ranking_without_the_user_split(tmp_path, capsys):
    store, features = _store(tmp_path, user=False)
    assert ranking.main(["--store", str(store), "--features", str(features), "--kinds", "ridge-select",
                         "--budget", BUDGET]) == 0
    out = capsys.readouterr().out
    assert "user split" not in out and "tau_user" not in out and "tau_score_w4a4=" in out


def test_ranking_refuses_an_output_it_could_not_write_before_fitting(tmp_path, capsys):
    store, features = _store(tmp_path, user=False)
    for flag in ("--json", "--ship"):
        with pytest.raises(SystemExit) as exc:
            ranking.main(["--store", str(store), "--features", str(features), flag, str(tmp_path / "no" / "x.json")])
        captured = capsys.readouterr()
        assert exc.value.code == 2 and "no directory" in captured.err
        assert "ground truth" not in captured.out  # refused before anything was loaded or fitted


def test_a_shipped_ranker_can_be_compared_as_fitted(tmp_path, capsys):
    store, features = _store(tmp_path, user=False)
    shipped = tmp_path / "old.ranker.json"
    base = ["--store", str(store), "--features", str(features), "--kinds", "ridge-select"]
    assert ranking.main([*base, "--ship", str(shipped)]) == 0
    out = capsys.readouterr().out
    assert f"shipped ranker ({ranking.SHIPPED_KIND}" in out and "w4a4 size" in out and shipped.exists()
    provenance = json.loads(shipped.read_text())["provenance"]  # what a refit from its commit needs
    # the shipped file says how far its predictions were off out of fold, the figure ranking.py --json records
    fitted, mae = ranker.load_ranker(shipped), json.loads(shipped.read_text())["metrics"]["out_of_fold"]["w4a4"]["mae"]
    assert fitted.mean_error("w4a4") == pytest.approx(mae) and 0 < mae < 5
    assert fitted.mean_error("w2a2") is None  # the synthetic store has no W2A2 stage: nothing recorded
    assert provenance["kind"] == ranking.SHIPPED_KIND and len(provenance["git_commit"].removesuffix("+dirty")) == 40
    assert ranking.main([*base, "--compare", str(shipped)]) == 0
    assert "old.ranker.json (as fitted)" in capsys.readouterr().out


def test_budget_agreement_chooses_the_copy_of_the_longest_budget(tmp_path, capsys):
    store, _ = _store(tmp_path)
    assert budget_agreement.main(["--store", str(store)]) == 0
    figures = _figures(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(figures) == {*(f"budget_tau_{b}" for b in budget_agreement.BUDGETS), "chosen", "n"}
    assert figures["budget_tau_k10e2"] == "1.000" and figures["budget_tau_k20e5"] == "1.000"
    assert figures["budget_tau_k20e2"] == "nan"  # not run
    assert float(figures["budget_tau_s63"]) < 0.85 and float(figures["budget_tau_k10e1"]) < 0.85
    assert figures["chosen"] == BUDGET and figures["n"] == str(N_AGREEMENT)


def test_budget_agreement_writes_its_choice_and_never_replaces_another(tmp_path, capsys):
    store, _ = _store(tmp_path)
    (store / "budget.json").unlink()
    assert budget_agreement.main(["--store", str(store), "--write"]) == 0
    written = json.loads((store / "budget.json").read_text())
    assert written["budget"] == BUDGET and written["n"] == N_AGREEMENT and written["threshold"] == 0.85
    assert budget_agreement.main(["--store", str(store), "--write"]) == 0  # the same choice again: fine
    (store / "budget.json").write_text(json.dumps({"budget": "k20e5"}))
    with pytest.raises(SystemExit) as exc:
        budget_agreement.main(["--store", str(store), "--write"])
    assert exc.value.code == 2 and "already chose 'k20e5'" in capsys.readouterr().err
    assert json.loads((store / "budget.json").read_text()) == {"budget": "k20e5"}


def test_budget_agreement_decides_early_only_when_no_cheaper_budget_can_qualify(tmp_path, capsys):
    store, _ = _store(tmp_path)
    rows = store / "results"
    (rows / "id-000_k20e5_s0.json").unlink()  # one architecture unfinished at the longest budget
    assert budget_agreement.main(["--store", str(store)]) == 0
    assert _figures(capsys.readouterr().out.strip().splitlines()[-1])["chosen"] == "None"  # k10e2 may still qualify
    for budget in ("k10e2", "k20e2"):  # now both disagree with the longest budget: reversed rankings
        for src in rows.glob("*_k20e5_s0.json"):
            row = json.loads(src.read_text())
            ptq, faq = row["stages"]["ptq"], row["stages"]["faq_w4a4"]
            ptq["test_top1_fp32"], faq["test_top1"] = 2 - ptq["test_top1_fp32"], 2 - faq["test_top1"]
            row.update(key=row["key"].replace("k20e5", budget), budget=budget)
            (rows / f"{row['key']}.json").write_text(json.dumps(row))
    assert budget_agreement.main(["--store", str(store)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert _figures(out[-1])["chosen"] == "k20e5" and "decided with 9 of 10 finished" in out[-2]


def test_best_case_tau_bounds_every_completion():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=6), rng.normal(size=6)
    bound = budget_agreement.best_case_tau(x, y, 8)
    for _ in range(200):  # any two more architectures give at most the bound
        xs, ys = np.append(x, rng.normal(size=2)), np.append(y, rng.normal(size=2))
        assert budget_agreement.tau(xs, ys) <= bound + 1e-12
    assert budget_agreement.best_case_tau(x, y, 6) == pytest.approx(budget_agreement.tau(x, y))


def _scored_store(tmp_path: Path, capsys, user: bool = True) -> tuple[Path, Path]:
    """A synthetic store and its ``ranking.py --json`` scores, what pick_regret.py and tau_gap.py read."""
    store, features = _store(tmp_path, user=user)
    scores = tmp_path / "ranking.json"
    assert ranking.main(["--store", str(store), "--features", str(features), "--kinds", "ridge",
                         "--json", str(scores)]) == 0
    capsys.readouterr()
    return store, scores


def test_regret_is_zero_for_the_true_order_and_counts_each_bound_once():
    truth = np.array([0.50, 0.70, 0.60, 0.80, 0.75, 0.90, 0.85])
    params = np.array([1, 2, 3, 4, 4, 6, 7])  # two nets of size 4: one bound, admitting both
    assert pick_regret.bound_ends(np.sort(params)) == [4, 5, 6]
    assert pick_regret.mean_regret(truth, params, truth, k=1) == 0.0
    # "the biggest that fits", the second net of size 4 first: 0.75, 0.90, 0.85, regrets 5, 0, 5 points
    biggest = pick_regret.mean_regret(truth, params, params + np.array([0, 0, 0, 0, 0.5, 0, 0]), k=1)
    assert biggest == pytest.approx(100 * (0.05 + 0 + 0.05) / 3)
    assert pick_regret.mean_regret(truth, params, -truth, k=1) == pytest.approx(100 * (0.30 + 0.40 + 0.40) / 3)
    assert pick_regret.mean_regret(truth, params, -truth, k=len(truth)) == 0.0  # top k of everything: the best
    # a scorer that ties everything picks at random: regret@1 is the best minus the mean below each bound
    flat = np.zeros(len(truth))
    expected = [truth[: i + 1].max() - truth[: i + 1].mean() for i in (4, 5, 6)]
    assert pick_regret.mean_regret(truth, params, flat, k=1) == pytest.approx(100 * np.mean(expected))
    # top 2 of three tied nets (truths 3, 2, 1): the best is 3 in 2 of the 3 pairs, else 2
    assert pick_regret.expected_best(np.array([1.0, 3.0, 2.0]), np.zeros(3), 2) == pytest.approx((3 + 3 + 2) / 3)
    assert pick_regret.expected_best(np.array([1.0, 3.0, 2.0]), np.array([5.0, 0, 0]), 2) == pytest.approx(2.5)


def test_pick_regret_on_a_synthetic_store(tmp_path, capsys):
    store, scores = _scored_store(tmp_path, capsys)
    assert pick_regret.main(["--scores", str(scores), "--store", str(store), "--target", "w4a4"]) == 0
    out = capsys.readouterr().out
    figures = _figures(out.strip().splitlines()[-1])
    assert set(figures) == {"regret_score_w4a4", "regret_size_w4a4", "regret_ghn_w4a4", "regret_params_w4a4",
                            "regret_macs_w4a4", "bounds_w4a4"}
    # the truth rises with parameters: "the biggest that fits" is always the best pick
    assert float(figures["regret_params_w4a4"]) == 0.0 and figures["bounds_w4a4"] == str(N_ARCHS - 4)
    assert "regret@3" in out


@pytest.mark.parametrize("args, message", [
    (["--top", "0"], "--top"),
    (["--top", "one"], "--top"),
    (["--target", "w3a3"], "--target w3a3"),
])
def test_pick_regret_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    store, scores = _scored_store(tmp_path, capsys, user=False)
    with pytest.raises(SystemExit) as exc:
        pick_regret.main(["--scores", str(scores), "--store", str(store), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("bench", [pick_regret, tau_gap], ids=["pick_regret", "tau_gap"])
def test_a_scores_file_must_be_a_ranking_output(bench, tmp_path, capsys):
    assert bench.run(lambda: bench.main(["--scores", str(tmp_path / "missing.json")])) == 2
    assert "ranking.py --json" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"scores": {"w4a4": {"GHN": {}}}}')  # no shipped ranker's scores
    assert bench.run(lambda: bench.main(["--scores", str(other)])) == 2
    assert "not a ranking.py --json output" in capsys.readouterr().err


def test_the_tau_gap_is_paired():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=40)
    noisy = truth + rng.normal(size=40)
    holes = noisy.copy()
    holes[:10] = np.nan  # a baseline that could not score 10 nets is compared on the other 30
    f = tau_gap.gaps(truth, truth, {"noisy": noisy, "same": truth.copy(), "holes": holes})
    assert f["noisy"]["gap"] == pytest.approx(1 - tau_gap.tau(truth, noisy)) and f["noisy"]["lo"] > 0
    # a scorer against itself: every resample's difference is 0, however wide each tau's own interval is
    assert f["same"]["gap"] == f["same"]["lo"] == f["same"]["hi"] == 0.0
    assert f["holes"]["n"] == 30 and f["holes"]["gap"] == pytest.approx(1 - tau_gap.tau(truth[10:], noisy[10:]))


def test_tau_gap_on_a_synthetic_store(tmp_path, capsys):
    store, scores = _scored_store(tmp_path, capsys, user=False)
    assert tau_gap.main(["--scores", str(scores), "--store", str(store), "--target", "fp32,w4a4"]) == 0
    out = capsys.readouterr().out
    figures = _figures(out.strip().splitlines()[-1])
    assert set(figures) == {f"{k}_{t}" for k in ("gap", "vs", "gap_lo", "vs_lo", "n") for t in ("fp32", "w4a4")}
    assert figures["n_w4a4"] == str(N_ARCHS) and "size-only ranker" in out and "NASWOT" in out
    # the gap to the closest baseline is ranking.py's own two taus apart
    fig = json.loads(scores.read_text())["figures"]["w4a4"]
    shipped = next(label for label in fig if label.endswith("[shipped]"))
    expect = {label: fig[shipped]["tau"] - fig[label]["tau"] for label in tau_gap.BASELINES if label in fig}
    closest = min(expect, key=expect.__getitem__)
    assert figures["vs_w4a4"] == tau_gap.BASELINES[closest]
    assert float(figures["gap_w4a4"]) == pytest.approx(expect[closest], abs=5e-4)
    # the truth rises with parameters: params ranks perfectly, no resample puts the ranker above it
    assert expect["params"] <= 0 and float(figures["gap_lo_w4a4"]) <= 0
    with pytest.raises(SystemExit) as exc:
        tau_gap.main(["--scores", str(scores), "--store", str(store), "--target", "w3a3"])
    assert exc.value.code == 2 and "--target w3a3" in capsys.readouterr().err
