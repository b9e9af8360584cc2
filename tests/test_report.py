"""Reports and study browsing on a small study made with a cheap deterministic scorer."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest

from qnas import report as R
from qnas.cli import main
from qnas.search import SETTINGS, SearchConfig, create_or_continue, run_search
from search_spaces import convnets250k as S

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class CurveScorer:
    """Accuracy grows with log(params) and falls with fewer bits, plus per-architecture noise."""

    name, version = "curve", "1"

    def score(self, genome) -> dict[str, float]:
        arch = S.to_string(genome)
        h = [int(hashlib.sha256(f"{i}{arch}".encode()).hexdigest()[:8], 16) / 2**32 for i in range(3)]
        fp32 = min(0.95, 0.45 + 0.08 * math.log10(S.count_params(genome)) + 0.08 * h[0])
        drop = {"fp32": 0.0, "w8a8": 0.002 * h[1], "w4a8": 0.01 + 0.02 * h[1], "w4a4": 0.03 + 0.08 * h[2],
                "w2a2": 0.25 + 0.4 * h[2]}
        out = {}
        for s in SETTINGS:
            out[f"top1_{s}"] = max(0.1, fp32 - drop[s])
            out[f"top5_{s}"] = min(1.0, out[f"top1_{s}"] + 0.2)
        return out


class _Interrupted(CurveScorer):
    def score(self, genome):
        raise KeyboardInterrupt


def _fast_tmp(tmp_path_factory) -> tuple[Path, bool]:
    """A scratch directory, on tmpfs when there is one: Optuna commits to SQLite once per trial attribute,
    and on tmpfs those fsyncs are free (about 4x faster on this machine's disk)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="qnas-report-", dir=shm)), True
    return tmp_path_factory.mktemp("rep"), False


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Iterator[Path]:
    """studies/demo.db as `qnas search` makes it: 22 trials, one over the bound, one duplicate, one failed."""
    root, fast = _fast_tmp(tmp_path_factory)
    cfg = SearchConfig(study="demo", storage=f"sqlite:///{root / 'studies' / 'demo.db'}", trials=19,
                       max_params=400_000, sampler="random", seed=0)
    run_search(cfg, CurveScorer(), S, (1, 28, 28), 10)
    study = R.open_study("demo", cfg.storage)
    small = next(t for t in study.trials if t.user_attrs["params"] < 300_000)
    study.enqueue_trial(small.params)  # the same architecture again: served from the cache
    assert run_search(replace(cfg, trials=1), CurveScorer(), S, (1, 28, 28), 10).cached == 1
    # Over the bound: the sampler proposes none (BoundedSampler), but an enqueued one is recorded unscored.
    study.enqueue_trial({**small.params, "s2_width": 384, "s2_depth": 4, **{f"s2_b{j}_op": "conv5" for j in range(4)}})
    assert run_search(replace(cfg, trials=1), CurveScorer(), S, (1, 28, 28), 10).infeasible == 1
    study.enqueue_trial({**small.params, "hidden": 64 if small.params["hidden"] == 0 else 0})  # a new one
    assert run_search(replace(cfg, trials=1), _Interrupted(), S, (1, 28, 28), 10).interrupted
    yield root
    if fast:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def in_dir(study_dir, monkeypatch) -> Path:
    monkeypatch.chdir(study_dir)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables unfolded, so architecture strings are searchable
    return study_dir


def _study(root: Path) -> optuna.Study:
    return R.open_study("demo", f"sqlite:///{root / 'studies' / 'demo.db'}")


def _n_over(root: Path) -> int:
    return sum(1 for t in _study(root).trials if t.user_attrs.get("infeasible"))


def test_fronts_are_non_dominated_and_complete(study_dir):
    study = _study(study_dir)
    scored = R.scored_trials(study, "w4a4")
    assert scored and all(t.user_attrs["params"] <= 400_000 for t in scored)
    # One trial per architecture: the cached duplicate is left out, as are infeasible and failed trials.
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    over = [t for t in complete if t.user_attrs.get("infeasible")]
    dups = [t for t in complete if "scored_in_trial" in t.user_attrs]
    assert over and len(dups) == 1 and len(scored) == len(complete) - len(over) - 1
    assert len({t.user_attrs["arch"] for t in scored}) == len(scored)
    for s in SETTINGS:
        key = f"top1_{s}"
        pts = [(t.user_attrs["params"], t.user_attrs[key]) for t in scored]
        assert len(set(pts)) == len(pts)  # no exact ties, so "on the front" == "not dominated"
        on = {t.number for t in R.front(scored, s)}
        for t, (p, a) in zip(scored, pts):
            dominated = any(q <= p and b >= a and (q, b) != (p, a) for q, b in pts)
            assert (t.number in on) == (not dominated), (s, t.number)
    # The target front matches the search's own Pareto front (same trials, minus duplicate architectures).
    from qnas.study import pareto_front

    archs = {t.user_attrs["arch"] for t in pareto_front(study)}
    assert {t.user_attrs["arch"] for t in R.front(scored, "w4a4")} == archs


def test_report_is_self_contained_with_a_front_per_setting(in_dir, capsys):
    assert main(["report", "--study", "demo"]) == 0
    out = capsys.readouterr().out
    html = (in_dir / "studies" / "demo" / "report.html").read_text()
    assert "plotly.js v" in html and len(html) > 3_000_000
    assert not re.search(r"<script[^>]*\bsrc=", html)
    for s in SETTINGS:
        assert f'"name":"{s} front' in html
    assert '"name":"w4a4 front (target)"' in html and html.count("(target)") >= 2
    for div in ("pareto", "bytes", "bitops", "drop", "history", "hypervolume"):
        assert f'id="{div}"' in html
    for label, value in (("trials", "22"), ("complete", "21"), ("duplicates (cached)", "1"),
                         ("failed / running", "1 / 0"), ("over the bound", str(_n_over(in_dir)))):
        assert f"<dt>{label}</dt><dd>{value}</dd>" in html
    # Hover text carries the architecture string of a front trial.
    arch = R.best_trials(_study(in_dir), top=1)[0].user_attrs["arch"]
    assert arch.split("-")[0] in html and "Pareto front of 'demo' at w4a4" in out
    assert "wrote studies/demo/report.html" in out and "wrote studies/demo/trials.csv" in out
    # A second run overwrites and says so.
    assert main(["report", "--study", "demo"]) == 0
    assert "overwrote studies/demo/report.html" in capsys.readouterr().out


def test_pareto_figure_highlights_target(study_dir):
    fig = R.pareto_figure(_study(study_dir))
    fronts = {d.name: d for d in fig.data if "front" in d.name}
    assert set(fronts) == {f"{s} front" for s in SETTINGS if s != "w4a4"} | {"w4a4 front (target)"}
    assert fronts["w4a4 front (target)"].line.width > fronts["w8a8 front"].line.width
    assert fig.layout.xaxis.type == "log"
    hv = R.hypervolume_figure(_study(study_dir))
    assert 0 < hv.data[0].y[-1] <= 1 and list(hv.data[0].y) == sorted(hv.data[0].y)


def test_cdn_report_links_plotly(in_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "--study", "demo", "--out", str(out), "--csv", str(tmp_path / "t.csv"), "--cdn"]) == 0
    html = out.read_text()
    assert 'src="https://cdn.plot.ly/' in html and len(html) < 1_000_000


