"""The study's schema, read in one place: what ``qnas search`` records and every other command reads.

    info = StudyAttrs.of(study)          # target, max_params, objective, first_last_bits, protocol, ...
    t = TrialAttrs.of(trial)             # arch, genome, params, macs, top1("w4a4"), pred_top1("w4a4")
    front = pareto_front(study)          # the one Pareto front: feasible, one trial per architecture
    StudyKey.TARGET, TrialKey.ARCH       # the attribute names, for the code that writes them (qnas.search)

Study user attributes: ``target``, ``max_params``, ``space``, ``dataset``, ``predictor``, ``protocol``
(``bn/granularity/act ranges/first-last/8-bit grid``), ``objective`` (``pred_top1`` or ``top1``) and
``first_last_bits`` (8 or ``same``); ``qnas finetune`` adds ``finetune_<trial>_<setting>``. Trial user
attributes: ``arch``, ``genome``, ``params``, ``macs``, ``size_bytes``/``bitops`` per setting,
``top1_<setting>``/``top5_<setting>``/``loss_<setting>`` (raw GHN scores, fractions), ``pred_top1_<setting>``
(the ranker's predicted trained top-1, a fraction), ``predictor``/``predictor_version``, ``infeasible``,
``scored_in_trial`` (a duplicate served from that trial), ``score_seconds``, ``worker``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qnas.defaults import DEFAULT_DATASET, DEFAULT_SPACE, SETTINGS
from qnas.errors import QnasError

__all__ = [
    "QNAS_DIRECTIONS",
    "StudyAttrs",
    "StudyKey",
    "TrialAttrs",
    "TrialKey",
    "check_made_by_qnas",
    "front",
    "is_feasible",
    "pareto_front",
    "scored_trials",
    "settings_of",
    "study_objective",
    "study_target",
    "value",
]


# The objectives of every study `qnas search` makes: the score at the target up, parameters down.
QNAS_DIRECTIONS = ("maximize", "minimize")


class StudyKey:
    """The names of the study user attributes: ``qnas search`` writes them, :class:`StudyAttrs` reads them."""

    TARGET = "target"
    MAX_PARAMS = "max_params"
    SPACE = "space"
    DATASET = "dataset"
    PREDICTOR = "predictor"
    PROTOCOL = "protocol"
    OBJECTIVE = "objective"
    FIRST_LAST_BITS = "first_last_bits"
    VAL_SIZE = "val_size"  # scores on another number of validation images are not comparable
    # What must match when a study is continued, so runs never silently mix: all of the above.
    CONTRACT = (TARGET, MAX_PARAMS, SPACE, DATASET, PREDICTOR, PROTOCOL, OBJECTIVE, FIRST_LAST_BITS, VAL_SIZE)

    @staticmethod
    def finetune(trial: int, setting: str) -> str:
        """``qnas finetune``'s summary of one run (Optuna does not allow changing a finished trial's attributes)."""
        return f"finetune_{trial}_{setting}"

    @staticmethod
    def parse_finetune(key: str) -> tuple[int, str] | None:
        """(trial, setting) of a :meth:`finetune` attribute name; None for any other name."""
        m = _FINETUNE.fullmatch(key)
        return (int(m[1]), m[2]) if m else None


_FINETUNE = re.compile(r"finetune_(\d+)_(.+)")


class TrialKey:
    """The names of the trial user attributes ``qnas search`` writes; :class:`TrialAttrs` reads them."""

    ARCH = "arch"
    GENOME = "genome"
    PARAMS = "params"
    MACS = "macs"
    SIZE_BYTES = "size_bytes"  # {setting: bytes}
    BITOPS = "bitops"  # {setting: bit operations}
    PREDICTOR = "predictor"
    PREDICTOR_VERSION = "predictor_version"
    INFEASIBLE = "infeasible"
    SCORED_IN_TRIAL = "scored_in_trial"
    SCORE_SECONDS = "score_seconds"
    WORKER = "worker"  # written first: a killed worker's trial is recognized by it
    # What a scorer returns per setting: raw GHN top-1/top-5 and loss, and the ranker's predicted trained top-1.
    SCORES = ("top1_", "top5_", "loss_", "pred_top1_")

    @staticmethod
    def score(metric: str, setting: str) -> str:
        """``top1_w4a4`` for (``top1``, ``w4a4``)."""
        return f"{metric}_{setting}"


@dataclass(frozen=True)
class StudyAttrs:
    """The study-level attributes, with the defaults of studies written before an attribute existed.
    Field names are the attribute names (:data:`StudyKey.CONTRACT`)."""

    target: str
    objective: str = "top1"  # "pred_top1": the ranker's prediction was maximized; "top1": the raw GHN top-1
    max_params: int | None = None
    space: str = DEFAULT_SPACE
    dataset: str = DEFAULT_DATASET
    predictor: str | None = None
    protocol: str = "calibrated/tensor"  # studies from before the attribute scored per tensor
    first_last_bits: int | None = 8  # None: every layer at the setting ("same")
    val_size: int | None = None  # studies from before the attribute did not record it

    @classmethod
    def of(cls, study: Any) -> StudyAttrs:
        """The study's attributes; QnasError when it records no target (not made by ``qnas search``)."""
        return cls.from_attrs(study.user_attrs, study_target(study))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], target: str | None = None) -> StudyAttrs:
        """The attributes of the mapping ``attrs``, each missing one at its default; ``target`` as given, else
        the mapping's own (``""`` when it records none)."""
        if target is None:
            target = str(attrs.get(StudyKey.TARGET) or "")
        kw = {k: attrs[k] for k in StudyKey.CONTRACT if k in attrs and k != StudyKey.TARGET}
        for k in (StudyKey.OBJECTIVE, StudyKey.SPACE, StudyKey.DATASET, StudyKey.PROTOCOL):
            if k in kw:
                kw[k] = str(kw[k])
        if kw.get(StudyKey.VAL_SIZE) is not None:
            kw[StudyKey.VAL_SIZE] = int(kw[StudyKey.VAL_SIZE])
        if StudyKey.FIRST_LAST_BITS in kw:
            fl = kw[StudyKey.FIRST_LAST_BITS]
            kw[StudyKey.FIRST_LAST_BITS] = None if fl in (None, "same") else int(fl)
        return cls(target=target, **kw)

    @property
    def granularity(self) -> str:
        """Weight scales the study scored with: ``channel`` or ``tensor``."""
        parts = self.protocol.split("/")
        return "channel" if len(parts) > 1 and parts[1] == "channel" else "tensor"

    @property
    def fit_size(self) -> int | None:
        """Training images the study's last layer was solved on; None where it scored the GHN's own head."""
        from qnas.readout import fit_size_of  # the tag's grammar lives beside its writer; torch only when asked

        return fit_size_of(self.protocol)


