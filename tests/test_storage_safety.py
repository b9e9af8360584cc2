"""Storages and studies qnas did not make are refused with one line and left byte-identical: a text file given
as a journal, SQLite files without Optuna's tables, Optuna studies made by other programs; report outputs that
would overwrite each other; a parameter bound no architecture meets."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from fakes import FakeScorer, run_cli

import qnas.search
from qnas import report as R
from qnas.errors import QnasError
from qnas.search import SearchConfig, create_or_continue, load_study, open_storage, run_search
from qnas.study import StudyKey
from search_spaces import convnets250k as S

optuna.logging.set_verbosity(optuna.logging.WARNING)



def _one_line_error(rc: int, err: str, message: str) -> None:
    assert rc == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def _qnas_study(url: str, name: str = "s1", trials: int = 2) -> None:
    run_search(SearchConfig(study=name, storage=url, trials=trials, sampler="random", max_params=100_000),
               FakeScorer(), S, (1, 28, 28), 10)


# ----------------------------------------------------------------------------- 1: journal files


def test_a_file_that_is_not_a_journal_is_refused_and_untouched(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello\n")
    url = f"journal:{path}"
    for readonly in (False, True):
        with pytest.raises(QnasError, match="not an Optuna journal"):
            open_storage(url, readonly=readonly)
    with pytest.raises(QnasError, match="not an Optuna journal"):
        create_or_continue(SearchConfig(study="s", storage=url))
    _one_line_error(*run_cli(["show", "--study", "s", "--storage", url], capsys)[::2], "not an Optuna journal")
    assert path.read_bytes() == b"hello\n"
    # A JSON line that is not a journal record is someone else's file too; a real journal opens, an empty file too.
    (tmp_path / "other.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(QnasError, match="not an Optuna journal"):
        open_storage(str(tmp_path / "other.jsonl"))
    _qnas_study(f"journal:{tmp_path / 'j.log'}", "j")
    assert len(load_study("j", f"journal:{tmp_path / 'j.log'}", readonly=True).trials) == 2
    (tmp_path / "empty.log").touch()
    open_storage(f"journal:{tmp_path / 'empty.log'}")


# ----------------------------------------------------------------------------- 2: SQLite files


def _user_db(path: Path) -> bytes:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE people (name TEXT)")
    con.execute("INSERT INTO people VALUES ('ada')")
    con.commit()
    con.close()
    return path.read_bytes()


def test_read_only_commands_leave_a_sqlite_file_without_optuna_tables_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    user, empty = tmp_path / "other.db", tmp_path / "studies" / "empty.db"
    before = _user_db(user)
    empty.touch()
    for db in (user, empty):
        url = f"sqlite:///{db}"
        for argv in (["show", "--study", "s"], ["report", "--study", "s"], ["studies"]):
            _one_line_error(*run_cli([*argv, "--storage", url], capsys)[::2], "is not an Optuna storage")
    # Without --storage: studies/*.db are listed, a file that is not a storage is named and skipped.
    _qnas_study("sqlite:///studies/good.db", "good")
    (tmp_path / "studies" / "user.db").write_bytes(before)
    rc, out, err = run_cli(["studies", "--json"], capsys)
    assert rc == 0 and '"name": "good"' in out
    assert "skipped sqlite:///studies/empty.db" in err and "skipped sqlite:///studies/user.db" in err
    assert user.read_bytes() == before == (tmp_path / "studies" / "user.db").read_bytes()
    assert empty.stat().st_size == 0
    # finetune's way in (read-write) refuses it too; a missing file is not created.
    with pytest.raises(QnasError, match="not an Optuna storage"):
        load_study("s", f"sqlite:///{user}")
    _one_line_error(*run_cli(["show", "--study", "s", "--storage", "sqlite:///gone.db"], capsys)[::2], "does not exist")
    assert not (tmp_path / "gone.db").exists() and user.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db", "studies"]  # no -wal/-shm beside it


def test_search_does_not_add_optuna_tables_to_another_database(tmp_path):
    user = tmp_path / "app.db"
    before = _user_db(user)
    with pytest.raises(QnasError, match="not an Optuna storage"):
        create_or_continue(SearchConfig(study="s", storage=f"sqlite:///{user}"))
    assert user.read_bytes() == before
    (tmp_path / "new.db").touch()  # an empty file holds nothing to protect: a search may fill it
    create_or_continue(SearchConfig(study="s", storage=f"sqlite:///{tmp_path / 'new.db'}"))


def test_reading_an_optuna_study_does_not_rewrite_its_file(tmp_path, monkeypatch, capsys):
    """A rollback-journal Optuna database stays one: read-only commands set no WAL mode in its header, and
    neither do search and finetune, which refuse the study before writing anything."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "plain.db"
    optuna.create_study(study_name="plain", storage=f"sqlite:///{db}").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = db.read_bytes()
    for argv in (["show", "--study", "plain"], ["report", "--study", "plain", "--out", str(tmp_path / "r.html")]):
        _one_line_error(*run_cli([*argv, "--storage", f"sqlite:///{db}"], capsys)[::2], "was not made by qnas")
    assert run_cli(["studies", "--storage", f"sqlite:///{db}"], capsys)[0] == 0
    for argv in (["search", "--study", "plain", "--trials", "1", "--val-size", "8", "--predictor", "random", "--quiet"],
                 ["finetune", "--study", "plain", "--quiet"]):
        _one_line_error(*run_cli([*argv, "--storage", f"sqlite:///{db}"], capsys)[::2], "was not made by qnas")
    assert db.read_bytes() == before


