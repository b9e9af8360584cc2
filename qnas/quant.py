"""Fake quantization, BatchNorm folding and a quantized executor for any traceable CNN.

    spec = QuantSpec.parse("w4a8")
    qmodel = prepare(module)                  # trace once per architecture; same parameter names
    logits = qmodel(x, spec)                  # BatchNorm on batch statistics (GHN-Q), differentiable
    logits = torch.func.functional_call(qmodel, params, (x, spec))   # external parameters (a GHN's)
    logits = qmodel(x, spec, params=params)   # the same, without functional_call's per-call cost
    calib = calibrate(qmodel, images, params=params)
    logits = qmodel(x, spec, calib)           # frozen BN statistics and activation ranges (int8-like)

**Quantizer** (GHN-Q: tensorwise, asymmetric, uniform, absolute min/max ranges; per output channel
for weights with ``-channel``; activation ranges at 2 bits from the 99.5th percentile, see
``LOW_BIT_ACT_PERCENTILE``; weights symmetric where :meth:`QuantSpec.weight_symmetric` says so, see
below). A tensor with range
``[lo, hi]`` is widened to include 0, so zero is exactly representable, and mapped to the ``2**bits``
integer levels ``0 .. 2**bits - 1`` with ``scale = (hi - lo) / (2**bits - 1)`` and
``zero_point = round(-lo / scale)``. The values and the straight-through gradient (identity where the
rounded value is inside the integer range, zero outside: GHN-QAT's SimQuant) are bit-for-bit those of
``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` (the tests check it), but computed
with four vectorized elementwise ops: torch's fused kernel is much slower than the composite on CPU
(benchmarks/scoring_overhead.py), which would make it cost more than the convolutions themselves. ``noise`` mode
replaces the rounding by uniform noise of one quantization step (GHN-QAT's NoiseQuant).

**Symmetric weights** (the deployable convention, :func:`weight_levels`): signed levels
``-(2**(bits-1) - 1) .. 2**(bits-1) - 1``, zero point 0, ``scale = max|w| / (2**(bits-1) - 1)`` (per
tensor or per output channel), what onnxruntime's int8 kernels run fast (``qnas.export`` writes exactly
these integers). Which bit-widths use them is the rule in ``SYMMETRIC_WEIGHT_BITS`` (measured in
docs/quantization.md); a setting can force either with ``-wsym`` / ``-wasym``.

**First and last layers** (:func:`first_last_rule`, the one rule search, finetune and export share):
by default the first and last weight layers, the network input and the last layer's input stay at
``FIRST_LAST_BITS`` (8) when a setting is lower (the ``-fl8`` suffix).

**Where quantization happens** (what an integer model materializes). Weights of every conv and linear,
after BatchNorm is folded into them (GHN-Q eq. 1); biases stay float (they are int32 in integer
kernels). Activations at the network input and at the output of every conv/linear (after its ReLU when
one follows), residual add, average pooling and standalone ReLU. Max pooling and concatenation are
not requantized: their outputs already lie on their inputs' grids. The final logits stay float.

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

import math
import operator
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from qnas.defaults import GRANULARITIES
from qnas.errors import QnasError

__all__ = [
    "DEFAULT_SETTINGS",
    "FIRST_LAST_BITS",
    "SETTINGS",
    "SYMMETRIC_WEIGHT_BITS",
    "Calibration",
    "QuantModel",
    "QuantSpec",
    "calibrate",
    "calibrate_with_logits",
    "fake_quantize",
    "first_last_rule",
    "fold_bn",
    "layer_bits",
    "parse_first_last_bits",
    "parse_specs",
    "percentile",
    "f32",
    "with_granularity",
    "prepare",
    "qparams",
    "quantize_activation",
    "quantize_weight",
    "weight_levels",
    "weight_qparams",
]

MIN_BITS, MAX_BITS = 2, 8
# Activation ranges at <= 2 bits: a percentile instead of min/max (with 4 levels one outlier otherwise takes
# a whole level); 3+ bits keep GHN-Q's min/max. Figures: benchmarks/activation_ranges.py, docs/scoring.md.
LOW_BITS, LOW_BIT_ACT_PERCENTILE = 2, 99.5
FLOAT_BITS = 32  # "32" in a setting name (w32a8) means float
# Weight bit-widths quantized symmetric (zero point 0) by default; the others asymmetric. 8 bits: what
# onnxruntime's int8 kernels run fast; below 8: chosen by accuracy, docs/quantization.md.
SYMMETRIC_WEIGHT_BITS: frozenset[int] = frozenset({8})
# The first/last-layer rule: first and last weight layers, network input and last layer's input at this
# many bits when a setting is lower (FAQ's recipe; see first_last_rule).
FIRST_LAST_BITS = 8
MODES = ("sim", "noise")


# ---------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class QuantSpec:
    """One quantization setting; ``None`` bits mean float. ``QuantSpec()`` is FP32.

    ``first_last_8bit`` keeps the first and last weight layers, the network input and the input of the
    last layer at 8 bits (FAQ's recipe) when the setting is lower.
    ``a_percentile``: activation ranges from the q-th percentile (and the (100-q)-th) instead of min/max
    (100 = min/max, GHN-Q); ``None`` is the default rule: min/max at 3+ bits, the
    ``LOW_BIT_ACT_PERCENTILE`` at <= ``LOW_BITS`` (see :meth:`act_percentile`).
    ``w_symmetric``: symmetric signed weights (zero point 0) or asymmetric unsigned ones; ``None`` is the
    default rule, ``SYMMETRIC_WEIGHT_BITS`` (see :meth:`weight_symmetric`).
    """

    w_bits: int | None = None
    a_bits: int | None = None
    mode: str = "sim"  # "sim": round (SimQuant, STE) | "noise": uniform noise of one step (NoiseQuant)
    granularity: str = "tensor"  # weights: one range per tensor | per output channel
    first_last_8bit: bool = False
    a_percentile: float | None = None  # activation range rule (None: by bits, see act_percentile)
    w_symmetric: bool | None = None  # weight grid (None: by bits, see weight_symmetric)

    def __post_init__(self) -> None:
        for what, bits in (("weight", self.w_bits), ("activation", self.a_bits)):
            if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)
                                     or not MIN_BITS <= bits <= MAX_BITS):
                raise QnasError(
                    f"{what} bits must be an integer from {MIN_BITS} to {MAX_BITS} (or None for float), "
                    f"got {bits!r}"
                )
        if self.mode not in MODES:
            raise QnasError(f"quantization mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.granularity not in GRANULARITIES:
            raise QnasError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        q = self.a_percentile
        if q is not None and (isinstance(q, bool) or not isinstance(q, int | float) or not 50.0 < q <= 100.0):
            raise QnasError(f"activation percentile must be in (50, 100] (100 = min/max), got {q!r}")
        if self.w_symmetric is not None and not isinstance(self.w_symmetric, bool):
            raise QnasError(f"w_symmetric must be True, False or None, got {self.w_symmetric!r}")

    def weight_symmetric(self, bits: int) -> bool:
        """Whether ``bits``-bit weights use the symmetric signed grid (zero point 0)."""
        if self.w_symmetric is not None:
            return self.w_symmetric
        return bits in SYMMETRIC_WEIGHT_BITS

    def act_percentile(self, bits: int) -> float:
        """Percentile of the activation range at a point quantized to ``bits`` (100: min/max)."""
        if self.a_percentile is not None:
            return float(self.a_percentile)
        return LOW_BIT_ACT_PERCENTILE if bits <= LOW_BITS else 100.0

    def spelled_out(self) -> QuantSpec:
        """This setting with the default activation-range rule made explicit (``w2a2`` -> ``w2a2-p99.5``,
        ``w4a4`` -> ``w4a4-minmax``): the same quantizer, a name that says everything."""
        if self.a_bits is None or self.a_percentile is not None:
            return self
        return replace(self, a_percentile=self.act_percentile(self.a_bits))

    @property
    def is_float(self) -> bool:
        return self.w_bits is None and self.a_bits is None

    @property
    def name(self) -> str:
        """Canonical name, parsed back by :meth:`parse`: ``fp32``, ``w4a8``, ``w2a2-noise``, ``w4a4-channel-fl8``,
        ``w2a2-minmax``, ``w4a4-p99.9``, ``w4a4-wsym``."""
        if self.is_float:
            base = "fp32"
        else:
            base = f"w{self.w_bits or FLOAT_BITS}a{self.a_bits or FLOAT_BITS}"
        suffix = "".join(
            s for s, on in (("-noise", self.mode == "noise"), ("-channel", self.granularity == "channel"),
                            ("-fl8", self.first_last_8bit)) if on
        )
        q = self.a_percentile
        if q is not None:
            suffix += "-minmax" if q == 100.0 else f"-p{float(q):g}"
        if self.w_symmetric is not None:
            suffix += "-wsym" if self.w_symmetric else "-wasym"
        return base + suffix

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, value: str | QuantSpec | tuple[int, int] | None) -> QuantSpec:
        """``"fp32"``, ``"w4a8"`` (2-8 bits, 32 = float) with optional ``-noise``, ``-channel``, ``-fl8``,
        ``-minmax`` / ``-p99.9`` (activation ranges),
        ``-wsym`` / ``-wasym`` (weight grid) suffixes; a ``(w_bits, a_bits)`` pair with 32 for float;
        ``None`` is FP32."""
        if value is None:
            return cls()
        if isinstance(value, QuantSpec):
            return value
        if isinstance(value, tuple | list):
            if len(value) != 2:
                raise QnasError(f"expected (weight bits, activation bits), got {value!r}")
            w, a = (_bits_from_int(b, value) for b in value)
            return cls(w, a)
        if not isinstance(value, str):
            raise QnasError(f"cannot read a quantization setting from {value!r}")
        text = value.strip().lower()
        base, *suffixes = text.split("-")
        kwargs: dict[str, Any] = {}
        for s in suffixes:
            key = {"noise": ("mode", "noise"), "sim": ("mode", "sim"), "channel": ("granularity", "channel"),
                   "tensor": ("granularity", "tensor"), "fl8": ("first_last_8bit", True),
                   "minmax": ("a_percentile", 100.0), "wsym": ("w_symmetric", True),
                   "wasym": ("w_symmetric", False)}.get(s)
            m = re.fullmatch(r"p(\d+(?:\.\d+)?)", s)
            if key is None and m:
                key = ("a_percentile", float(m.group(1)))
            if key is None or key[0] in kwargs:
                raise QnasError(f"bad quantization setting {value!r}: unknown or repeated suffix {s!r} "
                                "(allowed: -noise, -channel, -tensor, -fl8, -minmax, -p<percentile>, -wsym, -wasym)")
            kwargs[key[0]] = key[1]
        if base in ("fp32", "float", "float32"):
            return cls(**kwargs)
        m = re.fullmatch(r"w(\d+)a(\d+)", base)
        if not m:
            raise QnasError(f"bad quantization setting {value!r}: expected fp32 or w<bits>a<bits> such as "
                            f"w4a8, with bits from {MIN_BITS} to {MAX_BITS} (32 = float)")
        w, a = (_bits_from_int(int(g), value) for g in m.groups())
        return cls(w, a, **kwargs)


def _bits_from_int(bits: Any, setting: Any) -> int | None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise QnasError(f"bad quantization setting {setting!r}: bits must be integers")
    if bits == FLOAT_BITS:
        return None
    if not MIN_BITS <= bits <= MAX_BITS:
        raise QnasError(f"bad quantization setting {setting!r}: bits must be from {MIN_BITS} to {MAX_BITS} "
                        f"(or {FLOAT_BITS} for float), got {bits}")
    return bits


# The settings of GHN-Q's Table 1, by name; any other wXaY parses too.
SETTINGS: Mapping[str, QuantSpec] = MappingProxyType(
    {s.name: s for s in (QuantSpec(), QuantSpec(8, 8), QuantSpec(4, 8), QuantSpec(4, 4), QuantSpec(2, 2))}
)
DEFAULT_SETTINGS: tuple[str, ...] = tuple(SETTINGS)


def parse_specs(value: str | Iterable[str | QuantSpec]) -> list[QuantSpec]:
    """``"fp32,w8a8,w4a4"`` (or a list of names/specs) -> specs, in order; empty or repeated is an error."""
    items = value.split(",") if isinstance(value, str) else list(value)
    specs = [QuantSpec.parse(v.strip() if isinstance(v, str) else v) for v in items]
    if not specs:
        raise QnasError("no quantization settings given")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise QnasError(f"quantization setting(s) given twice: {', '.join(repeated)}")
    return specs


def with_granularity(value: str | Iterable[str], granularity: str) -> list[str]:
    """Setting names with a default weight granularity: ``w4a4`` -> ``w4a4-channel`` for ``"channel"``.

    A name that says ``-channel`` or ``-tensor`` itself keeps it; fp32 has no weight scales.
    """
    if granularity not in GRANULARITIES:
        raise QnasError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        name = item.strip()
        suffixes = name.lower().split("-")[1:]
        explicit = "channel" in suffixes or "tensor" in suffixes
        spec = QuantSpec.parse(name)
        out.append(spec.name if spec.is_float or explicit else replace(spec, granularity=granularity).name)
    return out


def parse_first_last_bits(value: str | int | None) -> int | None:
    """``--first-last-bits``: ``8`` (first/last layers at 8 bits) or ``same`` / ``None`` (at the setting)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("same", "none", "off")):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or text != str(FIRST_LAST_BITS):
        raise QnasError(f"first/last-layer bits must be {FIRST_LAST_BITS} or 'same' (quantized at the setting), "
                        f"got {value!r}")
    return FIRST_LAST_BITS


