"""The ranker (qnas.ranker): features, fitting, out-of-fold prediction, and a file format that runs no code."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from qnas.errors import QnasError
from qnas.graph import to_graph
from qnas.predictors import available_predictors
from qnas.ranker import (
    Ranker,
    candidate_features,
    cross_val_predict,
    cross_val_scores,
    feature_groups,
    fit,
    graph_features,
    load_ranker,
    loo_tau,
    macs,
    ranker_path,
)
from search_spaces import convnets250k


def _rows(n: int = 40, seed: int = 0) -> tuple[list[dict[str, float]], np.ndarray]:
    """Synthetic feature rows whose target is a noisy function of two of the features."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        r = {"log_params": float(rng.uniform(4, 7)), "log_macs": float(rng.uniform(6, 9)),
             "ghn_top1_w4a4": float(rng.uniform(0.3, 0.8)), "noise": float(rng.normal())}
        r.update({f"ghn_emb_{i}": float(rng.normal()) for i in range(6)})
        rows.append(r)
    y = np.array([0.5 * r["ghn_top1_w4a4"] + 0.05 * r["log_params"] + 0.01 * rng.normal() for r in rows])
    return rows, y


@pytest.mark.parametrize("kind", ["ridge", "ridge-select", "bag-select", "avg-all", "lgbm", "lgbm-rank"])
def test_json_round_trip_predicts_the_same(kind: str, tmp_path: Path) -> None:
    rows, y = _rows()
    ranker = fit(rows, {"w4a4": y}, kind=kind, predictor_digest="abc", provenance={"truth": "synthetic"})
    path = ranker.save(tmp_path / "r.ranker.json")
    again = load_ranker(path, predictor_digest="abc")
    assert np.allclose(ranker.predict_many(rows)["w4a4"], again.predict_many(rows)["w4a4"])
    assert again.provenance == {"truth": "synthetic"} and again.targets == ("w4a4",)


def test_out_of_fold_predictions_rank_a_learnable_target() -> None:
    rows, y = _rows(60)
    oof = cross_val_predict(rows, y, kind="ridge", folds=5)
    assert stats.kendalltau(y, oof).statistic > 0.6
    size_only = cross_val_predict(rows, y, kind="ridge", features=["log_params", "log_macs"], folds=5)
    assert stats.kendalltau(y, size_only).statistic < stats.kendalltau(y, oof).statistic


def test_ridge_select_keeps_the_groups_that_carry_the_target() -> None:
    """A target made of NASWOT and size: the selected ridge uses those groups, not the GHN's or the shape's,
    is stored as a plain ridge on them, and ranks the target out of fold (the selection nested in each fold)."""
    rng = np.random.default_rng(1)
    cols = [c for g in feature_groups("w4a4").values() for c in g]
    rows = [{c: float(rng.normal()) for c in cols} for _ in range(30)]
    y = np.array([r["naswot"] + 0.7 * r["log_params"] + 0.3 * rng.normal() for r in rows])
    model = fit(rows, {"w4a4": y}, kind="ridge-select", components=0).models["w4a4"]
    assert model.kind == "ridge"
    assert {"naswot", "log_params"} <= set(model.features) <= {"naswot", "log_synflow", "log_params", "log_macs"}
    select = cross_val_predict(rows, y, kind="ridge-select", folds=30, relative=True, target="w4a4")
    assert stats.kendalltau(y, select).statistic > 0.6
    # a drop target reads its setting's GHN columns; fp32 has no separate setting group
    assert feature_groups("drop_w2a2")["ghn_setting"] == ("ghn_top1_w2a2", "ghn_loss_w2a2")
    assert "ghn_setting" not in feature_groups("fp32")


def test_loo_tau_is_the_tau_of_sklearn_ridgecv_leave_one_out_predictions() -> None:
    """loo_tau scores alphas with its own mean squared error (sklearn's scorer validated its inputs at every
    alpha, most of a fit's time): the same alpha and the same predictions as sklearn's, bit for bit."""
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(3)
    for trial in range(40):
        n, k = int(rng.integers(6, 40)), int(rng.integers(1, 8))
        x = rng.normal(size=(n, k)) * rng.uniform(0.1, 10, size=k)
        y = x @ rng.normal(size=k) * rng.uniform(0, 2) + rng.normal(size=n)
        z = (x - x.mean(0)) / x.std(0)
        alphas = tuple(np.logspace(-2, 3, 21).tolist())
        ref = RidgeCV(alphas=alphas, store_cv_results=True, scoring="neg_mean_squared_error").fit(z, y)
        loo = ref.cv_results_[:, alphas.index(ref.alpha_)]
        want = stats.kendalltau(y, loo - (y.sum() - y) / (n - 1)).statistic
        assert loo_tau(x, y) == want, trial