# ----------------------------------------------------------------------------- 3: studies other programs made


def _optuna_storage(url: str) -> str | optuna.storages.BaseStorage:
    """What a plain Optuna program passes for ``url`` (Optuna takes journal files as storage objects only)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url


def _plain(url: str, name: str, directions: list[str], trials: int) -> None:
    study = optuna.create_study(study_name=name, storage=_optuna_storage(url), directions=directions)
    study.set_user_attr("owner", "someone else")
    if len(directions) == 1:
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    else:
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=trials)


def _snapshot(url: str, name: str) -> tuple:
    study = optuna.load_study(study_name=name, storage=_optuna_storage(url))
    return study.user_attrs, study.metric_names, [(t.number, t.state, t.values, t.params, t.user_attrs)
                                                                      for t in study.trials]


@pytest.mark.parametrize("directions", [["minimize"], ["maximize", "minimize"]])
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_study_not_made_by_qnas_is_refused_and_not_modified(tmp_path, monkeypatch, capsys, kind, directions):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'p.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'p.log'}"
    _plain(url, "plain", directions, trials=3)
    before = _snapshot(url, "plain")
    with pytest.raises(QnasError, match="study 'plain' was not made by qnas"):
        run_search(SearchConfig(study="plain", storage=url, trials=2, sampler="random", max_params=100_000),
                   FakeScorer(), S, (1, 28, 28), 10)
    for readonly in (False, True):  # finetune's and export's way in (qnas.api), then show's and report's
        with pytest.raises(QnasError, match="study 'plain' was not made by qnas"):
            load_study("plain", url, readonly=readonly)
    for argv in (["show", "--study", "plain"], ["show", "--study", "plain", "--pareto"],
                 ["report", "--study", "plain", "--out", str(tmp_path / "r.html")]):
        _one_line_error(*run_cli([*argv, "--storage", url], capsys)[::2], "study 'plain' was not made by qnas")
    assert _snapshot(url, "plain") == before
    assert not (tmp_path / "r.html").exists()


def test_an_empty_foreign_study_is_refused_after_the_creation_grace(tmp_path, monkeypatch):
    """A study with qnas's objectives and nothing else may be a worker's study being created: it waits, then
    refuses; the settings it waits for are recorded by a worker started together with this one."""
    monkeypatch.setattr(qnas.search, "CREATION_GRACE_S", 0.3)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    optuna.create_study(study_name="plain", storage=url, directions=["maximize", "minimize"])
    t0 = time.monotonic()
    with pytest.raises(QnasError, match="study 'plain' was not made by qnas"):
        create_or_continue(SearchConfig(study="plain", storage=url))
    assert time.monotonic() - t0 >= 0.3 and optuna.load_study(study_name="plain", storage=url).user_attrs == {}

    monkeypatch.setattr(qnas.search, "CREATION_GRACE_S", 30.0)
    optuna.create_study(study_name="racing", storage=url, directions=["maximize", "minimize"])
    other = optuna.load_study(study_name="racing", storage=url)
    writer = threading.Timer(0.3, other.set_user_attr, (StudyKey.TARGET, "w4a4"))
    writer.start()
    try:
        study = create_or_continue(SearchConfig(study="racing", storage=url))
    finally:
        writer.join()
    assert study.user_attrs[StudyKey.MAX_PARAMS] == 10_000_000


def test_settings_landing_between_two_reads_are_not_taken_for_a_foreign_study(tmp_path, monkeypatch):
    """The creating worker writes its settings right after the joining worker first finds none (the race
    that failed two PostgreSQL workers started together): the joining worker continues the study."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    optuna.create_study(study_name="racing", storage=url, directions=["maximize", "minimize"])
    creator = optuna.load_study(study_name="racing", storage=url)
    read = optuna.Study.user_attrs.fget
    reads: list[dict] = []

    def user_attrs(study: optuna.Study) -> dict:
        attrs = read(study)
        reads.append(attrs)
        if len(reads) == 1:  # the creator writes just after the first read
            creator.set_user_attr(StudyKey.TARGET, "w4a4")
            creator.set_user_attr(StudyKey.MAX_PARAMS, 10_000_000)
        return attrs

    monkeypatch.setattr(optuna.Study, "user_attrs", property(user_attrs))
    study = create_or_continue(SearchConfig(study="racing", storage=url))
    assert reads[0] == {} and read(study)[StudyKey.MAX_PARAMS] == 10_000_000


