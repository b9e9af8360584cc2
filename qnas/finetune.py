"""FAQ finetuning (shared/papers/004) of chosen candidates, starting from GHN-predicted parameters.

    module = space.build(genome)
    load_params(module, predictor.predict(module, "w4a4"))     # the GHN's "better starting position"
    result = finetune(module, dataset, FAQConfig(setting="w4a4", epochs=2))
    result.before, result.after                                 # top-1 at fp32 and at the setting

The recipe, in the order it runs:

1. **Start** from the predictor's parameters for the target setting, copied into the module.
2. **Calibrate** on ``calib_batches`` training batches: BatchNorm statistics of the float network, then
   the activation range of every quantization point: per batch the 99.99th percentile at 8-bit points,
   the 99.9th below 8 bits (FAQ's values), the maximum over batches (and the mirrored low percentile,
   minimum over batches, for points that can be negative). FAQ rounds ranges up to a power of two for
   its fixed-point quantizer; ours is affine (scale and zero point), so they are used as they are.
   Channels whose output is constant on these images are zeroed (:func:`zero_dead_channels`).
3. **Train** with fake quantization in every step and the straight-through estimator: layers below 8
   bits get their BN-folded weight clipped at ``weight_clip`` standard deviations each step (FAQ's 4.12
   at 4 bits; see ``WEIGHT_CLIP_STD``), 8-bit layers use min/max. First and last weight layer, the
   network input and the last layer's input stay at 8 bits (FAQ; ``first_last_8bit``). SGD with
   momentum 0.9, learning rate decayed exponentially every step from ``lr`` to ``final_lr`` (1e-6), a
   small weight decay on conv/linear weights only, gradient norm clipped. An epoch checkpoint makes a
   run resumable.
4. **BatchNorm is frozen** with the calibrated statistics, and the run trains exactly the deployed
   graph: each conv folded with the frozen statistics (gradients reach the weight, gamma and beta
   through the fold), weights quantized after folding, one conv per layer. At the end statistics and
   ranges are re-estimated from the final weights and kept when they do not lower accuracy on a
   validation subset. The clip is written into the weights, so the plain min/max weight quantizer of
   ``qnas.quant`` (and of the exported ONNX files) reproduces the trained quantizer exactly.
   Optionally (``freeze_bn_at`` > 0) a first part of the run uses BN on batch statistics, folded per
   batch before quantizing, with activation ranges from each batch (the engine's batch mode, as
   GHN-Q scores and Jacob et al. train); statistics and ranges are then re-estimated and frozen.

**Why frozen.** FAQ freezes activation ranges after calibration, and frozen ranges only mean something
with frozen BN statistics (a BN that renormalizes every batch moves each activation relative to its
grid); the engine ties the two as well (a ``Calibration`` freezes both). A GHN-predicted start is
already a calibrated network, and per-batch folding ruins it: nearly dead channels (tiny batch
variance) get huge folded weights that stretch the per-tensor 4-bit range, the first epoch's loss
reached ~800 and W4A4 top-1 ended at 40% after 2 x 5,000 images where the frozen run reached 62.6%
(float-trained GHN, a 28k-parameter candidate). From random initialization the batch-statistics phase
helps instead (66.7% vs 60.0% with ``freeze_bn_at=0.5``): the network needs normalizing while its
weights move far. Training the deployed graph also means no train/deploy mismatch and no batch-size
dependence (Krishnamoorthi 2018 likewise freezes BN statistics for the end of QAT).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qnas import _checks as checks
from qnas.callable_module import make_callable
from qnas.defaults import FAQ
from qnas.errors import QnasError
from qnas.quant import (
    Calibration,
    QuantModel,
    QuantSpec,
    Step,
    calibrate,
    first_last_rule,
    layer_bits,
    percentile,
    prepare,
    with_granularity,
)

__all__ = [
    "FAQConfig",
    "FAQResult",
    "Capture",
    "Hooks",
    "Layout",
    "accuracy",
    "faq_calibration",
    "finetune",
    "init_source",
    "layout",
    "load_params",
    "percentile_for",
    "random_subset",
    "set_bn_stats",
    "weight_clip_for",
]

# FAQ gives 4.12 for 4-bit weights and uses min/max-like ranges at 8 bits. Below 4 bits it gives nothing;
# 2.5 std is an untuned choice between its 4-bit value and the Gaussian-optimal clip for 2 bits (~1.7).
WEIGHT_CLIP_STD: dict[int, float] = {2: 2.5, 3: 3.3, 4: 4.12, 5: 4.12, 6: 4.12, 7: 4.12}
CKPT_FORMAT = "qnas-faq-checkpoint"


def weight_clip_for(bits: int | None) -> float | None:
    """Clip multiple of the standard deviation for ``bits``-bit weights; None: min/max (8 bits, float)."""
    return None if bits is None else WEIGHT_CLIP_STD.get(bits)


def percentile_for(bits: int) -> float:
    """FAQ's calibration percentile: 99.99 at 8-bit points, 99.9 for lower precision."""
    return 99.99 if bits >= 8 else 99.9


