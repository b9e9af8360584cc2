"""The ranker: predict *trained* accuracy at each setting from features that cost no training.

    feats = candidate_features(scorer, genome)          # GHN accuracies/losses, size, shape, proxies, embedding
    ranker = load_ranker("fashion-mnist")               # JSON beside the predictor checkpoint; never pickle
    ranker.predict(feats)                               # {"fp32": 0.87, "w4a4": 0.85, "w2a2": 0.71}

A raw GHN accuracy ranks architectures weakly on its own; what ranks well in the literature is a small
learned model over several cheap signals fitted on a few dozen trained architectures. The features:

* ``ghn_top1_<s>``, ``ghn_loss_<s>``: the GHN-predicted parameters' validation accuracy and
  cross-entropy at every scored setting (``qnas.scorer``), the quantization-aware part;
* size and cost: log10 parameters, MACs, weight bytes and BitOps at W4A4 and W2A2;
* shape, read from the computational graph (``qnas.graph``), so any CNN has them: weight layers,
  longest path in weight layers, op counts by kind (dense/grouped/dilated conv, linear, BN, pooling,
  add, concat), kernel-size fractions, log channel statistics;
* zero-cost proxies at the seeded init: log synflow, NASWOT;
* ``emb_<k>``: the GHN's graph embedding (mean node state) projected on its first principal components,
  the projection fitted with the ranker and stored in it.

A :class:`Ranker` holds one model per target setting, each either a ridge regression on standardized
features (stored as its coefficients) or a LightGBM booster (stored as LightGBM's own text model), with
the feature list, the projection, the predictor it was fitted with (its weights digest: features depend on it),
the training table's provenance and its cross-validated metrics. A ``ridge-select`` fit first picks,
per target, at most three of :func:`feature_groups` (size, proxies, the GHN at FP32, the GHN at the
target's setting, shape) by leave-one-out tau on its own rows, then stores the ridge on those features.
A ``bag-select`` fit runs ridge-select on ``BAGS`` bootstrap resamples and stores their average, which is
again one linear model (on the union of the chosen features). An ``avg-all`` fit (the shipped kind, by the
rule of ``benchmarks/ground_truth/ranker_rule_avg.json``) averages the ridges on every subset of at most
three groups, with no choice, and is stored the same way. :func:`fit` and
:func:`cross_val_scores` (out-of-fold predictions) are what ``benchmarks/ranking.py`` uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qnas.errors import QnasError

__all__ = [
    "FORMAT",
    "MODEL_KINDS",
    "TARGETS",
    "Ranker",
    "candidate_features",
    "cross_val_predict",
    "cross_val_scores",
    "feature_groups",
    "fit",
    "graph_features",
    "check_protocol",
    "load_ranker",
    "macs",
    "ranker_path",
]

FORMAT = "qnas-ranker"
FORMAT_VERSION = 2  # 2: tied to the predictor's weights digest, not its file's sha256
FEATURE_VERSION = 1  # bump when a feature's definition changes: stored tables and rankers are then stale
# What each shipped target predicts (benchmarks/ground_truth.py): the trained net at FP32, post-training
# quantized at 8-bit activations (as `qnas export` ships them), FAQ-finetuned at 4 and 2 bits.
TARGETS = {"fp32": "trained", "w8a8": "trained, post-training quantized", "w4a8": "trained, post-training quantized",
           "w4a4": "trained, FAQ-finetuned", "w2a2": "trained, FAQ-finetuned"}
MODEL_KINDS = ("ridge", "ridge-select", "bag-select", "avg-all", "lgbm", "lgbm-rank")
_STORED_KINDS = ("ridge", "lgbm", "lgbm-rank")  # ridge-select, bag-select and avg-all: stored as one linear model
# ridge-select: a few dozen trained architectures cannot carry a ridge over every feature, so each target's
# fit picks at most this many of feature_groups() by leave-one-out tau on its own rows (docs/ranking.md).
SELECT_MAX_GROUPS = 3
# bag-select: ridge-select on this many bootstrap resamples, averaged, since one selection on a few dozen
# rows is unstable (shipped in sessions 19-23 by benchmarks/ground_truth/ranker_rule.json; docs/ranking.md).
BAGS = 15
_MIN_BAG_ROWS = 3  # distinct rows in a bootstrap resample (fewer: leave-one-out tau is undefined)
_RIDGE_ALPHAS = tuple(np.logspace(-2, 3, 21).tolist())
EMBED_COMPONENTS = 4
LOSS_CAP = 20.0  # cross-entropy of a net whose logits blew up: capped so one broken net cannot dominate a fit
PROXY_IMAGES = 128
_GRAPH_OPS = ("conv", "group_conv", "dil_conv", "linear", "bn", "max_pool", "avg_pool", "add", "concat")


# ----------------------------------------------------------------------------- features


def macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one image through every conv and linear layer (hooks, any module)."""
    total = [0]

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total[0] += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def graph_features(graph: Any) -> dict[str, float]:
    """Shape features of a ``qnas.graph.ArchGraph``: depth, op counts, kernel sizes, channel statistics."""
    from qnas.graph import WEIGHT_OPS

    ops = graph.ops
    weight = [v for v, op in enumerate(ops) if op in WEIGHT_OPS]
    # Longest input-to-output path counted in weight layers (nodes are in topological order).
    depth = [0] * len(ops)
    preds: dict[int, list[int]] = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
    for v in range(len(ops)):
        depth[v] = max((depth[u] for u in preds.get(v, [])), default=0) + (ops[v] in WEIGHT_OPS)
    convs = [v for v in weight if ops[v] != "linear"]
    kernels = [graph.shapes[v][-1] for v in convs]
    out_ch = [graph.shapes[v][0] for v in weight]
    feats = {
        "weight_layers": float(len(weight)),
        "depth": float(max(depth, default=0)),
        **{f"n_{op}": float(sum(o == op for o in ops)) for op in _GRAPH_OPS},
        "has_bn": float("bn" in ops),
        "frac_k1": sum(k == 1 for k in kernels) / max(len(kernels), 1),
        "frac_k3": sum(k == 3 for k in kernels) / max(len(kernels), 1),
        "frac_k5plus": sum(k >= 5 for k in kernels) / max(len(kernels), 1),
        "log_ch_mean": float(np.mean(np.log2(out_ch))) if out_ch else 0.0,
        "log_ch_max": float(np.log2(max(out_ch))) if out_ch else 0.0,
        "log_ch_min": float(np.log2(min(out_ch))) if out_ch else 0.0,
    }
    return feats


