"""The quantized executor: :class:`QuantModel` runs a compiled program at any setting; calibration.

**BatchNorm statistics.** Without a calibration (``calibration=None``) each batch normalizes with its own
statistics, as GHN-Q scores GHN-predicted parameters (test batch 64): a conv followed by BatchNorm is run
once with float weights on its (quantized) input to get the batch mean/variance, the folded weights are
quantized and the conv is run again; activation ranges are the batch's min/max. With a
:class:`Calibration` (:func:`calibrate`: statistics and ranges of the float network on a few calibration
batches) everything is frozen, as a deployed int8 model runs (post-training quantization): one conv per
layer, and under ``torch.inference_mode`` with a ``cache`` the quantized weights are computed once per
setting, with the output quantizer's 1/scale folded into them, so an activation costs round, clamp (which
is also the ReLU) and rescale.

The executor ignores ``train()``/``eval()``: BatchNorm behaviour is chosen by ``calibration`` alone,
running statistics are never read or updated, and Dropout is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qnas.errors import QnasError
from qnas.quant._fake import act_range, channel_stats, f32, fake_quantize, fold_bn, minmax, qparams, quantize_weight
from qnas.quant._program import Ref, Step, compile_program
from qnas.quant._spec import QuantSpec, layer_bits

__all__ = ["Calibration", "QuantModel", "calibrate", "calibrate_with_logits", "channels_last_unsafe", "prepare"]


@dataclass(frozen=True)
class Calibration:
    """Frozen statistics of the float network on calibration images.

    ``bn``: BatchNorm module name -> (mean, biased variance) of its input, pooled over all images;
    ``ranges``: quantization point (fx node name) -> (min, max) of the activation there, the mean over
    calibration batches of each batch's min and max (like a moving-average min/max observer). A global
    min/max would widen with the number of images and cost accuracy at low bits (docs/scoring.md), while the
    mean of batch ranges matches what batch statistics see. Both are recorded in one pass, each batch normalized
    with its own statistics.
    """

    bn: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ranges: Mapping[str, tuple[float, float]]
    num_images: int


class _Recorder:
    """Accumulates BN statistics (pooled over batches, float64) and per-batch activation min/max."""

    def __init__(self) -> None:
        self.moments: dict[str, list[Any]] = {}
        self.ranges: dict[str, list[float]] = {}  # name -> [sum of batch minima, sum of maxima, batches]
        self.images = 0

    def bn(self, name: str, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        mean, var = mean.detach().double(), var.detach().double()
        acc = self.moments.setdefault(name, [0, torch.zeros_like(mean), torch.zeros_like(mean)])
        acc[0] += count
        acc[1] += count * mean
        acc[2] += count * (var + mean.square())

    def range(self, name: str, lo: float, hi: float) -> None:
        acc = self.ranges.setdefault(name, [0.0, 0.0, 0])
        acc[0] += lo
        acc[1] += hi
        acc[2] += 1

    def result(self) -> Calibration:
        bn = {}
        for name, (n, s1, s2) in self.moments.items():
            mean = s1 / n
            bn[name] = (mean.float(), (s2 / n - mean.square()).clamp_(min=0).float())
        ranges = {name: (lo / n, hi / n) for name, (lo, hi, n) in self.ranges.items()}
        return Calibration(MappingProxyType(bn), MappingProxyType(ranges), self.images)


# ---------------------------------------------------------------------------------------------------
# The executor


@dataclass
class _Ctx:
    spec: QuantSpec
    calibration: Calibration | None
    cache: dict[Any, Any] | None  # (spec, step name) -> (weight, bias, requantization or None)
    generator: torch.Generator | None
    record: _Recorder | None
    channels_last: bool
    inplace: bool  # no autograd: fresh tensors may be overwritten
    params: Mapping[str, torch.Tensor] | None

    def tensors(self, step: Step) -> tuple[Any, Any, Any, Any]:
        """(weight, bias, BN weight, BN bias) of a step, from ``params`` where given."""
        m, bn, p = step.module, step.bn, self.params
        own = (getattr(m, "weight", None), getattr(m, "bias", None),
               getattr(bn, "weight", None), getattr(bn, "bias", None))
        if p is None:
            return own
        return tuple(p.get(name, t) if name else t for name, t in zip(step.pnames, own, strict=True))  # type: ignore[return-value]

    def w_bits(self, step: Step) -> int | None:
        return layer_bits(self.spec.w_bits, step.w8, self.spec)

    def a_bits(self, step: Step) -> int | None:
        if not step.quant:
            return None
        return layer_bits(self.spec.a_bits, step.a8, self.spec)

    def calibrated_range(self, name: str) -> tuple[float, float]:
        assert self.calibration is not None
        try:
            return self.calibration.ranges[name]
        except KeyError:
            raise QnasError(f"calibration has no range for {name!r}: calibrate this model") from None

    def calibrated_bn(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.calibration is not None
        try:
            return self.calibration.bn[name]
        except KeyError:
            raise QnasError(f"calibration has no statistics for BatchNorm {name!r}: calibrate this model") from None


def channels_last_unsafe(conv: nn.Conv2d) -> bool:
    """A conv whose channels_last backward corrupts memory in PyTorch 2.13 on CPU (1x1, strided, fewer than 8
    input channels: a 4-channel ResNet shortcut aborted predictor training); run it another way."""
    return (conv.kernel_size == (1, 1) and conv.stride != (1, 1) and conv.in_channels < 8
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1))


def _apply_act(y: torch.Tensor, act: str, inplace: bool) -> torch.Tensor:
    if act == "relu":
        return F.relu_(y) if inplace else F.relu(y)
    if act == "relu6":
        return F.hardtanh(y, 0.0, 6.0, inplace=inplace)
    return y


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last. A 1-channel NCHW image is also NHWC, but torch then picks NCHW for the conv
    output (and the whole net); explicit NHWC strides make the first conv produce NHWC."""
    if x.dim() != 4:
        return x
    if x.shape[1] == 1 and x.is_contiguous():
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def _ref_value(env: dict[str, Any]) -> Callable[[Any], Any]:
    return lambda a: env[a.name] if isinstance(a, Ref) else a


