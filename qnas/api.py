"""The Python API: what the CLI does, as functions (``qnas.score``, ``qnas.search``, ...).

    import qnas
    result = qnas.score(MyNet(), bits=["fp32", "w4a4"])      # any traceable nn.Module
    result.top1("w4a4"), result.accuracy["w4a4"]["top5"]
    result = qnas.score("stem16-32:conv3-maxpool-64:mb6k3+r-convs2-128:conv1-fc128")
    result.predicted["w4a4"]                                 # the ranker's predicted trained top-1
    params = qnas.predict_params(MyNet(), bits="w4a4")       # {name: tensor}, like named_parameters()
    summary = qnas.search("demo", bits=4, max_params=1e6, trials=30)
    runs = qnas.finetune("demo", top_k=2)
    exported = qnas.export("demo", "winners", pareto=True)
    net = qnas.load("winners/trial-28")

Every function is a thin layer over the library modules (``qnas.scorer``, ``qnas.search``,
``qnas.finetune``, ``qnas.export``) with the CLI's defaults; bad input raises :class:`qnas.QnasError`.
Accuracies are fractions in [0, 1] (the CLI prints them as percentages).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qnas import _checks as checks
from qnas.defaults import DEFAULT_DATASET, DEFAULT_HEAD, DEFAULT_SPACE, SETTINGS
from qnas.errors import QnasError, QnasWarning, warn

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Score", "Search", "build", "check_io", "export", "finetune", "load_factory", "make_search",
           "predict_params", "score", "search", "study_predictor"]

Bits = str | int | Iterable[str | int]


@dataclass(frozen=True)
class Score:
    """What :func:`score` measured: accuracies (fractions) per setting, and the ranker's prediction."""

    arch: str  # the architecture string, or the module's class name
    params: int
    macs: int
    settings: dict[str, str]  # reported setting -> the engine's full setting (weight scales, ranges, rule)
    accuracy: dict[str, dict[str, float]]  # {setting: {"top1", "top5", "loss"}} of GHN-predicted parameters
    predicted: dict[str, float]  # {setting: predicted trained top-1}; empty where the ranker does not apply
    predictor: str  # the predictor and ranker versions
    protocol: str  # BN statistics / weight scales / activation ranges / first-last rule / 8-bit grid
    warnings: tuple[str, ...] = ()  # layers the predictor never saw, chance-level scores
    head: str = ""  # the classifier scored with: "fit<N>" (solved on N training images) or "keep" (the GHN's)
    # {setting: the ranker's out-of-fold mean absolute error in points}: how far ``predicted`` is off on average
    predicted_error: dict[str, float] = field(default_factory=dict)

    def top1(self, setting: str) -> float:
        """Top-1 (a fraction) of the GHN-predicted parameters at ``setting``."""
        if setting not in self.accuracy:
            raise QnasError(f"not scored at {setting!r} (scored: {', '.join(self.accuracy)})")
        return self.accuracy[setting]["top1"]


def _settings(bits: Bits) -> tuple[str, ...]:
    from qnas.quant import setting_names  # the one parser of settings lists (the CLI's too)

    return setting_names(bits)


def _scorer(*, settings: Sequence[str], space: str, dataset: str, data_dir: str | os.PathLike[str] | None,
            predictor: str | None, val_size: int, bn_stats: str | None, granularity: str, act_ranges: str,
            first_last_bits: int | str | None, seed: int, ranker: str | None, head: str = DEFAULT_HEAD,
            fit_size: int | None = None) -> Any:
    from qnas.quant import parse_specs
    from qnas.scorer import make_scorer
    from search_spaces import get_space

    scorer = make_scorer(space=get_space(space), dataset=dataset, data_dir=None if data_dir is None else str(data_dir),
                         predictor=predictor, val_size=val_size, bn_stats=bn_stats, granularity=granularity,
                         act_ranges=act_ranges, seed=seed, ranker=ranker, first_last_bits=first_last_bits,
                         head=head, fit_size=fit_size)
    scorer = replace(scorer, settings=tuple(settings))
    # A bad setting fails before any GHN pass; a default one the caller spelled out is measured once.
    parse_specs(list(dict.fromkeys(scorer.spec_name(s) for s in settings)))
    return scorer