def _bits(setting: str) -> tuple[int, int]:
    from qnas.quant import QuantSpec

    spec = QuantSpec.parse(setting)
    return spec.w_bits or 32, spec.a_bits or 32


def candidate_features(
    scorer: Any,
    genome: Any,
    *,
    scores: Mapping[str, float] | None = None,
    module: nn.Module | None = None,
    graph: Any = None,
    proxy_seed: int = 0,
) -> dict[str, float]:
    """Every ranker feature of one architecture of ``scorer``'s space (a ``qnas.scorer.GHNScorer``).

    ``scores``, ``module``, ``graph``: the scorer's own output, built module and graph for this genome
    when the caller has them (the scorer does), so nothing is computed twice; ``module`` is
    re-initialized for the proxies, which read it at its seeded init (``proxy_seed``).
    """
    from qnas.graph import batch_graphs
    from qnas.proxies import naswot, synflow
    from qnas.train import reset_parameters

    if scores is None:
        scores = scorer.score(genome)
    if module is None:
        module = scorer.space.build(genome, scorer.input_shape, scorer.num_classes)
    params = sum(p.numel() for p in module.parameters())
    n_macs = macs(module, scorer.input_shape)
    feats: dict[str, float] = {}
    for s in scorer.settings:
        feats[f"ghn_top1_{s}"] = float(scores[f"top1_{s}"])
        loss = float(scores.get(f"loss_{s}", math.nan))
        feats[f"ghn_loss_{s}"] = LOSS_CAP if not math.isfinite(loss) else min(loss, LOSS_CAP)
    feats["log_params"] = math.log10(params)
    feats["log_macs"] = math.log10(max(n_macs, 1))
    for s in ("w4a4", "w2a2"):
        w, a = _bits(s)
        feats[f"log_bytes_{s}"] = math.log10(params * w / 8)
        feats[f"log_bitops_{s}"] = math.log10(max(n_macs, 1) * w * a)
    ghn = scorer.predictor.ghn
    if graph is None:
        graph = scorer.graph(module)
    feats.update(graph_features(graph))
    reset_parameters(module, proxy_seed)
    flow = synflow(module, scorer.input_shape)
    feats["log_synflow"] = math.log10(flow) if flow > 0 and math.isfinite(flow) else 0.0
    try:
        score = naswot(module, scorer.images[:PROXY_IMAGES])
    except QnasError:  # functional activations only (a user's net): no codes to read, as a singular kernel
        score = math.nan
    feats["naswot"] = score if math.isfinite(score) else 0.0
    with torch.no_grad():
        emb = ghn.embed(batch_graphs([graph]), "fp32")[0]
    feats.update({f"ghn_emb_{i}": float(v) for i, v in enumerate(emb.tolist())})
    return feats


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class _Projection:
    """Principal components of the raw embedding columns, fitted on the training rows."""

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]

    def apply(self, row: Mapping[str, float]) -> dict[str, float]:
        if not self.columns:
            return {}
        x = np.array([row[c] for c in self.columns]) - np.array(self.mean)
        z = np.array(self.components) @ x
        return {f"emb_pc{i}": float(v) for i, v in enumerate(z)}

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], k: int) -> _Projection:
        from sklearn.decomposition import PCA

        columns = tuple(sorted((c for c in rows[0] if c.startswith("ghn_emb_")), key=lambda c: int(c[8:])))
        if not columns or k == 0:
            return cls((), (), ())
        x = np.array([[r[c] for c in columns] for r in rows])
        pca = PCA(n_components=min(k, len(rows), len(columns)), random_state=0).fit(x)
        return cls(columns, tuple(pca.mean_.tolist()), tuple(tuple(c) for c in pca.components_.tolist()))