def test_bag_select_is_the_mean_of_ridge_select_on_bootstrap_resamples() -> None:
    """The stored bag-select model is one linear model that predicts the mean of its BAGS ridge-select fits,
    each on the unique rows of a seeded bootstrap resample, even where the fits chose different features (the
    stored model is on their union); another seed draws other resamples."""
    from qnas import ranker as rk

    rng = np.random.default_rng(2)
    cols = [c for g in feature_groups("w4a4").values() for c in g]
    rows = [{c: float(rng.normal()) for c in cols} for _ in range(30)]
    y = np.array([r["naswot"] + 0.5 * r["ghn_top1_w4a4"] + 0.5 * r["log_params"] + 0.5 * rng.normal()
                  for r in rows])
    bagged = fit(rows, {"w4a4": y}, kind="bag-select", components=0, seed=3)
    assert bagged.models["w4a4"].kind == "ridge"
    rng = np.random.default_rng(3)
    bags = [np.unique(rng.choice(len(y), len(y))) for _ in range(rk.BAGS)]
    fits = [fit([rows[i] for i in b], {"w4a4": y[b]}, kind="ridge-select", components=0) for b in bags]
    assert len({f.models["w4a4"].features for f in fits}) >= 2  # the union is exercised
    assert set(bagged.models["w4a4"].features) == set().union(*(f.models["w4a4"].features for f in fits))
    by_hand = np.mean([f.predict_many(rows)["w4a4"] for f in fits], axis=0)
    assert np.allclose(bagged.predict_many(rows)["w4a4"], by_hand)
    other = fit(rows, {"w4a4": y}, kind="bag-select", components=0, seed=4).predict_many(rows)["w4a4"]
    assert not np.allclose(other, by_hand)


def test_avg_all_is_the_mean_of_the_ridges_on_every_small_subset_of_groups() -> None:
    """avg-all: one stored linear model predicting the mean of the ridges on every subset of at most
    SELECT_MAX_GROUPS feature groups (5 groups at w4a4: 5 + 10 + 10 subsets); fp32 has no setting group."""
    from itertools import combinations

    from qnas.ranker import SELECT_MAX_GROUPS

    rng = np.random.default_rng(4)
    groups = feature_groups("w4a4")
    rows = [{c: float(rng.normal()) for g in groups.values() for c in g} for _ in range(25)]
    y = np.array([r["naswot"] + 0.5 * r["log_params"] + 0.5 * rng.normal() for r in rows])
    model = fit(rows, {"w4a4": y}, kind="avg-all", components=0).models["w4a4"]
    assert model.kind == "ridge" and set(model.features) == {c for g in groups.values() for c in g}
    subsets = [[c for g in combo for c in groups[g]] for k in range(1, SELECT_MAX_GROUPS + 1)
               for combo in combinations(groups, k)]
    assert len(subsets) == 25
    want = np.mean([fit(rows, {"w4a4": y}, kind="ridge", features=cols).predict_many(rows)["w4a4"]
                    for cols in subsets], axis=0)
    np.testing.assert_allclose(fit(rows, {"w4a4": y}, kind="avg-all", components=0).predict_many(rows)["w4a4"],
                               want, rtol=0, atol=1e-12)
    assert "ghn_top1_w4a4" not in fit(rows, {"fp32": y}, kind="avg-all", components=0).models["fp32"].features


def test_bag_select_fits_the_fewest_rows_fit_accepts() -> None:
    """Five rows: some bootstrap resamples hold one or two distinct rows, where a selection cannot be
    scored; those are drawn again, so every seed fits."""
    rows, y = _rows(5)
    for seed in range(40):
        assert np.isfinite(fit(rows, {"w4a4": y}, kind="bag-select", components=0, seed=seed)
                           .predict_many(rows)["w4a4"]).all()


