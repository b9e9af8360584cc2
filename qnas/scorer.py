"""Scoring a candidate without training it: GHN-predicted parameters, evaluated at every bit setting.

    scorer = make_scorer(space=get_space("convnets250k"), dataset="fashion-mnist", predictor=None)
    scorer.score(genome)   # {"top1_fp32": ..., "top5_fp32": ..., "loss_fp32": ..., "top1_w4a4": ..., ...}

A bit-conditioned GHN predicts one parameter set per setting, all in a single batched GHN pass (the
same graph once per setting); an unconditioned GHN predicts one set shared by all settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from qnas.defaults import (
    ACT_RANGES,
    BN_MODES,
    DEFAULT_CALIB_SIZE,
    DEFAULT_DATASET,
    DEFAULT_FIT_SIZE,
    DEFAULT_GRANULARITY,
    DEFAULT_HEAD,
    HEADS,
    SETTINGS,
)
from qnas.errors import QnasError

__all__ = ["GHNScorer", "make_scorer"]


@dataclass
class GHNScorer:
    space: ModuleType
    predictor: Any  # qnas.predictors.Predictor
    images: torch.Tensor
    labels: torch.Tensor
    input_shape: tuple[int, int, int]
    num_classes: int
    bn_stats: str
    name: str
    version: str
    settings: tuple[str, ...] = SETTINGS
    granularity: str = "channel"  # weight scales of the quantized settings (see DEFAULT_GRANULARITY)
    act_ranges: str = "auto"  # activation range rule (see ACT_RANGES)
    first_last_bits: int | None = 8  # qnas.quant.first_last_rule: the rule search, finetune and export share
    ranker: Any = None  # qnas.ranker.Ranker: predicted trained accuracy from the scores and cheap features
    readout: Any = None  # qnas.readout.Readout: the last layer solved on these images; None: the GHN's head
    ranker_note: str = ""  # why the ranker shipped beside the predictor is not used ("": it is, or none was asked)
    calib_size: int = DEFAULT_CALIB_SIZE  # qnas.score.evaluate's calibration images (the first of `images`)
    batch_size: int = 64  # qnas.score.evaluate's batch size
    seed: int = 0  # the validation subset's seed, also the noise of -noise settings

    @property
    def protocol(self) -> str:
        """How scores are measured: BN statistics / weight scales / activation ranges / first-last rule /
        8-bit grid, then ``/fit`` when the head is solved (qnas.readout; nothing: the GHN's head) on the default
        number of images, ``/fit<N>`` on another (a smaller fit scores systematically lower), ``-gs`` added
        where a head below 8 bits is fitted on one feature scale (``--first-last-bits same``). ``val_size`` is
        not part of it: it moves scores by noise, not by method."""
        from qnas.quant import LOW_BIT_ACT_PERCENTILE, LOW_BITS

        act = "minmax" if self.act_ranges == "minmax" else f"a{LOW_BITS}p{LOW_BIT_ACT_PERCENTILE:g}"
        first_last = "same" if self.first_last_bits is None else f"fl{self.first_last_bits}"
        head = "" if self.readout is None else f"/{self.readout.protocol_tag_for(self.first_last_bits)}"
        return f"{self.bn_stats}/{self.granularity}/{act}/{first_last}/w8sym{head}"

    def spec_name(self, setting: str) -> str:
        """The engine's setting for a reported one: ``w4a4`` -> ``w4a4-channel-fl8`` under per-channel scales
        and the first/last-layer rule (``w4a4-channel-fl8-minmax`` with min/max activation ranges)."""
        from qnas.quant import engine_setting

        return engine_setting(setting, granularity=self.granularity, act_ranges=self.act_ranges,
                              first_last_bits=self.first_last_bits)

    def predict(self, genome) -> tuple[Any, dict[str, dict[str, torch.Tensor]]]:
        """The built module and its predicted parameters per setting."""
        module = self.space.build(genome, self.input_shape, self.num_classes)
        return module, self.predict_params(module)

    def graph(self, module: Any) -> Any:
        """The graph the predictor reads for ``module`` (``qnas.graph.ArchGraph``)."""
        from qnas.graph import to_graph

        return to_graph(module, self.input_shape, self.predictor.ghn.config.s_max)

    def predict_params(self, module: Any, graph: Any = None) -> dict[str, dict[str, torch.Tensor]]:
        """Predicted parameters of any traceable ``module`` per setting, keyed like ``named_parameters()``.

        Each bit-width is predicted once, in one batch that always holds the default settings' first, in their
        order: a batched matmul's rounding depends on the batch, so this keeps a setting's parameters (and on
        some CPUs a few images of its score) independent of what else is asked."""
        from qnas.ghn import parse_bits

        ghn = self.predictor.ghn
        graph = self.graph(module) if graph is None else graph
        with torch.no_grad():
            if ghn.config.bit_conditioning:
                batch: dict[Any, str] = {}  # bit-widths -> a setting of them, in prediction order
                for s in (*SETTINGS, *self.settings):
                    batch.setdefault(parse_bits(s), s)
                preds = dict(zip(batch, self.predictor.predict_many([graph] * len(batch), list(batch.values()))))
                return {s: preds[parse_bits(s)] for s in self.settings}
            shared = self.predictor.predict(graph, "fp32")
        return {s: shared for s in self.settings}

    def evaluate(self, module: Any, params: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        """``top1_<setting>``, ``top5_<setting>``, ``loss_<setting>`` of ``module`` (or its ``QuantModel``)
        with ``params`` per setting, under this scorer's protocol."""
        from qnas.score import evaluate

        by_spec = {self.spec_name(s): params[s] for s in self.settings}  # w4a4 and w4a4-channel: measured once
        acc = evaluate(module, lambda spec: by_spec[spec.name], self.images, self.labels,
                       list(by_spec), bn_stats=self.bn_stats, readout=self.readout,
                       calib_size=self.calib_size, batch_size=self.batch_size, seed=self.seed)
        out: dict[str, float] = {}
        for s in self.settings:
            out[f"top1_{s}"] = acc[self.spec_name(s)]["top1"]
            out[f"top5_{s}"] = acc[self.spec_name(s)]["top5"]
            out[f"loss_{s}"] = acc[self.spec_name(s)]["loss"]
        return out

    def score_module(self, module: Any, graph: Any = None) -> dict[str, float]:
        """The GHN-parameter scores (:meth:`evaluate`) of any traceable ``module``, without the ranker."""
        graph = self.graph(module) if graph is None else graph
        return self.evaluate(module, self.predict_params(module, graph))

    def score(self, genome) -> dict[str, float]:
        module = self.space.build(genome, self.input_shape, self.num_classes)
        graph = self.graph(module)
        out = self.score_module(module, graph)
        if self.ranker is not None:
            from qnas.ranker import candidate_features

            feats = candidate_features(self, genome, scores=out, module=module, graph=graph)
            predicted = self.ranker.predict(feats)
            out.update({f"pred_top1_{t}": v for t, v in predicted.items()})
        return out

    def objective_key(self, setting: str) -> str:
        """What a search maximizes for ``setting``: the ranker's prediction when it has a model for it."""
        return "pred_top1" if self.ranker is not None and setting in self.ranker.targets else "top1"


def make_scorer(
    *,
    space: ModuleType,
    dataset: str = DEFAULT_DATASET,
    data_dir: str | None = None,
    predictor: str | None = None,
    val_size: int = 1000,
    bn_stats: str | None = None,
    granularity: str = DEFAULT_GRANULARITY,
    act_ranges: str = "auto",
    device: str = "cpu",
    seed: int = 0,
    ranker: str | None = "auto",
    first_last_bits: int | str | None = 8,
    head: str = DEFAULT_HEAD,
    fit_size: int | None = None,
) -> GHNScorer:
    """Load the dataset's validation subset, the predictor and its ranker; errors are one-line QnasErrors.

    ``ranker``: ``"auto"`` uses the ranker shipped beside the predictor checkpoint when there is one
    (``qnas.ranker.ranker_path``), ``"none"`` scores with the GHN alone, a path loads that file. A
    ranker that is not a valid ranker JSON, or was fitted on another predictor, is refused; so is one given
    by path that was fitted on another scoring protocol, while the shipped one (``"auto"``) is then left
    out, with the reason in ``ranker_note``: the search maximizes the raw GHN accuracy.
    ``head``: ``"fit"`` solves each candidate's last layer on ``fit_size`` labelled training images
    (``qnas.readout``; default: ``DEFAULT_FIT_SIZE`` with a ranker, as its features were scored, else
    ``val_size``), ``"keep"`` scores with the GHN's predicted classifier.
    """
    from qnas.data import dataset_info, load_dataset, val_subset
    from qnas.defaults import DEFAULT_BN_STATS
    from qnas.predictors import load_predictor, resolve_predictor_name
    from qnas.quant import parse_first_last_bits

    first_last = parse_first_last_bits(first_last_bits)

    if granularity not in ("tensor", "channel"):
        raise QnasError(f"granularity must be tensor or channel, got {granularity!r}")
    if head not in HEADS:
        raise QnasError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if bn_stats is not None and bn_stats not in BN_MODES:
        raise QnasError(f"bn_stats must be one of {', '.join(BN_MODES)}, got {bn_stats!r}")
    if act_ranges not in ACT_RANGES:
        raise QnasError(f"activation ranges must be one of {', '.join(ACT_RANGES)}, got {act_ranges!r}")

    if device != "cpu":
        # Candidates are small and scored one at a time; the CPU path is the one measured and tested.
        raise QnasError(f"scoring runs on the CPU in this version; got --device {device!r}")
    if ranker is not None and not ranker.strip():  # Path("") is the current directory: say what is wrong
        raise QnasError("an empty ranker path (give a ranker JSON file, 'auto' or 'none')")
    info = dataset_info(dataset)
    name = resolve_predictor_name(predictor, dataset)
    pred = load_predictor(name, dataset=dataset, input_shape=info.input_shape, num_classes=info.num_classes,
                          seed=seed)
    ds = load_dataset(dataset, data_dir)
    x, y = val_subset(ds, val_size, seed=seed)
    from qnas.ranker import check_protocol, load_ranker, ranker_path

    if pred.path is None and ranker not in (None, "none", "auto"):
        raise QnasError("a ranker needs a trained predictor checkpoint, not the random GHN")
    path = None
    if pred.path is not None and ranker not in (None, "none"):
        path = ranker_path(pred.path) if ranker == "auto" else Path(ranker)
    fitted = None
    if path is not None and (ranker != "auto" or path.exists()):
        fitted = load_ranker(path, predictor_digest=pred.digest)
    from qnas.readout import make_readout

    # With a ranker the head is fitted on as many images as its features were; without, on --val-size's.
    readout = make_readout(ds, head, fit_size, default=DEFAULT_FIT_SIZE if fitted is not None else val_size,
                           seed=seed)
    scorer = GHNScorer(space=space, predictor=pred, images=x, labels=y, input_shape=tuple(info.input_shape),
                       num_classes=info.num_classes, bn_stats=bn_stats or DEFAULT_BN_STATS, name=pred.header.name,
                       version=pred.header.notes or "untrained", granularity=granularity, act_ranges=act_ranges,
                       first_last_bits=first_last, readout=readout, seed=seed)
    if pred.path is None:
        return scorer
    version = f"{pred.header.train_steps} steps, weights sha256 {pred.digest[:12]}"
    if fitted is not None and fitted.protocol not in (None, scorer.protocol):
        if ranker != "auto":
            check_protocol(fitted, scorer.protocol, where=path)
        note = (f"the shipped ranker was fitted on scores measured as {fitted.protocol}, not {scorer.protocol}: "
                "it is left out (score as it was fitted, e.g. with the default head and fit size, to use it)")
        return replace(scorer, version=version, ranker_note=note)
    if fitted is not None:
        version += f", ranker {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    return replace(scorer, version=version, ranker=fitted)
