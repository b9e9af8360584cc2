"""Reports on a search study: Pareto fronts per bit setting, accuracy vs bytes and BitOps, quantization
drop, finetune results beside predictions, histories, CSV and tables.

Everything here reads a study written by :mod:`qnas.search` and derives output from it; nothing
writes to the study. Every accuracy a search records is predicted, not measured: the ranker's predicted
trained top-1 (:data:`RANKER`) or the top-1 of GHN-predicted parameters (:data:`GHN`); labels say which.
Only finetune results (:data:`FINETUNED`) are measured. The HTML report is one self-contained file
(plotly.js embedded) so it opens offline and can be mailed around; ``cdn=True`` links plotly.js
instead and makes it ~5 MB smaller.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from optuna.trial import FrozenTrial, TrialState

from qnas import __version__
from qnas.errors import QnasError
from qnas.search import default_storage, load_study, open_storage, redact
from qnas.study import (  # the study's schema and its one Pareto front; re-exported here
    StudyAttrs,
    StudyKey,
    TrialAttrs,
    TrialKey,
    front,
    is_feasible,
    scored_trials,
    settings_of,
    study_objective,
    study_target,
    value,
)

__all__ = [
    "FINETUNED",
    "GHN",
    "RANKER",
    "FinetuneResult",
    "HypervolumeHistory",
    "StudyRow",
    "accuracy_kind",
    "accuracy_title",
    "best_trials",
    "bitops_figure",
    "bound_is_near",
    "build_report",
    "bytes_figure",
    "default_storages",
    "drop_figure",
    "finetune_figure",
    "finetune_results",
    "front",
    "history_figure",
    "hypervolume_2d",
    "hypervolume_figure",
    "hypervolume_history",
    "is_feasible",
    "list_studies",
    "log_axis",
    "log_ticks",
    "open_study",
    "pareto_figure",
    "scored_trials",
    "settings_of",
    "si",
    "study_objective",
    "study_target",
    "trials_frame",
    "value",
    "write_csv",
    "write_report",
]

# One colour per setting, dark for full precision through red for the most aggressive quantization.
_COLORS = {"fp32": "#3b3b3b", "w8a8": "#1f77b4", "w4a8": "#2ca02c", "w4a4": "#ff7f0e", "w2a2": "#d62728"}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_TEMPLATE = "plotly_white"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_HOVER = {"bgcolor": "white", "font": {"color": "#222", "size": 12}}


# ----------------------------------------------------------------------------- opening and selecting


def open_study(study: str, storage: str | None = None) -> optuna.Study:
    """Open an existing study read-only; a missing SQLite file is an error, not a new file, and a study in a
    directory this process cannot write is still readable (see ``qnas.search.load_study``)."""
    return load_study(study, storage, readonly=True)


def best_trials(study: optuna.Study, top: int | None = 10, pareto: bool = False) -> list[FrozenTrial]:
    """Best feasible trials by the study's objective at the target (ties: fewer params), or its Pareto front."""
    target, by = study_target(study), study_objective(study)
    trials = scored_trials(study, target)
    if pareto:
        chosen = front(trials, target, by)
    else:
        chosen = sorted(trials, key=lambda t: (-value(t, target, by), TrialAttrs.of(t).params, t.number))
    return chosen[:top] if top is not None else chosen


# ----------------------------------------------------------------------------- study listing


@dataclass(frozen=True)
class StudyRow:
    storage: str
    name: str
    trials: int
    complete: int
    failed: int
    running: int
    target: str | None
    max_params: int | None
    best_top1: float | None
    best_trial: int | None
    started: datetime | None


def default_storages(root: Path = Path("studies")) -> list[str]:
    """Every SQLite file ``studies/*.db`` (what `qnas search` writes by default) as a storage URL."""
    return [f"sqlite:///{p}" for p in sorted(root.glob("*.db"))]