def score(
    model: nn.Module | str,
    bits: Bits = SETTINGS,
    *,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | os.PathLike[str] | None = None,
    predictor: str | None = None,
    space: str = DEFAULT_SPACE,
    val_size: int = 1000,
    seed: int = 0,
    ranker: str | None = "auto",
    bn_stats: str | None = None,
    granularity: str = "channel",
    act_ranges: str = "auto",
    first_last_bits: int | str | None = 8,
    head: str = DEFAULT_HEAD,
    fit_size: int | None = None,
    strict: bool = False,
    max_params: int | None = None,
    max_macs: int | None = None,
    calib_size: int | None = None,
    batch_size: int = 64,
) -> Score:
    """Accuracy of ``model`` at each setting of ``bits`` with GHN-predicted parameters, as ``qnas search``
    scores candidates (``w4a4`` means per-channel weight scales and the 8-bit first/last-layer rule; the
    other protocols through ``granularity``, ``act_ranges``, ``first_last_bits``, ``bn_stats``). ``head="fit"``
    (default) solves the last layer on ``fit_size`` labelled training images (default: as many as the ranker's
    features were scored with, 1,000 for the shipped one; ``val_size`` without a ranker) on the features
    (``qnas.readout``); ``"keep"`` keeps the GHN's predicted classifier.

    ``model``: any traceable ``nn.Module`` taking the dataset's images (e.g. 1x28x28 for Fashion-MNIST) and
    returning its class logits, or an architecture string (or genome JSON) of ``space``. For architectures
    of the space the ranker shipped with the predictor adds ``predicted`` (trained top-1); a module has no
    ranker features, so ``predicted`` stays empty.

    A layer the predictor never saw in training (for the shipped one, trained on the space and the network
    families: a grouped or dilated convolution that is not depthwise, a kernel other than a square 1/3/5/7) is
    reported as a :class:`qnas.coverage.UnseenLayerWarning` (``strict``: a QnasError), and an FP32 score at
    chance level as a :class:`qnas.coverage.ChanceScoreWarning`; both are kept in ``Score.warnings``. Layers the
    quantized executor cannot run faithfully (GELU, LayerNorm, attention, ...) raise QnasError; ReLU, ReLU6,
    hard-swish and SiLU run. ``max_params`` / ``max_macs`` (default the space's bounds, 1e7 and 2e9) refuse
    larger models before any GHN pass. ``calib_size``: calibration images of ``bn_stats="calibrated"`` (the
    first of the validation subset; default 64 or ``val_size`` if smaller); ``batch_size``: evaluation batch.
    """
    from qnas.coverage import ChanceScoreWarning
    from qnas.defaults import DEFAULT_CALIB_SIZE
    from qnas.readout import head_label

    names = _settings(bits)
    val_size, seed = checks.integer("val_size", val_size, minimum=1), checks.seed("seed", seed)
    max_params, max_macs = checks.count("max_params", max_params, optional=True), \
        checks.count("max_macs", max_macs, optional=True)
    calib_size = checks.integer("calib_size", calib_size, minimum=1, optional=True)
    batch_size = checks.integer("batch_size", batch_size, minimum=1)
    fit_size = checks.integer("fit_size", fit_size, minimum=1, optional=True)
    is_arch = isinstance(model, str)
    if not is_arch and ranker not in (None, "none", "auto"):
        raise QnasError("a ranker predicts from the scores of an architecture of the space, not of a module")
    if calib_size is None:
        calib_size = min(DEFAULT_CALIB_SIZE, val_size)
    elif calib_size <= 0 or batch_size <= 0 or (bn_stats != "batch" and calib_size > val_size):
        raise QnasError(f"calib_size {calib_size} must be positive and at most val_size {val_size} (calibration "
                        "images are the first of the validation subset)")
    # The ranker reads the raw scores at every default setting: score those too, report what was asked.
    wanted = tuple(dict.fromkeys([*names, *SETTINGS])) if is_arch and ranker not in (None, "none") else names
    scorer = _scorer(settings=wanted, space=space, dataset=dataset, data_dir=data_dir, predictor=predictor,
                     val_size=val_size, bn_stats=bn_stats, granularity=granularity, act_ranges=act_ranges,
                     first_last_bits=first_last_bits, seed=seed, ranker=ranker if is_arch else "none", head=head,
                     fit_size=fit_size)  # a module has no ranker features
    scorer = replace(scorer, calib_size=calib_size, batch_size=batch_size)
    from qnas.quant import parse_specs

    specs = parse_specs([scorer.spec_name(n) for n in names])  # two names of one setting: an error
    from qnas import limits

    max_params = limits.DEFAULT_MAX_PARAMS if max_params is None else max_params
    max_macs = limits.DEFAULT_MAX_MACS if max_macs is None else max_macs
    notes: list[str] = []
    if scorer.ranker_note:
        warn(scorer.ranker_note)
        notes.append(scorer.ranker_note)
    head_used = head_label(scorer.readout)
    if is_arch:
        genome = scorer.space.parse(model)
        limits.check_arch_size(scorer.space, genome, scorer.input_shape, scorer.num_classes,
                               max_params=max_params, max_macs=max_macs,
                               hint="pass larger max_params / max_macs to qnas.score if it is meant")
        flat = scorer.score(genome)
        arch = scorer.space.to_string(genome)
        n_params = int(scorer.space.count_params(genome, scorer.input_shape, scorer.num_classes))
        n_macs = int(scorer.space.count_macs(genome, scorer.input_shape, scorer.num_classes))
    else:
        flat, n_params, n_macs, fitted = _score_module(model, scorer, strict=strict, notes=notes,
                                                       max_params=max_params, max_macs=max_macs)
        head_used = head_used if fitted else "keep"
        arch = type(model).__name__
    fp32 = flat.get("top1_fp32")
    chance = 1.0 / scorer.num_classes
    if fp32 is not None and fp32 <= 1.5 * chance:
        note = (f"FP32 top-1 {100 * fp32:.2f}% is at chance level ({100 * chance:.0f}%): the predicted parameters "
                "do not work for this network")
        warn(note, ChanceScoreWarning)
        notes.append(note)
    predicted = {s: flat[f"pred_top1_{s}"] for s in names if f"pred_top1_{s}" in flat}
    errors = {s: scorer.ranker.mean_error(s) for s in predicted}  # a prediction implies a ranker
    return Score(
        arch=arch, params=n_params, macs=n_macs,
        settings={s: spec.spelled_out().name for s, spec in zip(names, specs)},  # ranges spelled out
        accuracy={s: {k: flat[f"{k}_{s}"] for k in ("top1", "top5", "loss")} for s in names},
        predicted=predicted,
        predictor=f"{scorer.name} ({scorer.version})", protocol=scorer.protocol, warnings=tuple(notes),
        head=head_used,
        predicted_error={s: e for s, e in errors.items() if e is not None},
    )