def test_cross_val_scores_are_the_absolute_and_relative_predictions() -> None:
    """Each held-out row: its fold model's prediction, and that minus the model's mean prediction on its
    own training rows; ``cross_val_predict`` returns one of the two."""
    from sklearn.model_selection import KFold

    rows, y = _rows(20)
    absolute, relative = cross_val_scores(rows, y, kind="ridge", folds=5, target="w4a4")
    want_abs, want_rel = np.empty(20), np.empty(20)
    for train, test in KFold(n_splits=5, shuffle=True, random_state=0).split(y):
        model = fit([rows[i] for i in train], {"w4a4": y[train]}, kind="ridge")
        pred = model.predict_many([rows[i] for i in test])["w4a4"]
        want_abs[test] = pred
        want_rel[test] = pred - model.predict_many([rows[i] for i in train])["w4a4"].mean()
    assert np.allclose(absolute, want_abs) and np.allclose(relative, want_rel)
    assert not np.allclose(absolute, relative)
    assert np.allclose(relative, cross_val_predict(rows, y, kind="ridge", folds=5, relative=True, target="w4a4"))


def test_each_target_is_fitted_on_the_rows_measured_at_it() -> None:
    rows, y = _rows(30)
    partial = y.copy()
    partial[10:] = np.nan  # W2A2 measured on the first 10 only
    ranker = fit(rows, {"w4a4": y, "w2a2": partial})
    alone = fit(rows[:10], {"w2a2": y[:10]}, components=0, features=["log_params", "ghn_top1_w4a4", "noise"])
    both = fit(rows, {"w4a4": y, "w2a2": partial}, components=0, features=["log_params", "ghn_top1_w4a4", "noise"])
    assert np.allclose(alone.predict_many(rows)["w2a2"], both.predict_many(rows)["w2a2"])
    assert np.isfinite(ranker.predict_many(rows)["w2a2"]).all()
    partial[4:] = np.nan
    with pytest.raises(QnasError, match="at least 5 trained architectures, got 4 for 'w2a2'"):
        fit(rows, {"w4a4": y, "w2a2": partial})


def test_relative_out_of_fold_scores_drop_the_fold_label_mean() -> None:
    """Leave-one-out on a target the features cannot predict: pooled absolute predictions anti-rank it
    (each fold's intercept is the mean of the other labels); the relative scores do not carry that offset."""
    rows, _ = _rows(20)
    y = np.random.default_rng(100).normal(size=20)
    absolute = cross_val_predict(rows, y, kind="ridge", folds=20)
    relative = cross_val_predict(rows, y, kind="ridge", folds=20, relative=True)
    assert stats.kendalltau(y, absolute).statistic < -0.6
    assert stats.kendalltau(y, relative).statistic > stats.kendalltau(y, absolute).statistic + 0.4
    # on a learnable target the two rank alike
    rows, y = _rows(40)
    a, r = (cross_val_predict(rows, y, kind="ridge", folds=40, relative=rel) for rel in (False, True))
    assert stats.kendalltau(a, r).statistic > 0.9


def test_a_pickle_in_place_of_the_ranker_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # unpickling this would create the marker file
            return (Path.touch, (marker,))

    path = tmp_path / "fashion-mnist.ranker.json"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(QnasError, match="not a qnas ranker"):
        load_ranker(path)
    assert not marker.exists()
    path.write_text('{"format": "something else"}')
    with pytest.raises(QnasError, match="not a qnas ranker"):
        load_ranker(path)


def test_a_ranker_of_another_predictor_or_feature_version_is_refused(tmp_path: Path) -> None:
    rows, y = _rows()
    path = fit(rows, {"fp32": y}, predictor_digest="abc").save(tmp_path / "r.json")
    with pytest.raises(QnasError, match="another predictor"):
        load_ranker(path, predictor_digest="def")
    text = path.read_text().replace('"feature_version": 1', '"feature_version": 999')
    with pytest.raises(QnasError, match="refit"):
        Ranker.from_json(text)