def list_studies(url: str) -> list[StudyRow]:
    """Studies in one storage with trial counts by state and the best feasible top-1 at the target."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise QnasError(f"no such SQLite file: {url.removeprefix('sqlite:///')}")
    store = open_storage(url, readonly=True)
    rows = []
    for summary in optuna.get_all_study_summaries(store, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        info = StudyAttrs.from_attrs(study.user_attrs)
        target = info.target or None
        best = None
        if target:
            scored = scored_trials(study, target)
            best = max(scored, key=lambda t: value(t, target, study_objective(study)), default=None)
        rows.append(StudyRow(
            storage=redact(url), name=summary.study_name, trials=len(trials),
            complete=states.count(TrialState.COMPLETE), failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING), target=target, max_params=info.max_params,
            best_top1=None if best is None else value(best, target, study_objective(study)),
            best_trial=None if best is None else best.number, started=summary.datetime_start,
        ))
    return rows


# ----------------------------------------------------------------------------- CSV


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (every state); dict attributes flattened to ``size_bytes_w4a4`` etc.; finetune
    results as ``finetune_<setting>_top1_after`` (measured; every ``top1_``/``pred_top1_`` is predicted)."""
    target = study_target(study)
    on_front = {t.number for t in front(scored_trials(study, target), target, study_objective(study))}
    finetuned: dict[int, dict[str, Any]] = {}
    for r in finetune_results(study):
        finetuned.setdefault(r.trial, {}).update(
            {f"finetune_{r.setting}_top1_before": r.before, f"finetune_{r.setting}_top1_after": r.after})
    names = study.metric_names or ["value0", "value1"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name,
            "feasible": t.state == TrialState.COMPLETE and is_feasible(t),
            "pareto": t.number in on_front,
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
            "duration_s": t.duration.total_seconds() if t.duration else None,
        }
        for name, v in zip(names, t.values or [None] * len(names)):
            row[f"value_{name}"] = v
        for k, v in t.constraints.items():
            row[f"constraint_{k}"] = v
        for k, v in t.user_attrs.items():  # every attribute as recorded, known to the schema or not
            if k == TrialKey.GENOME:
                row[k] = json.dumps(v, separators=(",", ":"))
            elif isinstance(v, dict):
                row.update({f"{k}_{sk}": sv for sk, sv in v.items()})
            else:
                row[k] = v
        row.update(finetuned.get(t.number, {}))
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    # Readable column order: identity, objectives, accuracies, sizes, the rest, genome and raw params last.
    first = [c for c in ("number", "state", "feasible", "pareto", "arch", "params", "macs") if c in df]
    accs = [c for c in df if c.startswith(("pred_top1_", "top1_", "top5_", "finetune_"))]
    last = [c for c in df if c == "genome" or c.startswith("param_")]
    middle = [c for c in df if c not in first + accs + last]
    return df[first + accs + middle + last]


# ----------------------------------------------------------------------------- what is plotted

# Every accuracy in a study is a prediction: the ranker's predicted trained top-1, or the top-1 of the
# untrained network with GHN-predicted parameters. Labels say which; only finetune results are measured.
RANKER = "predicted top-1 (ranker)"
GHN = "predicted top-1 (GHN parameters)"
FINETUNED = "measured top-1 after finetuning"


def _kind(t: FrozenTrial, setting: str, by: str) -> str:
    # value() falls back to the GHN top-1 where the ranker has no model for the setting; so does the label.
    return RANKER if by == "pred_top1" and TrialAttrs.of(t).pred_top1(setting) is not None else GHN


def accuracy_kind(study: optuna.Study, setting: str, trials: Sequence[FrozenTrial] | None = None) -> str:
    """What the report plots as accuracy at ``setting``: :data:`RANKER` when the study maximized the ranker's
    prediction and the ranker has a model for ``setting``, else :data:`GHN`."""
    by = study_objective(study)
    trials = scored_trials(study, study_target(study)) if trials is None else trials
    return RANKER if any(_kind(t, setting, by) == RANKER for t in trials) else GHN


def accuracy_title(study: optuna.Study, settings: Sequence[str], trials: Sequence[FrozenTrial]) -> str:
    """Axis title for accuracies at several settings, naming the predictor of each."""
    kinds = {s: accuracy_kind(study, s, trials) for s in settings}
    if len(set(kinds.values())) <= 1:
        return f"{next(iter(kinds.values()), GHN)} (%)"
    ranked = ", ".join(s for s, k in kinds.items() if k == RANKER)
    return f"predicted top-1 (%): ranker at {ranked}, GHN parameters elsewhere"


def _acc(t: FrozenTrial, setting: str, by: str) -> float:
    return 100 * value(t, setting, by)


# ----------------------------------------------------------------------------- log axes

# Tick series per decade, coarsest first; the first giving enough ticks over the range is used.
_MANTISSAS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))
_MIN_TICKS = 4


def si(v: float, unit: str = "") -> str:
    """A tick label: 20000 -> '20k', 2e6 -> '2M', 1.5e10 -> '15G'; with ``unit`` 'B': '200 kB'."""
    v = float(f"{v:.3g}")  # first, so 999.6 becomes 1k rather than 1e+03
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(v) >= div or div == 1.0:
            return f"{v / div:g} {prefix}{unit}" if unit else f"{v / div:g}{prefix}"
    raise AssertionError  # unreachable


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values between 10**lo and 10**hi: the coarsest 1/10, 1-2-5, ... series with enough ticks."""
    ticks: list[float] = []
    for mantissas in _MANTISSAS:
        ticks = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas
                 if lo <= math.log10(m * 10.0**e) <= hi]
        if len(ticks) >= _MIN_TICKS:
            return ticks
    if len(ticks) >= 2:
        return ticks
    # Under a tenth of a decade: two ticks inside the range, at two significant digits.
    return sorted({float(f"{10 ** (lo + f * (hi - lo)):.2g}") for f in (0.25, 0.75)})


def log_axis(values: Sequence[float], title: str, unit: str = "", include: float | None = None) -> dict[str, Any]:
    """A log axis ranged to the data (plus ``include``) with a small margin, ticked 20k, 50k, 100k, ..."""
    vals = [float(v) for v in values if v is not None and v > 0] + ([float(include)] if include else [])
    if not vals:
        return {"type": "log", "title": {"text": title}}
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    pad = max(0.04 * (hi - lo), 0.05)  # decades: keeps the extreme markers off the frame
    lo, hi = lo - pad, hi + pad
    ticks = log_ticks(lo, hi)
    return {"type": "log", "title": {"text": title}, "range": [lo, hi], "tickmode": "array", "tickvals": ticks,
            "ticktext": [si(v, unit) for v in ticks]}


def bound_is_near(bound: float, values: Sequence[float]) -> bool:
    """Whether the parameter bound lies within a quarter of the data's log span (at least 0.1 decade) of it."""
    if not values:
        return False
    lo, hi = math.log10(min(values)), math.log10(max(values))
    return math.log10(bound) - hi <= max(0.25 * (hi - lo), 0.1)