def _design(rows: Sequence[Mapping[str, float]], projection: _Projection, names: Sequence[str] | None) -> tuple[
        np.ndarray, list[str]]:
    full = [{**{k: v for k, v in r.items() if not k.startswith("ghn_emb_")}, **projection.apply(r)} for r in rows]
    names = list(names) if names is not None else sorted(full[0])
    missing = [n for n in names if n not in full[0]]
    if missing:
        raise QnasError(f"features missing for the ranker: {', '.join(missing)}")
    return np.array([[float(r[n]) for n in names] for r in full], dtype=np.float64), names


@dataclass(frozen=True)
class _Model:
    kind: str
    features: tuple[str, ...]
    # ridge: standardization and coefficients; lgbm: LightGBM's text model
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    booster: str = ""

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "ridge":
            z = (x - np.array(self.mean)) / np.array(self.scale)
            return z @ np.array(self.coef) + self.intercept
        import lightgbm as lgb

        return lgb.Booster(model_str=self.booster).predict(x)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "features": list(self.features)}
        if self.kind == "ridge":
            d.update(mean=list(self.mean), scale=list(self.scale), coef=list(self.coef), intercept=self.intercept)
        else:
            d["booster"] = self.booster
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Model:
        kind = d.get("kind")
        if kind not in _STORED_KINDS:
            raise QnasError(f"unknown ranker model kind {kind!r}")
        feats = tuple(str(f) for f in d["features"])
        if kind == "ridge":
            m = cls(kind, feats, tuple(map(float, d["mean"])), tuple(map(float, d["scale"])),
                    tuple(map(float, d["coef"])), float(d["intercept"]))
            if not len(m.mean) == len(m.scale) == len(m.coef) == len(feats):
                raise QnasError("ridge ranker model: coefficient and feature counts differ")
            return m
        if not isinstance(d.get("booster"), str) or not d["booster"].startswith("tree"):
            raise QnasError("LightGBM ranker model: the booster must be LightGBM's text model")
        return cls(kind, feats, booster=d["booster"])


def feature_groups(target: str) -> dict[str, tuple[str, ...]]:
    """The feature groups a ``ridge-select`` fit of ``target`` chooses among (``drop_<s>`` reads setting s)."""
    setting = target.removeprefix("drop_")
    groups = {"size": ("log_params", "log_macs"), "proxies": ("naswot", "log_synflow"),
              "ghn_fp32": ("ghn_top1_fp32", "ghn_loss_fp32"),
              "shape": ("depth", "weight_layers", "has_bn", "log_ch_mean", "log_ch_max")}
    if setting != "fp32":
        groups["ghn_setting"] = (f"ghn_top1_{setting}", f"ghn_loss_{setting}")
    return groups


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    return (x - mean) / scale, mean, scale


def _neg_mse(estimator: Any, x: np.ndarray, y: np.ndarray) -> float:
    """sklearn's ``neg_mean_squared_error``, the same figure without its input validation at every alpha,
    which was most of a ``ridge-select`` fit's time (``tests/test_ranker.py`` checks they agree exactly)."""
    return -float(np.mean((y - estimator.predict(x)) ** 2))