@dataclass(frozen=True)
class TrialAttrs:
    """One trial's attributes; accuracies are fractions. None: not recorded (trials not made by ``qnas search``;
    a running trial has its architecture, size and worker but no scores yet)."""

    number: int
    arch: str | None = None
    params: int | None = None
    macs: int | None = None
    genome: Any = None
    scores: dict[str, float] = field(default_factory=dict)  # top1_/top5_/loss_/pred_top1_<setting>
    size_bytes: dict[str, int] | None = None
    bitops: dict[str, int] | None = None
    predictor: str | None = None
    predictor_version: str | None = None
    infeasible: bool = False  # over the study's parameter bound, never scored
    scored_in_trial: int | None = None  # a duplicate: its scores were served from that trial
    score_seconds: float = 0.0
    worker: str | None = None  # qnas.search.Worker as JSON

    @classmethod
    def of(cls, trial: Any) -> TrialAttrs:
        a = trial.user_attrs
        scores = {k: float(v) for k, v in a.items() if k.startswith(TrialKey.SCORES)}
        get = a.get
        return cls(number=trial.number, arch=get(TrialKey.ARCH), params=get(TrialKey.PARAMS),
                   macs=get(TrialKey.MACS), genome=get(TrialKey.GENOME), scores=scores,
                   size_bytes=get(TrialKey.SIZE_BYTES), bitops=get(TrialKey.BITOPS), predictor=get(TrialKey.PREDICTOR),
                   predictor_version=get(TrialKey.PREDICTOR_VERSION), infeasible=bool(get(TrialKey.INFEASIBLE)),
                   scored_in_trial=get(TrialKey.SCORED_IN_TRIAL),
                   score_seconds=float(get(TrialKey.SCORE_SECONDS, cls.score_seconds)), worker=get(TrialKey.WORKER))

    def top1(self, setting: str) -> float | None:
        """Raw GHN top-1 at ``setting``."""
        return self.scores.get(TrialKey.score("top1", setting))

    def pred_top1(self, setting: str) -> float | None:
        """The ranker's predicted trained top-1 at ``setting`` (None where it has no model)."""
        return self.scores.get(TrialKey.score("pred_top1", setting))