# ----------------------------------------------------------------------------- figures


def _color(setting: str, settings: Sequence[str]) -> str:
    if setting in _COLORS:
        return _COLORS[setting]
    extras = [s for s in settings if s not in _COLORS]
    return _EXTRA_COLORS[extras.index(setting) % len(_EXTRA_COLORS)]


def _wrap(text: str, width: int = 90) -> str:
    """Break an architecture string at '-' so hover boxes stay narrow."""
    lines, cur = [], ""
    for part in text.split("-"):
        piece = part if not cur else "-" + part
        if cur and len(cur) + len(piece) > width:
            lines.append(cur + "-")
            cur = part
        else:
            cur += piece
    lines.append(cur)
    return "<br>".join(html.escape(line) for line in lines)


def _hover(t: FrozenTrial, settings: Sequence[str], target: str, by: str) -> str:
    a = TrialAttrs.of(t)

    def accs(score: Callable[[str], float | None]) -> str:
        shown = ((s, score(s)) for s in settings)
        return " · ".join(f"<b>{s} {100 * v:.1f}</b>" if s == target else f"{s} {100 * v:.1f}"
                          for s, v in shown if v is not None)

    ranker = accs(a.pred_top1) if by == "pred_top1" else ""
    return (f"<b>trial {t.number}</b> · {a.params:,} params · {(a.macs or 0) / 1e6:,.1f}M MACs<br>"
            + (f"{RANKER} %: {ranker}<br>" if ranker else "")
            + f"{GHN} %: {accs(a.top1)}<br>{_wrap(a.arch or '')}")


def pareto_figure(study: optuna.Study) -> go.Figure:
    """Predicted top-1 vs parameters for every setting: faint points, each setting's front as a staircase."""
    target, by = study_target(study), study_objective(study)
    trials = scored_trials(study, target)
    settings = settings_of(trials)
    hover = {t.number: _hover(t, settings, target, by) for t in trials}
    attrs = {t.number: TrialAttrs.of(t) for t in trials}
    fig = go.Figure()
    # The target goes last so it is drawn on top of the other settings.
    for s in sorted(settings, key=lambda s: s == target):
        pts = [t for t in trials if attrs[t.number].top1(s) is not None]
        hi = s == target
        color = _color(s, settings)
        fig.add_trace(go.Scatter(
            x=[attrs[t.number].params for t in pts], y=[_acc(t, s, by) for t in pts],
            mode="markers", name=f"{s} trials", legendgroup=s, showlegend=False,
            marker={"color": color, "size": 7 if hi else 5, "opacity": 0.35 if hi else 0.18},
            text=[hover[t.number] for t in pts], hovertemplate=f"%{{text}}<extra>{s}</extra>",
        ))
        fr = front(pts, s, by)
        fig.add_trace(go.Scatter(
            x=[attrs[t.number].params for t in fr], y=[_acc(t, s, by) for t in fr],
            mode="lines+markers", line_shape="hv", name=f"{s} front (target)" if hi else f"{s} front",
            legendgroup=s, legendrank=settings.index(s),
            # FP32 and W8A8 fronts nearly coincide; a dashed FP32 line stays visible under W8A8.
            line={"color": color, "width": 4 if hi else 1.5, "dash": "dash" if s == "fp32" else "solid"},
            marker={"color": color, "size": 10 if hi else 6, "line": {"color": "white", "width": 1}},
            text=[hover[t.number] for t in fr], hovertemplate=f"%{{text}}<extra>{s} front</extra>",
        ))
    params = [attrs[t.number].params for t in trials]
    max_params = StudyAttrs.from_attrs(study.user_attrs).max_params
    near = bool(max_params) and bound_is_near(max_params, params)
    if near:
        fig.add_vline(x=max_params, line_dash="dot", line_color="#888")
        # Annotations on a log axis take log10 coordinates (shapes take data values).
        fig.add_annotation(x=math.log10(max_params), xref="x", y=0, yref="paper", text=f"bound {si(max_params)}",
                           showarrow=False, xanchor="right", yanchor="bottom", font={"color": "#666"})
    elif max_params:
        # A far bound would squeeze the data into a corner; say where it is instead.
        fig.add_annotation(x=1, xref="paper", y=0, yref="paper", showarrow=False, xanchor="right",
                           yanchor="bottom", text=f"bound {si(max_params)} params: off the axis, right",
                           font={"color": "#666"})
    fig.update_layout(
        template=_TEMPLATE, height=620, margin={"t": 30, "r": 20, "b": 60, "l": 70},
        xaxis=log_axis(params, "parameters (log scale)", include=max_params if near else None),
        yaxis={"title": {"text": accuracy_title(study, settings, trials)}},
        legend={"title": {"text": "click to toggle"}}, hovermode="closest", hoverlabel=_HOVER,
    )
    return _empty_note(fig, not trials, "no feasible scored trials yet")


