"""The study's schema, read in one place: what ``qnas search`` records and every other command reads.

    info = StudyAttrs.of(study)          # target, max_params, objective, first_last_bits, protocol, ...
    t = TrialAttrs.of(trial)             # arch, genome, params, macs, top1("w4a4"), pred_top1("w4a4")
    front = pareto_front(study)          # the one Pareto front: feasible, one trial per architecture

Study user attributes: ``target``, ``max_params``, ``space``, ``dataset``, ``predictor``, ``protocol``
(``bn/granularity/act ranges/first-last/8-bit grid``), ``objective`` (``pred_top1`` or ``top1``) and
``first_last_bits`` (8 or ``same``). Trial user attributes: ``arch``, ``genome``, ``params``, ``macs``,
``size_bytes``/``bitops`` per setting, ``top1_<setting>``/``top5_<setting>``/``loss_<setting>`` (raw GHN
scores, fractions), ``pred_top1_<setting>`` (the ranker's predicted trained top-1, a fraction),
``infeasible``, ``scored_in_trial`` (a duplicate served from that trial), ``worker``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qnas.defaults import DEFAULT_DATASET, DEFAULT_SPACE, SETTINGS
from qnas.errors import QnasError

__all__ = [
    "StudyAttrs",
    "TrialAttrs",
    "front",
    "is_feasible",
    "pareto_front",
    "scored_trials",
    "settings_of",
    "study_objective",
    "study_target",
    "value",
]


@dataclass(frozen=True)
class StudyAttrs:
    """The study-level attributes, with the defaults of studies written before an attribute existed."""

    target: str
    objective: str = "top1"  # "pred_top1": the ranker's prediction was maximized; "top1": the raw GHN top-1
    max_params: int | None = None
    space: str = DEFAULT_SPACE
    dataset: str = DEFAULT_DATASET
    predictor: str | None = None
    protocol: str = "calibrated/tensor"  # studies from before the attribute scored per tensor
    first_last_bits: int | None = 8  # None: every layer at the setting ("same")

    @classmethod
    def of(cls, study: Any) -> StudyAttrs:
        a = study.user_attrs
        fl = a.get("first_last_bits", 8)
        return cls(target=study_target(study), objective=str(a.get("objective", "top1")),
                   max_params=a.get("max_params"), space=str(a.get("space", DEFAULT_SPACE)),
                   dataset=str(a.get("dataset", DEFAULT_DATASET)), predictor=a.get("predictor"),
                   protocol=str(a.get("protocol", "calibrated/tensor")),
                   first_last_bits=None if fl in (None, "same") else int(fl))

    @property
    def granularity(self) -> str:
        """Weight scales the study scored with: ``channel`` or ``tensor``."""
        parts = self.protocol.split("/")
        return "channel" if len(parts) > 1 and parts[1] == "channel" else "tensor"


@dataclass(frozen=True)
class TrialAttrs:
    """One trial's attributes; accuracies are fractions."""

    number: int
    arch: str
    params: int
    macs: int
    genome: Any = None
    scores: dict[str, float] = field(default_factory=dict)  # top1_/top5_/loss_/pred_top1_<setting>

    @classmethod
    def of(cls, trial: Any) -> TrialAttrs:
        a = trial.user_attrs
        scores = {k: float(v) for k, v in a.items() if k.startswith(("top1_", "top5_", "loss_", "pred_top1_"))}
        return cls(number=trial.number, arch=str(a.get("arch", "")), params=int(a.get("params", 0)),
                   macs=int(a.get("macs", 0)), genome=a.get("genome"), scores=scores)

    def top1(self, setting: str) -> float | None:
        """Raw GHN top-1 at ``setting``."""
        return self.scores.get(f"top1_{setting}")

    def pred_top1(self, setting: str) -> float | None:
        """The ranker's predicted trained top-1 at ``setting`` (None where it has no model)."""
        return self.scores.get(f"pred_top1_{setting}")


def study_target(study: Any) -> str:
    """The target setting (``w4a4`` ...) from the study attributes, or from its metric name."""
    target = study.user_attrs.get("target")
    if target:
        return str(target)
    names = study.metric_names or []
    if names and str(names[0]).startswith("top1_"):
        return str(names[0]).removeprefix("top1_")
    raise QnasError(f"study {study.study_name!r} was not made by `qnas search` (no target setting recorded)")


def study_objective(study: Any) -> str:
    """What the study maximized at its target: ``pred_top1`` (the ranker's predicted trained top-1) or ``top1``."""
    return str(study.user_attrs.get("objective", "top1"))


def value(t: Any, setting: str, by: str = "top1") -> float:
    """A trial's ``by`` score at ``setting`` (``pred_top1`` falls back to the raw GHN top-1 where the ranker
    has no model for that setting)."""
    a = t.user_attrs
    return float(a.get(f"{by}_{setting}", a[f"top1_{setting}"]))


def is_feasible(t: Any) -> bool:
    return all(v <= 0 for v in t.constraints.values()) and not t.user_attrs.get("infeasible")


def scored_trials(study: Any, target: str, *, objective_only: bool = False) -> list[Any]:
    """Completed, feasible trials with scores at ``target``, one per architecture (the first, i.e. the scored
    one). ``objective_only``: trials with only the study's objective values count as scored too."""
    from optuna.trial import TrialState

    seen: set[str] = set()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.user_attrs.get("arch", f"trial{t.number}")
        scored = f"top1_{target}" in t.user_attrs or (objective_only and t.values is not None)
        if is_feasible(t) and scored and arch not in seen:
            seen.add(arch)
            out.append(t)
    return out


def settings_of(trials: Sequence[Any]) -> list[str]:
    """The standard settings present in the trials, then any other ``top1_*`` setting (e.g. w6a6)."""
    keys = {k.removeprefix("top1_") for t in trials for k in t.user_attrs if k.startswith("top1_")}
    return [s for s in SETTINGS if s in keys] + sorted(keys - set(SETTINGS))


def front(trials: Iterable[Any], setting: str, by: str = "top1") -> list[Any]:
    """Non-dominated trials for (``by`` score at ``setting`` up, params down), sorted by params."""
    return _sweep([t for t in trials if f"top1_{setting}" in t.user_attrs], lambda t: value(t, setting, by))


def pareto_front(study: Any) -> list[Any]:
    """The study's Pareto front: feasible scored trials, one per architecture, non-dominated in (the study's
    objective at its target up, params down), sorted by params. The one front search, show, report,
    finetune and export use."""
    target, by = study_target(study), study_objective(study)

    def score(t: Any) -> float:  # the objective value Optuna holds when the attributes lack it
        return value(t, target, by) if f"top1_{target}" in t.user_attrs else float(t.values[0])

    return _sweep(scored_trials(study, target, objective_only=True), score)


def _sweep(trials: list[Any], score: Callable[[Any], float]) -> list[Any]:
    # By params ascending (ties: best score first): a trial is on the front when it beats every smaller one.
    trials = sorted(trials, key=lambda t: (t.user_attrs.get("params", t.values[1] if t.values else 0), -score(t)))
    out: list[Any] = []
    best = -math.inf
    for t in trials:
        acc = score(t)
        if acc > best:
            out.append(t)
            best = acc
    return out
