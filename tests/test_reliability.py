"""Reliability of `qnas search` and friends (issue 16): no trial left RUNNING after kill -9 or SIGTERM once any
worker resumes, workers that do not repeat each other, proposals within the bound, --total-trials, exports that
are not silently replaced, studies readable from read-only directories."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from fakes import FakeScorer, run_workers, spawn_search, worker_env
from optuna.trial import TrialState

import qnas
from qnas.cli import main
from qnas.errors import QnasError
from qnas.search import (
    WORKER_ATTR,
    SearchConfig,
    Worker,
    create_or_continue,
    fail_dead_trials,
    load_study,
    run_search,
    sampler_seed,
)
from search_spaces import convnets250k as S

TINY = ["--val-size", "16", "--predictor", "random", "--quiet", "--max-params", "1e5"]


def _search(url: str, study: str = "r", **kw) -> tuple[SearchConfig, object]:
    cfg = SearchConfig(study=study, storage=url, **{"sampler": "random", "max_params": 100_000, **kw})
    return cfg, run_search(cfg, FakeScorer("random"), S, (1, 28, 28), 10)


def _archs(url: str, study: str) -> list[str]:
    return [t.user_attrs["arch"] for t in load_study(study, url).trials]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- item 2: seeds


def test_seed_after_trials_does_not_replay_another_seed():
    assert sampler_seed(1, 1) != sampler_seed(2, 0) and sampler_seed(0, 1) != sampler_seed(1, 0)
    assert sampler_seed(5, 3) == sampler_seed(5, 3)  # reproducible


def test_workers_with_different_seeds_propose_different_architectures(tmp_path):
    """The issue's reproduction: seed 1 after one trial of seed 0 replayed seed 2 on a fresh study."""
    a, b = f"journal:{tmp_path / 'a.log'}", f"journal:{tmp_path / 'b.log'}"
    _search(a, "A", trials=1, seed=0)
    _search(a, "A", trials=3, seed=1)
    _search(b, "B", trials=3, seed=2)
    assert not set(_archs(a, "A")[1:]) & set(_archs(b, "B"))


def _spawn(*args: str, preexec=None) -> subprocess.Popen:
    return spawn_search(*TINY, *args, preexec=preexec)


def test_two_concurrent_journal_workers_with_different_seeds_score_no_architecture_twice(tmp_path):
    url = f"journal:{tmp_path / 'j.log'}"
    run_workers(*TINY, "--trials", "5", "--storage", url, "--study", "pair", seeds=(1, 2), timeout=180)
    trials = load_study("pair", url).trials
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    scored = [t.user_attrs["arch"] for t in trials if "scored_in_trial" not in t.user_attrs]
    assert len(scored) == len(set(scored)) == 10


# ----------------------------------------------------------------------------- item 9: within the bound


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "random"])
def test_proposals_stay_within_the_bound(tmp_path, sampler):
    _, summary = _search(f"journal:{tmp_path / 'b.log'}", trials=24, sampler=sampler, population_size=6, seed=3)
    trials = load_study("r", f"journal:{tmp_path / 'b.log'}").trials
    within = [t for t in trials if t.user_attrs["params"] <= 100_000]
    assert summary.infeasible == 0 and len(within) == 24  # before: most of them were over 1e5 and not scored
    sizes = sorted(t.user_attrs["params"] for t in trials)
    assert sizes[0] < 30_000 and sizes[-1] > 50_000  # spread over the range, not bunched under the bound


# ----------------------------------------------------------------------------- item 3: nothing left RUNNING


def _running_trial(study: optuna.Study, owner: dict | None) -> int:
    trial = study.ask()
    if owner is not None:
        trial.set_user_attr(WORKER_ATTR, owner)
    return trial.number


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_trials_of_a_dead_worker_are_failed_and_requeued_on_resume(kind, tmp_path, request):
    url = {"sqlite": f"sqlite:///{tmp_path / 's.db'}", "journal": f"journal:{tmp_path / 'j.log'}"}.get(kind)
    study_name = f"dead-{kind}"
    if url is None:
        url = request.getfixturevalue("postgres_url")
    _search(url, study_name, trials=1)
    study = create_or_continue(SearchConfig(study=study_name, storage=url, sampler="random", max_params=100_000))
    dead = _running_trial(study, Worker.this().to_json() | {"pid": _dead_pid()})
    alive = _running_trial(study, Worker.this().to_json())
    remote = _running_trial(study, {"host": "elsewhere", "pid": 1, "started": None})
    ownerless = _running_trial(study, None)
    assert fail_dead_trials(study) == 1  # only the provably dead one; an ownerless one gets a grace period
    later = datetime.datetime.now() + datetime.timedelta(hours=1)
    assert fail_dead_trials(study, now=later) == 1
    states = {t.number: t.state for t in load_study(study_name, url).trials}
    assert states[dead] == states[ownerless] == TrialState.FAIL
    assert states[alive] == states[remote] == TrialState.RUNNING
    for number in (alive, remote):  # clean up the trials this test holds
        study.tell(number, state=TrialState.FAIL)
    _, summary = _search(url, study_name, trials=2)  # the re-queued candidates run first
    trials = load_study(study_name, url).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert {t.system_attrs.get("failed_trial") for t in trials} >= {dead, ownerless}


