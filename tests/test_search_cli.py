"""`qnas search` from the command line: a tiny real search (random GHN, 64 validation images), resume,
one-line errors, two worker processes sharing one PostgreSQL study, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import run_cli, run_workers, spawn_search
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from qnas.ranker import load_ranker, ranker_path
from qnas.search import SETTINGS, SearchConfig, load_study, run_search, study_granularity
from search_spaces import convnets250k as S

# A cheap real search: untrained GHN, 64 images, small nets (about 40% of random candidates fit 2e5).
TINY = ["--val-size", "64", "--predictor", "random", "--quiet"]
BOUNDED = [*TINY, "--max-params", "2e5"]
BOUND = 200_000
ATTRS = ("arch", "genome", "params", "macs", "size_bytes", "bitops", "predictor", "predictor_version")



def _default_sigint() -> None:
    # A job started in the background (`cmd &`, nohup) inherits SIGINT ignored, and qnas rightly leaves an
    # ignored Ctrl-C alone; the Ctrl-C tests need the interactive default wherever the suite runs.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(*args: str) -> subprocess.Popen:
    return spawn_search(*BOUNDED, *args, preexec=_default_sigint)


@pytest.fixture
def interactive_sigint():
    """Ctrl-C raises KeyboardInterrupt in this process for the test, as in a terminal."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _check_trial(t: FrozenTrial) -> None:
    """A finished trial carries its whole record, and a feasible one its scores at every setting."""
    assert t.state == TrialState.COMPLETE
    assert all(k in t.user_attrs for k in ATTRS), sorted(t.user_attrs)
    genome = S.from_string(t.user_attrs["arch"])
    assert S.from_json(t.user_attrs["genome"]) == genome
    assert t.user_attrs["params"] == S.count_params(genome)
    assert t.constraints == {"params": t.user_attrs["params"] - BOUND}
    if t.user_attrs.get("infeasible"):
        assert t.user_attrs["params"] > BOUND and "top1_fp32" not in t.user_attrs
        return
    assert t.user_attrs["params"] <= BOUND
    assert all(0.0 <= t.user_attrs[f"{k}_{s}"] <= 1.0 for s in SETTINGS for k in ("top1", "top5"))
    assert t.values == [t.user_attrs["top1_w4a4"], t.user_attrs["params"]]
    assert "score_seconds" in t.user_attrs