def _score_module(module: nn.Module, scorer: Any, *, strict: bool, notes: list[str], max_params: int,
                  max_macs: int) -> tuple[dict[str, float], int, int, bool]:
    """Scores, parameters, MACs of a module, and whether its head was fitted (else scored with the GHN's)."""
    from torch import nn

    from qnas.coverage import check_graph
    from qnas.quant import prepare
    from qnas.ranker import macs
    from qnas.readout import head_step

    if not isinstance(module, nn.Module):
        raise QnasError(f"qnas.score takes an nn.Module or an architecture string, not {type(module).__name__}")
    qmodel = prepare(module)  # layers the quantized executor cannot run fail here, before the GHN
    check_io(module, scorer.input_shape, scorer.num_classes)
    n_params, n_macs = sum(p.numel() for p in module.parameters()), int(macs(module, scorer.input_shape))
    if n_params > max_params or n_macs > max_macs:
        raise QnasError(f"{type(module).__name__} has {n_params:,} parameters and {n_macs:,} MACs per image, over the "
                        f"bounds of {max_params:,} and {max_macs:,} (pass larger max_params / max_macs if it is meant)")
    graph = scorer.graph(module)
    fitted = scorer.readout is not None and head_step(qmodel, scorer.num_classes) is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header = scorer.predictor.header
        check_graph(graph, header.search_space, families=header.families, strict=strict)
        if scorer.readout is not None and not fitted:
            warnings.warn("the last weight layer is not a head qnas can fit (a Linear, or a pooled 1x1 convolution, "
                          "with one output per class and no BatchNorm): scored with the GHN's", QnasWarning,
                          stacklevel=2)
    for w in caught:  # re-raised at the caller of qnas.score, and kept in the result
        warn(w.message, w.category)
        notes.append(str(w.message))
    flat = scorer.evaluate(qmodel, scorer.predict_params(module, graph))
    return flat, n_params, n_macs, fitted