@dataclass(frozen=True)
class FAQConfig:
    """One FAQ run. Defaults are sized for a CPU: 2 epochs over a 10,000-image training subset."""

    setting: str = "w4a4"
    # Weight scales, for a setting that does not name them: per output channel (the scoring protocol of
    # `qnas search`, so a candidate is finetuned for the quantizer it was chosen under) or per tensor (FAQ).
    granularity: str = "channel"
    epochs: int = FAQ.epochs
    batch_size: int = FAQ.batch_size
    lr: float = FAQ.lr
    final_lr: float = FAQ.final_lr
    momentum: float = 0.9
    weight_decay: float = FAQ.weight_decay
    first_last_8bit: bool = True  # qnas.quant.first_last_rule at its default (8 bits) or off ("same")
    train_size: int | None = FAQ.train_size  # None: the whole training split
    calib_batches: int = 5
    calib_batch_size: int = 64
    weight_clip: float | None = None  # None: WEIGHT_CLIP_STD by weight bits; 0: no clipping (min/max)
    grad_clip: float | None = 5.0  # max gradient norm (a safety FAQ does not need with pretrained starts)
    freeze_bn_at: float = FAQ.freeze_bn_at  # fraction of the steps on BN batch statistics before freezing (module doc)
    reestimate_bn: bool = True
    augment: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        spec = QuantSpec.parse(self.setting)
        if spec.is_float:
            raise QnasError("FAQ finetunes for a quantized setting such as w4a4, not fp32")
        # The checked values are stored (a numpy integer becomes an int: the config is written as JSON).
        for name in ("epochs", "batch_size", "calib_batches", "calib_batch_size", "train_size"):
            object.__setattr__(self, name, checks.integer(name, getattr(self, name), minimum=1,
                                                          optional=name == "train_size"))
        object.__setattr__(self, "seed", checks.seed("seed", self.seed))
        # NaN and inf pass `>= 0` checks downstream and silently turn every weight into NaN
        for name in ("lr", "final_lr"):
            object.__setattr__(self, name, checks.number(name, getattr(self, name)))
        for name in ("momentum", "weight_decay", "freeze_bn_at", "weight_clip", "grad_clip"):  # 0: none / off
            object.__setattr__(self, name, checks.number(name, getattr(self, name), positive=False,
                                                         optional=name in ("weight_clip", "grad_clip")))
        if not 0 < self.final_lr <= self.lr:
            raise QnasError(f"need 0 < final_lr <= lr, got lr={self.lr}, final_lr={self.final_lr}")
        if not 0.0 <= self.freeze_bn_at <= 1.0:
            raise QnasError(f"freeze_bn_at must be a fraction from 0 to 1, got {self.freeze_bn_at}")
        with_granularity([self.setting], self.granularity)  # a bad granularity is a one-line error

    @property
    def spec(self) -> QuantSpec:
        base = QuantSpec.parse(with_granularity([self.setting], self.granularity)[0])
        return first_last_rule(base, 8 if self.first_last_8bit else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FAQResult:
    """Top-1 accuracies (fractions) before and after, keyed ``fp32`` and the setting's name."""

    setting: str
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]  # one record per epoch: loss, lr, seconds (and eval top-1 if asked)
    ranges: dict[str, tuple[float, float]]  # frozen activation ranges at the end, by quantization point
    bn_reestimated: bool
    reestimation: dict[str, float] = field(default_factory=dict)  # validation top-1 frozen vs re-estimated
    resumed_from_epoch: int = 0
    seconds: float = 0.0


@dataclass
class Hooks:
    """Optional callbacks: progress display and tests (an ``on_epoch`` that raises simulates Ctrl-C)."""

    on_phase: Callable[[str], None] | None = None
    on_step: Callable[[int, int, float], None] | None = None  # (steps done, total steps, loss)
    on_epoch: Callable[[int, dict[str, float]], None] | None = None  # (epochs done, record)


# ---------------------------------------------------------------------------------------------------
# What the engine quantizes, read from its compiled program


@dataclass(frozen=True)
class WeightLayer:
    step: str  # fx node name of the conv/linear (its quantization point when it has one)
    module: str  # qualified module name
    kind: str  # conv | linear
    weight: str  # parameter names
    bias: str
    bn: str  # folded BatchNorm's qualified name, "" when none
    first_last: bool  # first or last weight layer (8 bits with first_last_8bit)


@dataclass(frozen=True)
class QuantPoint:
    name: str  # fx node name keying the activation range
    tail: str  # fx node whose output is quantized (after a fused BatchNorm/ReLU)
    act: str  # "", "relu" or "relu6" fused into the step
    first_last: bool  # network input or input of the last layer (8 bits with first_last_8bit)