def test_a_ranker_fitted_on_another_scoring_protocol_is_refused(tmp_path: Path) -> None:
    rows, y = _rows()
    fitted_with = "calibrated/channel/a2p99.5/fl8/w8sym/fit"
    ranker = fit(rows, {"fp32": y}, predictor_digest="abc", provenance={"features": {"protocol": fitted_with}})
    path = ranker.save(tmp_path / "r.json")
    assert load_ranker(path, predictor_digest="abc", protocol=fitted_with)
    with pytest.raises(QnasError, match="scored as .*/fit, not .*w8sym: .*--head.*--ranker none"):
        load_ranker(path, predictor_digest="abc", protocol=fitted_with.removesuffix("/fit"))


def test_graph_features_count_depth_and_ops() -> None:
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                        nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    f = graph_features(to_graph(net, (1, 28, 28)))
    assert f["weight_layers"] == 4 and f["depth"] == 4
    assert f["n_conv"] == 2 and f["n_group_conv"] == 1 and f["n_linear"] == 1 and f["has_bn"] == 1.0
    assert math.isclose(f["frac_k1"], 1 / 3) and math.isclose(f["log_ch_max"], 4.0)
    assert macs(net, (1, 28, 28)) == 28 * 28 * (8 * 9 + 8 * 9 + 16 * 8) + 160


def test_macs_agree_with_the_space_analytic_count() -> None:
    g = convnets250k.from_string("stem16-32:conv3,sep5+r-maxpool-64:mb6k3+r,dil3-convs2-128:conv1-fc128")
    assert macs(convnets250k.build(g), (1, 28, 28)) == convnets250k.count_macs(g)


def test_candidate_features_are_finite_and_complete() -> None:
    from qnas.scorer import make_scorer

    scorer = make_scorer(space=convnets250k, predictor="random", val_size=64)
    g = convnets250k.from_string("stem8-8:conv3-maxpool-16:sep3+r-maxpool-32:mb3k3-fc0")
    f = candidate_features(scorer, g)
    for s in scorer.settings:
        assert 0.0 <= f[f"ghn_top1_{s}"] <= 1.0 and math.isfinite(f[f"ghn_loss_{s}"])
    assert all(math.isfinite(v) for v in f.values())
    assert sum(k.startswith("ghn_emb_") for k in f) == scorer.predictor.ghn.config.hidden
    assert f["log_params"] == pytest.approx(math.log10(sum(p.numel() for p in convnets250k.build(g).parameters())))
    torch.manual_seed(123)  # features do not depend on the global RNG
    assert candidate_features(scorer, g) == f