class QuantModel(nn.Module):
    """A traced CNN that runs at any :class:`QuantSpec`; made by :func:`prepare`.

    It holds the original module's children (shared, not copied), so ``named_parameters()`` has exactly
    the original keys and ``torch.func.functional_call(qmodel, params, (x, spec))`` takes a dict keyed
    like ``module.named_parameters()``.
    """

    def __init__(self, module: nn.Module, graph: fx.Graph | None = None) -> None:
        super().__init__()
        program = compile_program(module, graph)
        for name, child in module.named_children():
            self.add_module(name, child)
        for name, p in module.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in module.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self._program = program
        self._steps = {s.name: s for s in program}
        self._source = type(module).__name__

    def extra_repr(self) -> str:
        return f"source={self._source}, steps={len(self._program)}"

    @property
    def program(self) -> tuple[Step, ...]:
        """The compiled program, in execution order (read-only): what finetuning and export read to
        quantize exactly where this executor does."""
        return self._program

    def shapes(self, x: torch.Tensor, calibration: Calibration | None = None) -> dict[str, tuple[int, ...]]:
        """Shape of every step's tensor value (by step name; sizes and other numbers left out) when the
        float network runs on ``x``, with BatchNorm on ``calibration``'s statistics (None: the batch's)."""
        shapes: dict[str, tuple[int, ...]] = {}
        with torch.no_grad():
            self(x, None, calibration, channels_last=False, _shapes=shapes)
        return shapes

    @property
    def quant_points(self) -> list[str]:
        """Names of the activation quantization points, in execution order."""
        return [s.name for s in self._program if s.quant]

    @property
    def bn_names(self) -> list[str]:
        """Qualified names of the BatchNorm layers (folded or standalone)."""
        return [s.bn_name for s in self._program if s.bn is not None or s.kind == "bn"]

    def forward(
        self,
        x: torch.Tensor,
        spec: QuantSpec | str | None = None,
        calibration: Calibration | None = None,
        *,
        cache: dict | None = None,
        generator: torch.Generator | None = None,
        channels_last: bool = True,
        params: Mapping[str, torch.Tensor] | None = None,
        _record: _Recorder | None = None,
        _shapes: dict[str, tuple[int, ...]] | None = None,
        taps: Mapping[str, list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Logits of ``x`` at ``spec`` (default FP32).

        ``calibration=None``: BatchNorm on batch statistics, activation ranges from each batch.
        ``cache``: a dict reused across calls to keep folded, quantized weights per setting (used only
        with grad disabled and ``sim`` mode; the caller guarantees parameters and calibration do not
        change). With a calibration, cached layers also fold the output quantizer's 1/scale into their
        weights: equal to the uncached path up to float rounding.
        ``generator``: randomness of ``noise`` mode. ``channels_last``: run convs in NHWC (faster on CPU).
        ``params``: tensors by ``named_parameters()`` name used instead of the module's own (missing
        names fall back to them): the same as ``torch.func.functional_call`` without its per-call cost.
        ``taps``: step name -> a list each call appends that step's value to, as this setting computes it
        (quantized where the step quantizes); how a head is fitted on a network's own features.
        """
        ctx = _Ctx(QuantSpec.parse(spec), calibration, cache, generator, _record, channels_last,
                   inplace=not torch.is_grad_enabled(), params=params)
        env: dict[str, Any] = {}
        value = _ref_value(env)
        for step in self._program:
            kind = step.kind
            if kind == "conv" or kind == "linear":
                y = self._weight_layer(step, env[step.inputs[0]], ctx)
            elif kind == "call":
                out = step.fn(*fx.node.map_aggregate(step.args, value),  # type: ignore[misc]
                              **fx.node.map_aggregate(step.kwargs, value))
                y = self._activation(step, out, ctx, fresh=True) if step.quant or step.act else out
            elif kind == "input":
                y = self._activation(step, _nhwc(x) if channels_last else x, ctx, fresh=False)
            elif kind == "relu":
                y = self._activation(step, env[step.inputs[0]], ctx, fresh=False)
            elif kind == "bn":
                y = self._activation(step, self._batchnorm(step, env[step.inputs[0]], ctx), ctx, fresh=True)
            else:  # output
                return fx.node.map_aggregate(step.args, value)
            env[step.name] = y
            if _shapes is not None and isinstance(y, torch.Tensor):
                _shapes[step.name] = tuple(y.shape)
            if taps is not None and step.name in taps:
                taps[step.name].append(y.clone() if ctx.inplace else y)  # later in-place steps must not touch it
            for name in step.free:
                del env[name]
        raise AssertionError("program without output")

    # -- steps ------------------------------------------------------------------------------------

    def _activation(self, step: Step, y: torch.Tensor, ctx: _Ctx, fresh: bool) -> torch.Tensor:
        """The step's ReLU (if fused) and activation quantization; ``fresh``: y is ours to overwrite."""
        bits = ctx.a_bits(step)
        if bits is None:
            y = _apply_act(y, step.act, ctx.inplace and fresh)
            if ctx.record is not None and step.quant:
                ctx.record.range(step.name, *minmax(y))
            return y
        if ctx.calibration is not None:
            lo, hi = ctx.calibrated_range(step.name)
        else:
            # With a fused activation the quantizer's clamp at 0 (and 6) is the activation itself.
            lo, hi = act_range(y, ctx.spec.act_percentile(bits), relu=bool(step.act))
            if step.act == "relu6":
                hi = min(hi, 6.0)
            if ctx.record is not None:
                ctx.record.range(step.name, lo, hi)
        scale, zp = qparams(lo, hi, bits)
        noise = ctx.spec.mode == "noise"
        if step.act and (noise or (step.act == "relu6" and ((1 << bits) - 1 - zp) * scale > 6.0)):
            # NoiseQuant's clamp reaches half a step below 0, and a ReLU6 range may reach past 6.
            y = _apply_act(y, step.act, ctx.inplace and fresh)
            fresh = True
        if ctx.inplace and fresh and not noise:
            return y.mul_(f32(1.0 / scale)).round_().clamp_(-zp, (1 << bits) - 1 - zp).mul_(scale)
        return fake_quantize(y, scale, zp, bits, noise=noise, generator=ctx.generator)

    def _conv(self, step: Step, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
              ctx: _Ctx) -> torch.Tensor:
        m = step.module
        if step.kind == "linear":
            return F.linear(x, w, b)
        assert isinstance(m, nn.Conv2d)
        if ctx.channels_last and channels_last_unsafe(m):  # the same products: a 1x1 conv of the subsampled input
            y = F.conv2d(x[:, :, :: m.stride[0], :: m.stride[1]], w, b, 1, 0, 1, m.groups)
        else:
            y = m._conv_forward(x, w, b)
        # A 1-channel image is both NCHW and NHWC, so the first conv would choose NCHW for the whole net.
        return y.contiguous(memory_format=torch.channels_last) if ctx.channels_last else y

    def _weight_layer(self, step: Step, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        key = (ctx.spec, step.name)
        cached = ctx.cache.get(key) if ctx.cache is not None else None
        if cached is not None:
            w, b, requant = cached
            y = self._conv(step, x, w, b, ctx)
            if requant is None:
                return self._activation(step, y, ctx, fresh=True)
            qlo, qhi, scale = requant
            y = y.round_().clamp_(qlo, qhi)
            return y if step.int_out else y.mul_(scale)  # int_out: the readers' weights carry the scale

        m, bn = step.module, step.bn
        assert m is not None
        w, b, gamma, beta = ctx.tensors(step)
        bits = ctx.w_bits(step)
        noise = ctx.spec.mode == "noise"
        if bn is not None and ctx.calibration is None:
            # Batch statistics: a float pass gives this batch's mean/variance (GHN-Q), then fold.
            y = self._conv(step, x, w, b, ctx)
            if bits is None and ctx.record is None:
                y = F.batch_norm(y, None, None, gamma, beta, True, 0.0, bn.eps)
                return self._activation(step, y, ctx, fresh=True)
            mean, var = channel_stats(y)
            if ctx.record is not None:
                ctx.record.bn(step.bn_name, mean, var, y.numel() // y.shape[1])
            if bits is None:
                y = F.batch_norm(y, mean, var, gamma, beta, False, 0.0, bn.eps)
                return self._activation(step, y, ctx, fresh=True)
            w, b = fold_bn(w, b, gamma, beta, mean, var, bn.eps)
            w = quantize_weight(w, bits, granularity=ctx.spec.granularity, symmetric=ctx.spec.weight_symmetric(bits),
                                noise=noise, generator=ctx.generator)
            return self._activation(step, self._conv(step, x, w, b, ctx), ctx, fresh=True)

        if bn is not None:
            w, b = fold_bn(w, b, gamma, beta, *ctx.calibrated_bn(step.bn_name), bn.eps)
        if bits is not None:
            w = quantize_weight(w, bits, granularity=ctx.spec.granularity, symmetric=ctx.spec.weight_symmetric(bits),
                                noise=noise, generator=ctx.generator)
        if ctx.cache is None or not ctx.inplace or noise or ctx.record is not None:
            return self._activation(step, self._conv(step, x, w, b, ctx), ctx, fresh=True)
        # Inference with frozen ranges, as integer kernels run: fold the output quantizer's 1/scale into
        # the weights, so an activation costs round + clamp (the clamp at the zero point is the ReLU) +
        # rescale, and the rescale too moves into the weights of the layers reading it when all are
        # convs/linears. Equal to the uncached path up to float rounding.
        a_bits = ctx.a_bits(step)
        requant = None
        source = ctx.cache.get((ctx.spec, step.inputs[0]))
        if source is not None and source[2] is not None and self._steps[step.inputs[0]].int_out:
            w = w * source[2][2]  # the integer input's scale
        if a_bits is not None and ctx.calibration is not None and step.act != "relu6":
            scale, zp = qparams(*ctx.calibrated_range(step.name), a_bits)
            inv = f32(1.0 / scale)
            w, b = w * inv, (b * inv if b is not None else None)
            requant = (-zp, (1 << a_bits) - 1 - zp, scale)
        if ctx.channels_last and w.dim() == 4:  # else the conv converts the weight on every call
            w = w.contiguous(memory_format=torch.channels_last)
        ctx.cache[key] = (w, b, requant)
        return self._weight_layer(step, x, ctx)

    def _batchnorm(self, step: Step, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        bn = step.module
        assert isinstance(bn, nn.BatchNorm2d)
        gamma, beta = ctx.tensors(step)[:2]
        if ctx.calibration is not None:
            mean, var = ctx.calibrated_bn(step.bn_name)
        elif ctx.record is None:
            return F.batch_norm(x, None, None, gamma, beta, True, 0.0, bn.eps)
        else:
            mean, var = channel_stats(x)
            ctx.record.bn(step.bn_name, mean, var, x.numel() // x.shape[1])
        return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, bn.eps)


def prepare(module: nn.Module, graph: fx.Graph | None = None) -> QuantModel:
    """Trace ``module`` once (torch.fx) into a :class:`QuantModel` sharing its parameters.

    Supported: Conv2d (any groups/dilation/stride), BatchNorm2d, Linear, ReLU/ReLU6, hard-swish, SiLU,
    max/avg/adaptive pooling, mean, flatten/reshape, add, cat, Dropout (identity). Anything else raises
    QnasError naming it.
    Tracing costs milliseconds; callers scoring one architecture many times should keep the result.
    ``graph``: an ``fx.Graph`` already traced from ``module`` (e.g. by ``qnas.graph``), to skip tracing.
    """
    return QuantModel(module, graph)


def _call(model: QuantModel, params: Mapping[str, torch.Tensor] | None, x: torch.Tensor,
          **kwargs: Any) -> torch.Tensor:
    return model(x, params=params, **kwargs)


def calibrate(
    model: QuantModel,
    images: torch.Tensor,
    *,
    spec: QuantSpec | str | None = None,
    params: Mapping[str, torch.Tensor] | None = None,
    batch_size: int = 64,
    channels_last: bool = True,
    generator: torch.Generator | None = None,
) -> Calibration:
    """BN statistics (pooled over batches of ``batch_size``) and activation min/max on ``images``
    (normalized float, N x C x H x W), for frozen evaluation: ``model(x, spec, calibration)``.

    ``spec=None`` measures the float network (classic post-training quantization: every setting then
    uses the float statistics). A setting measures the network quantized at that setting, each layer
    seeing the quantized outputs of the layers before it (BatchNorm re-estimation, what batch
    statistics do per batch), valid for that setting only."""
    return calibrate_with_logits(model, images, spec, params, batch_size, channels_last, generator)[0]


def calibrate_with_logits(model: QuantModel, images: torch.Tensor, spec: QuantSpec | str | None,
               params: Mapping[str, torch.Tensor] | None, batch_size: int, channels_last: bool,
               generator: torch.Generator | None = None) -> tuple[Calibration, list[torch.Tensor]]:
    """:func:`calibrate`, also returning the logits of each calibration batch (batch statistics)."""
    if len(images) == 0:
        raise QnasError("calibration needs at least one image")
    recorder = _Recorder()
    logits = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            logits.append(_call(model, params, chunk, spec=spec, calibration=None, channels_last=channels_last,
                                generator=generator, _record=recorder))
            recorder.images += len(chunk)
    return recorder.result(), logits