def test_a_candidate_that_kills_its_worker_twice_is_not_requeued_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    study = create_or_continue(SearchConfig(study="k", storage=url, sampler="random", max_params=100_000))
    dead = Worker.this().to_json() | {"pid": _dead_pid()}
    first = _running_trial(study, dead)
    assert fail_dead_trials(study) == 1
    waiting = load_study("k", url).get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["failed_trial"] for t in waiting] == [first]
    retry = _running_trial(study, dead)  # Optuna runs the waiting trial first: its worker dies too
    assert load_study("k", url).trials[retry].system_attrs["failed_trial"] == first
    assert fail_dead_trials(study) == 1
    assert not load_study("k", url).get_trials(states=(TrialState.WAITING,))


def test_a_trial_says_what_it_scores_while_running(tmp_path):
    # A worker that dies while scoring (out of memory, kill -9) leaves a trial that names its candidate.
    url = f"sqlite:///{tmp_path / 'r.db'}"
    seen: list[dict] = []

    class Peeking(FakeScorer):
        def score(self, genome):
            running = load_study("r", url).get_trials(states=(TrialState.RUNNING,))
            seen.extend(t.user_attrs for t in running)
            return super().score(genome)

    cfg = SearchConfig(study="r", storage=url, sampler="random", max_params=100_000, trials=2)
    run_search(cfg, Peeking("random"), S, (1, 28, 28), 10)
    assert len(seen) == 2
    for attrs in seen:
        assert attrs["arch"] == S.to_string(S.from_json(attrs["genome"])) and attrs["params"] > 0
        assert WORKER_ATTR in attrs and not any(k.startswith("top1_") for k in attrs)


def _wait_for_running_trial(study: str, url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.3)
        try:
            running = load_study(study, url).get_trials(states=(TrialState.RUNNING,))
        except (QnasError, Exception):  # the worker is still creating the storage
            continue
        if any(WORKER_ATTR in t.user_attrs and "arch" in t.user_attrs for t in running):
            return


@pytest.mark.parametrize(("kind", "sig"), [("sqlite", signal.SIGKILL), ("journal", signal.SIGKILL),
                                           ("postgres", signal.SIGKILL), ("journal", signal.SIGTERM)])
def test_killed_worker_leaves_nothing_running_once_a_worker_resumes(kind, sig, tmp_path, request):
    url = {"sqlite": f"sqlite:///{tmp_path / 's.db'}", "journal": f"journal:{tmp_path / 'j.log'}"}.get(kind)
    if url is None:
        url = request.getfixturevalue("postgres_url")
    for attempt in range(3):  # on a loaded machine the kill can land between two trials: try again
        study = f"kill-{kind}-{int(sig)}-{attempt}"
        # Enough images that a trial spends most of its time scoring, where the watcher sees it (the trial names
        # its architecture before scoring) and the signal lands; --head keep: quicker, and scores are not checked.
        proc = _spawn("--trials", "50", "--val-size", "256", "--head", "keep", "--storage", url, "--study", study)
        try:
            _wait_for_running_trial(study, url, proc)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        if sig == signal.SIGTERM:  # handled like Ctrl-C: one summary, exit 128 + 15, the trial failed at once
            assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
            assert "failed with" not in err, err  # Optuna's log of the interrupted trial is dropped
            assert not load_study(study, url).get_trials(states=(TrialState.RUNNING,))
            break
        assert proc.returncode == -9
        # A kill between Optuna's ask and the worker stamp leaves an ownerless trial, failed only after a
        # grace period; this test is about owned ones, so try again.
        running = load_study(study, url).get_trials(states=(TrialState.RUNNING,))
        if any(WORKER_ATTR in t.user_attrs for t in running):
            break
    else:
        pytest.fail("three kills in a row landed outside an owned trial")
    cfg = SearchConfig(study=study, storage=url, sampler="random", max_params=100_000, trials=1,
                       protocol=load_study(study, url).user_attrs["protocol"], predictor="random")
    summary = run_search(cfg, FakeScorer("random"), S, (1, 28, 28), 10)
    assert summary.recovered == (1 if sig == signal.SIGKILL else 0)
    assert not load_study(study, url).get_trials(states=(TrialState.RUNNING,))


# ----------------------------------------------------------------------------- item 3: --total-trials