@pytest.mark.skipif(not ranker_path(Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt").exists(),
                    reason="no shipped ranker yet")
def test_the_shipped_ranker_matches_the_shipped_predictor() -> None:
    from qnas.predictors import load_predictor
    from qnas.scorer import make_scorer

    assert "fashion-mnist" in available_predictors()
    pt = Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt"
    ranker = load_ranker(ranker_path(pt), predictor_digest=load_predictor(pt).digest)
    scorer = make_scorer(space=convnets250k, predictor=str(pt), val_size=16)  # the head fitted as the ranker's
    assert ranker.protocol == scorer.protocol == scorer.protocol.split("/fit")[0] + "/fit"
    assert scorer.ranker is not None and not scorer.ranker_note
    assert len(scorer.readout.labels) == 1000  # DEFAULT_FIT_SIZE, not --val-size: the features' fit size
    assert set(ranker.targets) >= {"fp32", "w4a4"} and ranker.provenance and ranker.metrics
    # fitted from a commit that holds its training table: a store with uncommitted rows would make it "+dirty"
    commit = ranker.provenance["git_commit"]
    assert len(commit) == 40 and not commit.endswith("+dirty"), commit
    same = make_scorer(space=convnets250k, predictor=str(pt), val_size=16, first_last_bits=None)
    assert same.protocol.endswith("/same/w8sym/fit-gs") and same.ranker is None and "fl8" in same.ranker_note


@pytest.mark.skipif(not ranker_path(Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt").exists(),
                    reason="no shipped ranker yet")
def test_the_readme_quotes_the_shipped_rankers_own_figures() -> None:
    # a refit rewrites the ranker's metrics; the README's table and headline row must follow it
    import json
    import re

    root = Path(__file__).parents[1]
    oof = json.loads(ranker_path(root / "qnas/predictors/fashion-mnist.pt").read_text())["metrics"]["out_of_fold"]
    readme = (root / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| **ranker (shipped"))
    cells = row.split("|")[2:5]
    for cell, setting in zip(cells, ("fp32", "w4a4", "w2a2")):
        m = oof[setting]
        assert f"**{m['tau']:.3f}**" in cell, (setting, cell)
        if "[" in cell:
            assert f"[{m['lo']:+.2f}, {m['hi']:+.2f}]" in cell, (setting, cell)
    header = next(line for line in readme.splitlines() if line.startswith("| scorer (n="))
    assert f"n={oof['fp32']['n']} / {oof['w4a4']['n']} / {oof['w2a2']['n']})" in header
    headline = re.search(r"`tau_score_w4a4=([0-9.]+) .*? n=(\d+) ", readme)
    assert headline and headline.groups() == (f"{oof['w4a4']['tau']:.3f}", str(oof["w4a4"]["n"]))
    # and how far its predictions are off, as the headline and the text quote it
    errors = re.search(r" mae_score_w4a4=([0-9.]+) mae_score_w2a2=([0-9.]+)`", readme)
    assert errors and errors.groups() == (f"{oof['w4a4']['mae']:.2f}", f"{oof['w2a2']['mae']:.2f}")
    assert f"the predicted trained top-1 is {oof['w4a4']['mae']:.2f} points from" in " ".join(readme.split())


@pytest.mark.skipif(not ranker_path(Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt").exists(),
                    reason="no shipped ranker yet")
def test_another_protocol_leaves_the_shipped_ranker_out_and_refuses_a_named_one() -> None:
    from qnas.scorer import make_scorer

    pt = Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt"
    for how in ({"head": "keep"}, {"fit_size": 100}):
        scorer = make_scorer(space=convnets250k, predictor=str(pt), val_size=16, **how)
        assert scorer.ranker is None and "left out" in scorer.ranker_note and scorer.objective_key("w4a4") == "top1"
        with pytest.raises(QnasError, match="scored as .*/fit, not .*: .*--ranker none"):
            make_scorer(space=convnets250k, predictor=str(pt), val_size=16, ranker=str(ranker_path(pt)), **how)
    with pytest.raises(QnasError, match="fitted head only"):
        make_scorer(space=convnets250k, predictor="random", val_size=16, head="keep", fit_size=10)


def test_a_header_edit_keeps_the_ranker_but_new_weights_do_not(tmp_path: Path) -> None:
    """Recording an eval table rewrites the checkpoint file; its ranker must still load. Other weights must not."""
    import shutil

    from qnas.predictors import load_predictor, save_predictor, update_header
    from qnas.scorer import make_scorer

    shipped = Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt"
    pt = tmp_path / "mine.pt"
    shutil.copy(shipped, pt)
    shutil.copy(ranker_path(shipped), ranker_path(pt))
    before = load_predictor(pt).digest
    update_header(pt, eval_table={"rows": {}}, notes="edited")
    assert pt.read_bytes() != shipped.read_bytes() and load_predictor(pt).digest == before
    assert make_scorer(space=convnets250k, predictor=str(pt), val_size=16).ranker is not None
    pred = load_predictor(pt)
    with torch.no_grad():
        next(pred.ghn.parameters()).add_(1e-3)
    save_predictor(pt, pred.ghn, pred.header)
    with pytest.raises(QnasError, match="another predictor's features"):
        make_scorer(space=convnets250k, predictor=str(pt), val_size=16)


def test_a_checkpoint_whose_ranker_was_replaced_by_a_pickle_is_refused(tmp_path: Path) -> None:
    import shutil

    from qnas.scorer import make_scorer

    pt = tmp_path / "mine.pt"
    shutil.copy(Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt", pt)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ranker_path(pt).write_bytes(pickle.dumps(Payload()))
    with pytest.raises(QnasError, match="not a qnas ranker"):
        make_scorer(space=convnets250k, predictor=str(pt), val_size=64)
    assert not marker.exists()
    scorer = make_scorer(space=convnets250k, predictor=str(pt), val_size=64, ranker="none")  # explicit opt-out
    assert scorer.ranker is None and scorer.objective_key("w4a4") == "top1"