def load_factory(spec: str) -> nn.Module:
    """The module returned by ``factory()`` for ``spec`` = ``path/to/file.py:factory`` (or ``package.module:factory``),
    as ``qnas score --module`` takes it."""
    import importlib.util
    import sys

    from torch import nn

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise QnasError(f"--module takes FILE.py:FACTORY or package.module:FACTORY, got {spec!r}")
    try:
        if where.endswith(".py") or os.sep in where:
            path = Path(where).expanduser()
            if not path.is_file():
                raise QnasError(f"--module: no file {where!r}")
            loader = importlib.util.spec_from_file_location(f"qnas_user_{path.stem}", path)
            if loader is None or loader.loader is None:
                raise QnasError(f"--module: cannot import {where!r}")
            mod = importlib.util.module_from_spec(loader)
            sys.path.insert(0, str(path.parent.resolve()))  # the file may import its neighbours
            try:
                loader.loader.exec_module(mod)
            finally:
                sys.path.remove(str(path.parent.resolve()))
        else:
            mod = importlib.import_module(where)
        factory = getattr(mod, name, None)
        if not callable(factory):
            raise QnasError(f"--module: {where!r} has no callable {name!r}")
        module = factory()
    except QnasError:
        raise
    except SystemExit as exc:  # a script's own sys.exit() (or argparse) must not end qnas silently
        raise QnasError(f"--module {spec}: the code called sys.exit({exc.code!r})") from None
    except Exception as exc:  # the user's code may raise anything; one line says what and where
        text = " ".join(str(exc).split())
        raise QnasError(f"--module {spec}: {type(exc).__name__}: {text}") from None
    if not isinstance(module, nn.Module):
        raise QnasError(f"--module: {name}() returned {type(module).__name__}, not an nn.Module")
    return module