def test_qnas_studies_are_continued_and_read(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _qnas_study(url)
    _qnas_study(url)  # continued
    assert len(R.open_study("s1", url).trials) == 4 and len(load_study("s1", url).trials) == 4
    # a qnas study's file commits without an fsync each (WAL), set once the study is known to be qnas's
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true",
                                 "sqlite:///file::memory:?uri=true"])
def test_an_in_memory_storage_is_refused_in_one_line(url, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QnasError, match="in-memory database"):
        open_storage(url)
    rc, _, err = run_cli(["search", "--study", "m", "--storage", url, "--trials", "1", "--val-size", "8",
                          "--predictor", "random", "--quiet"], capsys)
    _one_line_error(rc, err, "in-memory database")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 4: report outputs


def test_report_refuses_a_csv_that_is_the_html_or_not_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _qnas_study("sqlite:///studies/s1.db")
    (tmp_path / "link.csv").symlink_to(tmp_path / "same.html")
    for csv, message in (("same.html", "should end in .csv"), ("trials.txt", "should end in .csv"),
                         ("link.csv", "is the same file as --out")):
        _one_line_error(*run_cli(["report", "--study", "s1", "--out", "same.html", "--csv", csv], capsys)[::2],
                        message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "studies"]
    assert run_cli(["report", "--study", "s1", "--out", "r.html", "--csv", "r.CSV"], capsys)[0] == 0


def test_report_writes_through_a_link_keeps_modes_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _qnas_study("sqlite:///studies/s1.db")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "r.html").write_text("old")
    (tmp_path / "site" / "r.html").chmod(0o640)
    (tmp_path / "r.html").symlink_to(tmp_path / "site" / "r.html")
    assert run_cli(["report", "--study", "s1", "--out", "r.html", "--csv", "t.csv"], capsys)[0] == 0
    assert (tmp_path / "r.html").is_symlink() and "<html" in (tmp_path / "site" / "r.html").read_text()
    assert (tmp_path / "site" / "r.html").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "site", "studies", "t.csv"]
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["r.html"]


# ----------------------------------------------------------------------------- 5: a bound nothing meets


def test_search_refuses_a_bound_below_the_smallest_architecture(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _, _, sample_err = run_cli(["space", "sample", "--max-params", "10"], capsys)
    message = "could not sample an architecture with at most 10 parameters"
    assert message in sample_err
    scorer = FakeScorer()
    with pytest.raises(QnasError) as exc:
        run_search(SearchConfig(study="tiny", storage="sqlite:///studies/tiny.db", trials=2, max_params=10,
                                sampler="random"), scorer, S, (1, 28, 28), 10)
    assert f"qnas: error: {exc.value}\n" == sample_err  # the same check, the same line
    assert not scorer.calls and not (tmp_path / "studies").exists()  # failed before creating a study