def loo_tau(x: np.ndarray, y: np.ndarray) -> float:
    """How ``ridge-select`` scores a feature subset: Kendall tau of exact leave-one-out predictions of a
    ridge on standardized ``x`` (RidgeCV's closed form), each relative to its fold's label mean as
    ``benchmarks/ranking.py`` scores a ranker; -inf where tau is undefined."""
    from scipy.stats import kendalltau
    from sklearn.linear_model import RidgeCV

    z, _, _ = _standardize(x)
    model = RidgeCV(alphas=_RIDGE_ALPHAS, store_cv_results=True, scoring=_neg_mse).fit(z, y)
    loo = model.cv_results_[:, _RIDGE_ALPHAS.index(model.alpha_)]
    fold_mean = (y.sum() - y) / (len(y) - 1)  # each leave-one-out model's training label mean
    t = kendalltau(y, loo - fold_mean).statistic
    return t if math.isfinite(t) else -math.inf


def _group_subsets(names: Sequence[str], target: str) -> list[list[str]]:
    """The columns of every subset of at most SELECT_MAX_GROUPS of ``target``'s feature groups present in
    ``names``, fewest groups first (empty where none is)."""
    from itertools import combinations

    groups = {g: f for g, f in feature_groups(target).items() if set(f) <= set(names)}
    return [[c for g in combo for c in groups[g]]
            for k in range(1, SELECT_MAX_GROUPS + 1) for combo in combinations(groups, k)]


def _select_features(x: np.ndarray, y: np.ndarray, names: list[str], target: str) -> list[str]:
    """The feature groups (at most SELECT_MAX_GROUPS) whose ridge ranks ``y`` best out of fold
    (:func:`loo_tau`); ties go to fewer groups."""
    col = {n: i for i, n in enumerate(names)}
    best, best_tau = names, -math.inf
    for chosen in _group_subsets(names, target):
        t = loo_tau(x[:, [col[c] for c in chosen]], y)
        if t > best_tau:
            best, best_tau = chosen, t
    return best


def _mean_linear(models: Sequence[_Model], names: Sequence[str]) -> _Model:
    """The average of linear models (each on its own standardized columns) as one linear model on raw columns."""
    coef = dict.fromkeys(names, 0.0)
    intercept = 0.0
    for m in models:
        intercept += m.intercept
        for f, mu, sd, w in zip(m.features, m.mean, m.scale, m.coef, strict=True):
            coef[f] += w / sd
            intercept -= w * mu / sd
    used = [f for f in names if coef[f] != 0.0]
    k = len(models)
    return _Model("ridge", tuple(used), (0.0,) * len(used), (1.0,) * len(used),
                  tuple(coef[f] / k for f in used), intercept / k)


def _fit_model(x: np.ndarray, y: np.ndarray, names: list[str], kind: str, seed: int, target: str) -> _Model:
    if kind == "bag-select":
        rng = np.random.default_rng(seed)
        bags = []
        while len(bags) < BAGS:
            bag = np.unique(rng.choice(len(y), len(y)))
            if len(bag) >= _MIN_BAG_ROWS:  # else drawn again (likely only on a handful of rows)
                bags.append(bag)
        return _mean_linear([_fit_model(x[b], y[b], names, "ridge-select", seed, target) for b in bags], names)
    if kind == "avg-all" and _group_subsets(names, target):
        # every subset's ridge, averaged: no choice to make on a few dozen rows (ranker_rule_avg.json)
        col = {n: i for i, n in enumerate(names)}
        return _mean_linear([_fit_model(x[:, [col[c] for c in cols]], y, cols, "ridge", seed, target)
                             for cols in _group_subsets(names, target)], names)
    if kind == "ridge-select":
        chosen = _select_features(x, y, names, target)
        x, names, kind = x[:, [names.index(c) for c in chosen]], chosen, "ridge"
    if kind in ("ridge", "avg-all"):  # avg-all without any feature group: one ridge on every feature
        from sklearn.linear_model import RidgeCV

        z, mean, scale = _standardize(x)
        model = RidgeCV(alphas=_RIDGE_ALPHAS).fit(z, y)
        return _Model("ridge", tuple(names), tuple(mean.tolist()), tuple(scale.tolist()),
                      tuple(model.coef_.tolist()), float(model.intercept_))
    import lightgbm as lgb

    params = {"learning_rate": 0.05, "num_leaves": 4, "min_data_in_leaf": 4, "feature_fraction": 0.8,
              "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": seed,
              "deterministic": True, "num_threads": 1, "force_col_wise": True}
    if kind == "lgbm-rank":
        # LambdaRank wants integer relevance: accuracy in 32 quantile grades, all rows one query.
        grades = np.searchsorted(np.quantile(y, np.linspace(0, 1, 33)[1:-1]), y).astype(int)
        data = lgb.Dataset(x, grades, group=[len(y)], feature_name=names)
        params.update(objective="lambdarank", label_gain=list(range(33)), lambdarank_truncation_level=len(y))
    else:
        data = lgb.Dataset(x, y, feature_name=names)
        params.update(objective="regression")
    booster = lgb.train(params, data, num_boost_round=200)
    return _Model(kind, tuple(names), booster=booster.model_to_string())