def check_io(module: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
    """QnasError unless ``module`` maps one image of ``input_shape`` to ``num_classes`` logits (one dry run,
    in eval mode so BatchNorm statistics are untouched)."""
    import torch

    was_training = module.training
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:  # shape errors come as RuntimeError, ValueError, ...
        text = " ".join(str(exc).split())
        raise QnasError(f"{type(module).__name__} fails on images of shape {tuple(input_shape)}: {text}") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise QnasError(f"{type(module).__name__} returns {shape} for 2 images of shape {tuple(input_shape)}; "
                        f"it must return (batch, {num_classes}) class logits")


def build(arch: str, *, space: str = DEFAULT_SPACE, dataset: str = DEFAULT_DATASET, seed: int = 0) -> nn.Module:
    """The ``nn.Module`` of an architecture string (or genome JSON) of ``space``, for ``dataset``'s images,
    PyTorch-initialized from ``seed``."""
    import torch

    from qnas import limits
    from qnas.data import dataset_info
    from search_spaces import get_space

    sp, info = get_space(space), dataset_info(dataset)
    genome = sp.parse(arch)
    limits.check_arch_size(sp, genome, info.input_shape, info.num_classes, hint="too large to build")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return sp.build(genome, info.input_shape, info.num_classes)


def predict_params(
    model: nn.Module | str,
    bits: str = "fp32",
    *,
    dataset: str = DEFAULT_DATASET,
    predictor: str | None = None,
    space: str = DEFAULT_SPACE,
    strict: bool = False,
) -> dict[str, torch.Tensor]:
    """The GHN's parameters for ``model`` at one setting, keyed like ``model.named_parameters()``
    (for an architecture string: like ``qnas.build(arch)``'s). Load them with
    ``model.load_state_dict(params, strict=False)`` or use ``torch.func.functional_call``. Layers the
    predictor never saw warn (``strict``: raise), as in :func:`score`."""
    import torch

    from qnas.coverage import check_graph
    from qnas.data import dataset_info
    from qnas.graph import to_graph
    from qnas.predictors import load_predictor, resolve_predictor_name
    from qnas.quant import parse_specs

    if not isinstance(model, str | torch.nn.Module):
        raise QnasError(f"model must be an nn.Module or an architecture string, got {type(model).__name__}")
    names = _settings(bits)
    if len(names) != 1:
        raise QnasError(f"predict_params takes one setting, got {', '.join(names)}")
    name = names[0]
    parse_specs([name])  # the settings score accepts, no others
    module = build(model, space=space, dataset=dataset) if isinstance(model, str) else model
    info = dataset_info(dataset)
    pred = load_predictor(resolve_predictor_name(predictor, dataset), dataset=dataset, input_shape=info.input_shape,
                          num_classes=info.num_classes)
    graph = to_graph(module, info.input_shape, pred.ghn.config.s_max)
    if not isinstance(model, str):
        check_graph(graph, pred.header.search_space, families=pred.header.families, strict=strict)
    bits_arg = name if pred.ghn.config.bit_conditioning else "fp32"
    with torch.no_grad():
        return dict(pred.predict(graph, bits_arg))


# ---------------------------------------------------------------------------------------------------
# Search, finetune, export: the study workflow


@dataclass
class Search:
    """A search ready to run: its configuration (what the study records) and the scorer."""

    config: Any  # qnas.search.SearchConfig
    scorer: Any  # qnas.scorer.GHNScorer

    def run(self, on_trial: Callable[[Any, Any, Any], None] | None = None) -> Any:
        """Run it; ``on_trial(study, trial, summary)`` after every trial. Returns a ``qnas.search.SearchSummary``."""
        from qnas.search import run_search

        return run_search(self.config, self.scorer, self.scorer.space, self.scorer.input_shape,
                          self.scorer.num_classes, on_trial=on_trial)


def make_search(
    study: str = "qnas",
    *,
    bits: str | int = 4,
    max_params: float = 10_000_000,
    trials: int | None = None,
    total_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    sampler: str | None = None,
    population: int = 20,
    seed: int | None = 0,
    space: str = DEFAULT_SPACE,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | os.PathLike[str] | None = None,
    predictor: str | None = None,
    val_size: int = 1000,
    bn_stats: str | None = None,
    granularity: str = "channel",
    act_ranges: str = "auto",
    first_last_bits: int | str | None = 8,
    ranker: str | None = "auto",
    head: str = DEFAULT_HEAD,
    fit_size: int | None = None,
) -> Search:
    """A :class:`Search` with ``qnas search``'s options (``trials`` defaults to 50 when neither ``timeout`` nor
    ``total_trials`` is given)."""
    from qnas.defaults import DEFAULT_SAMPLER
    from qnas.search import SearchConfig, check_study_name, parse_target

    target = parse_target(str(bits))
    check_study_name(study)
    max_params = checks.count("max_params", max_params)
    trials = checks.integer("trials", trials, minimum=1, optional=True)
    total_trials = checks.integer("total_trials", total_trials, minimum=1, optional=True)
    timeout = checks.number("timeout", timeout, optional=True)
    population = checks.integer("population (NSGA-II needs at least 2)", population, minimum=2)
    seed = None if seed is None else checks.seed("seed", seed)  # None: an unseeded sampler
    val_size = checks.integer("val_size", val_size, minimum=1)
    # The default settings (the ranker reads them all) and the target, scored whichever it is (e.g. w8a4).
    scorer = _scorer(settings=tuple(dict.fromkeys([*SETTINGS, target])), space=space, dataset=dataset,
                     data_dir=data_dir, predictor=predictor,
                     val_size=val_size, bn_stats=bn_stats, granularity=granularity, act_ranges=act_ranges,
                     first_last_bits=first_last_bits, seed=0, ranker=ranker, head=head, fit_size=fit_size)
    if scorer.ranker_note:  # as qnas.score says it: the search will maximize the raw GHN accuracy
        warn(f"{scorer.ranker_note}; the search maximizes the raw GHN accuracy")
    runs = trials if trials or timeout or total_trials else 50
    config = SearchConfig(
        study=study, target=target, max_params=int(max_params), trials=runs, total_trials=total_trials,
        timeout=timeout, storage=storage, sampler=sampler or DEFAULT_SAMPLER, seed=seed, space=space,
        dataset=dataset, predictor=scorer.name, population_size=population, protocol=scorer.protocol,
        objective=scorer.objective_key(target), first_last_bits=scorer.first_last_bits, val_size=val_size,
    )
    return Search(config, scorer)


def search(study: str = "qnas", **options: Any) -> Any:
    """Run ``qnas search`` (options as :func:`make_search`); returns a ``qnas.search.SearchSummary`` whose
    ``pareto`` lists the front's trials."""
    return make_search(study, **options).run()


def _open_study(study: str, storage: str | None, data_dir: str | os.PathLike[str] | None,
                readonly: bool = False) -> tuple[Any, Any]:
    import optuna

    from qnas.data import load_dataset
    from qnas.search import load_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from qnas.study import StudyAttrs

    opened = load_study(study, storage, readonly=readonly)
    dataset = load_dataset(StudyAttrs.of(opened).dataset, None if data_dir is None else str(data_dir))
    return opened, dataset


def study_predictor(name: str | None, study: Any, info: Any) -> tuple[Any, str | None]:
    """(predictor, None) for ``name`` or the one the study was scored with, else (None, why).

    The study's own predictor is never silently replaced by another: its scores came from it.
    """
    from qnas.finetune import resolve_predictor
    from qnas.predictors import load_predictor
    from qnas.study import StudyAttrs

    if name:
        return resolve_predictor(name, study, info), None
    recorded = StudyAttrs.from_attrs(study.user_attrs).predictor
    if not recorded:
        try:
            return resolve_predictor(None, study, info), None
        except QnasError as exc:
            return None, str(exc)
    try:
        return load_predictor(recorded, dataset=info.name, input_shape=info.input_shape,
                              num_classes=info.num_classes), None
    except QnasError as exc:
        return None, (f"the study was scored with predictor {recorded!r}, which cannot be loaded: {exc}; pass "
                      "--predictor NAME|PATH.pt to use another")


def finetune(
    study: str,
    *,
    trials: Sequence[int] | None = None,
    top_k: int | None = None,
    bits: str | int | None = None,
    granularity: str | None = None,
    init: str = "ghn",
    predictor: str | None = None,
    first_last_bits: int | str | None = "study",
    storage: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] = "studies",
    test_size: int | None = None,
    restart: bool = False,
    hooks: Callable[[Any, str], Any] | None = None,
    **faq: Any,
) -> list[dict[str, Any]]:
    """FAQ-finetune trials of ``study`` (``trials`` by number, else the ``top_k`` most accurate distinct
    candidates of its front, default 3) at ``bits`` (default: the study's target); ``faq``: fields of
    ``qnas.finetune.FAQConfig`` (``epochs``, ``lr``, ``train_size``, ...). Returns one record per trial
    (``before``/``after`` top-1 fractions per setting, ...), as ``qnas finetune --json`` prints them.
    ``first_last_bits``: ``"study"`` (default) the first/last-layer rule the study was searched with, or 8 /
    ``"same"``. ``hooks(trial, setting)`` may return a ``qnas.finetune.Hooks`` for progress."""
    import dataclasses

    from qnas.finetune import FAQConfig, choose_trials, finetune_trial
    from qnas.quant import parse_first_last_bits
    from qnas.search import parse_target
    from qnas.study import StudyAttrs, TrialAttrs

    if trials is not None and (isinstance(trials, str) or not isinstance(trials, Iterable)):
        raise QnasError(f"trials must be a list of trial numbers, got {trials!r}")
    trials = None if trials is None else [checks.integer("trial number", t, minimum=0) for t in trials]
    top_k = checks.integer("top_k", top_k, minimum=1, optional=True)
    test_size = checks.integer("test_size", test_size, minimum=1, optional=True)
    known = {f.name for f in dataclasses.fields(FAQConfig)} - {"setting", "granularity", "first_last_8bit"}
    if set(faq) - known:
        raise QnasError(f"unknown finetune option(s) {', '.join(sorted(set(faq) - known))} "
                        f"(FAQConfig fields: {', '.join(sorted(known))})")
    opened, dataset = _open_study(study, storage, data_dir)
    attrs = StudyAttrs.of(opened)
    setting = parse_target(str(bits)) if bits else attrs.target
    rule = attrs.first_last_bits if first_last_bits == "study" else parse_first_last_bits(first_last_bits)
    config = FAQConfig(setting=setting, granularity=granularity or attrs.granularity,
                       first_last_8bit=rule is not None, **faq)
    chosen = choose_trials(opened, list(trials) if trials else None, top_k)
    pred = None
    if init == "ghn":
        pred, why = study_predictor(predictor, opened, dataset.info)
        if pred is None:
            raise QnasError(why)
    runs = []
    for t in chosen:
        run = finetune_trial(opened, t, config=config, dataset=dataset, init=init, predictor=pred, root=Path(root),
                             test_size=test_size, restart=restart, hooks=hooks(t, setting) if hooks else None)
        runs.append({"trial": t.number, "arch": TrialAttrs.of(t).arch, **run})
    return runs