def _cost_figure(study: optuna.Study, cost: Callable[[TrialAttrs], dict[str, int] | None], title: str,
                 unit: str) -> go.Figure:
    """Predicted top-1 against a per-setting cost (``size_bytes``, ``bitops``): a trace per setting."""
    target, by = study_target(study), study_objective(study)
    trials = scored_trials(study, target)
    settings = settings_of(trials)
    hover = {t.number: _hover(t, settings, target, by) for t in trials}
    attrs = {t.number: TrialAttrs.of(t) for t in trials}
    costs = {n: cost(a) or {} for n, a in attrs.items()}
    fig, xs_all = go.Figure(), []
    for s in settings:
        pts = [t for t in trials if attrs[t.number].top1(s) is not None and s in costs[t.number]]
        if not pts:  # a setting the search recorded no cost for
            continue
        hi = s == target
        xs = [costs[t.number][s] for t in pts]
        xs_all += xs
        fig.add_trace(go.Scatter(
            x=xs, y=[_acc(t, s, by) for t in pts], mode="markers", name=f"{s} (target)" if hi else s,
            marker={"color": _color(s, settings), "size": 8 if hi else 6, "opacity": 0.8 if hi else 0.55,
                    "line": {"color": "white", "width": 0.5}},
            text=[hover[t.number] for t in pts], hovertemplate=f"%{{text}}<extra>{s}</extra>",
        ))
    fig.update_layout(
        template=_TEMPLATE, height=520, margin={"t": 30, "r": 20, "b": 60, "l": 70},
        xaxis=log_axis(xs_all, title, unit), yaxis={"title": {"text": accuracy_title(study, settings, trials)}},
        legend={"title": {"text": "setting"}}, hovermode="closest", hoverlabel=_HOVER,
    )
    return _empty_note(fig, not xs_all, "no feasible scored trials yet")


def bytes_figure(study: optuna.Study) -> go.Figure:
    """Predicted top-1 vs model size in bytes at each setting's bit-width, one trace per setting."""
    return _cost_figure(study, lambda a: a.size_bytes, "model size at the setting's bit-width (bytes, log scale)", "B")


def bitops_figure(study: optuna.Study) -> go.Figure:
    """Predicted top-1 vs BitOps (MACs x weight bits x activation bits), one trace per setting."""
    return _cost_figure(study, lambda a: a.bitops, "BitOps: MACs × weight bits × activation bits (log scale)", "")


def drop_figure(study: optuna.Study) -> go.Figure:
    """Predicted top-1 (GHN parameters) lost to quantization, FP32 minus setting in points, against bytes."""
    target, by = study_target(study), study_objective(study)
    scored = scored_trials(study, target)
    attrs = {t.number: TrialAttrs.of(t) for t in scored}
    trials = [t for t in scored if attrs[t.number].top1("fp32") is not None]
    settings = [s for s in settings_of(trials) if s != "fp32"]
    hover = {t.number: _hover(t, settings_of(trials), target, by) for t in trials}
    fig, xs_all = go.Figure(), []
    for s in settings:
        pts = [attrs[t.number] for t in trials if attrs[t.number].top1(s) is not None]
        hi = s == target
        xs = [(a.size_bytes or {}).get(s) for a in pts]
        xs_all += xs
        fig.add_trace(go.Scatter(
            x=xs, y=[100 * (a.top1("fp32") - a.top1(s)) for a in pts],
            mode="markers", name=f"{s} (target)" if hi else s,
            marker={"color": _color(s, settings), "size": 8 if hi else 6, "opacity": 0.8 if hi else 0.6,
                    "line": {"color": "white", "width": 0.5}},
            text=[hover[a.number] for a in pts], hovertemplate=f"%{{text}}<extra>{s}</extra>",
        ))
    fig.add_hline(y=0, line_color="#888", line_width=1)
    fig.update_layout(
        template=_TEMPLATE, height=520, margin={"t": 30, "r": 20, "b": 60, "l": 70},
        xaxis=log_axis(xs_all, "weight size at the setting's bit-width (bytes, log scale)", "B"),
        yaxis={"title": {"text": f"{GHN}: drop from FP32 (points)"}}, hovermode="closest", hoverlabel=_HOVER,
    )
    return _empty_note(fig, not trials, "no feasible scored trials yet")


