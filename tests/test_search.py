"""Search bookkeeping with a cheap deterministic scorer (the real scorer is tested in test_scorer)."""

from __future__ import annotations

import optuna
import pytest
from fakes import FakeScorer

from qnas.errors import QnasError
from qnas.search import (
    SETTINGS,
    SearchConfig,
    bitops,
    load_study,
    open_storage,
    parse_target,
    run_search,
    size_bytes,
)
from qnas.study import StudyKey, TrialKey, pareto_front
from search_spaces import convnets250k as S


def _run(tmp_path, scorer, **kw):
    cfg = SearchConfig(study="t", storage=f"sqlite:///{tmp_path / 't.db'}", **kw)
    return cfg, run_search(cfg, scorer, S, (1, 28, 28), 10)


def test_search_records_attrs_and_respects_bound(tmp_path):
    scorer = FakeScorer()
    cfg, summary = _run(tmp_path, scorer, trials=12, max_params=200_000, sampler="random", seed=1, val_size=1000)
    study = load_study("t", cfg.storage)
    trials = study.trials
    assert len(trials) == 12 and summary.trials_run == 12
    assert study.metric_names == ["top1_w4a4", "params"]
    feasible = [t for t in trials if not t.user_attrs.get("infeasible")]
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    assert len(feasible) + len(infeasible) == 12
    # Infeasible candidates are never scored; feasible ones all are (or were cached).
    assert len(scorer.calls) == summary.scored <= len(feasible)
    assert summary.infeasible == len(infeasible)
    for t in infeasible:
        assert t.constraints["params"] > 0 and "top1_fp32" not in t.user_attrs
    for t in feasible:
        g = S.from_string(t.user_attrs["arch"])
        assert S.from_json(t.user_attrs["genome"]) == g
        assert t.user_attrs["params"] == S.count_params(g) <= 200_000
        assert t.constraints["params"] == t.user_attrs["params"] - 200_000
        assert t.values[0] == t.user_attrs["top1_w4a4"] and t.values[1] == t.user_attrs["params"]
        assert set(t.user_attrs["size_bytes"]) == set(SETTINGS)
        assert t.user_attrs["predictor"] == "fake"
    front = pareto_front(study)
    assert front and all(t.user_attrs["params"] <= 200_000 for t in front)
    # Every attribute written is one qnas.study names (the schema has one owner).
    names = {v for k, v in vars(TrialKey).items() if k.isupper() and isinstance(v, str)}
    assert all(k in names or k.startswith(TrialKey.SCORES) for t in trials for k in t.user_attrs)
    assert set(study.user_attrs) == set(StudyKey.CONTRACT)


def test_resume_adds_trials_and_duplicates_are_not_rescored(tmp_path):
    scorer = FakeScorer()
    cfg, _ = _run(tmp_path, scorer, trials=5, sampler="random", seed=3)
    _run(tmp_path, scorer, trials=4, sampler="random", seed=3)
    study = load_study("t", cfg.storage)
    assert len(study.trials) == 9
    # Enqueue an architecture that was already scored: it must be served from the study.
    first = study.trials[0]
    study.enqueue_trial(first.params)
    calls = len(scorer.calls)
    _, summary = _run(tmp_path, scorer, trials=1, sampler="random", seed=3)
    dup = load_study("t", cfg.storage).trials[-1]
    assert summary.cached == 1 and len(scorer.calls) == calls
    assert dup.user_attrs["scored_in_trial"] == first.number
    assert dup.user_attrs["top1_w4a4"] == first.user_attrs["top1_w4a4"]


def test_continuing_with_other_settings_is_refused(tmp_path):
    _run(tmp_path, FakeScorer(), trials=1, sampler="random")
    with pytest.raises(QnasError, match="other settings"):
        _run(tmp_path, FakeScorer(), trials=1, sampler="random", target="w2a2")


def test_continuing_on_another_number_of_validation_images_is_refused(tmp_path):
    _run(tmp_path, FakeScorer(), trials=1, sampler="random", val_size=256)
    with pytest.raises(QnasError, match="val_size: study has 256, asked 1000"):
        _run(tmp_path, FakeScorer(), trials=1, sampler="random", val_size=1000)
    # a caller that does not say (a library scorer) continues it
    _run(tmp_path, FakeScorer(), trials=1, sampler="random")
    # a study from before the size was recorded continues, and records it from then on
    study = load_study("t", f"sqlite:///{tmp_path / 't.db'}")
    study.set_user_attr("val_size", None)
    _run(tmp_path, FakeScorer(), trials=1, sampler="random", val_size=1000)
    assert load_study("t", f"sqlite:///{tmp_path / 't.db'}").user_attrs["val_size"] == 1000


def test_interrupt_marks_running_trial_and_keeps_study(tmp_path):
    class Interrupting(FakeScorer):
        def score(self, genome):
            if len(self.calls) == 2:
                raise KeyboardInterrupt
            return super().score(genome)

    cfg, summary = _run(tmp_path, Interrupting(), trials=10, sampler="random", seed=0)
    assert summary.interrupted
    states = [t.state for t in load_study("t", cfg.storage).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.RUNNING) == 0


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_samplers_run(tmp_path, sampler):
    _, summary = _run(tmp_path, FakeScorer(), trials=6, sampler=sampler, population_size=4)
    assert summary.trials_run == 6


def test_journal_storage(tmp_path):
    url = f"journal:{tmp_path / 'j.log'}"
    cfg = SearchConfig(study="j", storage=url, trials=3, sampler="random")
    run_search(cfg, FakeScorer(), S, (1, 28, 28), 10)
    assert len(load_study("j", url).trials) == 3


def test_parse_target_and_sizes():
    assert parse_target("4") == "w4a4" and parse_target("w4a8") == "w4a8" and parse_target("8") == "w8a8"
    for bad in ("3", "w9a9", "w1a1", "abc", ""):
        with pytest.raises(QnasError):
            parse_target(bad)
    assert size_bytes(1000, "fp32") == 4000 and size_bytes(1000, "w4a4") == 500 and size_bytes(3, "w2a2") == 1
    assert bitops(10, "w4a8") == 320


def test_unreachable_storage_and_missing_study(tmp_path):
    with pytest.raises(QnasError, match="cannot open storage"):
        open_storage("postgresql+psycopg2://u:p@127.0.0.1:9/nodb?connect_timeout=2")
    with pytest.raises(QnasError, match="no study"):
        load_study("missing", f"sqlite:///{tmp_path / 'x.db'}")


def test_postgres_storage_round_trip(postgres_url):
    cfg = SearchConfig(study="pg", storage=postgres_url, trials=3, sampler="random")
    run_search(cfg, FakeScorer(), S, (1, 28, 28), 10)
    assert len(load_study("pg", postgres_url).trials) == 3