def test_trials_csv_has_one_row_per_trial(in_dir, capsys):
    assert main(["report", "--study", "demo", "--out", "studies/demo/r.html"]) == 0
    df = pd.read_csv(in_dir / "studies" / "demo" / "trials.csv")
    study = _study(in_dir)
    assert len(df) == len(study.trials) == 22
    assert list(df["number"]) == [t.number for t in study.trials]
    for col in ("arch", "params", "top1_w4a4", "top5_fp32", "size_bytes_w2a2", "bitops_w4a8", "pareto", "genome"):
        assert col in df
    feasible = df[df["feasible"]]
    assert (feasible["params"] <= 400_000).all() and df["pareto"].sum() >= 1
    assert (~df["feasible"]).sum() == _n_over(in_dir) + 1  # over the bound, and the failed trial
    assert df["scored_in_trial"].notna().sum() == 1 and list(df["state"]).count("FAIL") == 1
    g = S.from_json(json.loads(df.loc[feasible.index[0], "genome"]))
    assert S.to_string(g) == feasible.iloc[0]["arch"]


def test_studies_lists_default_sqlite_files(in_dir, capsys):
    assert main(["studies"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "w4a4" in out and "400k" in out and "storage: sqlite:///studies/demo.db" in out
    assert main(["studies", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "demo" and row["trials"] == 22 and row["complete"] == 21 and row["failed"] == 1
    best = max(t.user_attrs["top1_w4a4"] for t in R.scored_trials(_study(in_dir), "w4a4"))
    assert row["best_top1"] == pytest.approx(best)


def test_studies_piped_keeps_each_row_on_one_line(in_dir, monkeypatch, capsys):
    long = in_dir / "studies" / "a-copy-of-the-demo-study-under-a-long-file-name.db"
    shutil.copy(in_dir / "studies" / "demo.db", long)  # two storages: a storage column
    monkeypatch.delenv("COLUMNS")
    assert main(["studies"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "demo" in line]
    assert len(rows) == 2 and any(long.name in r for r in rows) and all("% #" in r for r in rows), rows


def test_studies_empty_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["studies"]) == 0
    assert "no studies" in capsys.readouterr().out
    assert main(["studies", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []


def test_show_best_and_pareto(in_dir, capsys):
    assert main(["show", "--study", "demo", "--top", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    accs = [r["top1_w4a4"] for r in rows]
    assert len(rows) == 3 and accs == sorted(accs, reverse=True)
    assert all(r["params"] <= 400_000 and set(r["size_bytes"]) == set(SETTINGS) for r in rows)
    assert main(["show", "--study", "demo", "--pareto", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert [r["params"] for r in front] == sorted(r["params"] for r in front)
    assert max(accs) == max(r["top1_w4a4"] for r in front)
    assert main(["show", "--study", "demo"]) == 0
    out = capsys.readouterr().out
    assert "best 10 feasible trials of 'demo'" in out and "w2a2" in out and rows[0]["arch"][:20] in out


@pytest.mark.parametrize("argv, message", [
    (["report", "--study", "nope"], "no study 'nope': studies/nope.db does not exist"),
    (["show", "--study", "nope"], "no study 'nope'"),
    (["show", "--study", "nope", "--storage", "sqlite:///studies/demo.db"], "(found: demo)"),
    (["show", "--study", "demo", "--storage", "sqlite:///studies/other.db"], "does not exist"),
    (["report", "--study", "demo", "--out", "x.txt"], "should end in .html"),
    (["studies", "--storage", "postgresql+psycopg2://u:secret@127.0.0.1:9/x?connect_timeout=2"], "cannot open"),
])
def test_bad_inputs_exit_2_with_one_line(in_dir, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (in_dir / "studies" / "nope.db").exists()  # a missing study leaves no empty database behind
    assert not (in_dir / "studies" / "other.db").exists()


def test_storage_passwords_are_redacted():
    assert R.redact("postgresql+psycopg2://qnas:s3cret@db:5432/x") == "postgresql+psycopg2://qnas:***@db:5432/x"
    assert R.redact("sqlite:///studies/a.db") == "sqlite:///studies/a.db"


@pytest.mark.parametrize("argv", [["show", "--study", "demo", "--top", "0"], ["report"], ["show", "--top", "x"]])
def test_bad_arguments_exit_2(in_dir, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_empty_and_all_infeasible_studies(tmp_path_factory, monkeypatch, capsys):
    root, fast = _fast_tmp(tmp_path_factory)
    monkeypatch.chdir(root)
    monkeypatch.setenv("COLUMNS", "250")
    try:
        create_or_continue(SearchConfig(study="empty", storage="sqlite:///studies/empty.db"))
        assert main(["report", "--study", "empty"]) == 2
        assert "no completed trials yet" in capsys.readouterr().err
        assert not (root / "studies" / "empty").exists()
        # A bound no architecture meets (the CLI refuses it up front): every trial is recorded, none is scored.
        monkeypatch.setattr("qnas.search.check_bound", lambda *args: None)
        cfg = SearchConfig(study="tiny", storage="sqlite:///studies/tiny.db", trials=2, max_params=100,
                           sampler="random")
        run_search(cfg, CurveScorer(), S, (1, 28, 28), 10)
        assert main(["report", "--study", "tiny"]) == 0
        html = (root / "studies" / "tiny" / "report.html").read_text()
        assert "no feasible scored trials yet" in html and "No feasible trials yet." in html
        assert main(["show", "--study", "tiny"]) == 0
        assert "no feasible scored trials yet" in capsys.readouterr().out
        assert main(["studies", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows["empty"]["trials"] == 0 and rows["tiny"]["complete"] == 2 and rows["tiny"]["best_top1"] is None
    finally:
        if fast:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make setup installs it)")
def test_report_renders_in_headless_chromium(in_dir, tmp_path, capsys):
    assert main(["report", "--study", "demo"]) == 0
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_check.py"),
                           str(in_dir / "studies" / "demo" / "report.html"), str(png)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert png.stat().st_size > 50_000


# ----------------------------------------------------------------------------- issue 17 item 7: axes, labels, new plots


def _fake_study(rows: list[tuple[int, float]], *, objective: str = "top1", max_params: int = 1_000_000,
                target: str = "w4a4") -> optuna.Study:
    """An in-memory study shaped as `qnas search` writes it: (params, top-1 at the target) per trial; other
    settings a point lower per step down SETTINGS; with ``pred_top1`` a ranker prediction 10 points higher."""
    from optuna.trial import create_trial

    from qnas.search import bitops, size_bytes

    study = optuna.create_study(study_name="fake", directions=["maximize", "minimize"])
    for k, v in {"target": target, "max_params": max_params, "objective": objective}.items():
        study.set_user_attr(k, v)
    for i, (p, acc) in enumerate(rows):
        a: dict = {"arch": f"arch{i}", "params": p, "macs": 10 * p,
                   "size_bytes": {s: size_bytes(p, s) for s in SETTINGS},
                   "bitops": {s: bitops(10 * p, s) for s in SETTINGS}}
        a.update({f"top1_{s}": acc - 0.01 * j for j, s in enumerate(SETTINGS)})
        a[f"top1_{target}"] = acc
        if objective == "pred_top1":
            a[f"pred_top1_{target}"] = acc + 0.1
        if p > max_params:
            a["infeasible"] = True
        study.add_trial(create_trial(values=[a.get(f"{objective}_{target}", acc), p], user_attrs=a,
                                     constraints={"params": p - max_params}))
    return study


# (params, top-1): #2 is dominated by #1 and is the worst and the largest feasible; #4 is over the bound.
_TINY = [(1000, 0.50), (10_000, 0.70), (100_000, 0.40), (100, 0.45), (2_000_000, 0.90)]


def test_hypervolume_is_a_real_2d_hypervolume():
    h = R.hypervolume_history(_fake_study(_TINY))
    # Reference (worst 0.40, most params 1e5), ideal (best 0.70, fewest 1e2): box 0.30 x 3 decades = 0.9.
    # After #0: (5-3) x 0.10; #1 adds a step: 1 x 0.10 + 1 x 0.30; #2 is dominated; #3: 1 x 0.05 more.
    assert h.trials == [0, 1, 2, 3] and h.reference == (0.40, 100_000) and h.ideal == (0.70, 100)
    assert h.values == pytest.approx([0.2 / 0.9, 0.4 / 0.9, 0.4 / 0.9, 0.45 / 0.9])
    assert h.values == sorted(h.values)
    assert R.hypervolume_2d([(0.5, 1000), (0.7, 10_000)], (0.4, 100_000)) == pytest.approx(0.4)
    assert R.hypervolume_2d([(0.3, 1000), (0.5, 1e6)], (0.4, 100_000)) == 0  # outside the box
    fig = R.hypervolume_figure(_fake_study(_TINY))
    assert list(fig.data[0].y) == h.values and "40.0–70.0 %" in fig.layout.title.text
    # Not a restatement of the best accuracy: the best is reached at #1, the hypervolume still grows at #3.
    best = [max(a for _, a in _TINY[: i + 1]) for i in range(4)]
    assert best[1] == best[3] and h.values[3] > h.values[1]


def test_log_axes_range_to_the_data_with_readable_ticks(study_dir):
    assert [R.si(v) for v in (20_000, 200_000, 2e6, 999.6, 1.5e10)] == ["20k", "200k", "2M", "1k", "15G"]
    assert R.si(200_000, "B") == "200 kB"
    ticks = R.log_ticks(math.log10(30_000), math.log10(400_000))
    assert len(ticks) >= 4 and {100_000, 200_000} <= set(ticks)
    study = _study(study_dir)
    scored = R.scored_trials(study, "w4a4")
    params = [t.user_attrs["params"] for t in scored]
    for fig, xs in ((R.pareto_figure(study), params),
                    (R.bytes_figure(study), [b for t in scored for b in t.user_attrs["size_bytes"].values()]),
                    (R.bitops_figure(study), [b for t in scored for b in t.user_attrs["bitops"].values()])):
        ax = fig.layout.xaxis
        lo, hi = ax.range
        # The bound (400k) is near the data here, so the range may reach it and no further.
        assert math.log10(min(xs)) - 0.2 < lo < math.log10(min(xs)) and math.log10(max(xs)) < hi
        assert 10**hi <= max(max(xs), 400_000) * 10**0.2
        assert ax.tickmode == "array" and len(ax.tickvals) >= 4 and all(lo <= math.log10(v) <= hi for v in ax.tickvals)
        assert all(re.fullmatch(r"[0-9.]+ ?[kMGT]?B?", s) for s in ax.ticktext)
        assert any(s[-1] in "kMGT" or s[-2:] in ("kB", "MB") for s in ax.ticktext)
    # The bound, 400k, is at the edge of the data: drawn as a line.
    assert [s.x0 for s in R.pareto_figure(study).layout.shapes] == [400_000]


def test_a_far_bound_is_not_drawn_and_does_not_stretch_the_axis():
    fig = R.pareto_figure(_fake_study(_TINY[:4], max_params=10_000_000))
    assert not fig.layout.shapes and fig.layout.xaxis.range[1] < math.log10(200_000)
    assert "off the axis" in fig.layout.annotations[0].text and "10M" in fig.layout.annotations[0].text
    assert fig.layout.xaxis.ticktext == ("100", "1k", "10k", "100k")


def test_every_accuracy_is_labelled_predicted(study_dir):
    study = _study(study_dir)  # maximized the raw GHN top-1
    for make in (R.pareto_figure, R.bytes_figure, R.bitops_figure, R.drop_figure, R.history_figure):
        assert "predicted top-1 (GHN parameters)" in make(study).layout.yaxis.title.text, make.__name__
    html = R.build_report(study)
    assert f"<th colspan=\"{len(SETTINGS)}\">{R.GHN}</th>" in html and "GHN parameters) %:" in html
    ranked = _fake_study(_TINY, objective="pred_top1")
    title = R.pareto_figure(ranked).layout.yaxis.title.text
    assert title.startswith("predicted top-1 (%)") and "ranker at w4a4" in title
    assert R.history_figure(ranked).layout.yaxis.title.text == "predicted top-1 (ranker) at w4a4 (%)"
    html = R.build_report(ranked)
    assert f'<th class="hi">{R.RANKER}</th>' in html and "predicted top-1 (ranker) %:" in html
    assert "<dt>best predicted top-1 (ranker) at w4a4</dt><dd>80.00 % (#1)</dd>" in html
    # The target front plots what the search maximized: the study's one Pareto front.
    fr = next(d for d in R.pareto_figure(ranked).data if d.name == "w4a4 front (target)")
    assert list(fr.y) == pytest.approx([100 * (t.user_attrs["pred_top1_w4a4"]) for t in R.front(
        R.scored_trials(ranked, "w4a4"), "w4a4", "pred_top1")])


def test_bytes_and_bitops_figures_have_one_trace_per_setting(study_dir):
    study = _study(study_dir)
    scored = R.scored_trials(study, "w4a4")
    for make, attr in ((R.bytes_figure, "size_bytes"), (R.bitops_figure, "bitops")):
        fig = make(study)
        assert [d.name for d in fig.data] == [f"{s} (target)" if s == "w4a4" else s for s in SETTINGS]
        for d, s in zip(fig.data, SETTINGS):
            assert list(d.x) == [t.user_attrs[attr][s] for t in scored]
            assert list(d.y) == pytest.approx([100 * t.user_attrs[f"top1_{s}"] for t in scored])


def test_finetune_results_beside_predictions():
    study = _fake_study(_TINY, objective="pred_top1")
    html = R.build_report(study)
    assert "No finetune results in this study yet" in html and 'id="finetune"' not in html
    # As qnas.finetune.finetune_trial records a run (a study user attribute per trial and setting).
    study.set_user_attr("finetune_1_w4a4", {"init": "ghn", "epochs": 2, "seconds": 3.0, "file": "x.json",
                                            "top1_fp32_before": 0.8, "top1_w4a4_before": 0.6,
                                            "top1_fp32_after": 0.85, "top1_w4a4_after": 0.75})
    (r,) = R.finetune_results(study)
    assert (r.trial, r.setting, r.after, r.before, r.kind) == (1, "w4a4", 0.75, 0.6, R.RANKER)
    assert r.predicted == pytest.approx(0.8) and r.ghn_top1 == pytest.approx(0.7)
    fig = R.finetune_figure(study)
    assert [d.name for d in fig.data] == ["w4a4", "predicted = measured"]
    assert list(fig.data[0].x) == pytest.approx([80.0]) and list(fig.data[0].y) == pytest.approx([75.0])
    assert fig.layout.xaxis.title.text == "predicted top-1 (ranker) (%)" and "measured" in fig.layout.yaxis.title.text
    html = R.build_report(study)
    assert 'id="finetune"' in html and f"<th class=\"hi\">{R.FINETUNED}</th>" in html
    df = R.trials_frame(study)
    assert df.loc[df["number"] == 1, "finetune_w4a4_top1_after"].item() == 0.75
    assert df["finetune_w4a4_top1_after"].isna().sum() == len(df) - 1