def history_figure(study: optuna.Study) -> go.Figure:
    """The study's objective (predicted top-1 at the target) per trial, with the best feasible value so far."""
    target = study_target(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(is_feasible(t) for t in complete):
        return _empty_note(go.Figure(layout={"template": _TEMPLATE, "height": 420}), True, "no feasible trials yet")
    label = f"{accuracy_kind(study, target)} at {target} (%)"
    fig = optuna.visualization.plot_optimization_history(study, target=lambda t: 100 * t.values[0], target_name=label)
    # Infeasible trials carry a placeholder accuracy of 0; they are counted in the header instead.
    fig.data = [d for d in fig.data if d.name != "Infeasible Trial"]
    for d in fig.data:
        d.name = "trial" if d.name in ("Objective Value", label) else d.name
    best, xs, ys = -math.inf, [], []
    for t in sorted(complete, key=lambda t: t.number):
        if is_feasible(t):
            best = max(best, 100 * t.values[0])
        if best > -math.inf:
            xs.append(t.number)
            ys.append(best)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="best so far", line_shape="hv",
                             line={"color": _color(target, [target])}))
    fig.update_layout(template=_TEMPLATE, title=None, height=420, margin={"t": 30, "r": 20, "b": 60, "l": 70},
                      legend={"orientation": "h", "y": -0.2}, xaxis={"title": {"text": "trial"}},
                      yaxis={"title": {"text": label}})
    return fig


@dataclass(frozen=True)
class HypervolumeHistory:
    """Hypervolume of the study's front in (objective up, log10 params down) after each feasible scored trial,
    as a fraction of the box from ``reference`` (worst objective, most params of all feasible trials) to
    ``ideal`` (best objective, fewest params): 1 would mean one trial is both the most accurate and smallest."""

    trials: list[int]
    values: list[float]  # non-decreasing: the reference is fixed for the whole history
    reference: tuple[float, float]  # (objective as a fraction, params)
    ideal: tuple[float, float]


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (objective, params), objective up and log10(params) down, bounded by
    ``reference`` (objective, params); in objective x decades. Points outside the reference box add nothing."""
    ref_a, ref_x = reference[0], math.log10(reference[1])
    pts = sorted((math.log10(p), a) for a, p in points if a >= ref_a and 0 < p <= reference[1])
    area, best = 0.0, ref_a
    for i, (x, a) in enumerate(pts):
        best = max(best, a)  # the best objective reachable with at most 10**x params
        right = pts[i + 1][0] if i + 1 < len(pts) else ref_x
        area += (right - x) * (best - ref_a)
    return area


def hypervolume_history(study: optuna.Study) -> HypervolumeHistory:
    """The hypervolume of the study's front (:func:`qnas.study.front` at the target, by the study's objective)
    after each feasible scored trial, in trial order; see :class:`HypervolumeHistory`."""
    target, by = study_target(study), study_objective(study)
    trials = scored_trials(study, target)
    if not trials:
        return HypervolumeHistory([], [], (0.0, 0.0), (0.0, 0.0))
    score = {t.number: value(t, target, by) for t in trials}
    params = {t.number: float(TrialAttrs.of(t).params) for t in trials}
    ref = (min(score.values()), max(params.values()))
    ideal = (max(score.values()), min(params.values()))
    box = (ideal[0] - ref[0]) * (math.log10(ref[1]) - math.log10(ideal[1]))
    seen: list[FrozenTrial] = []
    current: list[FrozenTrial] = []
    hv, numbers, values = 0.0, [], []
    for t in trials:
        seen.append(t)
        n = t.number
        if not any(params[f.number] <= params[n] and score[f.number] >= score[n] for f in current):
            current = front(seen, target, by)  # the front changed: recompute its area
            area = hypervolume_2d([(score[f.number], params[f.number]) for f in current], ref)
            hv = area / box if box > 0 else 0.0
        numbers.append(n)
        values.append(hv)
    return HypervolumeHistory(numbers, values, ref, ideal)


def hypervolume_figure(study: optuna.Study) -> go.Figure:
    """:func:`hypervolume_history` as a staircase over trial numbers, the reference box in the title."""
    h = hypervolume_history(study)
    if not h.trials:
        return _empty_note(go.Figure(layout={"template": _TEMPLATE, "height": 420}), True, "no feasible trials yet")
    target = study_target(study)
    fig = go.Figure(go.Scatter(x=h.trials, y=h.values, mode="lines+markers", line_shape="hv", name="hypervolume",
                               line={"color": "#555"}, marker={"size": 4},
                               hovertemplate="trial %{x}<br>hypervolume %{y:.3f}<extra></extra>"))
    title = (f"box: {accuracy_kind(study, target)} {100 * h.reference[0]:.1f}–{100 * h.ideal[0]:.1f} %<br>"
             f"params {si(h.ideal[1])}–{si(h.reference[1])} (log), front at {target}")
    fig.update_layout(template=_TEMPLATE, height=420, margin={"t": 60, "r": 20, "b": 60, "l": 70},
                      title={"text": title, "font": {"size": 12}, "x": 0.01, "xanchor": "left", "y": 0.97},
                      yaxis={"title": {"text": "hypervolume (fraction of the box)"}, "rangemode": "tozero"},
                      xaxis={"title": {"text": "trial"}})
    return fig


@dataclass(frozen=True)
class FinetuneResult:
    """One `qnas finetune` run recorded on the study, beside the study's prediction for that trial."""

    trial: int
    setting: str
    after: float  # measured top-1 at the setting after finetuning, on the test images (a fraction)
    before: float | None  # measured at the start of finetuning (calibrated, before any step)
    predicted: float | None  # the study's objective kind at the setting; None: the trial has no score there
    kind: str  # RANKER or GHN: what ``predicted`` is
    ghn_top1: float | None
    epochs: int | None
    init: str | None