def first_last_rule(spec: QuantSpec | str, first_last_bits: int | None = FIRST_LAST_BITS) -> QuantSpec:
    """``spec`` under the first/last-layer rule shared by search, finetune and export: with
    ``first_last_bits=8`` (default) the first and last weight layers, the network input and the last
    layer's input stay at 8 bits when the setting is lower (``-fl8``); ``None``: quantized at the setting."""
    spec = QuantSpec.parse(spec)
    return replace(spec, first_last_8bit=parse_first_last_bits(first_last_bits) is not None)


def describe_first_last(spec: QuantSpec) -> str:
    """One line for records and model cards: what the first/last-layer rule of ``spec`` is."""
    if spec.first_last_8bit:
        return (f"first and last weight layers, the network input and the last layer's input at {FIRST_LAST_BITS} "
                "bits (first_last_bits=8)")
    return "every layer at the setting's bits (first_last_bits=same)"


def layer_bits(bits: int | None, first_last: bool, spec: QuantSpec) -> int | None:
    """Bits of a weight layer or activation point under ``spec``'s first/last-layer rule (``bits``: the
    setting's; ``first_last``: the layer is one the rule covers)."""
    if bits is not None and bits < FIRST_LAST_BITS and first_last and spec.first_last_8bit:
        return FIRST_LAST_BITS
    return bits


