"""The quantizer: fake quantization, weight and activation quantization parameters, BatchNorm folding.

GHN-Q's quantizer: tensorwise, asymmetric, uniform, absolute min/max ranges; per output channel for
weights with ``-channel``; activation ranges at 2 bits from the 99.5th percentile (see
``LOW_BIT_ACT_PERCENTILE``); weights symmetric where :meth:`QuantSpec.weight_symmetric` says so. A
tensor with range ``[lo, hi]`` is widened to include 0, so zero is exactly representable, and mapped to
the ``2**bits`` integer levels ``0 .. 2**bits - 1`` with ``scale = (hi - lo) / (2**bits - 1)`` and
``zero_point = round(-lo / scale)``. The values and the straight-through gradient (identity where the
rounded value is inside the integer range, zero outside: GHN-QAT's SimQuant) are bit-for-bit those of
``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` (the tests check it), but computed
with four vectorized elementwise ops: torch's fused kernel is much slower than the composite on CPU
(benchmarks/scoring_overhead.py), which would make it cost more than the convolutions themselves.
``noise`` mode replaces the rounding by uniform noise of one quantization step (GHN-QAT's NoiseQuant).

**Symmetric weights** (the deployable convention, :func:`weight_levels`): signed levels
``-(2**(bits-1) - 1) .. 2**(bits-1) - 1``, zero point 0, ``scale = max|w| / (2**(bits-1) - 1)`` (per
tensor or per output channel), what onnxruntime's int8 kernels run fast (``qnas.export`` writes exactly
these integers).

**BatchNorm folding** (GHN-Q eq. 1, :func:`fold_bn`): weights are quantized after BatchNorm is folded
into them; biases stay float (they are int32 in integer kernels).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import torch

__all__ = [
    "act_range",
    "channel_stats",
    "f32",
    "fake_quantize",
    "fold_bn",
    "minmax",
    "percentile",
    "qparams",
    "quantize_activation",
    "quantize_weight",
    "weight_levels",
    "weight_qparams",
]


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


def minmax(x: torch.Tensor) -> tuple[float, float]:
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


def act_range(x: torch.Tensor, q: float, relu: bool) -> tuple[float, float]:
    """``[lo, hi]`` of an activation: min/max for ``q >= 100``, else the (100-q)-th and q-th percentiles
    (paid once per calibration batch); ``relu``: the low end is 0 (the quantizer's clamp is the ReLU)."""
    if q >= 100.0:
        lo, hi = minmax(x)
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
        return qparams(*minmax(w), bits)
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
        lo, hi = minmax(x)
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


def channel_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
