"""Multi-objective architecture search: Optuna study, quantized accuracy at the target bits vs params.

The study is an ordinary Optuna study (SQLite by default, any storage URL), so optuna-dashboard opens
it and many `qnas search` processes can share one PostgreSQL study. The parameter bound is an Optuna 5
constraint (``trial.set_constraint``); counting is analytic, so infeasible candidates are never scored.
A candidate's scores come from a :class:`Scorer` (GHN-predicted parameters under fake quantization,
see ``qnas.scorer``); this module only does the bookkeeping around it.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from qnas.errors import QnasError

SETTINGS = ("fp32", "w8a8", "w4a8", "w4a4", "w2a2")
SAMPLERS = ("nsga2", "tpe", "random")
# benchmarks/search_efficiency.py (shipped predictor, W4A4, 3 seeds): median hypervolume after 200 trials
# NSGA-II 2.008, TPE 1.997, random search after 400 trials 1.999 (hv_ratio=1.005). NSGA-II's lead is
# within seed noise; it is kept for its population (all cores busy, no sequential model to refit).
DEFAULT_SAMPLER = "nsga2"
# Study-level attributes that must match when a study is continued, so runs never silently mix.
_CONTRACT = ("target", "max_params", "space", "dataset", "predictor", "protocol")


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
    trials: int | None = 20
    timeout: float | None = None
    storage: str | None = None
    sampler: str = DEFAULT_SAMPLER
    seed: int | None = 0
    space: str = "convnets250k"
    dataset: str = "fashion-mnist"
    predictor: str = "fashion-mnist"
    population_size: int = 20
    protocol: str = "calibrated/channel/a2p99.5"  # how scores were measured: BN stats / weights / activations


@dataclass
class SearchSummary:
    trials_run: int = 0
    scored: int = 0
    cached: int = 0
    infeasible: int = 0
    interrupted: bool = False
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
    raise QnasError(f"bad --bits {bits!r}: use 8, 4, 2 or a setting like w4a8 (2 to 8 bits)")


def study_granularity(study: Any) -> str:
    """Weight granularity the study scored with (its ``protocol`` attribute, e.g. ``calibrated/channel/a2p99.5``);
    studies written before the attribute existed scored per tensor."""
    protocol = str(study.user_attrs.get("protocol", "calibrated/tensor")).split("/")
    return "channel" if len(protocol) > 1 and protocol[1] == "channel" else "tensor"


def redact(url: str) -> str:
    """A storage URL safe to print: the password of ``user:password@host`` replaced."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _sqlite_fast_commits(storage: RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL: a commit no longer waits for fsync.

    Optuna writes every parameter and user attribute in its own transaction (~60 per trial here);
    with SQLite's default rollback journal each costs an fsync (~18 ms measured), i.e. ~1 s per trial.
    WAL keeps the database consistent across crashes (the last commits may be lost on power failure).
    """
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while Optuna created its tables lack the pragmas


def default_storage(study: str, root: Path = Path("studies")) -> str:
    return f"sqlite:///{root / (study + '.db')}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: RDB URLs with heartbeats and retries, or a journal file.

    ``journal:PATH`` (or a path ending in ``.log``/``.jsonl``) selects a journal file, which is the
    cheapest storage per trial on one machine.
    """
    try:
        if url.startswith("journal:") or url.endswith((".log", ".jsonl")):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal:").removeprefix("//"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # SQLite has no concurrent writers across machines; heartbeats still recover crashed trials.
        if "://" not in url:
            raise QnasError(f"bad --storage {url!r}: expected an Optuna storage URL like sqlite:///x.db")
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, but long-standing
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # A worker that dies mid-trial is noticed by the others after the grace period; its trial
            # is marked failed and re-queued once (RetryHeartbeatStaleTrialCallback).
            storage = _rdb_storage(
                url,
                heartbeat_interval=30,
                grace_period=120,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        if url.startswith("sqlite"):
            _sqlite_fast_commits(storage)
        return storage
    except QnasError:
        raise
    except Exception as exc:  # sqlalchemy/driver errors: unreachable host, bad credentials, missing driver
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QnasError(f"cannot open storage {redact(url)!r}: {first}") from None


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


def load_study(study: str, storage: str | None = None) -> optuna.Study:
    """Open an existing study (for report/show/finetune/export)."""
    url = storage or default_storage(study)
    store = open_storage(url)
    try:
        return optuna.load_study(study_name=study, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise QnasError(f"no study {study!r} in {url} (found: {', '.join(names) or 'none'})") from None


def create_or_continue(cfg: SearchConfig) -> optuna.Study:
    """Create the study, or continue it when it exists and was made with the same contract."""
    store = open_storage(cfg.storage or default_storage(cfg.study))
    # Seeding from the number of finished trials means a continued study does not re-propose the
    # exact candidates of its first run, while a fresh study stays reproducible by --seed.
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    n_before = existing[cfg.study].n_trials if cfg.study in existing else 0
    seed = None if cfg.seed is None else cfg.seed + n_before
    study = optuna.create_study(
        study_name=cfg.study,
        storage=store,
        sampler=make_sampler(cfg.sampler, seed, cfg.population_size),
        directions=["maximize", "minimize"],
        load_if_exists=True,
    )
    contract = {"target": cfg.target, "max_params": cfg.max_params, "space": cfg.space,
                "dataset": cfg.dataset, "predictor": cfg.predictor, "protocol": cfg.protocol}
    stored = {k: study.user_attrs.get(k) for k in _CONTRACT}
    # Compare only what is stored: workers starting together may see a contract half-written by another.
    diff = ", ".join(f"{k}: study has {stored[k]!r}, asked {contract[k]!r}" for k in _CONTRACT
                     if stored[k] is not None and stored[k] != contract[k])
    if diff:
        raise QnasError(f"study {cfg.study!r} was made with other settings ({diff}); use another --study name")
    for k, v in contract.items():
        if stored[k] is None:
            study.set_user_attr(k, v)
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([f"top1_{cfg.target}", "params"])
    return study


def size_bytes(params: int, setting: str) -> int:
    """Weight storage at a setting (BatchNorm folded, every parameter at the weight bit-width)."""
    bits = 32 if setting == "fp32" else int(setting[1 : setting.index("a")])
    return math.ceil(params * bits / 8)


def bitops(macs: int, setting: str) -> int:
    if setting == "fp32":
        return macs * 32 * 32
    w, a = setting[1:].split("a")
    return macs * int(w) * int(a)


def _pareto(study: optuna.Study) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if all(v <= 0 for v in t.constraints.values()) and t.values is not None]
    front = []
    for t in done:
        if not any(_dominates(o.values, t.values) for o in done if o is not t):
            front.append(t)
    return sorted(front, key=lambda t: t.values[1])


def _dominates(a: list[float], b: list[float]) -> bool:
    """Objective vectors (accuracy up, params down)."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible, non-dominated completed trials sorted by parameter count."""
    return _pareto(study)


def run_search(
    cfg: SearchConfig,
    scorer: Scorer,
    space: Any,
    input_shape: tuple[int, int, int],
    num_classes: int,
    on_trial: Callable[[optuna.Study, FrozenTrial, SearchSummary], None] | None = None,
) -> SearchSummary:
    """Run ``cfg.trials`` more trials (or until ``cfg.timeout``) on the study ``cfg.study``.

    Ctrl-C marks a trial being scored failed, lets a trial being stored finish (see :class:`_CtrlC`)
    and returns with ``interrupted``; no trial is left RUNNING.
    """
    study = create_or_continue(cfg)
    summary = SearchSummary()
    ctrl_c = _CtrlC()  # installed around optimize below
    # Architectures already scored in this study (by any worker), so duplicates are not rescored.
    cache: dict[str, dict[str, Any]] = {}

    def refresh_cache() -> None:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            arch = t.user_attrs.get("arch")
            if arch and "scored_in_trial" not in t.user_attrs and arch not in cache and "top1_fp32" in t.user_attrs:
                cache[arch] = {**t.user_attrs, "_number": t.number}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if ctrl_c.requested:  # Ctrl-C arrived while Optuna was creating this trial: fail it, stop
            raise KeyboardInterrupt
        genome = space.suggest(trial)
        arch = space.to_string(genome)
        params = space.count_params(genome, input_shape, num_classes)
        macs = space.count_macs(genome, input_shape, num_classes)
        trial.set_constraint("params", params - cfg.max_params)
        attrs: dict[str, Any] = {"arch": arch, "genome": space.to_json(genome), "params": params, "macs": macs,
                                 "predictor": scorer.name, "predictor_version": scorer.version}
        attrs["size_bytes"] = {s: size_bytes(params, s) for s in SETTINGS}
        attrs["bitops"] = {s: bitops(macs, s) for s in SETTINGS}
        if params > cfg.max_params:
            summary.infeasible += 1
            attrs["infeasible"] = True
            _set_attrs(trial, attrs)
            return 0.0, float(params)
        refresh_cache()
        if arch in cache:
            hit = cache[arch]
            summary.cached += 1
            metrics = {k: v for k, v in hit.items() if k.startswith(("top1_", "top5_"))}
            attrs.update(metrics, scored_in_trial=hit["_number"], score_seconds=0.0)
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
            attrs.update(metrics, score_seconds=dt)
            cache[arch] = {**attrs, "_number": trial.number}
        key = f"top1_{cfg.target}"
        if key not in metrics:
            raise QnasError(f"scorer {scorer.name!r} did not return {key}")
        _set_attrs(trial, attrs)
        return float(metrics[key]), float(params)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        summary.trials_run += 1
        if on_trial is not None:
            on_trial(study, trial, summary)
        if ctrl_c.requested:
            study.stop()

    t0 = time.perf_counter()
    try:
        with ctrl_c:
            study.optimize(objective, n_trials=cfg.trials, timeout=cfg.timeout, callbacks=[callback],
                           catch=(), gc_after_trial=False)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.interrupted = summary.interrupted or ctrl_c.requested
    summary.seconds = time.perf_counter() - t0
    summary.pareto = pareto_front(study)
    return summary


class _CtrlC:
    """Ctrl-C that never leaves a trial RUNNING.

    A KeyboardInterrupt inside Optuna's ask/tell (storage writes) would leave the trial RUNNING forever
    (journal) or until the heartbeat grace period (RDB). So a first Ctrl-C interrupts at once only while
    the scorer runs (pure computation; Optuna marks the trial failed); elsewhere it sets ``requested``,
    the objective fails a trial started afterwards and the trial callback stops the study. A second
    Ctrl-C interrupts wherever it lands. Installed only in the main thread over Python's default handler.
    """

    def __init__(self) -> None:
        self.requested = False
        self.scoring = False
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        interrupt_now = self.requested or self.scoring
        self.requested = True
        if interrupt_now:
            raise KeyboardInterrupt


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    # One storage round-trip per attribute is Optuna's API; keep the count fixed and small.
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