@dataclass(frozen=True)
class Layout:
    """The quantization-relevant structure of a traced CNN, as :mod:`qnas.quant` executes it."""

    graph: fx.Graph
    steps: dict[str, Step]  # fx node name -> the engine's step (kind, module, bn, act, quant, ...)
    weights: tuple[WeightLayer, ...]
    points: tuple[QuantPoint, ...]
    env: dict[str, str]  # fx node name -> the step whose value it is (fused nodes alias their step)

    def w_bits(self, spec: QuantSpec, layer: WeightLayer) -> int | None:
        return layer_bits(spec.w_bits, layer.first_last, spec)

    def a_bits(self, spec: QuantSpec, point: QuantPoint) -> int | None:
        return layer_bits(spec.a_bits, point.first_last, spec)


def layout(module: nn.Module) -> tuple[QuantModel, Layout]:
    """Trace ``module`` once; return the engine's executor and the matching :class:`Layout`."""
    try:
        graph = fx.Tracer().trace(module)
    except Exception as exc:  # tracing fails with many exception types
        raise QnasError(f"cannot trace {type(module).__name__} with torch.fx: {' '.join(str(exc).split())}") from None
    qmodel = prepare(module, graph)
    # The engine's compiled program, so the finetuner and the exporter quantize exactly where the engine
    # does (same fusions, same flags).
    program = {s.name: s for s in qmodel.program}
    env: dict[str, str] = {}
    tails: dict[str, str] = {}
    for n in graph.nodes:
        # Nodes fused into an earlier step (its BatchNorm, its ReLU) carry that step's value.
        env[n.name] = n.name if n.name in program else env[n.args[0].name]
        tails[env[n.name]] = n.name
    weights = tuple(
        WeightLayer(step=s.name, module=s.pnames[0].rsplit(".", 1)[0], kind=s.kind, weight=s.pnames[0],
                    bias=s.pnames[1], bn=s.bn_name if s.bn is not None else "", first_last=s.w8)
        for s in qmodel.program if s.kind in ("conv", "linear")
    )
    points = tuple(QuantPoint(name=s.name, tail=tails[s.name], act=s.act, first_last=s.a8)
                   for s in qmodel.program if s.quant)
    return qmodel, Layout(graph, program, weights, points, env)


# ---------------------------------------------------------------------------------------------------
# Parameters


def load_params(module: nn.Module, params: Mapping[str, torch.Tensor]) -> int:
    """Copy predicted tensors into the module's own parameters (shapes must match); returns how many."""
    own = dict(module.named_parameters())
    unknown = sorted(set(params) - set(own))
    if unknown:
        raise QnasError(f"predicted parameters do not belong to this module: {', '.join(unknown[:3])}")
    with torch.no_grad():
        for name, value in params.items():
            if own[name].shape != value.shape:
                raise QnasError(f"predicted {name} has shape {tuple(value.shape)}, the module needs "
                                f"{tuple(own[name].shape)}")
            own[name].copy_(value)
    return len(params)


