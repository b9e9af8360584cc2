"""qnas.study: the typed schema accessors and the one Pareto front."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import optuna
import pytest

from qnas.errors import QnasError
from qnas.search import SearchConfig, create_or_continue
from qnas.study import StudyAttrs, StudyKey, TrialAttrs
from qnas.study import pareto_front as study_front


def test_one_front_lists_each_architecture_once(tmp_path: Path) -> None:
    study = create_or_continue(SearchConfig(study="s", storage=f"sqlite:///{tmp_path / 's.db'}", max_params=1000,
                                            predictor="random"))
    rows = [("a", 0.5, 100), ("a", 0.5, 100), ("b", 0.7, 300), ("c", 0.6, 500), ("d", 0.9, 2000)]
    for arch, acc, params in rows:  # "a" twice: a duplicate served from the study; "d" over the bound
        attrs = {"arch": arch, "params": params, "top1_w4a4": acc, "top1_fp32": acc + 0.1}
        if params > 1000:
            attrs["infeasible"] = True
        study.add_trial(optuna.trial.create_trial(values=[acc, float(params)], user_attrs=attrs,
                                                  constraints={"params": float(params - 1000)}))
    front = study_front(study)
    assert [t.user_attrs["arch"] for t in front] == ["a", "b"] and study_front(study) == front
    info = StudyAttrs.of(study)
    assert info.target == "w4a4" and info.max_params == 1000 and info.granularity == "channel"
    assert info.first_last_bits == 8 and info.objective == "top1"
    t = TrialAttrs.of(front[1])
    assert t.arch == "b" and t.params == 300 and t.top1("fp32") == 0.7 + 0.1 and t.pred_top1("w4a4") is None


def test_missing_attributes_read_as_their_one_default() -> None:
    """Studies and trials from before an attribute existed (or not made by `qnas search`)."""
    assert {f.name for f in fields(StudyAttrs)} == set(StudyKey.CONTRACT)  # field names are the attribute names
    info = StudyAttrs.from_attrs({})
    assert (info.target, info.objective, info.max_params, info.space, info.predictor) == \
        ("", "top1", None, "convnets250k", None)
    assert info.granularity == "tensor" and info.first_last_bits == 8
    assert StudyAttrs.from_attrs({"first_last_bits": "same"}, "w2a2").first_last_bits is None
    assert StudyAttrs.from_attrs({"target": "w4a8"}).target == "w4a8"  # the mapping's own, unless given
    assert StudyKey.parse_finetune(StudyKey.finetune(12, "w4a4")) == (12, "w4a4")
    assert StudyKey.parse_finetune("finetune_x_w4a4") is None and StudyKey.parse_finetune("target") is None
    t = TrialAttrs.of(optuna.trial.create_trial(values=[0.5, 10.0], user_attrs={"top1_w4a4": 0.5, "loss_w4a4": 1}))
    assert (t.arch, t.params, t.macs, t.genome, t.scored_in_trial, t.worker) == (None,) * 6
    assert not t.infeasible and t.score_seconds == 0.0 and t.scores == {"top1_w4a4": 0.5, "loss_w4a4": 1.0}


def test_the_fit_size_is_read_from_the_protocol() -> None:
    def fit(protocol: str) -> int | None:
        return StudyAttrs(target="w4a4", protocol=protocol).fit_size

    assert fit("calibrated/channel/a2p99.5/fl8/w8sym/fit") == 1000  # the default fit size
    assert fit("calibrated/channel/a2p99.5/fl8/w8sym/fit256") == 256
    assert fit("calibrated/channel/a2p99.5/same/w8sym/fit-gs") == 1000
    assert fit("calibrated/channel/a2p99.5/same/w8sym/fit64-gs") == 64
    with pytest.raises(QnasError, match="names no fit size"):
        fit("calibrated/channel/fitX")
    assert fit("calibrated/channel/a2p99.5/fl8/w8sym") is None and fit("calibrated/tensor") is None  # the GHN's head