# ---------------------------------------------------------------------------------------------------
# The quantizer


def f32(value: float) -> float:
    """Round a Python float to float32, as torch's kernels see a scale (overflow -> inf)."""
    if not math.isfinite(value) or abs(value) >= 3.4028235e38:
        return value if not math.isfinite(value) else math.copysign(math.inf, value)
    return struct.unpack("f", struct.pack("f", value))[0]


def qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point for the range ``[lo, hi]`` widened to include 0, on ``2**bits`` levels."""
    qmax = (1 << bits) - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = f32((hi - lo) / qmax)
    if not scale > 0.0 or math.isinf(scale):  # all zeros (any scale is exact) or a diverged net
        return 1.0, 0
    return scale, min(qmax, max(0, round(-lo / scale)))


class _RoundSTE(torch.autograd.Function):
    """Round-and-clamp in integer units with the straight-through gradient of torch's fake quantize."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, inv: Any, scale: Any, qlo: Any, qhi: Any) -> torch.Tensor:
        r = x.mul(inv).round_()
        mask = (r >= qlo) & (r <= qhi)
        ctx.save_for_backward(mask)
        return r.clamp_(qlo, qhi).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def weight_levels(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of ``bits``-bit weights: ``0 .. 2**bits - 1`` (asymmetric, with a zero point) or the
    signed ``-(2**(bits-1) - 1) .. 2**(bits-1) - 1`` (symmetric, zero point 0; -128 unused, as
    onnxruntime's symmetric int8 weights)."""
    if symmetric:
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1


def fake_quantize(
    x: torch.Tensor,
    scale: float | torch.Tensor,
    zero_point: int | torch.Tensor,
    bits: int,
    *,
    noise: bool = False,
    generator: torch.Generator | None = None,
    levels: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` on ``2**bits`` levels; ``scale``/``zero_point`` are scalars (per tensor)
    or tensors broadcastable to ``x`` (per channel). Equals ``torch.fake_quantize_per_*_affine(x, scale,
    zero_point, 0, 2**bits - 1)`` in value and gradient; ``noise=True`` instead adds uniform noise in
    ``[-scale/2, scale/2)`` (NoiseQuant) after clamping to the region the rounding maps onto the grid
    (the grid plus half a step on each side), so the gradient is the STE's: identity there, zero outside.
    ``levels``: the integer range (default ``0 .. 2**bits - 1``; see :func:`weight_levels`)."""
    lo, hi = levels if levels is not None else (0, (1 << bits) - 1)
    # In integer units with the zero point removed, the representable levels are qlo..qhi.
    qlo, qhi = lo - zero_point, hi - zero_point
    if noise:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device).sub_(0.5)
        return torch.clamp(x, (qlo - 0.5) * scale, (qhi + 0.5) * scale) + u.mul_(scale)
    if isinstance(scale, torch.Tensor):
        inv = torch.ones_like(scale).div_(scale)  # 1.0f / scale in float32, as torch's kernel
    else:
        inv = f32(1.0 / scale)
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoundSTE.apply(x, inv, scale, qlo, qhi)
    return x.mul(inv).round_().clamp_(qlo, qhi).mul_(scale)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """A 1-D view in memory order: reductions over a channels_last tensor are ~10x faster this way."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.reshape(-1)


def _minmax(x: torch.Tensor) -> tuple[float, float]:
    lo, hi = torch.aminmax(_flat(x.detach()))
    return float(lo), float(hi)


_PERCENTILE_SAMPLE = 1 << 16


def percentile(x: torch.Tensor, q: float) -> float:
    """The q-th percentile of ``x``; of a fixed-seed random sample of 65,536 values for larger tensors
    (exact kthvalue costs ~16 ms per 1.6M values on one core, which made W2A2 scoring 15-35% slower;
    the sample's 99.5th percentile has a rank error of ~0.03 percentile points, one s.d.)."""
    flat = _flat(x.detach()).float()
    if flat.numel() > _PERCENTILE_SAMPLE:
        pick = torch.randint(flat.numel(), (_PERCENTILE_SAMPLE,), generator=torch.Generator().manual_seed(0))
        flat = flat[pick.to(flat.device)]  # the same sample on any device
    return float(flat.kthvalue(min(max(1, math.ceil(q / 100.0 * flat.numel())), flat.numel())).values)


def _act_range(x: torch.Tensor, q: float, relu: bool) -> tuple[float, float]:
    """``[lo, hi]`` of an activation: min/max for ``q >= 100``, else the (100-q)-th and q-th percentiles
    (paid once per calibration batch); ``relu``: the low end is 0 (the quantizer's clamp is the ReLU)."""
    if q >= 100.0:
        lo, hi = _minmax(x)
    else:
        lo, hi = 0.0 if relu else percentile(x, 100.0 - q), percentile(x, q)
    return (0.0, max(hi, 0.0)) if relu else (lo, hi)


def quantize_weight(
    w: torch.Tensor,
    bits: int,
    *,
    granularity: str = "tensor",
    symmetric: bool = False,
    noise: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fake-quantize a weight on its own min/max range (per tensor, or per output channel = dim 0),
    asymmetric or ``symmetric`` (:func:`weight_levels`). The range is computed from the detached weight:
    gradients reach ``w`` through the STE only."""
    scale, zp = weight_qparams(w, bits, granularity, symmetric)
    return fake_quantize(w, scale, zp, bits, noise=noise, generator=generator,
                         levels=weight_levels(bits, symmetric))


def weight_qparams(
    w: torch.Tensor, bits: int, granularity: str = "tensor", symmetric: bool = False
) -> tuple[float, int] | tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of a weight's min/max range: floats per tensor, or float32 tensors of shape
    (C, 1, ...) per output channel (what :func:`quantize_weight` uses, and exporters must reproduce).
    ``symmetric``: ``scale = max|w| / (2**(bits-1) - 1)`` and zero point 0 on the signed levels of
    :func:`weight_levels`."""
    wd = w.detach()
    if symmetric:
        qmax = weight_levels(bits, True)[1]
        if granularity == "tensor":
            scale = f32(float(wd.abs().max()) / qmax) if wd.numel() else 0.0
            return (scale, 0) if scale > 0.0 and math.isfinite(scale) else (1.0, 0)
        amax = wd.abs().amax(tuple(range(1, w.dim())), keepdim=True)
        scale = amax / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale)
    if granularity == "tensor":
        return qparams(*_minmax(w), bits)
    qmax = (1 << bits) - 1
    dims = tuple(range(1, w.dim()))
    lo = wd.amin(dims, keepdim=True).clamp_(max=0.0)
    hi = wd.amax(dims, keepdim=True).clamp_(min=0.0)
    scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, torch.round(-lo / scale).clamp_(0, qmax)


def quantize_activation(
    x: torch.Tensor,
    bits: int,
    lo: float | None = None,
    hi: float | None = None,
    *,
    noise: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fake-quantize an activation tensor on ``[lo, hi]`` (default: its own min/max, as GHN-Q)."""
    if lo is None or hi is None:
        lo, hi = _minmax(x)
    scale, zp = qparams(lo, hi, bits)
    return fake_quantize(x, scale, zp, bits, noise=noise, generator=generator)


def fold_bn(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GHN-Q eq. 1: ``w_fold = gamma w / sqrt(var + eps)``, ``b_fold = beta + (b - mean) gamma / sqrt(var + eps)``;
    ``conv(x, w_fold) + b_fold`` equals BatchNorm(conv(x, w) + b) with that mean and variance."""
    s = torch.rsqrt(var + eps)
    if bn_weight is not None:
        s = s * bn_weight
    w = weight * s.reshape(-1, *([1] * (weight.dim() - 1)))
    b = -mean * s if bias is None else (bias - mean) * s
    return w, (b if bn_bias is None else b + bn_bias)


def _channel_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W). Without grad, torch's batch-norm kernel
    (one fused pass); with grad, a differentiable two-pass form on a (rows, C) view for channels_last
    tensors (``var_mean`` over dims (0, 2, 3) is ~15x slower there)."""
    if not (torch.is_grad_enabled() and y.requires_grad):
        _, mean, invstd = torch.native_batch_norm(y, None, None, None, None, True, 0.0, 0.0)
        return mean, invstd.pow(-2).nan_to_num_(posinf=0.0)  # eps 0: invstd = 1/std (inf for std 0)
    if y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        y2 = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
        mean = y2.mean(0)
        d = y2 - mean
        return mean, (d * d).mean(0)
    dims = (0, *range(2, y.dim()))
    mean = y.mean(dims)
    d = y - mean.reshape(1, -1, *([1] * (y.dim() - 2)))
    return mean, (d * d).mean(dims)


def _depthwise_shifted(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, conv: nn.Conv2d) -> torch.Tensor:
    """Depthwise conv as a sum of shifted multiply-adds: exact, for the backward pass of dilated depthwise
    convs, which is slow on some CPU layouts (see ``_SHIFTED_DEPTHWISE``)."""
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    kh, kw = w.shape[-2:]
    n, c, h, wd = x.shape
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            term = tap * w[:, 0, i, j].reshape(1, c, 1, 1)
            out = term if out is None else out + term
    assert out is not None
    return out if b is None else out + b.reshape(1, c, 1, 1)


# Off, by measurement (torch 2.13 CPU, 1 thread): a training step (batch 128, forward + backward) of
# stem16-32:dil3,dil5-convs2-64:dil3,dil5-convs2-128:dil5,dil3-fc0 took 350-400 ms at FP32 and 760-820 ms
# at W4A4 with torch's conv in NHWC (675 / 1170 ms in NCHW), against 1280-1340 / 2460-2550 ms shifted.
# Single layers were never pathological either as long as input and gradient share one memory format
# (mixing NCHW and NHWC made the backward 6-12x slower), which the executor guarantees.
_SHIFTED_DEPTHWISE = False


# ---------------------------------------------------------------------------------------------------
# Compiling a traced module into a program of quantization-aware steps


@dataclass
class _Step:
    name: str  # the fx node name; keys activation ranges
    kind: str  # input | conv | linear | bn | relu | add | call | output
    inputs: tuple[str, ...] = ()  # env entries read by input/conv/linear/bn/relu
    module: nn.Module | None = None  # the conv / linear / bn / called module
    bn: nn.BatchNorm2d | None = None  # BatchNorm folded into this conv
    bn_name: str = ""  # its qualified name; keys calibrated statistics
    pnames: tuple[str, str, str, str] = ("", "", "", "")  # weight, bias, BN weight, BN bias parameter names
    fn: Callable[..., Any] | None = None  # kind "call"/"add": what to apply to the mapped args
    args: tuple[Any, ...] = ()  # kind "call"/"add"/"output": fx args with _Ref for values
    kwargs: dict[str, Any] = field(default_factory=dict)
    act: str = ""  # "", "relu" or "relu6", applied to the output
    quant: bool = False  # quantize the output activation
    w8: bool = False  # first or last weight layer (QuantSpec.first_last_8bit)
    a8: bool = False  # network input or input of the last layer (QuantSpec.first_last_8bit)
    free: tuple[str, ...] = ()  # env entries no longer needed after this step
    int_out: bool = False  # conv/linear read only by convs/linears, which can absorb its output scale


@dataclass(frozen=True)
class _Ref:
    name: str


def _call_method(name: str, obj: Any, *args: Any, **kwargs: Any) -> Any:
    return getattr(obj, name)(*args, **kwargs)


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6"}
_AVGPOOL_FUNCTIONS = {F.avg_pool2d, F.adaptive_avg_pool2d, torch.mean}
_PASS_FUNCTIONS = {F.max_pool2d, F.adaptive_max_pool2d, torch.flatten, torch.reshape, torch.cat, torch.concat,
                   torch.squeeze, torch.unsqueeze, operator.getitem, getattr}
_PASS_METHODS = {"flatten", "view", "reshape", "size", "contiguous", "squeeze", "unsqueeze", "dim"}
_PASS_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity)


def _classify(node: fx.Node, modules: Mapping[str, nn.Module]) -> tuple[str, str]:
    """(kind, activation) of a traced node; anything the executor cannot quantize faithfully is an error."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.Conv2d):
            return "conv", ""
        if isinstance(m, nn.Linear):
            return "linear", ""
        if isinstance(m, nn.BatchNorm2d):
            return "bn", ""
        if isinstance(m, nn.ReLU | nn.ReLU6):
            return "relu", "relu6" if isinstance(m, nn.ReLU6) else "relu"
        if isinstance(m, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            return "avgpool", ""
        if isinstance(m, _PASS_MODULES):
            return "call", ""
        if isinstance(m, nn.Dropout):
            return "identity", ""
        raise QnasError(f"cannot quantize layer {node.target!r} ({type(m).__name__}): supported layers are "
                        "Conv2d, BatchNorm2d, Linear, ReLU, ReLU6, max/avg pooling, Flatten, Dropout")
    if node.op == "call_function":
        if node.target in _ADD_FUNCTIONS:
            return "add", ""
        if node.target in _RELU_FUNCTIONS:
            return "relu", _RELU_FUNCTIONS[node.target]
        if node.target in _AVGPOOL_FUNCTIONS:
            return "avgpool", ""
        if node.target in _PASS_FUNCTIONS:
            return "call", ""
        if node.target is F.dropout:
            return "identity", ""
        name = getattr(node.target, "__name__", str(node.target))
        raise QnasError(f"cannot quantize operation {name!r} at node {node.name!r}: supported are add, relu, "
                        "pooling, flatten/reshape, cat")
    if node.op == "call_method":
        if node.target in ("add", "add_"):
            return "add", ""
        if node.target in ("relu", "relu_"):
            return "relu", "relu"
        if node.target == "mean":
            return "avgpool", ""
        if node.target in _PASS_METHODS:
            return "call", ""
        raise QnasError(f"cannot quantize tensor method {node.target!r} at node {node.name!r}")
    return node.op, ""


def _compile(module: nn.Module, graph: fx.Graph | None = None) -> list[_Step]:
    if graph is None:
        try:  # a bare Tracer: building a GraphModule (code generation) would double the cost
            graph = fx.Tracer().trace(module)
        except Exception as exc:  # tracing fails with many exception types (control flow on values, ...)
            msg = " ".join(str(exc).split())
            raise QnasError(f"cannot trace {type(module).__name__} with torch.fx: {msg}") from None
    modules = dict(module.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise QnasError(f"the model must take exactly one input tensor, {type(module).__name__} takes "
                        f"{len(placeholders)}")
    kinds = {n: _classify(n, modules) for n in nodes}
    alias: dict[fx.Node, str] = {}  # node fused into an earlier step -> that step's env name

    def only_user(n: fx.Node, kind: str) -> fx.Node | None:
        users = list(n.users)
        return users[0] if len(users) == 1 and kinds[users[0]][0] == kind else None

    def ref(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: _Ref(alias.get(n, n.name)))

    # Values that reach the output only through shape ops are the logits: they stay float.
    to_output: set[fx.Node] = set()
    for n in reversed(nodes):
        users = list(n.users)
        if users and all(u.op == "output" or (u in to_output and kinds[u][0] in ("call", "identity"))
                         for u in users):
            to_output.add(n)

    steps: list[_Step] = []
    for n in nodes:
        if n in alias:
            continue
        kind, act = kinds[n]
        step = _Step(name=n.name, kind=kind)
        if n.op == "get_attr":
            raise QnasError(f"the model reads tensor attribute {n.target!r} directly; only layers are supported")
        if kind == "placeholder":
            step.kind, step.quant = "input", True
        elif kind in ("conv", "linear", "bn"):
            step.module = modules[str(n.target)]
            step.bn_name = str(n.target) if kind == "bn" else ""
            step.pnames = (f"{n.target}.weight", f"{n.target}.bias", "", "")
            step.inputs = (alias.get(n.args[0], n.args[0].name),)
            tail = n
            if kind == "conv" and (bn := only_user(n, "bn")) is not None:
                step.bn, step.bn_name = modules[str(bn.target)], str(bn.target)
                step.pnames = (*step.pnames[:2], f"{bn.target}.weight", f"{bn.target}.bias")
                alias[bn] = n.name
                tail = bn
            if (r := only_user(tail, "relu")) is not None:
                step.act = kinds[r][1]
                alias[r] = n.name
                tail = r
            step.quant = tail not in to_output
        elif kind == "relu":
            step.inputs = (alias.get(n.args[0], n.args[0].name),)
            step.act, step.quant = act, n not in to_output
        elif kind in ("add", "avgpool", "call", "identity"):
            if kind == "identity":
                step.fn = _identity
            elif n.op == "call_module":
                step.fn = modules[str(n.target)]
            elif n.op == "call_method":
                name = "add" if n.target == "add_" else str(n.target)  # out of place, as iadd below
                step.fn = lambda *a, _name=name, **k: _call_method(_name, *a, **k)
            elif n.target is operator.iadd:
                step.fn = operator.add  # never mutate a value other steps may still read
            else:
                step.fn = n.target  # type: ignore[assignment]
            step.args, step.kwargs = ref(n.args), ref(n.kwargs)
            tail = n
            if kind == "add" and (r := only_user(n, "relu")) is not None:
                step.act = kinds[r][1]
                alias[r] = n.name
                tail = r
            step.quant = kind in ("add", "avgpool") and tail not in to_output
            step.kind = "call"
        elif kind == "output":
            step.args = ref(n.args[0])
        steps.append(step)

    _mark_first_last(steps)
    _mark_frees(steps)
    readers: dict[str, list[_Step]] = {}
    for s in steps:
        for name in _step_reads(s):
            readers.setdefault(name, []).append(s)
    for s in steps:
        s.int_out = (s.kind in ("conv", "linear") and s.quant and bool(readers.get(s.name))
                     and all(r.kind in ("conv", "linear") for r in readers[s.name]))
    return steps


def _mark_first_last(steps: list[_Step]) -> None:
    """Flag the first/last weight layers, the input and the last layer's input for QuantSpec.first_last_8bit."""
    weighted = [s for s in steps if s.kind in ("conv", "linear")]
    if not weighted:
        return
    weighted[0].w8 = weighted[-1].w8 = True
    steps[0].a8 = True
    # Walk back from the last weight layer through shape-only ops to the step that quantizes its input.
    names = {s.name: s for s in steps}
    name = weighted[-1].inputs[0]
    while name in names:
        s = names[name]
        if s.quant or s.kind == "input":
            s.a8 = True
            return
        refs = [a for a in fx.node.map_aggregate(s.args, lambda a: a) if isinstance(a, _Ref)] if s.args else []
        if not refs:
            return
        name = refs[0].name


def _step_reads(step: _Step) -> list[str]:
    names = list(step.inputs)
    fx.node.map_aggregate((step.args, step.kwargs), lambda a: names.append(a.name) if isinstance(a, _Ref) else a)
    return names


def _mark_frees(steps: list[_Step]) -> None:
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for name in _step_reads(s):
            last_use[name] = i
    frees: dict[int, list[str]] = {}
    for name, i in last_use.items():
        frees.setdefault(i, []).append(name)
    for i, s in enumerate(steps):
        s.free = tuple(frees.get(i, ()))


# ---------------------------------------------------------------------------------------------------
# Calibration


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

    def tensors(self, step: _Step) -> tuple[Any, Any, Any, Any]:
        """(weight, bias, BN weight, BN bias) of a step, from ``params`` where given."""
        m, bn, p = step.module, step.bn, self.params
        own = (getattr(m, "weight", None), getattr(m, "bias", None),
               getattr(bn, "weight", None), getattr(bn, "bias", None))
        if p is None:
            return own
        return tuple(p.get(name, t) if name else t for name, t in zip(step.pnames, own, strict=True))  # type: ignore[return-value]

    def w_bits(self, step: _Step) -> int | None:
        return layer_bits(self.spec.w_bits, step.w8, self.spec)

    def a_bits(self, step: _Step) -> int | None:
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
    return lambda a: env[a.name] if isinstance(a, _Ref) else a


class QuantModel(nn.Module):
    """A traced CNN that runs at any :class:`QuantSpec`; made by :func:`prepare`.

    It holds the original module's children (shared, not copied), so ``named_parameters()`` has exactly
    the original keys and ``torch.func.functional_call(qmodel, params, (x, spec))`` takes a dict keyed
    like ``module.named_parameters()``.
    """

    def __init__(self, module: nn.Module, graph: fx.Graph | None = None) -> None:
        super().__init__()
        program = _compile(module, graph)
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
            for name in step.free:
                del env[name]
        raise AssertionError("program without output")

    # -- steps ------------------------------------------------------------------------------------

    def _activation(self, step: _Step, y: torch.Tensor, ctx: _Ctx, fresh: bool) -> torch.Tensor:
        """The step's ReLU (if fused) and activation quantization; ``fresh``: y is ours to overwrite."""
        bits = ctx.a_bits(step)
        if bits is None:
            y = _apply_act(y, step.act, ctx.inplace and fresh)
            if ctx.record is not None and step.quant:
                ctx.record.range(step.name, *_minmax(y))
            return y
        if ctx.calibration is not None:
            lo, hi = ctx.calibrated_range(step.name)
        else:
            # With a fused activation the quantizer's clamp at 0 (and 6) is the activation itself.
            lo, hi = _act_range(y, ctx.spec.act_percentile(bits), relu=bool(step.act))
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

    def _conv(self, step: _Step, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
              ctx: _Ctx) -> torch.Tensor:
        m = step.module
        if step.kind == "linear":
            return F.linear(x, w, b)
        assert isinstance(m, nn.Conv2d)
        if (_SHIFTED_DEPTHWISE and m.groups == m.in_channels == m.out_channels and m.dilation != (1, 1)
                and m.padding_mode == "zeros" and torch.is_grad_enabled()
                and (x.requires_grad or w.requires_grad)):
            y = _depthwise_shifted(x, w, b, m)
        else:
            y = m._conv_forward(x, w, b)
        # A 1-channel image is both NCHW and NHWC, so the first conv would choose NCHW for the whole net.
        return y.contiguous(memory_format=torch.channels_last) if ctx.channels_last else y

    def _weight_layer(self, step: _Step, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
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
            mean, var = _channel_stats(y)
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

    def _batchnorm(self, step: _Step, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        bn = step.module
        assert isinstance(bn, nn.BatchNorm2d)
        gamma, beta = ctx.tensors(step)[:2]
        if ctx.calibration is not None:
            mean, var = ctx.calibrated_bn(step.bn_name)
        elif ctx.record is None:
            return F.batch_norm(x, None, None, gamma, beta, True, 0.0, bn.eps)
        else:
            mean, var = _channel_stats(x)
            ctx.record.bn(step.bn_name, mean, var, x.numel() // x.shape[1])
        return F.batch_norm(x, mean, var, gamma, beta, False, 0.0, bn.eps)


def prepare(module: nn.Module, graph: fx.Graph | None = None) -> QuantModel:
    """Trace ``module`` once (torch.fx) into a :class:`QuantModel` sharing its parameters.

    Supported: Conv2d (any groups/dilation/stride), BatchNorm2d, Linear, ReLU/ReLU6, max/avg/adaptive
    pooling, flatten/reshape, add, cat, Dropout (identity). Anything else raises QnasError naming it.
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