def finetune_results(study: optuna.Study) -> list[FinetuneResult]:
    """The study user attributes ``finetune_<trial>_<setting>`` that `qnas finetune` writes, by trial and setting."""
    by = study_objective(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for key, rec in study.user_attrs.items():  # every attribute: the finetune ones are named per trial and setting
        run = StudyKey.parse_finetune(key)
        if run is None or not isinstance(rec, dict) or f"top1_{run[1]}_after" not in rec:
            continue
        n, s = run
        t = trials.get(n)
        ghn = None if t is None else TrialAttrs.of(t).top1(s)
        scored = ghn is not None
        out.append(FinetuneResult(
            trial=n, setting=s, after=float(rec[f"top1_{s}_after"]), before=rec.get(f"top1_{s}_before"),
            predicted=value(t, s, by) if scored else None, kind=_kind(t, s, by) if scored else GHN,
            ghn_top1=ghn, epochs=rec.get("epochs"), init=rec.get("init"),
        ))
    return sorted(out, key=lambda r: (r.trial, r.setting))


def finetune_figure(study: optuna.Study) -> go.Figure:
    """Measured top-1 after finetuning against the study's prediction, one trace per setting, y = x dashed."""
    rows = [r for r in finetune_results(study) if r.predicted is not None]
    settings = list(dict.fromkeys(r.setting for r in rows))
    fig = go.Figure()
    for s in settings:
        pts = [r for r in rows if r.setting == s]
        fig.add_trace(go.Scatter(
            x=[100 * r.predicted for r in pts], y=[100 * r.after for r in pts], mode="markers", name=s,
            marker={"color": _color(s, settings), "size": 9, "line": {"color": "white", "width": 0.5}},
            text=[f"<b>trial {r.trial}</b> · {r.epochs} epochs, {r.init} init<br>{r.kind} {100 * r.predicted:.1f} %"
                  f"<br>{FINETUNED} {100 * r.after:.1f} %" for r in pts],
            hovertemplate=f"%{{text}}<extra>{s}</extra>",
        ))
    values = [100 * v for r in rows for v in (r.predicted, r.after)]
    if values:
        lo, hi = min(values) - 1, max(values) + 1
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured",
                                 line={"color": "#aaa", "dash": "dash", "width": 1}, hoverinfo="skip"))
    kinds = {r.kind for r in rows}
    fig.update_layout(
        template=_TEMPLATE, height=460, margin={"t": 30, "r": 20, "b": 60, "l": 70},
        xaxis={"title": {"text": f"{kinds.pop() if len(kinds) == 1 else 'predicted top-1'} (%)"}},
        yaxis={"title": {"text": f"{FINETUNED} (%, test images)"}}, hovermode="closest", hoverlabel=_HOVER,
    )
    return _empty_note(fig, not rows, "no finetune results recorded")


def _empty_note(fig: go.Figure, empty: bool, text: str) -> go.Figure:
    if empty:
        fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                           font={"size": 16, "color": "#888"})
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.layout.shapes, fig.layout.annotations = (), fig.layout.annotations[-1:]
    return fig