def export(
    study: str,
    out: str | os.PathLike[str],
    *,
    trial: int | None = None,
    pareto: bool = False,
    bits: str | int | None = None,
    predictor: str | None = None,
    storage: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] = "studies",
    force: bool = False,
    verify_size: int = 1000,
    test_size: int | None = None,
    first_last_bits: int | str | None = "study",
    latency_rounds: int = 20,
    hooks: Callable[[Any, Path], Any] | None = None,
) -> list[tuple[int, Any]]:
    """Export ``trial`` of ``study`` to ``out``, or (``pareto``) every trial of its front to ``out/trial-N``:
    weights, quantization parameters, ONNX files checked in onnxruntime, a model card. Returns
    ``[(trial number, qnas.export.ExportResult)]``; a mismatch in onnxruntime raises
    ``qnas.export.VerificationError``. ``hooks(trial, out_dir)`` may return a ``qnas.export.ExportHooks``."""
    from qnas.export import DEFAULT_TEST_SIZE, VerificationError, export_trial, prepare_dir, require_dependencies
    from qnas.finetune import study_trial
    from qnas.search import parse_target
    from qnas.study import pareto_front

    if pareto == (trial is not None):
        raise QnasError("export needs one of trial=N or pareto=True")
    trial = checks.integer("trial", trial, minimum=0, optional=True)
    if not isinstance(out, str | os.PathLike):
        raise QnasError(f"out must be a directory path, got {out!r}")
    verify_size = checks.integer("verify_size", verify_size, minimum=1)
    test_size = checks.integer("test_size", test_size, minimum=1, optional=True)
    latency_rounds = checks.integer("latency_rounds", latency_rounds, minimum=0)
    require_dependencies()
    target = parse_target(str(bits)) if bits else None
    if target == "fp32":
        raise QnasError(f"--bits {bits}: the float model.onnx is always written; --bits names the quantized file's "
                        "setting (8, 4, 2 or e.g. w4a8)")
    opened, dataset = _open_study(study, storage, data_dir, readonly=True)
    out = Path(out)
    if pareto:
        front = pareto_front(opened)
        if not front:
            raise QnasError(f"study {study!r} has no completed feasible trials")
        targets = [(t, out / f"trial-{t.number}") for t in front]
    else:
        targets = [(study_trial(opened, trial), out)]  # type: ignore[arg-type]
    for _, where in targets:  # refuse before any work, so an export is never half-replaced
        prepare_dir(where, force)
    # Finetuned trials need no predictor: a missing one is an error only for a trial that is not finetuned.
    pred, why = study_predictor(predictor, opened, dataset.info)
    results = []
    for t, where in targets:
        try:
            results.append((t.number, export_trial(
                opened, t, where, dataset=dataset, bits=target, predictor=pred, root=Path(root),
                verify_size=verify_size, test_size=test_size or DEFAULT_TEST_SIZE, force=force,
                first_last_bits=first_last_bits, latency_rounds=latency_rounds,
                hooks=hooks(t, where) if hooks else None)))
        except VerificationError:
            raise
        except QnasError as exc:
            raise QnasError(f"{exc} ({why})" if pred is None and why else str(exc)) from None
    return results
