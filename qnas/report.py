"""Reports on a search study: Pareto fronts per bit setting, quantization drop, histories, CSV and tables.

Everything here reads a study written by :mod:`qnas.search` and derives output from it; nothing
writes to the study. The HTML report is one self-contained file (plotly.js embedded) so it opens
offline and can be mailed around; ``cdn=True`` links plotly.js instead and makes it ~5 MB smaller.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Sequence
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
    front,
    is_feasible,
    scored_trials,
    settings_of,
    study_objective,
    study_target,
    value,
)

__all__ = [
    "StudyRow",
    "best_trials",
    "build_report",
    "default_storages",
    "drop_figure",
    "front",
    "history_figure",
    "hypervolume_figure",
    "is_feasible",
    "list_studies",
    "open_study",
    "pareto_figure",
    "scored_trials",
    "settings_of",
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
        chosen = sorted(trials, key=lambda t: (-value(t, target, by), t.user_attrs["params"], t.number))
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
        target = study.user_attrs.get("target")
        best = None
        if target:
            scored = scored_trials(study, target)
            best = max(scored, key=lambda t: value(t, target, study_objective(study)), default=None)
        rows.append(StudyRow(
            storage=redact(url), name=summary.study_name, trials=len(trials),
            complete=states.count(TrialState.COMPLETE), failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING), target=target, max_params=study.user_attrs.get("max_params"),
            best_top1=None if best is None else value(best, target, study_objective(study)),
            best_trial=None if best is None else best.number, started=summary.datetime_start,
        ))
    return rows


# ----------------------------------------------------------------------------- CSV


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial (every state); dict attributes flattened to ``size_bytes_w4a4`` etc."""
    target = study_target(study)
    on_front = {t.number for t in front(scored_trials(study, target), target)}
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
        for k, v in t.user_attrs.items():
            if k == "genome":
                row[k] = json.dumps(v, separators=(",", ":"))
            elif isinstance(v, dict):
                row.update({f"{k}_{sk}": sv for sk, sv in v.items()})
            else:
                row[k] = v
        row.update({f"param_{k}": v for k, v in t.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    # Readable column order: identity, objectives, accuracies, sizes, the rest, genome and raw params last.
    first = [c for c in ("number", "state", "feasible", "pareto", "arch", "params", "macs") if c in df]
    accs = [c for c in df if c.startswith(("top1_", "top5_"))]
    last = [c for c in df if c == "genome" or c.startswith("param_")]
    middle = [c for c in df if c not in first + accs + last]
    return df[first + accs + middle + last]


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


def _hover(t: FrozenTrial, settings: Sequence[str], target: str) -> str:
    a = t.user_attrs
    accs = " · ".join(
        (f"<b>{s} {100 * a[f'top1_{s}']:.1f}</b>" if s == target else f"{s} {100 * a[f'top1_{s}']:.1f}")
        for s in settings if f"top1_{s}" in a
    )
    return (f"<b>trial {t.number}</b> · {a['params']:,} params · {a.get('macs', 0) / 1e6:,.1f}M MACs<br>"
            f"top-1 %: {accs}<br>{_wrap(str(a.get('arch', '')))}")


def pareto_figure(study: optuna.Study) -> go.Figure:
    """Top-1 vs parameters for every setting: faint points, each setting's front as a staircase."""
    target = study_target(study)
    trials = scored_trials(study, target)
    settings = settings_of(trials)
    hover = {t.number: _hover(t, settings, target) for t in trials}
    fig = go.Figure()
    # The target goes last so it is drawn on top of the other settings.
    for s in sorted(settings, key=lambda s: s == target):
        pts = [t for t in trials if f"top1_{s}" in t.user_attrs]
        hi = s == target
        color = _color(s, settings)
        fig.add_trace(go.Scatter(
            x=[t.user_attrs["params"] for t in pts], y=[100 * t.user_attrs[f"top1_{s}"] for t in pts],
            mode="markers", name=f"{s} trials", legendgroup=s, showlegend=False,
            marker={"color": color, "size": 7 if hi else 5, "opacity": 0.35 if hi else 0.18},
            text=[hover[t.number] for t in pts], hovertemplate=f"%{{text}}<extra>{s}</extra>",
        ))
        fr = front(pts, s)
        fig.add_trace(go.Scatter(
            x=[t.user_attrs["params"] for t in fr], y=[100 * t.user_attrs[f"top1_{s}"] for t in fr],
            mode="lines+markers", line_shape="hv", name=f"{s} front (target)" if hi else f"{s} front",
            legendgroup=s, legendrank=settings.index(s),
            # FP32 and W8A8 fronts nearly coincide; a dashed FP32 line stays visible under W8A8.
            line={"color": color, "width": 4 if hi else 1.5, "dash": "dash" if s == "fp32" else "solid"},
            marker={"color": color, "size": 10 if hi else 6, "line": {"color": "white", "width": 1}},
            text=[hover[t.number] for t in fr], hovertemplate=f"%{{text}}<extra>{s} front</extra>",
        ))
    max_params = study.user_attrs.get("max_params")
    if max_params:
        fig.add_vline(x=max_params, line_dash="dot", line_color="#888")
        # Annotations on a log axis take log10 coordinates (shapes take data values).
        fig.add_annotation(x=math.log10(max_params), xref="x", y=0, yref="paper", text=f"bound {max_params:,.0f}",
                           showarrow=False, xanchor="right", yanchor="bottom", font={"color": "#666"})
    fig.update_layout(
        template=_TEMPLATE, height=620, margin={"t": 30, "r": 20, "b": 60, "l": 70},
        xaxis={"type": "log", "title": "parameters (log scale)"}, yaxis={"title": "top-1 accuracy (%)"},
        legend={"title": {"text": "click to toggle"}}, hovermode="closest", hoverlabel=_HOVER,
    )
    return _empty_note(fig, not trials, "no feasible scored trials yet")


def drop_figure(study: optuna.Study) -> go.Figure:
    """Top-1 lost to quantization (FP32 minus setting, percentage points) against model size in bytes."""
    target = study_target(study)
    trials = [t for t in scored_trials(study, target) if "top1_fp32" in t.user_attrs]
    settings = [s for s in settings_of(trials) if s != "fp32"]
    hover = {t.number: _hover(t, settings_of(trials), target) for t in trials}
    fig = go.Figure()
    for s in settings:
        pts = [t for t in trials if f"top1_{s}" in t.user_attrs]
        hi = s == target
        fig.add_trace(go.Scatter(
            x=[t.user_attrs.get("size_bytes", {}).get(s) for t in pts],
            y=[100 * (t.user_attrs["top1_fp32"] - t.user_attrs[f"top1_{s}"]) for t in pts],
            mode="markers", name=f"{s} (target)" if hi else s,
            marker={"color": _color(s, settings), "size": 8 if hi else 6, "opacity": 0.8 if hi else 0.6,
                    "line": {"color": "white", "width": 0.5}},
            text=[hover[t.number] for t in pts], hovertemplate=f"%{{text}}<extra>{s}</extra>",
        ))
    fig.add_hline(y=0, line_color="#888", line_width=1)
    fig.update_layout(
        template=_TEMPLATE, height=520, margin={"t": 30, "r": 20, "b": 60, "l": 70},
        xaxis={"type": "log", "title": "weight size at the setting's bit-width (bytes, log scale)"},
        yaxis={"title": "top-1 drop from FP32 (percentage points)"}, hovermode="closest", hoverlabel=_HOVER,
    )
    return _empty_note(fig, not trials, "no feasible scored trials yet")


def history_figure(study: optuna.Study) -> go.Figure:
    """Top-1 at the target per trial (Optuna's history plot) with the best feasible value so far."""
    target = study_target(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(is_feasible(t) for t in complete):
        return _empty_note(go.Figure(layout={"template": _TEMPLATE, "height": 420}), True, "no feasible trials yet")
    fig = optuna.visualization.plot_optimization_history(
        study, target=lambda t: 100 * t.values[0], target_name=f"top-1 at {target} (%)")
    # Infeasible trials carry a placeholder accuracy of 0; they are counted in the header instead.
    fig.data = [d for d in fig.data if d.name != "Infeasible Trial"]
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
                      legend={"orientation": "h", "y": -0.2}, xaxis={"title": "trial"})
    return fig


def hypervolume_figure(study: optuna.Study) -> go.Figure:
    """Hypervolume of the feasible front, reference (0 % top-1, max_params), normalized to [0, 1]."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any(is_feasible(t) for t in complete):
        return _empty_note(go.Figure(layout={"template": _TEMPLATE, "height": 420}), True, "no feasible trials yet")
    max_params = float(study.user_attrs.get("max_params") or max(t.values[1] for t in complete))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fig = optuna.visualization.plot_hypervolume_history(study, reference_point=(0.0, max_params))
    # Dividing by the reference box (1 x max_params) makes the value comparable across bounds.
    for d in fig.data:
        d.y = [v / max_params for v in d.y]
        d.line = {"color": "#555"}
        d.name = "hypervolume"
    fig.update_layout(template=_TEMPLATE, title=None, height=420, margin={"t": 30, "r": 20, "b": 60, "l": 70},
                      yaxis={"title": "hypervolume (fraction of 1 × max_params)"}, xaxis={"title": "trial"})
    return fig


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
th { background: #fafafa; position: sticky; top: 0; }
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
    seconds = sum(float(t.user_attrs.get("score_seconds", 0.0)) for t in complete)
    count = [t.state for t in trials].count
    return [
        ("trials", f"{len(trials):,}"),
        ("complete", f"{len(complete):,}"),
        ("feasible, distinct", f"{len(scored):,}"),
        ("over the bound", f"{sum(1 for t in complete if not is_feasible(t)):,}"),
        ("duplicates (cached)", f"{sum(1 for t in complete if 'scored_in_trial' in t.user_attrs):,}"),
        ("failed / running", f"{count(TrialState.FAIL)} / {count(TrialState.RUNNING)}"),
        ("Pareto front", f"{len(fr)} trials"),
        (f"best {'predicted trained ' if by == 'pred_top1' else ''}top-1 at {target}",
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
    predicted = by == "pred_top1"
    head = ('<th class="hi">predicted trained</th>' if predicted else "") + "".join(
        f'<th class="{"hi" if s == target and not predicted else ""}">GHN {s}</th>' for s in settings)
    out = [f"<table><thead><tr><th>trial</th><th>params</th><th>MACs</th>{head}"
           f'<th>size at {target}</th><th class="arch">architecture</th></tr></thead><tbody>']
    for t in reversed(rows):  # most accurate first, as users read it
        a = t.user_attrs
        accs = (f'<td class="hi">{100 * value(t, target, by):.2f}</td>' if predicted else "") + "".join(
            f'<td class="{"hi" if s == target and not predicted else ""}">{100 * a[f"top1_{s}"]:.2f}</td>'
            if f"top1_{s}" in a else "<td>–</td>" for s in settings)
        size = a.get("size_bytes", {}).get(target)
        out.append(f"<tr><td>{t.number}</td><td>{a['params']:,}</td><td>{a.get('macs', 0):,}</td>{accs}"
                   f"<td>{'–' if size is None else _bytes(size)}</td>"
                   f'<td class="arch">{html.escape(str(a.get("arch", "")))}</td></tr>')
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
    ua = study.user_attrs
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    versions = sorted({f"{t.user_attrs['predictor']} v{t.user_attrs.get('predictor_version', '?')}"
                       for t in complete if "predictor" in t.user_attrs})
    max_params = ua.get("max_params")
    bound = f"{max_params:,} params" if max_params else "no recorded bound"
    sub = (f"target <b>{html.escape(target)}</b> · bound <b>{bound}</b>"
           f" · space {html.escape(str(ua.get('space', '?')))} · dataset {html.escape(str(ua.get('dataset', '?')))}"
           f" · predictor {html.escape(', '.join(versions) or str(ua.get('predictor', '?')))}")
    stats = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in _stats(study, target))
    figs = [
        _figure_html(pareto_figure(study), "pareto", "cdn" if cdn else True),
        _figure_html(drop_figure(study), "drop", False),
        _figure_html(history_figure(study), "history", False),
        _figure_html(hypervolume_figure(study), "hypervolume", False),
    ]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = html.escape(redact(storage or default_storage(study.study_name)))
    name = html.escape(study.study_name)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>qnas report · {name}</title><style>{_CSS}</style></head>
<body><main>
<header><h1>qnas search report: {name}</h1><p class="sub">{sub}</p><dl class="stats">{stats}</dl></header>
<section id="fronts"><h2>Pareto fronts: top-1 vs parameters at every bit setting</h2>
<p class="note">Faint points are feasible trials scored at each setting; lines are each setting's own
non-dominated front (best top-1 reachable with at most that many parameters). The search optimized
<b>{html.escape(target)}</b> (thick line). Hover a point for its architecture and all accuracies;
click a legend entry to hide a setting.</p>
{figs[0]}</section>
<section id="front-table"><h2>Pareto front at {html.escape(target)}</h2>{_front_table(study, target)}</section>
<section id="quantization"><h2>Accuracy lost to quantization</h2>
<p class="note">Top-1 at FP32 minus top-1 at each setting, for every feasible trial, against the weight
size at that setting's bit-width (BatchNorm folded). Points above zero lost accuracy.</p>
{figs[1]}</section>
<div class="two">
<section id="histories"><h2>Optimization history</h2>
<p class="note">Top-1 at {html.escape(target)} per feasible trial and the best so far
(trials over the bound are not scored and not shown).</p>{figs[2]}</section>
<section><h2>Hypervolume history</h2><p class="note">Area dominated by the feasible front, reference point
(0 % top-1, {bound}), as a fraction of that box.</p>{figs[3]}</section>
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