def _bn_modules(module: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


def set_bn_stats(module: nn.Module, stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Store statistics in the BN buffers, so ``module.eval()`` is the network the engine runs."""
    bns = _bn_modules(module)
    with torch.no_grad():
        for name, (mean, var) in stats.items():
            bns[name].running_mean.copy_(mean)
            bns[name].running_var.copy_(var)


def bn_stats(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The BN buffers as a Calibration's ``bn`` mapping (detached copies)."""
    return {n: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for n, m in _bn_modules(module).items()}


# ---------------------------------------------------------------------------------------------------
# Calibration (FAQ section 3.2)


class Capture(fx.Interpreter):
    """Runs the float network with BN on fixed statistics and keeps the outputs of chosen nodes."""

    def __init__(self, gm: fx.GraphModule, stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 wanted: Mapping[str, str]) -> None:
        super().__init__(gm)
        self.stats, self.wanted = stats, wanted
        self.seen: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            self.seen[self.wanted[n.name]] = out
        return out

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        m = self.fetch_attr(target)
        if isinstance(m, nn.BatchNorm2d):
            mean, var = self.stats[target]
            return F.batch_norm(args[0], mean, var, m.weight, m.bias, False, 0.0, m.eps)
        if isinstance(m, nn.Dropout):
            return args[0]
        return super().call_module(target, args, kwargs)


def faq_calibration(
    qmodel: QuantModel,
    lay: Layout,
    images: torch.Tensor,
    spec: QuantSpec,
    *,
    batch_size: int = 64,
    stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    low_bit_percentile: float | None = None,
) -> Calibration:
    """BN statistics (estimated here unless ``stats`` is given) and percentile activation ranges of the
    float network on normalized ``images``, for frozen evaluation/training at ``spec``
    (``low_bit_percentile`` replaces FAQ's 99.9 for points below 8 bits)."""
    if len(images) == 0:
        raise QnasError("calibration needs at least one image")
    if stats is None:
        stats = calibrate(qmodel, images, batch_size=batch_size).bn
    gm = fx.GraphModule(qmodel, lay.graph)
    capture = Capture(gm, stats, {p.tail: p.name for p in lay.points})
    ranges: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        for chunk in images.split(batch_size):
            capture.seen.clear()
            capture.run(chunk)
            for p in lay.points:
                bits = lay.a_bits(spec, p) or 8  # float points still get a range (unused)
                q = low_bit_percentile if low_bit_percentile is not None and bits < 8 else percentile_for(bits)
                y = capture.seen[p.name]
                lo, hi = percentile(y, 100.0 - q), percentile(y, q)
                old = ranges.get(p.name)
                ranges[p.name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return Calibration(bn=dict(stats), ranges=ranges, num_images=len(images))


def zero_dead_channels(module: nn.Module, lay: Layout, stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Zero the conv weights and BN scale of channels whose output is constant on the calibration
    images (variance ~0: a dead input, common in GHN-predicted nets); returns how many channels.

    BatchNorm maps a constant to beta whatever the weights, so this changes nothing in float; but
    folding divides by sqrt(var + eps) ~ sqrt(eps), which makes such a channel's folded weights ~300x
    larger than the others: a per-tensor weight range then spans them and every other channel of the
    layer rounds to zero at 4 bits. With gamma = 0 the channel stays at beta during training too
    (otherwise BN on batch statistics amplifies its gradients by 1/sqrt(eps) and training diverges).
    """
    zeroed = 0
    with torch.no_grad():
        for layer in lay.weights:
            if not layer.bn or layer.bn not in stats:
                continue
            bn = module.get_submodule(layer.bn)
            dead = stats[layer.bn][1] <= 1e-3 * bn.eps
            if bool(dead.any()):
                module.get_parameter(layer.weight)[dead] = 0.0
                if bn.weight is not None:  # else the fold amplifies their gradients by 1/sqrt(eps)
                    bn.weight[dead] = 0.0
                zeroed += int(dead.sum())
    return zeroed


# ---------------------------------------------------------------------------------------------------
# Weight clipping (FAQ section 3.1.1), in the BN-folded domain the quantizer sees


def _clip_plan(module: nn.Module, lay: Layout, spec: QuantSpec, clip: float | None) -> list[tuple[WeightLayer, float]]:
    plan = []
    for layer in lay.weights:
        k = weight_clip_for(lay.w_bits(spec, layer)) if clip is None else (clip or None)
        if k is not None and lay.w_bits(spec, layer) is not None:
            plan.append((layer, k))
    return plan


def _fold_scale(module: nn.Module, layer: WeightLayer, w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel factor BN folding multiplies the weight by (ones without BN)."""
    shape = (-1, *([1] * (w.dim() - 1)))
    if not layer.bn:
        return torch.ones(w.shape[0], dtype=w.dtype, device=w.device).reshape(shape)
    bn = module.get_submodule(layer.bn)
    s = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.detach()
    return s.reshape(shape)


def _clipped(module: nn.Module, layer: WeightLayer, w: torch.Tensor, k: float,
             per_channel: bool = False) -> torch.Tensor:
    """``w`` clamped so its folded version lies within +-k std of the folded weight (of each output
    channel's folded weights when ``per_channel``, matching per-channel weight scales: one wide channel
    must not set the clip of the others); the bound is constant (no gradient), the clamp passes
    gradients inside the range (straight-through)."""
    s = _fold_scale(module, layer, w)
    folded = (w.detach() * s).reshape(w.shape[0], -1)
    if per_channel:
        if folded.shape[1] < 2:
            return w
        c = k * folded.std(1).reshape(s.shape)
        c = torch.where(c > 0, c, torch.full_like(c, math.inf))
    else:
        c = k * float(folded.std())
        if not c > 0:
            return w
    bound = c / s.abs()  # inf where a channel is folded to zero: nothing to clip
    return torch.clamp(w, -bound, bound)


def _clipped_params(module: nn.Module, plan: list[tuple[WeightLayer, float]],
                    per_channel: bool = False) -> dict[str, torch.Tensor]:
    params = dict(module.named_parameters())
    for layer, k in plan:
        params[layer.weight] = _clipped(module, layer, params[layer.weight], k, per_channel)
    return params


def _bake_clip(module: nn.Module, plan: list[tuple[WeightLayer, float]], per_channel: bool = False) -> None:
    with torch.no_grad():
        for layer, k in plan:
            w = module.get_parameter(layer.weight)
            w.copy_(_clipped(module, layer, w, k, per_channel))


# ---------------------------------------------------------------------------------------------------
# Evaluation


def accuracy(
    qmodel: QuantModel,
    calibration: Calibration,
    spec: QuantSpec | str | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    params: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 256,
) -> float:
    """Top-1 (fraction) at ``spec`` with frozen ``calibration``; ``params`` default to the module's own."""
    cache: dict[str, Any] = {}
    hits = 0
    dev = next(qmodel.parameters()).device  # images may live elsewhere (CPU tensors, a GPU model)
    with torch.inference_mode():
        for xb, yb in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            logits = qmodel(xb.to(dev), spec, calibration, cache=cache, params=params)
            hits += int((logits.argmax(1) == yb.to(dev)).sum())
    return hits / max(len(labels), 1)


# ---------------------------------------------------------------------------------------------------
# The run


def random_subset(n: int, size: int | None, seed: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if size is None else order[: min(size, n)]


def _lr_at(cfg: FAQConfig, step: int, total: int) -> float:
    """Exponential decay from lr (first step) to final_lr (last step)."""
    if total <= 1:
        return cfg.lr
    return cfg.lr * (cfg.final_lr / cfg.lr) ** (step / (total - 1))


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _ranges_tensors(ranges: Mapping[str, tuple[float, float]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in ranges.items()}


def _read_checkpoint(path: Path, identity: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QnasError(f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}); delete it to restart") from None
    if not isinstance(blob, dict) or blob.get("format") != CKPT_FORMAT:
        raise QnasError(f"{str(path)!r} is not a FAQ checkpoint; delete it to restart")
    if blob["identity"] != identity:
        raise QnasError(f"checkpoint {str(path)!r} was made with other settings; delete it or pass --restart")
    return blob


def finetune(
    module: nn.Module,
    dataset: Any,
    config: FAQConfig,
    *,
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    epoch_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    identity: str = "",
    hooks: Hooks | None = None,
    device: str | torch.device = "cpu",
) -> FAQResult:
    """FAQ-finetune ``module`` (its own parameters, e.g. after :func:`load_params`) in place.

    ``dataset``: a ``qnas.data.Dataset`` (uint8 training images). ``eval_data``: normalized images and
    labels for the before/after accuracies (default: the dataset's test set). ``val_data``: images
    that decide whether re-estimated BN statistics are kept (default: 1,000 validation images).
    ``epoch_eval``: if given, top-1 at the setting on these images after every epoch (in ``history``).
    ``checkpoint``: file written after every epoch; an existing one made with the same ``config`` and
    ``identity`` (what else defines the run, e.g. architecture and initialization) is resumed.
    On return the module holds the final weights and its BN buffers the statistics they were trained
    with; ``result.ranges`` are the activation ranges, so ``Calibration(bn_stats(module), ranges)``
    is the deployed model. ``device``: where it runs (e.g. ``cuda``); the module is returned on the CPU.
    """
    from qnas.data import iterate_batches, normalize, val_subset

    hooks = hooks or Hooks()
    phase = hooks.on_phase or (lambda _text: None)
    info = dataset.info
    spec = config.spec
    setting = QuantSpec.parse(config.setting).name
    t_start = time.perf_counter()
    dev = torch.device(device)
    module.to(dev)
    qmodel, lay = layout(module)
    plan = _clip_plan(module, lay, spec, config.weight_clip)
    per_channel = spec.granularity == "channel"
    has_bn = bool(_bn_modules(module))

    idx = random_subset(len(dataset.train_labels), config.train_size, config.seed)
    train_x, train_y = dataset.train_images[idx], dataset.train_labels[idx]
    calib_x = normalize(train_x[: config.calib_batches * config.calib_batch_size], info).to(dev)
    if eval_data is None:
        eval_data = (normalize(dataset.test_images, info), dataset.test_labels)
    steps_per_epoch = math.ceil(len(train_y) / config.batch_size)
    total = steps_per_epoch * config.epochs
    freeze_step = round(config.freeze_bn_at * total) if has_bn else 0

    def recalibrate() -> Calibration:
        """Statistics of the current weights, frozen from here on; the weights clipped in the new fold."""
        cal = faq_calibration(qmodel, lay, calib_x, spec, batch_size=config.calib_batch_size)
        if zero_dead_channels(module, lay, cal.bn):  # their statistics change: estimate them again
            cal = faq_calibration(qmodel, lay, calib_x, spec, batch_size=config.calib_batch_size)
        set_bn_stats(module, cal.bn)
        _bake_clip(module, plan, per_channel)
        return cal

    decay = [p for n, p in module.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in module.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, momentum=config.momentum)

    identity = json.dumps({"config": config.to_dict(), "identity": identity}, sort_keys=True)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    blob = _read_checkpoint(ckpt_path, identity) if ckpt_path is not None else None
    if blob is not None:
        module.load_state_dict(blob["state"])
        opt.load_state_dict(blob["optimizer"])
        ranges = {k: (float(v[0]), float(v[1])) for k, v in blob["ranges"].items()}
        calibration = Calibration(bn=bn_stats(module), ranges=ranges, num_images=len(calib_x))
        before, history = json.loads(blob["before"]), json.loads(blob["history"])
        start_epoch, elapsed = int(blob["epoch"]), float(blob["seconds"])
        phase(f"resuming after epoch {start_epoch}")
    else:
        phase("calibrating")
        calibration = recalibrate()  # the start is the calibrated, clipped network (FAQ's PTQ point)
        phase("evaluating the start")
        before = {"fp32": accuracy(qmodel, calibration, None, *eval_data),
                  setting: accuracy(qmodel, calibration, spec, *eval_data)}
        history, start_epoch, elapsed = [], 0, 0.0
    resumed_from = start_epoch

    def save(epoch: int) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic({"format": CKPT_FORMAT, "identity": identity, "epoch": epoch, "state": module.state_dict(),
                      "optimizer": opt.state_dict(), "ranges": _ranges_tensors(calibration.ranges),
                      "before": json.dumps(before), "history": json.dumps(history),
                      "seconds": elapsed + time.perf_counter() - t_start}, ckpt_path)

    if blob is None:
        save(0)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        phase(f"epoch {epoch + 1}/{config.epochs}")
        t0, loss_sum, n_batches = time.perf_counter(), 0.0, 0
        batches = iterate_batches(train_x, train_y, config.batch_size, seed=config.seed + 1 + epoch, info=info,
                                  shuffle=True, augment=config.augment)
        for xb, yb in batches:
            xb, yb = xb.to(dev), yb.to(dev)
            if step == freeze_step and step > 0:
                phase("freezing BatchNorm statistics and activation ranges")
                calibration = recalibrate()
            lr = _lr_at(config, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            # Before freeze_step: BN on batch statistics, folded per batch, activation ranges per batch.
            frozen = calibration if step >= freeze_step else None
            logits = qmodel(xb, spec, frozen, params=_clipped_params(module, plan, per_channel))
            loss = F.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                raise QnasError(f"training diverged at step {step} (loss {float(loss.detach())}); try a lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            opt.step()
            step += 1
            loss_sum += float(loss.detach())
            n_batches += 1
            if hooks.on_step is not None:
                hooks.on_step(step, total, float(loss.detach()))
        record = {"epoch": epoch + 1, "loss": loss_sum / max(n_batches, 1), "lr": lr,
                  "seconds": time.perf_counter() - t0}
        if epoch_eval is not None:
            with torch.no_grad():
                clipped = _clipped_params(module, plan, per_channel)
                current = calibration
                if step < freeze_step:  # still on batch statistics: the deployed model needs its own
                    current = faq_calibration(qmodel, lay, calib_x, spec, batch_size=config.calib_batch_size)
            record[f"top1_{setting}"] = accuracy(qmodel, current, spec, *epoch_eval, params=clipped)
        history.append(record)
        save(epoch + 1)
        if hooks.on_epoch is not None:
            hooks.on_epoch(epoch + 1, record)

    _bake_clip(module, plan, per_channel)
    reestimation: dict[str, float] = {}
    kept = False
    if has_bn and freeze_step >= total:  # trained on batch statistics throughout: estimate them now
        calibration, kept = recalibrate(), True
    elif has_bn and config.reestimate_bn:
        phase("re-estimating BatchNorm statistics")
        if val_data is None:
            val_data = val_subset(dataset, min(1000, len(dataset.val_labels)), seed=config.seed)
        frozen_state = {k: v.clone() for k, v in module.state_dict().items()}
        old_acc = accuracy(qmodel, calibration, spec, *val_data)
        new = recalibrate()
        new_acc = accuracy(qmodel, new, spec, *val_data)
        reestimation = {"val_top1_frozen": old_acc, "val_top1_reestimated": new_acc}
        if new_acc >= old_acc:
            calibration, kept = new, True
        else:
            module.load_state_dict(frozen_state)
    phase("evaluating the result")
    after = {"fp32": accuracy(qmodel, calibration, None, *eval_data),
             setting: accuracy(qmodel, calibration, spec, *eval_data)}
    seconds = elapsed + time.perf_counter() - t_start
    module.cpu()
    return FAQResult(setting=setting, before=before, after=after, history=history, ranges=dict(calibration.ranges),
                     bn_reestimated=kept, reestimation=reestimation, resumed_from_epoch=resumed_from,
                     seconds=seconds)


# ---------------------------------------------------------------------------------------------------
# Studies: choosing candidates, running them, recording the results


def study_trial(study: Any, number: int) -> Any:
    """A completed, feasible trial of ``study`` by number (QnasError otherwise)."""
    from optuna.trial import TrialState

    from qnas.study import StudyAttrs, TrialAttrs

    trials = study.get_trials(deepcopy=False)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        span = f"0-{len(trials) - 1}" if trials else "none"
        raise QnasError(f"study {study.study_name!r} has no trial {number} (trials: {span})")
    if found.state != TrialState.COMPLETE:
        raise QnasError(f"trial {number} of study {study.study_name!r} is {found.state.name.lower()}, not complete")
    attrs = TrialAttrs.of(found)
    if attrs.infeasible or any(v > 0 for v in (found.constraints or {}).values()):
        bound = StudyAttrs.from_attrs(study.user_attrs).max_params
        raise QnasError(f"trial {number} is infeasible ({'?' if attrs.params is None else attrs.params} parameters, "
                        f"over the study's bound {'?' if bound is None else bound})")
    if attrs.genome is None:
        raise QnasError(f"trial {number} has no genome attribute (not made by `qnas search`)")
    return found


def choose_trials(study: Any, trials: list[int] | None = None, top_k: int | None = None) -> list[Any]:
    """Trials by number, or the ``top_k`` most accurate (at the study's target) distinct architectures
    of the Pareto front, then of the other feasible trials."""
    from qnas.study import TrialAttrs, pareto_front

    if trials:
        return [study_trial(study, n) for n in dict.fromkeys(trials)]
    front = pareto_front(study)
    if not front:
        raise QnasError(f"study {study.study_name!r} has no completed feasible trials")
    rest = [t for t in study.get_trials(deepcopy=False) if t.values is not None and t not in front
            and t.state.name == "COMPLETE" and not TrialAttrs.of(t).infeasible
            and all(v <= 0 for v in (t.constraints or {}).values())]
    chosen, seen = [], set()
    def best_first(ts: list[Any]) -> list[Any]:
        return sorted(ts, key=lambda t: (-t.values[0], t.values[1]))

    for t in best_first(front) + best_first(rest):
        attrs = TrialAttrs.of(t)
        if attrs.arch in seen or attrs.genome is None:
            continue
        seen.add(attrs.arch)
        chosen.append(t)
        if len(chosen) == (top_k or 3):
            break
    return chosen


def resolve_predictor(name: str | None, study: Any, info: Any) -> Any:
    """``--predictor`` or the one the study was searched with (its name, when it can be loaded)."""
    from qnas.predictors import default_predictor, load_predictor
    from qnas.study import StudyAttrs

    candidates = [name] if name else [StudyAttrs.from_attrs(study.user_attrs).predictor, default_predictor(info.name)]
    errors = []
    for c in candidates:
        if not c:
            continue
        try:
            return load_predictor(c, dataset=info.name, input_shape=info.input_shape, num_classes=info.num_classes)
        except QnasError as exc:
            if name:
                raise
            errors.append(str(exc))
    raise QnasError("no predictor for GHN initialization: pass --predictor NAME|PATH.pt (or --init random)"
                    + (f" ({errors[0]})" if errors else ""))


def initial_module(space: Any, genome: Any, info: Any, init: str, predictor: Any, setting: str,
                   seed: int = 0) -> tuple[nn.Module, str]:
    """The candidate with its starting parameters: the predictor's for ``setting`` (``init="ghn"``) or
    PyTorch's default initialization drawn from ``seed`` (``init="random"``); and a description."""
    source = init_source(init, predictor, seed)  # a bad --init fails before building
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = space.build(genome, tuple(info.input_shape), info.num_classes)
    if init == "ghn":
        with torch.no_grad():
            load_params(module, predictor.predict(module, setting))
    return module, source


def init_source(init: str, predictor: Any, seed: int = 0) -> str:
    """How :func:`initial_module` describes the start it gives (recorded with each finetuned run)."""
    if init == "random":
        return f"random init (seed {seed})"
    if init != "ghn":
        raise QnasError(f"unknown --init {init!r} (choose ghn or random)")
    if predictor is None:
        raise QnasError("--init ghn needs a predictor (pass --predictor NAME|PATH.pt, or --init random)")
    return f"GHN-predicted ({predictor.header.name})"


def record_path(root: Path, study: str, trial: int) -> Path:
    return Path(root) / study / "finetune" / f"{trial}.json"


# What readers of a run use (finetune_trial, the `qnas finetune` table, export_trial), by JSON type.
_RUN_FIELDS: dict[str, tuple[type, ...]] = {
    "setting": (str,), "source": (str,), "weights": (str,), "config": (dict,), "before": (dict,), "after": (dict,),
    "ranges": (dict,), "seconds": (int, float), "test_images": (int,),
}


def _record_problem(record: Any) -> str | None:
    """What is wrong with the shape of a finetune record (None when it is usable)."""
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    runs = record.get("runs", {})
    if not isinstance(runs, dict):
        return f"'runs' must be an object, found {type(runs).__name__}"
    for setting, run in runs.items():
        if not isinstance(run, dict):
            return f"runs[{setting!r}] must be an object, found {type(run).__name__}"
        for key, types in _RUN_FIELDS.items():
            # bool is an int: `"seconds": true` is as wrong as a string
            if not isinstance(run.get(key), types) or isinstance(run.get(key), bool):
                return f"runs[{setting!r}] lacks {key!r} or it has the wrong type"
        if run["setting"] != setting:
            return f"runs[{setting!r}] is recorded for setting {run['setting']!r}"
        if Path(run["weights"]).name != run["weights"] or run["weights"] in ("", ".", ".."):
            return f"runs[{setting!r}].weights must be a file name beside the record, got {run['weights']!r}"
        for key in ("before", "after"):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in run[key].values()):
                return f"runs[{setting!r}].{key} must map settings to accuracies"
            if setting not in run[key] or "fp32" not in run[key]:
                return f"runs[{setting!r}].{key} lacks fp32 or {setting}"
        if not all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                for x in v) for v in run["ranges"].values()):
            return f"runs[{setting!r}].ranges must map quantization points to [low, high]"
    return None


def read_record(path: Path) -> dict[str, Any]:
    """The finetune record at ``path`` (``{}`` when there is none); QnasError naming the file when it is not
    valid JSON or not shaped like the records :func:`finetune_trial` writes."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QnasError(f"{str(path)!r} is not valid JSON ({exc.msg}); delete it to finetune again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QnasError(f"cannot read {str(path)!r} ({getattr(exc, 'strerror', None) or exc}); delete it to "
                        "finetune again") from None
    problem = _record_problem(record)
    if problem is not None:
        raise QnasError(f"{str(path)!r} is not a qnas finetune record ({problem}); delete it to finetune again")
    return record


def _config_differences(run: Mapping[str, Any], config: FAQConfig, init: str, source: str) -> list[str]:
    """The settings of ``run`` (a recorded run) that differ from the ones requested now, as ``name old -> new``."""
    wanted = json.loads(json.dumps(config.to_dict()))  # as the record stores it (tuples become lists)
    stored = run["config"]
    # a field missing from an older record cannot be compared: it does not count as a difference
    out = [f"{k} {stored[k]!r} -> {v!r}" for k, v in wanted.items() if k in stored and stored[k] != v]
    if run.get("init", init) != init:
        out.insert(0, f"init {run['init']!r} -> {init!r}")
    elif run["source"] != source and init == "ghn":  # the same --init from another predictor
        out.insert(0, f"start {run['source']!r} -> {source!r}")
    return out


def finetune_trial(
    study: Any,
    trial: Any,
    *,
    config: FAQConfig,
    dataset: Any,
    init: str = "ghn",
    predictor: Any = None,
    root: Path = Path("studies"),
    test_size: int | None = None,
    restart: bool = False,
    hooks: Hooks | None = None,
) -> dict[str, Any]:
    """FAQ-finetune one trial's architecture; writes ``<root>/<study>/finetune/<trial>.json`` (results
    per setting) and the final weights beside it, and the study user attribute
    ``finetune_<trial>_<setting>`` (Optuna does not allow changing a finished trial's attributes): the
    report's summary, the latest run wherever its files went. Returns the run's record (with
    ``replaced_summary``, the record file the summary named before, when that was another file); a run
    already recorded is returned as it is unless ``restart``."""
    from safetensors.torch import save

    from qnas.study import StudyAttrs, StudyKey, TrialAttrs
    from search_spaces import get_space

    setting = QuantSpec.parse(config.setting).name
    path = record_path(root, study.study_name, trial.number)
    record = read_record(path)
    done = record.get("runs", {}).get(setting)
    if done is not None and not restart:
        # a result made with other settings is not the one asked for: never hand it back silently
        differ = _config_differences(done, config, init, init_source(init, predictor, config.seed))
        if differ:
            raise QnasError(f"trial {trial.number} was finetuned at {setting} with other settings "
                            f"({', '.join(differ)}); --restart to redo")
        return {**done, "skipped": True}
    info, attrs = StudyAttrs.from_attrs(study.user_attrs), TrialAttrs.of(trial)
    space = get_space(info.space)
    genome = space.from_json(attrs.genome)
    module, source = initial_module(space, genome, dataset.info, init, predictor, setting, config.seed)
    ckpt = path.with_name(f"{trial.number}-{setting}.ckpt.pt")
    if restart and ckpt.exists():
        ckpt.unlink()
    eval_n = len(dataset.test_labels) if test_size is None else min(test_size, len(dataset.test_labels))
    from qnas.data import normalize

    eval_data = (normalize(dataset.test_images[:eval_n], dataset.info), dataset.test_labels[:eval_n])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QnasError(f"cannot write to {str(path.parent)!r}: {exc.strerror or exc}") from None
    identity = json.dumps({"arch": attrs.arch, "source": source})
    result = finetune(module, dataset, config, eval_data=eval_data, checkpoint=ckpt, identity=identity, hooks=hooks)
    weights = path.with_name(f"{trial.number}-{setting}.safetensors")
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    weights.write_bytes(save(state, metadata={"format": "qnas-faq", "setting": setting,
                                              "arch": str(attrs.arch)}))
    run = {"setting": setting, "spec": config.spec.name, "init": init, "source": source,
           "config": config.to_dict(), "before": result.before, "after": result.after, "history": result.history,
           "ranges": {k: list(v) for k, v in result.ranges.items()}, "bn_reestimated": result.bn_reestimated,
           "reestimation": result.reestimation, "resumed_from_epoch": result.resumed_from_epoch,
           "seconds": result.seconds, "test_images": eval_n, "weights": weights.name,
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    record = read_record(path)  # another process may have added another setting meanwhile
    record.update({"study": study.study_name, "trial": trial.number, "arch": attrs.arch, "genome": attrs.genome,
                   "space": info.space, "dataset": dataset.info.name, "params": attrs.params, "macs": attrs.macs})
    record.setdefault("runs", {})[setting] = run
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    ckpt.unlink(missing_ok=True)
    summary = {"init": init, "epochs": config.epochs, "seconds": round(result.seconds, 1), "file": str(path.resolve()),
               **{f"top1_{k}_before": v for k, v in result.before.items()},
               **{f"top1_{k}_after": v for k, v in result.after.items()}}
    key = StudyKey.finetune(trial.number, setting)
    previous = study.user_attrs.get(key)
    study.set_user_attr(key, summary)
    if isinstance(previous, dict) and previous.get("file") not in (None, summary["file"]):
        # the study keeps one summary per trial and setting (the report's): say which run it no longer shows
        return {**run, "replaced_summary": previous["file"]}
    return run


# `qnas.finetune(...)` calls the API function qnas.api.finetune; the module's own names stay reachable.
make_callable(__name__)
