"""Multi-objective architecture search: Optuna study, quantized accuracy at the target bits vs params.

The study is an ordinary Optuna study (SQLite by default, any storage URL), so optuna-dashboard opens
it and many `qnas search` processes can share one PostgreSQL study. The parameter bound is an Optuna 5
constraint (``trial.set_constraint``); counting is analytic, so infeasible candidates are never scored.
A candidate's scores come from a :class:`Scorer` (GHN-predicted parameters under fake quantization,
see ``qnas.scorer``); this module only does the bookkeeping around it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from qnas import _checks as checks
from qnas.callable_module import make_callable
from qnas.defaults import DEFAULT_DATASET, DEFAULT_POPULATION, DEFAULT_SAMPLER, DEFAULT_SPACE, SAMPLERS, SETTINGS
from qnas.errors import QnasError, Terminated, raise_terminated
from qnas.study import QNAS_DIRECTIONS, StudyAttrs, StudyKey, check_made_by_qnas, pareto_front
from qnas.study import TrialKey as K

__all__ = [
    "MAX_SEED",
    "OWNERLESS_GRACE_S",
    "SCORE_ATTRS",
    "STUDY_NAME",
    "WORKER_ATTR",
    "BoundedSampler",
    "Scorer",
    "SearchConfig",
    "SearchSummary",
    "Worker",
    "bitops",
    "check_bound",
    "check_study_name",
    "create_or_continue",
    "default_storage",
    "fail_dead_trials",
    "load_study",
    "make_sampler",
    "open_storage",
    "parse_target",
    "redact",
    "run_search",
    "sampler_seed",
    "size_bytes",
    "sqlite_path",
    "study_granularity",
]

SCORE_ATTRS = K.SCORES  # what a scorer returns per setting (qnas.study.TrialKey.SCORES)
# Study names become file names (studies/NAME.db, studies/NAME/): no separators, no hidden or empty names.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_SEED = checks.MAX_SEED
# A trial is RUNNING without an owner only between Optuna creating it and the objective's first write.
OWNERLESS_GRACE_S = 60.0
# A trial whose worker died is re-run once: a candidate that kills its worker again (out of memory) is not.
STALE_TRIAL_RETRIES = 1
# A worker starting together with another may find the study created but its settings not yet recorded.
CREATION_GRACE_S = 5.0
# Optuna's RDB schema: a SQLite file without these tables is someone else's database.
OPTUNA_TABLES = ("studies", "version_info", "alembic_version")


class Scorer(Protocol):
    """Scores one architecture; returns ``top1_<setting>``/``top5_<setting>`` for every setting."""

    name: str
    version: str

    def score(self, genome: Any) -> dict[str, float]: ...


@dataclass(frozen=True)
class SearchConfig:
    study: str
    target: str = "w4a4"
    max_params: int = 10_000_000
    trials: int | None = 20  # more trials by this run
    total_trials: int | None = None  # stop once the study has this many complete trials (any worker)
    timeout: float | None = None
    storage: str | None = None
    sampler: str = DEFAULT_SAMPLER
    seed: int | None = 0
    space: str = DEFAULT_SPACE
    dataset: str = DEFAULT_DATASET
    predictor: str = DEFAULT_DATASET  # shipped predictors are named after their dataset
    population_size: int = DEFAULT_POPULATION
    protocol: str = "calibrated/channel/a2p99.5/fl8/w8sym"  # how scores were measured (GHNScorer.protocol)
    objective: str = "top1"  # what is maximized at the target: "pred_top1" (the ranker) or "top1" (raw GHN)
    first_last_bits: int | None = 8  # qnas.quant.first_last_rule; recorded for finetune and export
    val_size: int | None = None  # validation images each candidate is scored on (None: not recorded)


@dataclass
class SearchSummary:
    trials_run: int = 0
    scored: int = 0
    cached: int = 0
    infeasible: int = 0
    interrupted: bool = False
    terminated: bool = False  # the interruption was SIGTERM
    planned: int | None = None  # trials this run will start at most (None: until --timeout)
    recovered: int = 0  # RUNNING trials of dead workers this run marked failed
    seconds: float = 0.0
    score_seconds: float = 0.0
    pareto: list[FrozenTrial] = field(default_factory=list)


def parse_target(bits: str) -> str:
    """``8``/``4``/``2`` mean wBaB; ``w4a8``-style names are taken as they are (2-8 bits)."""
    text = bits.strip().lower()
    if text in ("8", "4", "2"):
        return f"w{text}a{text}"
    if text in SETTINGS:
        return text
    w, _, a = text.removeprefix("w").partition("a")
    if text.startswith("w") and w.isdigit() and a.isdigit() and 2 <= int(w) <= 8 and 2 <= int(a) <= 8:
        return text
    raise QnasError(f"bad --bits {bits!r}: use 8, 4, 2, a setting like w4a8 (2 to 8 bits) or fp32")


def study_granularity(study: Any) -> str:
    """Weight granularity the study scored with (``qnas.study.StudyAttrs.granularity``)."""
    return StudyAttrs.from_attrs(study.user_attrs).granularity


def redact(url: str) -> str:
    """A storage URL safe to print: the password of ``user:password@host`` replaced."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _sqlite_fast_commits(storage: optuna.storages.BaseStorage) -> None:
    """WAL journal + synchronous=NORMAL on a SQLite storage (no-op for others): a commit no longer waits for
    fsync. Called once the study is known to be qnas's: WAL is a write to the file header.

    Optuna writes every parameter and user attribute in its own transaction (~60 per trial here);
    with SQLite's default rollback journal each costs an fsync (~18 ms measured), i.e. ~1 s per trial.
    WAL keeps the database consistent across crashes (the last commits may be lost on power failure).
    """
    from sqlalchemy import event

    if not isinstance(storage, RDBStorage) or storage.engine.url.get_backend_name() != "sqlite":
        return

    def on_connect(dbapi_connection, _record) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while Optuna created its tables lack the pragmas