# ----------------------------------------------------------------------------- the ranker


@dataclass(frozen=True)
class Ranker:
    """Predicted trained top-1 per target setting; see the module docstring."""

    models: dict[str, _Model]
    projection: _Projection
    predictor_digest: str
    feature_version: int = FEATURE_VERSION
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str | None:
        """The scoring protocol of the features it was fitted on (``GHNScorer.protocol``), if recorded."""
        return self.provenance.get("features", {}).get("protocol")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.models)

    def mean_error(self, target: str) -> float | None:
        """How far its predicted top-1 at ``target`` was from the trained one, out of fold, in points (mean absolute
        error over the nets it was fitted on, as ``benchmarks/ranking.py --ship`` recorded it); None if not recorded."""
        mae = self.metrics.get("out_of_fold", {}).get(target, {}).get("mae")
        return None if mae is None else float(mae)

    def predict(self, features: Mapping[str, float]) -> dict[str, float]:
        """Predicted trained top-1 (a fraction; a ranking score for ``lgbm-rank`` models) per target."""
        return {t: float(v[0]) for t, v in self.predict_many([features]).items()}

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
        out = {}
        for target, model in self.models.items():
            x, _ = _design(rows, self.projection, model.features)
            out[target] = model.predict(x)
        return out

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "feature_version": self.feature_version,
            "predictor_digest": self.predictor_digest,
            "projection": {"columns": list(self.projection.columns), "mean": list(self.projection.mean),
                           "components": [list(c) for c in self.projection.components]},
            "models": {t: m.to_dict() for t, m in self.models.items()},
            "provenance": self.provenance, "metrics": self.metrics}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "ranker") -> Ranker:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QnasError(f"{source} is not a qnas ranker (not JSON: {exc.__class__.__name__}); "
                            "refusing it") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise QnasError(f"{source} is not a qnas ranker (no format {FORMAT!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise QnasError(f"{source}: ranker format version {d.get('format_version')!r} is not {FORMAT_VERSION}")
        if d.get("feature_version") != FEATURE_VERSION:
            raise QnasError(f"{source} was fitted on features of version {d.get('feature_version')!r}, "
                            f"this qnas computes version {FEATURE_VERSION}: refit it")
        try:
            p = d["projection"]
            projection = _Projection(tuple(p["columns"]), tuple(map(float, p["mean"])),
                                     tuple(tuple(map(float, c)) for c in p["components"]))
            models = {str(t): _Model.from_dict(m) for t, m in d["models"].items()}
            return cls(models, projection, str(d["predictor_digest"]), int(d["feature_version"]),
                       dict(d.get("provenance", {})), dict(d.get("metrics", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QnasError(f"{source} is a damaged qnas ranker ({exc.__class__.__name__}: {exc})") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path


def fit(
    rows: Sequence[Mapping[str, float]],
    targets: Mapping[str, Sequence[float]],
    *,
    kind: str = "ridge",
    features: Sequence[str] | None = None,
    predictor_digest: str = "",
    components: int = EMBED_COMPONENTS,
    seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Ranker:
    """Fit one model per target on ``rows`` (feature dicts from :func:`candidate_features`).

    ``targets``: per target, one label per row, NaN where that row was not measured at that target (its
    model is fitted on the others; the embedding's projection, which needs no labels, on every row).
    ``features``: the columns to use (default all, the embedding as its principal components);
    e.g. ``["log_params", "log_macs"]`` is the size-only baseline.
    """
    if kind not in MODEL_KINDS:
        raise QnasError(f"ranker model must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    use_emb = features is None or any(f.startswith("emb_pc") for f in features)
    projection = _Projection.fit(rows, components if use_emb else 0)
    x, names = _design(rows, projection, features)
    models = {}
    for target, labels in targets.items():
        y = np.asarray(labels, dtype=np.float64)
        if len(y) != len(rows):
            raise QnasError(f"target {target!r} has {len(y)} labels for {len(rows)} architectures")
        have = np.isfinite(y)
        if have.sum() < 5:
            raise QnasError(f"fitting a ranker needs at least 5 trained architectures, got {int(have.sum())} "
                            f"for {target!r}")
        models[target] = _fit_model(x[have], y[have], names, kind, seed, target)
    return Ranker(models, projection, predictor_digest, FEATURE_VERSION, dict(provenance or {}), dict(metrics or {}))


def cross_val_predict(
    rows: Sequence[Mapping[str, float]],
    y: Sequence[float],
    *,
    kind: str = "ridge",
    features: Sequence[str] | None = None,
    folds: int = 10,
    seed: int = 0,
    relative: bool = False,
    target: str = "t",
) -> np.ndarray:
    """Out-of-fold predictions: each architecture predicted by a model fitted without it (K-fold).

    ``target``: the setting ``y`` was measured at (``ridge-select`` chooses its feature groups by it).

    ``relative``: each prediction minus its fold model's mean prediction on that model's own training
    rows, i.e. the ranking score the model gives the held-out architecture against the ones it was fitted
    on. Pooling absolute predictions across folds also pools each fold's label mean, and with few
    architectures that mean anti-correlates with the held-out label (leave-one-out: it moves by
    -(y_i - mean y) / (n - 1)); no single fitted model ranks with that offset.
    """
    absolute, rel = cross_val_scores(rows, y, kind=kind, features=features, folds=folds, seed=seed, target=target)
    return rel if relative else absolute


def cross_val_scores(
    rows: Sequence[Mapping[str, float]],
    y: Sequence[float],
    *,
    kind: str = "ridge",
    features: Sequence[str] | None = None,
    folds: int = 10,
    seed: int = 0,
    target: str = "t",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cross_val_predict`'s absolute and relative predictions from one set of fold models."""
    from sklearn.model_selection import KFold

    y = np.asarray(y, dtype=np.float64)
    out, rel = np.empty(len(y)), np.empty(len(y))
    for train_idx, test_idx in KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed).split(y):
        ranker = fit([rows[i] for i in train_idx], {target: y[train_idx]}, kind=kind, features=features, seed=seed)
        out[test_idx] = ranker.predict_many([rows[i] for i in test_idx])[target]
        rel[test_idx] = out[test_idx] - ranker.predict_many([rows[i] for i in train_idx])[target].mean()
    return out, rel


# ----------------------------------------------------------------------------- shipped rankers


def ranker_path(predictor_path: str | Path) -> Path:
    """Where a predictor checkpoint's ranker lives: ``<name>.ranker.json`` beside ``<name>.pt``."""
    p = Path(predictor_path)
    return p.with_name(p.stem + ".ranker.json")


def load_ranker(path: str | Path, *, predictor_digest: str | None = None, protocol: str | None = None) -> Ranker:
    """Read a ranker JSON file; refuse anything else (a pickle is never unpickled) and, given the
    predictor's weights digest (``Predictor.digest``) or the scorer's protocol (``GHNScorer.protocol``), a
    ranker fitted on features of another predictor or measured another way."""
    if not str(path).strip():
        raise QnasError("an empty ranker path (give a ranker JSON file, or 'none' for no ranker)")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QnasError(f"cannot read ranker {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QnasError(f"{path} is not a qnas ranker (not UTF-8 JSON); refusing it") from None
    ranker = Ranker.from_json(text, source=str(path))
    if predictor_digest is not None and ranker.predictor_digest != predictor_digest:
        raise QnasError(f"{path} was fitted on another predictor's features (weights sha256 "
                        f"{ranker.predictor_digest[:12]} vs {predictor_digest[:12]}): refit it")
    if protocol is not None:
        check_protocol(ranker, protocol, where=path)
    return ranker


def check_protocol(ranker: Ranker, protocol: str, where: str | Path = "the ranker") -> None:
    """QnasError unless ``ranker`` was fitted on features scored with ``protocol`` (or records none)."""
    if ranker.protocol not in (None, protocol):
        raise QnasError(f"{where} was fitted on features scored as {ranker.protocol}, not {protocol}: score "
                        "with that protocol (e.g. --head, --fit-size), refit the ranker, or use --ranker none")