def test_total_trials_runs_the_rest_and_trials_runs_more(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    _search(url, trials=3)
    study = load_study("r", url)
    study.tell(study.ask().number, state=TrialState.FAIL)  # a trial lost in a crash: not counted
    _, summary = _search(url, trials=None, total_trials=6)
    complete = load_study("r", url).get_trials(states=(TrialState.COMPLETE,))
    assert summary.trials_run == 3 and len(complete) == 6
    _, summary = _search(url, trials=None, total_trials=6)
    assert summary.trials_run == 0 and summary.planned == 0
    _, summary = _search(url, trials=2)  # --trials: that many more
    assert summary.trials_run == 2 and len(load_study("r", url).trials) == 9


def test_help_says_what_trials_count(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--total-trials N" in text and "on top of those already in the study" in text


# ----------------------------------------------------------------------------- item 1: qnas.load


def test_load_refuses_an_oversized_arch_json(tmp_path):
    g = S.from_string("stem16-99999:conv3-maxpool-64:conv3-convs2-128:conv1-fc128")
    (tmp_path / "arch.json").write_text(json.dumps({"space": "convnets250k", "genome": S.to_json(g),
                                                    "input_shape": [1, 28, 28], "num_classes": 10}))
    t0 = time.perf_counter()
    with pytest.raises(QnasError, match="over the bound"):
        qnas.load(tmp_path)
    assert time.perf_counter() - t0 < 5


# ----------------------------------------------------------------------------- item 4: --export


def test_export_is_replaced_only_when_it_is_this_runs(tmp_path, monkeypatch, capsys):
    from qnas.commands.train import check_export_target
    from qnas.train_predictor import TrainConfig

    monkeypatch.chdir(tmp_path)
    Path("ghn.pt").write_bytes(b"precious")
    assert main(["train-predictor", "--out", "run", "--steps", "1", "--export", "ghn.pt", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err and Path("ghn.pt").read_bytes() == b"precious"
    assert not Path("run").exists()
    Path("ghn.pt").unlink()
    Path("ghn.json").write_text("{}")  # the header alone counts too
    with pytest.raises(QnasError, match="ghn.json"):
        check_export_target(Path("ghn.pt"), TrainConfig(), force=False)
    check_export_target(Path("ghn.pt"), TrainConfig(), force=True)


# ----------------------------------------------------------------------------- item 7: read-only directory


def test_a_study_in_a_read_only_directory_can_be_read():
    """`show`, `studies` and `report` on a WAL-mode SQLite study whose directory the user cannot write."""
    root = Path(tempfile.mkdtemp(prefix="qnas-ro-"))
    try:
        _search(f"sqlite:///{root / 'studies' / 'ro.db'}", "ro", trials=2)
        # As a finished search leaves it: WAL checkpointed into the database, no side files.
        db = sqlite3.connect(root / "studies" / "ro.db")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        for side in ("ro.db-wal", "ro.db-shm"):
            (root / "studies" / side).unlink(missing_ok=True)
        (root / "out").mkdir()
        os.chmod(root, 0o755)
        os.chmod(root / "out", 0o777)
        os.chmod(root / "studies", 0o555)
        os.chmod(root / "studies" / "ro.db", 0o444)
        assert not list((root / "studies").glob("*-shm"))
        code = ("import sys; from qnas.cli import main; "
                "sys.exit(max(main(['show', '--study', 'ro']), main(['studies']), "
                "main(['report', '--study', 'ro', '--cdn', '--out', 'out/r.html', '--csv', 'out/t.csv'])))")
        cmd = [sys.executable, "-c", code]
        if os.geteuid() == 0:  # root writes through permissions: make the directory a read-only mount instead
            ro = str(root / "studies")
            mount = f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} {ro} && exec \"$@\""
            if subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", "true"], capture_output=True).returncode:
                pytest.skip("running as root where a read-only bind mount is not allowed")
            cmd = ["unshare", "-m", "sh", "-c", mount, "sh", *cmd]
        done = subprocess.run(cmd, cwd=root, env=worker_env(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert "ro" in done.stdout and (root / "out" / "r.html").exists()
        assert sorted(p.name for p in (root / "studies").iterdir()) == ["ro.db"]
    finally:
        os.chmod(root / "studies", 0o755)
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- item 8: the study's predictor


def test_export_and_finetune_do_not_swap_in_another_predictor(tmp_path, monkeypatch, capsys):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("real Fashion-MNIST not installed")
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'studies' / 'p.db'}"
    cfg = SearchConfig(study="p", storage=url, sampler="random", max_params=100_000, trials=1,
                       predictor="runs/gone.pt")
    run_search(cfg, FakeScorer("random"), S, (1, 28, 28), 10)
    assert main(["finetune", "--study", "p", "--trials", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "runs/gone.pt" in err and "cannot be loaded" in err and err.count("\n") == 1