def _sqlite_in_memory(url: str) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` or a ``mode=memory`` URI: a database no other process can see."""
    scheme, _, rest = url.partition("://")
    path, _, query = rest.partition("?")
    return scheme.split("+")[0] == "sqlite" and (path.lstrip("/").removeprefix("file:") in ("", ":memory:")
                                                or "mode=memory" in query)


def check_study_name(name: str) -> str:
    """``name`` when it is safe as a file name under studies/ (letters, digits, ``._-``), else QnasError."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise QnasError(f"bad study name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a "
                        "letter or digit")
    return name


def default_storage(study: str, root: Path = Path("studies")) -> str:
    return f"sqlite:///{root / (check_study_name(study) + '.db')}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL (query string dropped), None for other URLs."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path.removeprefix("file:")) if path not in ("", ":memory:") else None


def _readonly_sqlite_url(path: Path) -> str:
    # WAL readers need to create a -shm file beside the database; immutable=1 reads without any side file.
    return f"sqlite:///file:{path.resolve()}?mode=ro&immutable=1&uri=true"


def open_storage(url: str, readonly: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: RDB URLs with heartbeats and retries, or a journal file.

    ``journal:PATH`` (or a path ending in ``.log``/``.jsonl``) selects a journal file, which is the
    cheapest storage per trial on one machine. ``readonly``: the storage must exist (nothing is created)
    and a SQLite file in a directory this process cannot write is opened immutable. An existing file that
    is not an Optuna storage (another SQLite database, a text file) is refused and left untouched.
    """
    try:
        if url.startswith("journal:") or url.endswith((".log", ".jsonl")):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal:").removeprefix("//"))
            if readonly and not path.is_file():
                raise QnasError(f"no journal file {str(path)!r}")
            _check_journal(path)  # Optuna would append its record to any file, then fail to parse it
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise QnasError(f"bad --storage {url!r}: expected an Optuna storage URL like sqlite:///x.db")
        if _sqlite_in_memory(url):
            raise QnasError(f"--storage {url!r} is an in-memory database, gone when the process ends: "
                            "use a file, e.g. sqlite:///studies/NAME.db")
        db = sqlite_path(url)
        if db is not None and readonly:
            if not db.is_file():
                raise QnasError(f"no study database {str(db)!r}")
            _check_sqlite_storage(db, empty_ok=False)
            if not os.access(db.parent, os.W_OK):
                return _rdb_storage(_readonly_sqlite_url(db))
        if db is not None and not readonly:
            if db.is_file():
                _check_sqlite_storage(db, empty_ok=True)
            db.parent.mkdir(parents=True, exist_ok=True)
            # SQLite has no concurrent writers across machines; heartbeats still recover crashed trials.
        from sqlalchemy.exc import SAWarning

        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, but long-standing
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # e.g. SQLite options the driver ignores without uri=true: the URL would not mean what it says
            warnings.filterwarnings("error", message="Query string argument", category=SAWarning)
            # A worker that dies mid-trial is noticed by the others after the grace period; its trial
            # is marked failed and re-queued STALE_TRIAL_RETRIES times (RetryHeartbeatStaleTrialCallback).
            storage = _rdb_storage(
                url,
                heartbeat_interval=30,
                grace_period=120,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_RETRIES),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        return storage
    except QnasError:
        raise
    except Exception as exc:  # sqlalchemy/driver errors: unreachable host, bad credentials, missing driver
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QnasError(f"cannot open storage {redact(url)!r}: {first}") from None


def _check_journal(path: Path) -> None:
    """QnasError unless ``path`` is missing, empty, or starts with an Optuna journal record."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)  # bounded: a large file without newlines is not read whole
    except FileNotFoundError:
        return
    except OSError as exc:
        raise QnasError(f"cannot read journal {str(path)!r}: {exc.strerror or exc}") from None
    if not first:
        return
    try:
        record = json.loads(first)
    except ValueError:  # UnicodeDecodeError included
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise QnasError(f"{str(path)!r} is not an Optuna journal (its first line is no journal record); "
                        "give another file")


def _sqlite_tables(db: Path, immutable: bool) -> set[str]:
    uri = f"file:{urllib.parse.quote(str(db.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    con = sqlite3.connect(uri, uri=True)
    try:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def _check_sqlite_storage(db: Path, empty_ok: bool) -> None:
    """QnasError unless the existing file ``db`` is a SQLite database with Optuna's tables (``empty_ok``: or a
    database without any table, which a new storage may fill). Only reads: the file stays byte-identical."""
    # First immutable: no lock and no side file. A database in use (a WAL not yet checkpointed, a page being
    # checkpointed while read) gets a second, locked look.
    try:
        tables: set[str] | None = _sqlite_tables(db, immutable=True)
    except sqlite3.Error:
        tables = None
    wal = db.with_name(db.name + "-wal")
    if tables is None or (not set(OPTUNA_TABLES) <= tables and wal.is_file() and wal.stat().st_size):
        try:
            tables = _sqlite_tables(db, immutable=False)
        except sqlite3.Error as exc:
            raise QnasError(f"{str(db)!r} is not an Optuna storage ({exc})") from None
    if set(OPTUNA_TABLES) <= tables or (empty_ok and not tables):
        return
    if not tables:
        raise QnasError(f"{str(db)!r} is not an Optuna storage (an empty database)")
    raise QnasError(f"{str(db)!r} is not an Optuna storage (it has tables {', '.join(sorted(tables)[:5])} but "
                    "not Optuna's); pass another --storage")


def _rdb_storage(url: str, **kwargs: Any) -> RDBStorage:
    """RDBStorage, retried when workers started together race to create the tables of a fresh database.

    PostgreSQL answers the loser's CREATE TABLE with a unique violation, SQLite with "table ... already
    exists"; once the winner has committed, the tables exist and a retry only checks them. Other errors
    (an unreachable server, bad credentials) fail at once.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(5):
        try:
            return RDBStorage(url, **kwargs)
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            racing = not isinstance(exc, OperationalError) or "already exists" in str(exc)
            if not racing or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def make_sampler(name: str, seed: int | None, population_size: int = 20) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise QnasError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")


class _Recorder:
    """Answers a space's ``suggest(trial)`` with each distribution's first value and records the distributions."""

    def __init__(self) -> None:
        self.space: dict[str, BaseDistribution] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.space[name] = CategoricalDistribution(list(choices))
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.space[name] = IntDistribution(low, high, step=step, log=log)
        return low

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        self.space[name] = FloatDistribution(low, high, step=step, log=log)
        return low


class BoundedSampler(optuna.samplers.BaseSampler):
    """Proposes only candidates within the parameter bound, every parameter of the fixed-length space at once.

    The base sampler's proposal (NSGA-II's children, TPE's draws) is redrawn until it fits; where the base
    sampler has nothing of its own to propose (NSGA-II's first generation, TPE's start-up trials, random
    search) candidates are drawn as the space's ``sample`` draws them: a target size log-uniform between
    ``10**MIN_LOG_PARAMS`` and the bound, parameters uniform, the first candidate near the target kept.
    The bound stays an Optuna constraint, so a candidate that still does not fit is recorded, not scored.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, space: Any, input_shape: tuple[int, int, int],
                 num_classes: int, max_params: int, seed: int | None, tries: int = 200,
                 random_tries: int = 20_000) -> None:
        self.base = base
        self._space_module = space
        self._shape, self._classes, self._bound = input_shape, num_classes, max_params
        self._rng = random.Random(seed)
        self._tries, self._random_tries = tries, random_tries
        recorder = _Recorder()
        space.suggest(recorder)
        self._search_space = recorder.space

    def size(self, params: dict[str, Any]) -> int:
        genome = self._space_module.suggest(FixedTrial(params))
        return int(self._space_module.count_params(genome, self._shape, self._classes))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._search_space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        base_space = self.base.infer_relative_search_space(study, trial)
        if set(base_space) == set(self._search_space):
            for _ in range(self._tries):
                proposal = self.base.sample_relative(study, trial, base_space)
                if not proposal:
                    break
                params = {name: proposal[name] if name in proposal else
                          self.base.sample_independent(study, trial, name, dist)  # NSGA-II's mutations
                          for name, dist in self._search_space.items()}
                if self.size(params) <= self._bound:
                    return params
        return self._random_params()

    def _random_params(self) -> dict[str, Any]:
        low = float(getattr(self._space_module, "MIN_LOG_PARAMS", 4.0))
        high = math.log10(self._bound)
        target = self._rng.uniform(low, high) if high > low + 0.5 else None
        best, best_gap = None, math.inf
        for _ in range(self._random_tries):
            params = {name: self._draw(dist) for name, dist in self._search_space.items()}
            n = self.size(params)
            if n > self._bound:
                continue
            gap = 0.0 if target is None else abs(math.log10(max(n, 1)) - target)
            if gap <= 0.25:
                return params
            if gap < best_gap:
                best, best_gap = params, gap
        return best or {}  # nothing fits: the base sampler proposes, the bound rejects

    def _draw(self, dist: BaseDistribution) -> Any:
        if isinstance(dist, CategoricalDistribution):
            return self._rng.choice(dist.choices)
        if isinstance(dist, IntDistribution):
            return self._rng.randrange(dist.low, dist.high + 1, dist.step)
        if isinstance(dist, FloatDistribution):
            return self._rng.uniform(dist.low, dist.high)
        raise QnasError(f"the search space suggests an unsupported distribution {dist!r}")

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = random.Random()


def load_study(study: str, storage: str | None = None, readonly: bool = False) -> optuna.Study:
    """Open an existing study made by ``qnas search`` (for report/show/finetune/export); a missing SQLite file
    is an error, never a new empty database, and a study not made by qnas is refused
    (:func:`qnas.study.check_made_by_qnas`). ``readonly``: also readable from a directory this process cannot
    write."""
    url = storage or default_storage(study)
    db = sqlite_path(url)
    if db is not None and not db.is_file():
        hint = "" if storage else " (pass --storage URL if the study lives elsewhere)"
        raise QnasError(f"no study {study!r}: {db} does not exist{hint}")
    if db is not None and not readonly:  # open_storage checks a read-only open itself: never create tables
        _check_sqlite_storage(db, empty_ok=False)
    store = open_storage(url, readonly=readonly)
    try:
        opened = optuna.load_study(study_name=study, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise QnasError(f"no study {study!r} in {redact(url)} (found: {', '.join(names) or 'none'})") from None
    check_made_by_qnas(opened)
    if not readonly:
        _sqlite_fast_commits(store)
    return opened


def sampler_seed(seed: int, n_before: int) -> int:
    """The sampler seed of a run: a hash of ``--seed`` and the trials already in the study.

    A hash, not a sum: seed 1 after one trial must not replay seed 2 from the start, and workers with
    different seeds must draw unrelated streams (Optuna samplers with equal seeds propose equal trials).
    """
    return int(np.random.SeedSequence([seed, n_before]).generate_state(1)[0])


@dataclass(frozen=True)
class Worker:
    """The process running a trial: host, pid and the pid's start time (pids are reused)."""

    host: str
    pid: int
    started: str | None  # boot id and start tick of the pid on Linux, None elsewhere

    @classmethod
    def this(cls) -> Worker:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()))

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "started": self.started}

    @classmethod
    def from_json(cls, d: Any) -> Worker | None:
        if not isinstance(d, dict) or not isinstance(d.get("pid"), int) or not isinstance(d.get("host"), str):
            return None
        return cls(d["host"], d["pid"], d.get("started"))

    def is_gone(self) -> bool:
        """True only when this process provably no longer runs (same host, pid dead or reused)."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.started != _process_start(self.pid)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            pass
        return self.started is not None and _process_start(self.pid) != self.started


def _process_start(pid: int) -> str | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (start time in clock ticks); the command name before it may contain spaces, so split after ')'.
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


WORKER_ATTR = K.WORKER


def fail_dead_trials(study: optuna.Study, now: datetime.datetime | None = None) -> int:
    """Mark failed the RUNNING trials whose worker is provably gone (killed on this host), and those left
    without an owner for longer than Optuna needs to start a trial; re-queue each once, as Optuna's
    heartbeat does. Trials of live or remote workers are left alone (RDB heartbeats cover remote ones).
    Returns how many trials were failed."""
    now = now or datetime.datetime.now()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_RETRIES)
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = Worker.from_json(t.user_attrs.get(WORKER_ATTR))
        if owner is None:
            started = t.datetime_start
            stale = started is not None and (now - started).total_seconds() > OWNERLESS_GRACE_S
        else:
            stale = owner.is_gone()
        if not stale:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):  # another worker failed it first
            continue
        failed += 1
        retry(study, study.get_trials(deepcopy=False)[t.number])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeats: remote workers gone for the grace period
    return failed


def create_or_continue(cfg: SearchConfig, space: Any = None, input_shape: tuple[int, int, int] = (1, 28, 28),
                       num_classes: int = 10) -> optuna.Study:
    """Create the study, or continue it when it exists, was made by qnas and with the same contract (an
    Optuna study of another program is refused before anything is written to it).

    With ``space`` the sampler proposes only candidates within ``cfg.max_params`` (:class:`BoundedSampler`).
    """
    check_study_name(cfg.study)
    # Every argument is checked before the storage is opened: a refused search leaves no database behind.
    if cfg.seed is not None:
        checks.seed("seed", cfg.seed)
    checks.integer("population size (NSGA-II needs at least 2)", cfg.population_size, minimum=2)
    if cfg.sampler not in SAMPLERS:
        raise QnasError(f"unknown sampler {cfg.sampler!r} (choose from {', '.join(SAMPLERS)})")
    if space is not None:  # before the storage: a bound nothing meets creates no study
        check_bound(space, cfg.max_params, input_shape, num_classes)
    store = open_storage(cfg.storage or default_storage(cfg.study))
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    n_before = existing[cfg.study].n_trials if cfg.study in existing else 0
    # Seeding from the number of trials too means a continued study does not re-propose the candidates
    # of its first run, while a fresh study stays reproducible by --seed.
    seed = None if cfg.seed is None else sampler_seed(cfg.seed, n_before)
    sampler = make_sampler(cfg.sampler, seed, cfg.population_size)
    if space is not None:
        sampler = BoundedSampler(sampler, space, input_shape, num_classes, cfg.max_params, seed)
    try:
        study = optuna.create_study(study_name=cfg.study, storage=store, sampler=sampler,
                                    directions=list(QNAS_DIRECTIONS))
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.study, storage=store, sampler=sampler)
        _check_continued(study)  # before any write: another program's study is left as it is
    _sqlite_fast_commits(store)
    # The target first: a worker joining a study being created waits for it (_check_continued).
    contract = {StudyKey.TARGET: cfg.target, StudyKey.MAX_PARAMS: cfg.max_params, StudyKey.SPACE: cfg.space,
                StudyKey.DATASET: cfg.dataset, StudyKey.PREDICTOR: cfg.predictor, StudyKey.PROTOCOL: cfg.protocol,
                StudyKey.OBJECTIVE: cfg.objective,
                StudyKey.FIRST_LAST_BITS: "same" if cfg.first_last_bits is None else cfg.first_last_bits,
                StudyKey.VAL_SIZE: cfg.val_size}
    stored = {k: study.user_attrs.get(k) for k in StudyKey.CONTRACT}
    # Compare only what is stored and asked: workers starting together may see a contract half-written by
    # another, and a caller that does not say (val_size None: a library scorer) does not contradict it.
    diff = ", ".join(f"{k}: study has {stored[k]!r}, asked {contract[k]!r}" for k in StudyKey.CONTRACT
                     if stored[k] is not None and contract[k] is not None and stored[k] != contract[k])
    if diff:
        raise QnasError(f"study {cfg.study!r} was made with other settings ({diff}); use another --study name")
    for k, v in contract.items():
        if stored[k] is None and v is not None:
            study.set_user_attr(k, v)
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([K.score(cfg.objective, cfg.target), "params"])
    return study


def _check_continued(study: optuna.Study) -> None:
    """:func:`qnas.study.check_made_by_qnas`, waiting up to CREATION_GRACE_S for a study that may have just
    been created by a worker started together with this one (no settings and no trials yet)."""
    deadline = time.monotonic() + CREATION_GRACE_S
    qnas_directions = tuple(d.name.lower() for d in study.directions) == QNAS_DIRECTIONS  # never change
    while True:
        # Looked at before the check: the creating worker writes the target first, so settings seen here
        # without a target at the check that follows are another program's, while settings landing between
        # the two reads (the creator was writing them) pass the check.
        maybe_starting = qnas_directions and not study.user_attrs and not study.get_trials(deepcopy=False)
        try:
            check_made_by_qnas(study)
            return
        except QnasError:
            if not maybe_starting or time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def check_bound(space: Any, max_params: int, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """QnasError when no architecture of ``space`` has at most ``max_params`` parameters: the space's own
    ``sample`` decides (the check and message of ``qnas space sample``), so a search never runs with every
    candidate infeasible."""
    space.sample(random.Random(0), max_params, input_shape, num_classes)


def size_bytes(params: int, setting: str) -> int:
    """Weight storage at a setting (BatchNorm folded, every parameter at the weight bit-width)."""
    bits = 32 if setting == "fp32" else int(setting[1 : setting.index("a")])
    return math.ceil(params * bits / 8)


def bitops(macs: int, setting: str) -> int:
    if setting == "fp32":
        return macs * 32 * 32
    w, a = setting[1:].split("a")
    return macs * int(w) * int(a)


def run_search(
    cfg: SearchConfig,
    scorer: Scorer,
    space: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    on_trial: Callable[[optuna.Study, FrozenTrial, SearchSummary], None] | None = None,
) -> SearchSummary:
    """Run ``cfg.trials`` more trials (or until ``cfg.timeout``, or until the study has ``cfg.total_trials``
    complete trials) on the study ``cfg.study``.

    First, trials left RUNNING by workers that were killed on this host are marked failed and re-queued
    (:func:`fail_dead_trials`). Ctrl-C or SIGTERM marks a trial being scored failed, lets a trial being
    stored finish (see :class:`_CtrlC`) and returns with ``interrupted``; no trial is left RUNNING.
    """
    study = create_or_continue(cfg, space, input_shape, num_classes)
    summary = SearchSummary()
    summary.recovered = fail_dead_trials(study)
    worker = Worker.this().to_json()
    ctrl_c = _CtrlC()  # installed around optimize below
    n_trials = cfg.trials
    if cfg.total_trials is not None:
        left = max(cfg.total_trials - _count(study, TrialState.COMPLETE), 0)
        n_trials = left if n_trials is None else min(n_trials, left)
    summary.planned = n_trials
    # Architectures already scored in this study (by any worker), so duplicates are not rescored.
    cache: dict[str, dict[str, Any]] = {}

    def refresh_cache() -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            arch = t.user_attrs.get(K.ARCH)
            if arch and K.SCORED_IN_TRIAL not in t.user_attrs and arch not in cache \
                    and K.score("top1", "fp32") in t.user_attrs:
                cache[arch] = {**t.user_attrs, "_number": t.number}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if ctrl_c.requested:  # Ctrl-C arrived while Optuna was creating this trial: fail it, stop
            raise KeyboardInterrupt
        trial.set_user_attr(WORKER_ATTR, worker)  # first: a killed worker's trial is recognized by it
        genome = space.suggest(trial)
        arch = space.to_string(genome)
        params = space.count_params(genome, input_shape, num_classes)
        macs = space.count_macs(genome, input_shape, num_classes)
        trial.set_constraint("params", params - cfg.max_params)
        attrs: dict[str, Any] = {K.ARCH: arch, K.GENOME: space.to_json(genome), K.PARAMS: params, K.MACS: macs,
                                 K.PREDICTOR: scorer.name, K.PREDICTOR_VERSION: scorer.version}
        attrs[K.SIZE_BYTES] = {s: size_bytes(params, s) for s in SETTINGS}
        attrs[K.BITOPS] = {s: bitops(macs, s) for s in SETTINGS}
        if params > cfg.max_params:
            summary.infeasible += 1
            _set_attrs(trial, {**attrs, K.INFEASIBLE: True})
            return 0.0, float(params)
        _set_attrs(trial, attrs)  # before scoring: a running trial, or one whose worker died, says what it scores
        refresh_cache()
        if arch in cache:
            hit = cache[arch]
            summary.cached += 1
            metrics = {k: v for k, v in hit.items() if k.startswith(SCORE_ATTRS)}
            result = {**metrics, K.SCORED_IN_TRIAL: hit["_number"], K.SCORE_SECONDS: 0.0}
        else:
            t0 = time.perf_counter()
            ctrl_c.scoring = True
            try:
                if ctrl_c.requested:
                    raise KeyboardInterrupt
                metrics = scorer.score(genome)
            finally:
                ctrl_c.scoring = False
            dt = time.perf_counter() - t0
            summary.scored += 1
            summary.score_seconds += dt
            result = {**metrics, K.SCORE_SECONDS: dt}
            cache[arch] = {**attrs, **result, "_number": trial.number}
        key = K.score(cfg.objective, cfg.target)
        if key not in metrics:
            raise QnasError(f"scorer {scorer.name!r} did not return {key}")
        _set_attrs(trial, result)
        return float(metrics[key]), float(params)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        summary.trials_run += 1
        if on_trial is not None:
            on_trial(study, trial, summary)
        if ctrl_c.requested:
            study.stop()
        # Trials other workers are running now will most likely complete: count them against the total.
        elif cfg.total_trials is not None and \
                _count(study, TrialState.COMPLETE) + _count(study, TrialState.RUNNING) >= cfg.total_trials:
            study.stop()

    t0 = time.perf_counter()
    if n_trials != 0:
        try:
            with ctrl_c:
                study.optimize(objective, n_trials=n_trials, timeout=cfg.timeout, callbacks=[callback],
                               catch=(), gc_after_trial=False)
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.interrupted = summary.interrupted or ctrl_c.requested
    summary.terminated = ctrl_c.terminated
    summary.seconds = time.perf_counter() - t0
    summary.pareto = pareto_front(study)
    return summary


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


class _CtrlC:
    """Ctrl-C (and SIGTERM, handled the same way) that never leaves a trial RUNNING.

    A KeyboardInterrupt inside Optuna's ask/tell (storage writes) would leave the trial RUNNING forever
    (journal) or until the heartbeat grace period (RDB). So a first Ctrl-C interrupts at once only while
    the scorer runs (pure computation; Optuna marks the trial failed); elsewhere it sets ``requested``,
    the objective fails a trial started afterwards and the trial callback stops the study. A second
    Ctrl-C interrupts wherever it lands. Installed only in the main thread, over Python's default SIGINT
    handler and over the default (or the qnas CLI's) SIGTERM handler; an ignored signal stays ignored.
    An interrupt raised inside a garbage-collector callback (e.g. SQLAlchemy's) is swallowed by Python as
    "Exception ignored ... Traceback"; ``requested`` already stops the study, so that report is dropped
    (the trial being scored then finishes before the study stops).
    """

    def __init__(self) -> None:
        self.requested = False
        self.terminated = False
        self.scoring = False
        self._previous: dict[int, Any] = {}
        self._previous_hook: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, raise_terminated):
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self._previous_hook is not None:
            if sys.unraisablehook == self._unraisable:  # never undo a hook installed inside the block
                sys.unraisablehook = self._previous_hook
            self._previous_hook = None

    def _unraisable(self, info: Any) -> None:
        if isinstance(info.exc_value, (KeyboardInterrupt, Terminated)) and self.requested:
            return  # our own interrupt, landed in a GC callback; the study stops on ``requested``
        (self._previous_hook or sys.__unraisablehook__)(info)

    def _handle(self, signum: int, frame: Any) -> None:
        interrupt_now = self.requested or self.scoring
        self.requested = True
        self.terminated = self.terminated or signum == signal.SIGTERM
        if interrupt_now:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    # One storage round-trip per attribute is Optuna's API; keep the count fixed and small.
    for k, v in attrs.items():
        trial.set_user_attr(k, v)


# `qnas.search(...)` calls the API function qnas.api.search; the module's own names stay reachable.
make_callable(__name__)