def test_search_end_to_end_then_resume(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    rc, _, err = run_cli(["search", *BOUNDED, "--trials", "3", "--seed", "1", "--storage", url, "--study", "cli"],
                      capsys)
    assert rc == 0, err
    assert "3 trials in" in err
    study = load_study("cli", url)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert study.metric_names == ["top1_w4a4", "params"]
    assert study.user_attrs["max_params"] == BOUND and study.user_attrs["predictor"] == "random"
    # the head fitted on --val-size's 64 images (no ranker for the random GHN), spelled out in the protocol
    assert study.user_attrs["protocol"] == "calibrated/channel/a2p99.5/fl8/w8sym/fit64"
    assert study_granularity(study) == "channel"
    assert study.user_attrs["objective"] == "top1" and study.user_attrs["first_last_bits"] == 8  # random GHN: no ranker

    rc, _, err = run_cli(["search", *BOUNDED, "--trials", "2", "--storage", url, "--study", "cli", "--sampler",
                          "random", "--seed", "3"], capsys)
    assert rc == 0, err
    trials = load_study("cli", url).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    for t in trials:
        _check_trial(t)
    # Seeds chosen so that each run scores at least one candidate (seed 3 continues as 3 + 3 trials).
    assert not trials[1].user_attrs.get("infeasible") and not trials[4].user_attrs.get("infeasible")

    # Continuing under another bound would mix two searches: refused, one line, nothing added.
    rc, _, err = run_cli(["search", *TINY, "--max-params", "1e6", "--trials", "1", "--storage", url,
                       "--study", "cli"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "other settings" in err and "max_params" in err
    # So would scores measured with other activation ranges.
    rc, _, err = run_cli(["search", *BOUNDED, "--trials", "1", "--storage", url, "--study", "cli", "--act-ranges",
                       "minmax"], capsys)
    assert rc == 2 and "other settings" in err and "protocol" in err
    assert len(load_study("cli", url).trials) == 5


def test_the_shipped_rankers_front_keeps_the_raw_ghn_accuracies_beside_its_prediction(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    rc, out, err = run_cli(["search", "--val-size", "16", "--quiet", "--max-params", "3e4", "--trials", "1",
                            "--seed", "1", "--storage", url, "--study", "ranked"], capsys)
    assert rc == 0, err
    assert load_study("ranked", url).user_attrs["objective"] == "pred_top1"
    header = next(ln for ln in out.splitlines() if "pred. w4a4" in ln)
    assert [c.strip() for c in header.split("┃") if c.strip()] == [
        "trial", "params", "pred. w4a4", "GHN top1 w4a4", "GHN top1 fp32"], out
    error = load_ranker(ranker_path(Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.pt")).mean_error("w4a4")
    assert error is not None and f"pred. is off by {error:.2f} points on average" in " ".join(out.split()), out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bits", "3"], "--bits"),
        (["--bits", "w9a9"], "--bits"),
        (["--max-params", "-1"], "--max-params"),
        (["--max-params", "abc"], "--max-params"),
        (["--max-params", "0"], "--max-params"),
        (["--trials", "0"], "--trials"),
        (["--timeout", "-5"], "--timeout"),
        (["--sampler", "cmaes"], "--sampler"),
        (["--storage", "postgresql+psycopg2://u:secret@127.0.0.1:9/x"], "cannot open storage"),
        (["--storage", "not-a-url"], "--storage"),
        (["--space", "nope"], "unknown search space"),
        (["--dataset", "nope"], "nope"),
        (["--predictor", "nope"], "unknown predictor"),
        (["--device", "cuda"], "--device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default storage would be ./studies/qnas.db
    base = ["search", "--trials", "1", "--val-size", "8", "--predictor", "random", "--quiet"]
    if "--storage" not in args:
        base += ["--storage", f"sqlite:///{tmp_path / 'b.db'}"]
    rc, out, err = run_cli([*base, *args], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("qnas: error:"), err
    assert needle in err and out == ""
    assert "secret" not in err  # storage passwords are never printed


def test_two_workers_share_one_postgres_study(postgres_url):
    """Two processes on one study, started together: every trial recorded once, none left behind."""
    study = "two-workers"
    errs = run_workers(*BOUNDED, "--trials", "4", "--storage", postgres_url, "--study", study, seeds=(11, 12),
                       timeout=120, preexec=_default_sigint)
    assert all("4 trials in" in err for err in errs), errs
    trials = load_study(study, postgres_url).trials
    assert len(trials) == 8
    assert sorted(t.number for t in trials) == list(range(8))
    assert len({t._trial_id for t in trials}) == 8
    for t in trials:
        _check_trial(t)


def test_ctrl_c_stops_and_leaves_the_study_consistent(tmp_path):
    db = tmp_path / "i.db"
    url = f"sqlite:///{db}"
    proc = _spawn("--trials", "500", "--sampler", "random", "--storage", url, "--study", "int")
    try:
        deadline = time.monotonic() + 90
        done: list[FrozenTrial] = []
        while len(done) < 2:  # interrupt mid-search, after some trials have finished
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.2)
            if db.exists():
                try:
                    done = load_study("int", url).get_trials(states=(TrialState.COMPLETE,))
                except Exception:  # the worker is still creating the tables or the study
                    continue
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "failed with" not in err, err
    trials = load_study("int", url).trials
    assert 2 <= len(trials) < 500
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # At most the trial being scored is failed; every finished one is intact, numbering has no gaps.
    assert [t.state for t in trials].count(TrialState.FAIL) <= 1
    assert [t.number for t in trials] == list(range(len(trials)))
    for t in trials:
        if t.state == TrialState.COMPLETE:
            _check_trial(t)


class _ConstScorer:
    name, version = "const", "0"

    def score(self, genome) -> dict[str, float]:
        return {f"{k}_{s}": 0.5 for s in SETTINGS for k in ("top1", "top5")}


@pytest.mark.parametrize(("method", "state"), [("_create_new_trial", TrialState.FAIL),
                                             ("set_trial_state_values", TrialState.COMPLETE)])
def test_ctrl_c_during_a_storage_write_leaves_no_running_trial(method, state, tmp_path, monkeypatch,
                                                               interactive_sigint):
    """Ctrl-C inside Optuna's ask (_create_new_trial) or tell (set_trial_state_values) must not cut the write:
    the trial is failed (ask) or completed (tell), never left RUNNING; the search stops, the handler is restored."""
    original, sent = getattr(RDBStorage, method), []

    def ctrl_c_then_write(self, *args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler right here, before the write
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RDBStorage, method, ctrl_c_then_write)
    cfg = SearchConfig(study="s", storage=f"sqlite:///{tmp_path / 's.db'}", trials=5, sampler="random")
    summary = run_search(cfg, _ConstScorer(), S, (1, 28, 28), 10)
    assert summary.interrupted and sent
    assert [t.state for t in load_study("s", cfg.storage).trials] == [state]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Collected:
    """An object whose finalizer runs `action`, as a garbage-collector callback (SQLAlchemy's) does."""

    def __init__(self, action) -> None:
        self.action = action

    def __del__(self) -> None:
        self.action()


def test_ctrl_c_landing_in_a_gc_callback_prints_no_traceback_and_still_stops(tmp_path, monkeypatch,
                                                                              interactive_sigint):
    """Python cannot raise out of a finalizer: it prints "Exception ignored ... Traceback" and goes on.
    A Ctrl-C that lands there (CI caught one in SQLAlchemy's) must still stop the search, silently;
    any other exception in a finalizer is still reported."""

    class Scorer(_ConstScorer):
        def score(self, genome):
            _Collected(lambda: os.kill(os.getpid(), signal.SIGINT))  # freed at once: the handler runs in __del__
            _Collected(lambda: 1 / 0)
            return super().score(genome)

    reported: list[type] = []  # the hook Python prints "Exception ignored" with (pytest installs its own)
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_type))
    cfg = SearchConfig(study="s", storage=f"sqlite:///{tmp_path / 's.db'}", trials=5, sampler="random")
    summary = run_search(cfg, Scorer(), S, (1, 28, 28), 10)
    assert summary.interrupted
    assert reported == [ZeroDivisionError]
    assert [t.state for t in load_study("s", cfg.storage).trials] == [TrialState.COMPLETE]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