def study_target(study: Any) -> str:
    """The target setting (``w4a4`` ...) from the study attributes, or from its metric name."""
    target = _recorded_target(study)
    if target is None:
        raise QnasError(f"study {study.study_name!r} was not made by qnas (no target setting recorded)")
    return target


def _recorded_target(study: Any) -> str | None:
    target = study.user_attrs.get(StudyKey.TARGET)
    if target:
        return str(target)
    names = study.metric_names or []
    if names and str(names[0]).startswith("top1_"):  # studies from before the attribute existed
        return str(names[0]).removeprefix("top1_")
    return None


def check_made_by_qnas(study: Any) -> None:
    """QnasError unless ``qnas search`` made ``study``: its two objectives (:data:`QNAS_DIRECTIONS`) and a
    target setting recorded, which qnas writes when it creates a study. The one check before a study is
    continued, shown, reported, finetuned or exported: another program's study is never read as, or
    turned into, a qnas study."""
    directions = tuple(d.name.lower() for d in study.directions)
    if directions != QNAS_DIRECTIONS:
        raise QnasError(f"study {study.study_name!r} was not made by qnas (its objectives are "
                        f"{', '.join(directions)}, not {', '.join(QNAS_DIRECTIONS)})")
    if _recorded_target(study) is None:
        raise QnasError(f"study {study.study_name!r} was not made by qnas (no target setting recorded)")


def study_objective(study: Any) -> str:
    """What the study maximized at its target: ``pred_top1`` (the ranker's predicted trained top-1) or ``top1``."""
    return StudyAttrs.from_attrs(study.user_attrs).objective


def value(t: Any, setting: str, by: str = "top1") -> float:
    """A trial's ``by`` score at ``setting`` (``pred_top1`` falls back to the raw GHN top-1 where the ranker
    has no model for that setting)."""
    a = t.user_attrs
    return float(a.get(TrialKey.score(by, setting), a[TrialKey.score("top1", setting)]))


def is_feasible(t: Any) -> bool:
    return all(v <= 0 for v in t.constraints.values()) and not t.user_attrs.get(TrialKey.INFEASIBLE)


def scored_trials(study: Any, target: str, *, objective_only: bool = False) -> list[Any]:
    """Completed, feasible trials with scores at ``target``, one per architecture (the first, i.e. the scored
    one). ``objective_only``: trials with only the study's objective values count as scored too."""
    from optuna.trial import TrialState

    seen: set[str] = set()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arch = t.user_attrs.get(TrialKey.ARCH, f"trial{t.number}")
        scored = TrialKey.score("top1", target) in t.user_attrs or (objective_only and t.values is not None)
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
    key = TrialKey.score("top1", setting)
    return _sweep([t for t in trials if key in t.user_attrs], lambda t: value(t, setting, by))


def pareto_front(study: Any) -> list[Any]:
    """The study's Pareto front: feasible scored trials, one per architecture, non-dominated in (the study's
    objective at its target up, params down), sorted by params. The one front search, show, report,
    finetune and export use."""
    target, by = study_target(study), study_objective(study)

    def score(t: Any) -> float:  # the objective value Optuna holds when the attributes lack it
        return value(t, target, by) if TrialKey.score("top1", target) in t.user_attrs else float(t.values[0])

    return _sweep(scored_trials(study, target, objective_only=True), score)


def _sweep(trials: list[Any], score: Callable[[Any], float]) -> list[Any]:
    # By params ascending (ties: best score first): a trial is on the front when it beats every smaller one.
    def params(t: Any) -> float:  # the objective value Optuna holds when the attributes lack it
        return t.user_attrs.get(TrialKey.PARAMS, t.values[1] if t.values else 0)

    trials = sorted(trials, key=lambda t: (params(t), -score(t)))
    out: list[Any] = []
    best = -math.inf
    for t in trials:
        acc = score(t)
        if acc > best:
            out.append(t)
            best = acc
    return out