# ----------------------------------------------------------------------------- HTML


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #f4f5f7; }
main { max-width: 1360px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 0 0 6px; }
.sub { color: #555; margin: 0 0 14px; }
section, header { background: #fff; border-radius: 8px; padding: 16px 20px; margin-bottom: 18px;
                  box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.note { color: #555; margin: 0 0 8px; font-size: 14px; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 8px 18px; margin: 0; }
.stats div { border-left: 3px solid #ddd; padding-left: 10px; }
.stats dt { color: #666; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.stats dd { margin: 0; font-size: 18px; font-weight: 600; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.two section { margin-bottom: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #fafafa; }
th[colspan] { text-align: center; border-bottom: 1px solid #ccc; }
td.arch, th.arch { text-align: left; white-space: normal; font-family: ui-monospace, Menlo, monospace;
                   font-size: 12px; word-break: break-all; }
td.hi, th.hi { background: #fff4e5; font-weight: 600; }
footer { color: #777; font-size: 12px; text-align: center; }
"""


def _stats(study: optuna.Study, target: str) -> list[tuple[str, str]]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    scored = scored_trials(study, target)
    by = study_objective(study)
    fr = front(scored, target, by)
    best = max(scored, key=lambda t: value(t, target, by), default=None)
    attrs = [TrialAttrs.of(t) for t in complete]
    seconds = sum(a.score_seconds for a in attrs)
    count = [t.state for t in trials].count
    return [
        ("trials", f"{len(trials):,}"),
        ("complete", f"{len(complete):,}"),
        ("feasible, distinct", f"{len(scored):,}"),
        ("over the bound", f"{sum(1 for t in complete if not is_feasible(t)):,}"),
        ("duplicates (cached)", f"{sum(1 for a in attrs if a.scored_in_trial is not None):,}"),
        ("failed / running", f"{count(TrialState.FAIL)} / {count(TrialState.RUNNING)}"),
        ("Pareto front", f"{len(fr)} trials"),
        (f"best {accuracy_kind(study, target, scored)} at {target}",
         "–" if best is None else f"{100 * value(best, target, by):.2f} % (#{best.number})"),
        ("scoring time", f"{seconds:,.0f} s"),
    ]


def _front_table(study: optuna.Study, target: str) -> str:
    scored = scored_trials(study, target)
    settings = settings_of(scored)
    by = study_objective(study)
    rows = front(scored, target, by)
    if not rows:
        return '<p class="note">No feasible trials yet.</p>'
    ranked = accuracy_kind(study, target, scored) == RANKER
    # Two header rows: what predicted each accuracy above, the setting below.
    group = (f'<th class="hi">{RANKER}</th>' if ranked else "") + f'<th colspan="{len(settings)}">{GHN}</th>'
    head = (f'<th class="hi">{target}</th>' if ranked else "") + "".join(
        f'<th class="{"hi" if s == target and not ranked else ""}">{s}</th>' for s in settings)
    out = [f'<table><thead><tr><th rowspan="2">trial</th><th rowspan="2">params</th><th rowspan="2">MACs</th>'
           f'{group}<th rowspan="2">size at {target}</th><th rowspan="2" class="arch">architecture</th></tr>'
           f"<tr>{head}</tr></thead><tbody>"]
    for t in reversed(rows):  # most accurate first, as users read it
        a = TrialAttrs.of(t)
        ghn = {s: a.top1(s) for s in settings}
        accs = (f'<td class="hi">{_acc(t, target, by):.2f}</td>' if ranked else "") + "".join(
            f'<td class="{"hi" if s == target and not ranked else ""}">{100 * v:.2f}</td>'
            if v is not None else "<td>–</td>" for s, v in ghn.items())
        size = (a.size_bytes or {}).get(target)
        out.append(f"<tr><td>{t.number}</td><td>{a.params:,}</td><td>{a.macs or 0:,}</td>{accs}"
                   f"<td>{'–' if size is None else _bytes(size)}</td>"
                   f'<td class="arch">{html.escape(a.arch or "")}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _finetune_table(results: Sequence[FinetuneResult]) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    out = ["<table><thead><tr><th>trial</th><th>setting</th><th>epochs</th><th>init</th>"
           f"<th>{RANKER}</th><th>{GHN}</th><th>measured at the start</th>"
           f'<th class="hi">{FINETUNED}</th></tr></thead><tbody>']
    for r in results:
        out.append(f"<tr><td>{r.trial}</td><td>{html.escape(r.setting)}</td><td>{r.epochs or '–'}</td>"
                   f"<td>{html.escape(str(r.init or '–'))}</td>"
                   f"<td>{pct(r.predicted) if r.kind == RANKER else '–'}</td><td>{pct(r.ghn_top1)}</td>"
                   f'<td>{pct(r.before)}</td><td class="hi">{pct(r.after)}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def _figure_html(fig: go.Figure, div_id: str, plotlyjs: bool | str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=plotlyjs, div_id=div_id, config=_PLOT_CONFIG)


def build_report(study: optuna.Study, *, cdn: bool = False, storage: str | None = None) -> str:
    """The report as one HTML string; plotly.js embedded unless ``cdn``."""
    target = study_target(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise QnasError(f"study {study.study_name!r} has no completed trials yet; nothing to report")
    info = StudyAttrs.from_attrs(study.user_attrs)
    complete = [TrialAttrs.of(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    versions = sorted({f"{a.predictor} v{'?' if a.predictor_version is None else a.predictor_version}"
                       for a in complete if a.predictor is not None})
    max_params = info.max_params
    bound = f"{max_params:,} params" if max_params else "no recorded bound"
    kind = accuracy_kind(study, target)
    sub = (f"target <b>{html.escape(target)}</b> · bound <b>{bound}</b>"
           f" · space {html.escape(info.space)} · dataset {html.escape(info.dataset)}"
           f" · predictor {html.escape(', '.join(versions) or info.predictor or '?')}")
    stats = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in _stats(study, target))
    plotlyjs: bool | str = "cdn" if cdn else True
    names = ("pareto", "bytes", "bitops", "drop", "history", "hypervolume")
    builders = (pareto_figure, bytes_figure, bitops_figure, drop_figure, history_figure, hypervolume_figure)
    figs = {}
    for name, make in zip(names, builders):
        figs[name] = _figure_html(make(study), name, plotlyjs)
        plotlyjs = False  # plotly.js once, with the first figure
    tuned = finetune_results(study)
    if any(r.predicted is not None for r in tuned):
        finetune = (f'<p class="note">Each point is one <code>qnas finetune</code> run: the study\'s prediction for '
                    f"the trial (x) against the top-1 measured on the test images after finetuning (y); points "
                    f"above the dashed line did better than predicted.</p>"
                    f'{_figure_html(finetune_figure(study), "finetune", False)}{_finetune_table(tuned)}')
    elif tuned:
        finetune = ('<p class="note">Finetune results are recorded, for settings the study has no prediction '
                    f"at.</p>{_finetune_table(tuned)}")
    else:
        finetune = ('<p class="note">No finetune results in this study yet '
                    f"(<code>qnas finetune --study {html.escape(study.study_name)}</code> records them).</p>")
    h = hypervolume_history(study)
    box = ("" if not h.trials else f" The reference point is the worst objective ({100 * h.reference[0]:.1f} %) and "
           f"the most parameters ({h.reference[1]:,.0f}) of all feasible trials; the box's other corner is the best "
           f"objective ({100 * h.ideal[0]:.1f} %) and the fewest parameters ({h.ideal[1]:,.0f}).")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = html.escape(redact(storage or default_storage(study.study_name)))
    name = html.escape(study.study_name)
    t = html.escape(target)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>qnas report · {name}</title><style>{_CSS}</style></head>
<body><main>
<header><h1>qnas search report: {name}</h1><p class="sub">{sub}</p>
<p class="note">Every accuracy in this report is predicted, none is measured, except the finetune section's:
<b>{RANKER}</b> is the ranker's (<code>qnas.ranker</code>) prediction of the top-1 after training;
<b>{GHN}</b> is the top-1 of the untrained network with the GHN's predicted parameters on the validation
subset. The search maximized <b>{kind}</b> at {t}.</p>
<dl class="stats">{stats}</dl></header>
<section id="fronts"><h2>Pareto fronts: predicted top-1 vs parameters at every bit setting</h2>
<p class="note">Faint points are feasible trials scored at each setting; lines are each setting's own
non-dominated front (best predicted top-1 reachable with at most that many parameters). The search optimized
<b>{t}</b> (thick line). Hover a point for its architecture and all predicted accuracies;
click a legend entry to hide a setting.</p>
{figs["pareto"]}</section>
<section id="front-table"><h2>Pareto front at {t} (predicted top-1, %)</h2>{_front_table(study, target)}</section>
<div class="two">
<section id="size"><h2>Predicted top-1 vs model size</h2>
<p class="note">Weight bytes at each setting's bit-width (BatchNorm folded), one colour per setting:
the same architecture appears once per setting.</p>{figs["bytes"]}</section>
<section id="compute"><h2>Predicted top-1 vs BitOps</h2>
<p class="note">MACs × weight bits × activation bits (FP32 counts 32 × 32), one colour per setting.</p>
{figs["bitops"]}</section>
</div>
<section id="quantization"><h2>Predicted accuracy lost to quantization</h2>
<p class="note">The drop in {GHN}: FP32 minus each setting, for every feasible trial, against the weight
size at that setting's bit-width (BatchNorm folded). Points above zero lost accuracy.</p>
{figs["drop"]}</section>
<section id="finetuned"><h2>Finetune results beside predictions</h2>{finetune}</section>
<div class="two">
<section id="histories"><h2>Optimization history</h2>
<p class="note">{kind} at {t} per feasible trial and the best so far
(trials over the bound are not scored and not shown).</p>{figs["history"]}</section>
<section><h2>Hypervolume history</h2><p class="note">How much of the box between the worst and the ideal
feasible trial the front at {t} dominates, in ({kind}, log<sub>10</sub> parameters) after each feasible
trial; 1 would mean one trial is both the most accurate and the smallest.{box}</p>{figs["hypervolume"]}</section>
</div>
<footer><p>generated {now} by qnas {__version__} from {where}</p></footer>
</main></body></html>
"""


def write_report(study: optuna.Study, out: Path, *, cdn: bool = False, storage: str | None = None) -> Path:
    text = build_report(study, cdn=cdn, storage=storage)  # first, so a refused report leaves no directory
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def write_csv(study: optuna.Study, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    trials_frame(study).to_csv(out, index=False)
    return out
