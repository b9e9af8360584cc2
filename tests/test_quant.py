"""The quantizer, BatchNorm folding and the quantized executor (qnas.quant)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qnas.errors import QnasError
from qnas.quant import (
    FIRST_LAST_BITS,
    LOW_BIT_ACT_PERCENTILE,
    SETTINGS,
    QuantSpec,
    calibrate,
    fake_quantize,
    first_last_rule,
    fold_bn,
    layer_bits,
    parse_first_last_bits,
    parse_specs,
    percentile,
    prepare,
    qparams,
    quantize_activation,
    quantize_weight,
    weight_levels,
    weight_qparams,
    with_granularity,
)
from search_spaces import convnets250k


class EveryOp(nn.Module):
    """Every op type of the space: regular, depthwise and dilated depthwise convs, BN, ReLU, max/avg
    pooling, residual add (identity and projection), conv without ReLU, global pooling, hidden linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dil = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.body = nn.Sequential(nn.Conv2d(8, 12, 3, stride=1, padding=1), nn.ReLU())  # no BN: conv bias
        self.avg = nn.AvgPool2d(3, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.dil(self.dw(x))
        x = self.pool(x)
        x = self.body(x) + self.proj(x)
        x = self.gap(self.avg(x))
        return self.head(torch.flatten(x, 1))


def _images(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def _module(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = EveryOp()
    with torch.no_grad():  # non-trivial BN affine parameters, so folding is really exercised
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


# ----------------------------------------------------------------------------- settings


def test_named_settings_and_parsing() -> None:
    assert list(SETTINGS) == ["fp32", "w8a8", "w4a8", "w4a4", "w2a2"]
    assert QuantSpec.parse("fp32") == QuantSpec() and QuantSpec().is_float
    assert QuantSpec.parse("W4A8") == QuantSpec(4, 8)
    assert QuantSpec.parse("w3a6") == QuantSpec(3, 6)
    assert QuantSpec.parse((4, 32)) == QuantSpec(4, None) and QuantSpec(4, None).name == "w4a32"
    spec = QuantSpec.parse("w2a2-noise-channel-fl8")
    assert (spec.mode, spec.granularity, spec.first_last_8bit) == ("noise", "channel", True)
    for s in ("fp32", "w8a8", "w2a2-noise", "w4a4-channel-fl8", "w32a4"):
        assert QuantSpec.parse(QuantSpec.parse(s).name) == QuantSpec.parse(s)
    assert [s.name for s in parse_specs("fp32, w8a8,w4a4")] == ["fp32", "w8a8", "w4a4"]


def test_with_granularity_fills_only_unnamed_scales() -> None:
    assert with_granularity("fp32,w4a4,w2a2-noise,w8a8-tensor,w4a8-channel", "channel") == [
        "fp32", "w4a4-channel", "w2a2-noise-channel", "w8a8", "w4a8-channel"]
    assert with_granularity(["w4a4", "w4a4-channel"], "tensor") == ["w4a4", "w4a4-channel"]
    with pytest.raises(QnasError):
        with_granularity("w4a4", "row")


@pytest.mark.parametrize("bad", ["w0a8", "w1a1", "w9a8", "w8a9", "w4", "int8", "", "w4a4-fast", "w4a4-noise-noise"])
def test_bad_settings_rejected(bad: str) -> None:
    with pytest.raises(QnasError) as err:
        QuantSpec.parse(bad)
    assert "\n" not in str(err.value) and repr(bad)[1:-1] in str(err.value)


def test_bad_spec_fields_rejected() -> None:
    for kwargs in ({"w_bits": 1}, {"a_bits": 9}, {"w_bits": 4.0}, {"mode": "round"}, {"granularity": "row"}):
        with pytest.raises(QnasError):
            QuantSpec(**kwargs)
    with pytest.raises(QnasError, match="twice"):
        parse_specs("w4a4,w4a4")
    with pytest.raises(QnasError):
        parse_specs([])


# ----------------------------------------------------------------------------- the quantizer


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_and_exact_zero(bits: int) -> None:
    x = torch.linspace(-0.37, 1.91, 20_001)
    q = quantize_activation(x, bits)
    scale, zp = qparams(-0.37, 1.91, bits)
    assert q.unique().numel() == 2**bits
    # The integer zero point shifts the grid by less than half a step, so no value moves further.
    assert scale == pytest.approx(2.28 / (2**bits - 1), rel=1e-6)
    assert (q - x).abs().max() <= scale / 2 + 1e-6
    z = torch.tensor([0.0, -0.37, 1.91])
    assert quantize_activation(z, bits, -0.37, 1.91)[0].item() == 0.0  # zero exactly representable
    # A range that excludes 0 is widened to include it.
    pos = quantize_activation(torch.tensor([0.0, 0.5, 1.0]), bits, 0.5, 1.0)
    assert pos[0].item() == 0.0


def test_equals_torch_fake_quantize_values_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=gen) * 2
    for bits in (2, 4, 8):
        scale, zp = qparams(-1.5, 3.0, bits)  # narrower than the data: some values clip
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        ours = fake_quantize(a, scale, zp, bits)
        ref = torch.fake_quantize_per_tensor_affine(b, scale, zp, 0, 2**bits - 1)
        assert torch.equal(ours, ref)
        (ours * x).sum().backward()
        (ref * x).sum().backward()
        assert torch.equal(a.grad, b.grad)
        with torch.no_grad():
            assert torch.equal(fake_quantize(x, scale, zp, bits), ref.detach())


def test_per_channel_equals_torch() -> None:
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    for bits in (2, 4, 8):
        ours = quantize_weight(w, bits, granularity="channel")
        lo = w.amin((1, 2, 3)).clamp(max=0)
        hi = w.amax((1, 2, 3)).clamp(min=0)
        scale = (hi - lo) / (2**bits - 1)
        zp = torch.round(-lo / scale).int()
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 2**bits - 1)
        assert torch.equal(ours, ref)
        for c in range(6):
            assert ours[c].unique().numel() <= 2**bits


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_symmetric_weights_equal_torch_signed_fake_quantize(granularity: str) -> None:
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    w[2] = -w[2].abs()  # a channel with no positive weight still gets zero point 0
    for bits in (2, 4, 8):
        qmin, qmax = weight_levels(bits, True)
        assert (qmin, qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        ours = quantize_weight(w, bits, granularity=granularity, symmetric=True)
        scale, zp = weight_qparams(w, bits, granularity, symmetric=True)
        if granularity == "channel":
            assert torch.equal(zp, torch.zeros_like(zp))
            amax = w.abs().amax((1, 2, 3))
            assert torch.allclose(scale.flatten(), amax / qmax)
            ref = torch.fake_quantize_per_channel_affine(w, scale.flatten(), torch.zeros(6, dtype=torch.int32), 0,
                                                         qmin, qmax)
        else:
            assert zp == 0 and math.isclose(scale, float(w.abs().max()) / qmax, rel_tol=1e-6)
            ref = torch.fake_quantize_per_tensor_affine(w, scale, 0, qmin, qmax)
        assert torch.equal(ours, ref)
        assert (ours == 0).any() or bits > 2  # zero is a level
        levels = (ours / scale).round()
        assert levels.min() >= qmin and levels.max() <= qmax


def test_weight_grid_rule_by_bits_and_suffixes() -> None:
    assert QuantSpec.parse("w8a8").weight_symmetric(8) and not QuantSpec.parse("w4a4").weight_symmetric(4)
    assert not QuantSpec.parse("w4a4").weight_symmetric(2)
    spec = QuantSpec.parse("w4a4-channel-wsym")
    assert spec.w_symmetric is True and spec.weight_symmetric(4) and spec.name == "w4a4-channel-wsym"
    assert QuantSpec.parse("w8a8-wasym").name == "w8a8-wasym" and not QuantSpec.parse("w8a8-wasym").weight_symmetric(8)
    with pytest.raises(QnasError):
        QuantSpec.parse("w4a4-wsym-wasym")
    # The engine quantizes 8-bit weights on the symmetric grid: W8A8 equals W8A8-wsym, not -wasym.
    qm = prepare(_module())
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cal = calibrate(qm, x)
    with torch.no_grad():
        assert torch.equal(qm(x, "w8a8", cal), qm(x, "w8a8-wsym", cal))
        assert not torch.equal(qm(x, "w8a8", cal), qm(x, "w8a8-wasym", cal))
        assert torch.equal(qm(x, "w4a4", cal), qm(x, "w4a4-wasym", cal))


def test_first_last_rule_is_one_function() -> None:
    assert FIRST_LAST_BITS == 8
    assert first_last_rule("w4a4").first_last_8bit and first_last_rule("w4a4").name == "w4a4-fl8"
    assert not first_last_rule("w4a4-fl8", None).first_last_8bit
    assert parse_first_last_bits("8") == 8 and parse_first_last_bits("same") is None
    assert parse_first_last_bits(None) is None
    for bad in ("4", "x", True):
        with pytest.raises(QnasError):
            parse_first_last_bits(bad)
    fl8, plain = QuantSpec.parse("w2a2-fl8"), QuantSpec.parse("w2a2")
    assert layer_bits(2, True, fl8) == 8 and layer_bits(2, False, fl8) == 2 and layer_bits(2, True, plain) == 2
    assert layer_bits(None, True, fl8) is None


def test_ste_gradient_identity_inside_zero_outside() -> None:
    x = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 2.05, 2.15, 5.0], requires_grad=True)
    q = quantize_activation(x, 4, -1.0, 2.0)  # scale 0.2, zero point 5: the grid is exactly [-1, 2]
    q.sum().backward()
    # torch's STE: inside where the rounded value is on the grid (up to half a step beyond the ends)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert q[0].item() == pytest.approx(-1.0, abs=1e-6) and q[-1].item() == pytest.approx(2.0, abs=1e-6)
    assert q[3].item() == 0.0


def test_noise_mode_within_half_step_and_identity_gradient() -> None:
    x = torch.linspace(-1.0, 1.0, 1001, requires_grad=True)
    scale, zp = qparams(-1.0, 1.0, 2)
    gen = torch.Generator().manual_seed(0)
    y = fake_quantize(x, scale, zp, 2, noise=True, generator=gen)
    err = (y - x).detach()
    assert err.abs().max() <= scale / 2 + 1e-6 and err.std() > scale / 5  # uniform, not rounding
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    again = fake_quantize(x, scale, zp, 2, noise=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, y)  # seeded


def test_fold_bn_equals_conv_then_bn() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 9, 9, generator=gen)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)  # negative gamma too
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3.0)
        w, b = fold_bn(conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
        torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the executor


def test_same_parameter_names_and_float_equivalence() -> None:
    m = _module()
    qm = prepare(m)
    assert list(dict(qm.named_parameters())) == list(dict(m.named_parameters()))
    x = _images()
    with torch.no_grad():
        m.train()
        ref = m(x)
        for cl in (True, False):  # batch statistics = BatchNorm in training mode
            torch.testing.assert_close(qm(x, channels_last=cl), ref, atol=1e-5, rtol=1e-4)
        calib = calibrate(qm, x, batch_size=len(x))
        # calibrated FP32 = the eval-mode module with those statistics as running statistics
        for name, (mean, var) in calib.bn.items():
            bn = dict(m.named_modules())[name]
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        torch.testing.assert_close(qm(x, None, calib), m.eval()(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(qm(x, None, calib), ref, atol=1e-5, rtol=1e-4)  # same images, same stats


def _reference_w4a4(m: EveryOp, x: torch.Tensor, stats: dict | None, ranges: dict | None) -> torch.Tensor:
    """The protocol written out by hand with torch's own fake quantization, for the first layers of
    EveryOp: quantized input, stem conv with BN folded (batch or given statistics), ReLU, quantized."""

    def fq(t: torch.Tensor, lo: float, hi: float, bits: int = 4) -> torch.Tensor:
        s, z = qparams(lo, hi, bits)
        return torch.fake_quantize_per_tensor_affine(t, s, z, 0, 2**bits - 1)

    conv, bn = m.stem[0], m.stem[1]
    xq = fq(x, *(ranges["x"] if ranges else (x.min().item(), x.max().item())))
    if stats is None:
        y = F.conv2d(xq, conv.weight, None, padding=1)
        mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    else:
        mean, var = stats["stem.1"]
    w, b = fold_bn(conv.weight, None, bn.weight, bn.bias, mean, var, bn.eps)
    w = fq(w, w.min().item(), w.max().item())
    y = F.relu(F.conv2d(xq, w, b, padding=1))
    return fq(y, *(ranges["stem_0"] if ranges else (0.0, y.max().item())))


@pytest.mark.parametrize("mode", ["batch", "calibrated"])
def test_protocol_matches_hand_written_reference(mode: str) -> None:
    m = _module()
    qm = prepare(m)
    x = _images()
    calib = calibrate(qm, _images(48, seed=1), batch_size=16) if mode == "calibrated" else None
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        original = qm._activation

        def spy(step, y, ctx, fresh):  # capture the stem's quantized output
            out = original(step, y, ctx, fresh)
            seen.setdefault(step.name, out.clone())
            return out

        qm._activation = spy  # type: ignore[method-assign]
        qm(x, "w4a4", calib, channels_last=False)
        stats = dict(calib.bn) if calib else None
        ranges = dict(calib.ranges) if calib else None
        ref = _reference_w4a4(m, x, stats, ranges)
    # Equal, except that float rounding (torch's batch-norm kernel vs mean/var) may move a rare value
    # that sits on a rounding boundary by one quantization step.
    diff = (seen["stem_0"] - ref).abs()
    step = ref.unique().diff().min()
    assert (diff > 1e-5).float().mean() < 0.005 and diff.max() <= step * 1.01


def test_calibrated_mode_is_batch_independent_and_batch_mode_is_not() -> None:
    m = _module()
    qm = prepare(m)
    x = _images(64)
    with torch.no_grad():
        calib = calibrate(qm, _images(64, seed=2))
        whole = qm(x, "w4a4", calib)
        parts = torch.cat([qm(xb, "w4a4", calib) for xb in x.split(16)])
        torch.testing.assert_close(whole, parts, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(qm(x, "w4a4"), torch.cat([qm(xb, "w4a4") for xb in x.split(16)]), atol=1e-3)


def test_calibration_pools_batches() -> None:
    m = _module()
    qm = prepare(m)
    x = _images(64)
    with torch.no_grad():
        one = calibrate(qm, x, batch_size=64)
        four = calibrate(qm, x, batch_size=16)
    assert one.num_images == four.num_images == 64
    assert set(one.bn) == set(qm.bn_names) and set(one.ranges) == set(qm.quant_points)
    torch.testing.assert_close(one.bn["stem.1"][0], four.bn["stem.1"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one.bn["stem.1"][1], four.bn["stem.1"][1], atol=1e-5, rtol=1e-4)
    # Ranges are the mean of the batches' min and max, not the global extremes.
    assert one.ranges["x"] == pytest.approx((x.min().item(), x.max().item()))
    chunks = x.split(16)
    mean_lo = sum(c.min().item() for c in chunks) / 4
    mean_hi = sum(c.max().item() for c in chunks) / 4
    assert four.ranges["x"] == pytest.approx((mean_lo, mean_hi))


def test_activation_range_rule_parses_and_defaults_by_bits() -> None:
    assert QuantSpec.parse("w2a2").act_percentile(2) == LOW_BIT_ACT_PERCENTILE < 100.0
    assert QuantSpec.parse("w4a4").act_percentile(4) == 100.0  # GHN-Q's min/max from 3 bits up
    for name, q in (("w2a2-minmax", 100.0), ("w4a4-channel-p99.9", 99.9), ("w2a2-noise-p99", 99.0)):
        spec = QuantSpec.parse(name)
        assert spec.a_percentile == q and spec.act_percentile(2) == spec.act_percentile(8) == q
        assert QuantSpec.parse(spec.name) == spec
    assert QuantSpec.parse("w2a2-minmax").name == "w2a2-minmax"
    assert with_granularity("w2a2-minmax", "channel") == ["w2a2-channel-minmax"]
    assert [QuantSpec.parse(n).spelled_out().name for n in ("fp32", "w2a2", "w4a4-channel", "w8a32", "w4a4-p99")] == [
        "fp32", f"w2a2-p{LOW_BIT_ACT_PERCENTILE:g}", "w4a4-channel-minmax", "w8a32", "w4a4-p99"]
    for bad in ("w2a2-p50", "w2a2-p101", "w2a2-minmax-p99", "w2a2-pq"):
        with pytest.raises(QnasError):
            QuantSpec.parse(bad)


def test_percentile_of_a_large_tensor_is_sampled_close_and_deterministic() -> None:
    x = torch.randn(64, 16, 28, 28, generator=torch.Generator().manual_seed(3))  # 800k values: sampled
    flat = x.flatten()
    got = percentile(x, 99.5)
    assert got == percentile(x, 99.5)
    rank = (flat <= got).float().mean().item()
    assert abs(rank - 0.995) < 0.0015  # ~5 s.d. of a 65,536-value sample
    small = x[:1, :1]  # 784 values: exact
    assert percentile(small, 99.5) == small.flatten().kthvalue(math.ceil(0.995 * 784)).values.item()


def test_low_bit_activation_ranges_are_percentiles() -> None:
    """At 2 bits the calibrated range of a point is the mean over batches of each batch's percentile (the
    network input has no ReLU: both ends), and `-minmax` restores min/max."""
    m = _module()
    qm = prepare(m)
    x = _images(64)
    x[0, 0, 0, 0] = 40.0  # one outlier: min/max would spend the 4 levels on it
    with torch.no_grad():
        pct = calibrate(qm, x, spec="w2a2", batch_size=32).ranges["x"]
        mm = calibrate(qm, x, spec="w2a2-minmax", batch_size=32).ranges["x"]
        w4 = calibrate(qm, x, spec="w4a4", batch_size=32).ranges["x"]
    q = LOW_BIT_ACT_PERCENTILE / 100.0
    halves = [c.flatten().sort().values for c in x.split(32)]
    n = halves[0].numel()
    k = math.ceil(q * n)
    assert pct == pytest.approx((sum(h[n - k].item() for h in halves) / 2, sum(h[k - 1].item() for h in halves) / 2))
    assert mm == w4 == pytest.approx((sum(h[0].item() for h in halves) / 2, sum(h[-1].item() for h in halves) / 2))
    assert pct[1] < 5.0 < mm[1]
    # Batch mode (no calibration, as QAT trains) clips the same way.
    with torch.no_grad():
        seen: dict[str, float] = {}
        original = qm._activation

        def spy(step, t, ctx, fresh):
            out = original(step, t, ctx, fresh)
            seen.setdefault(step.name, float(out.max()))
            return out

        qm._activation = spy  # type: ignore[method-assign]
        qm(x, "w2a2")
        qm._activation = original  # type: ignore[method-assign]
    assert seen["x"] < 5.0  # the outlier was clipped, not given a level


def test_calibration_at_a_setting_reproduces_batch_statistics_on_its_batch() -> None:
    """Calibrating the network *at* a setting records the quantized network's own BN statistics and
    ranges: frozen, it then computes on that batch what batch statistics compute."""
    m = _module()
    qm = prepare(m)
    x = _images(64)
    with torch.no_grad():
        for setting in ("w8a8", "w4a4"):
            calib = calibrate(qm, x, spec=setting)
            frozen, batch = qm(x, setting, calib), qm(x, setting)
            assert (frozen.argmax(1) == batch.argmax(1)).float().mean() >= 0.95
            assert (frozen - batch).abs().median() < 1e-4  # rare rounding flips aside
            float_calib = calibrate(qm, x)  # statistics of the float network differ at low bits
            assert (qm(x, setting, float_calib) - batch).abs().median() > (frozen - batch).abs().median()


@pytest.mark.parametrize("setting", ["fp32", "w4a4", "w2a2-noise", "w4a8-channel-fl8"])
@pytest.mark.parametrize("mode", ["batch", "calibrated"])
def test_gradient_reaches_every_parameter(setting: str, mode: str) -> None:
    m = _module()
    qm = prepare(m)
    x = _images()
    calib = calibrate(qm, x) if mode == "calibrated" else None
    params = {k: (v.detach() * 1.01).requires_grad_() for k, v in m.named_parameters()}
    y = torch.arange(len(x)) % 10
    logits = torch.func.functional_call(qm, params, (x, setting, calib), {"generator": torch.Generator()})
    F.cross_entropy(logits, y).backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in m.parameters())  # the module's own tensors were not used
    # The params= argument is the same computation without functional_call.
    logits2 = qm(x, setting, calib, params=params, generator=torch.Generator())
    torch.testing.assert_close(logits2, logits)


def test_space_module_runs_at_every_setting() -> None:
    genome = convnets250k.sample(random.Random(5), max_params=200_000)
    m = convnets250k.build(genome)
    qm = prepare(m)
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        calib = calibrate(qm, x)
        for name in SETTINGS:
            for c in (None, calib):
                out = qm(x, name, c)
                assert out.shape == (16, 10) and torch.isfinite(out).all()


def test_first_last_8bit_flags() -> None:
    qm = prepare(_module())
    steps = {s.name: s for s in qm.program}
    weighted = [s for s in qm.program if s.kind in ("conv", "linear")]
    assert [s.name for s in weighted if s.w8] == [weighted[0].name, weighted[-1].name]
    assert [s.name for s in qm.program if s.a8] == ["x", "head_0"]  # the input, the last layer's input
    assert not steps["head_2"].quant  # logits stay float


def test_unsupported_layers_are_named() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv(x))

    with pytest.raises(QnasError, match="'act'.*GELU"):
        prepare(Odd())

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(QnasError, match="cannot trace"):
        prepare(Branchy())


def test_strided_pointwise_conv_with_few_channels_trains_in_channels_last() -> None:
    """PyTorch 2.13's channels_last backward of such a conv corrupts memory: the executor and the trainer
    avoid it (run in a subprocess, so a regression is a failed test, not a crashed test run)."""
    import subprocess
    import sys

    code = """
import torch
from torch import nn
from qnas.quant import channels_last_unsafe, prepare
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 1, stride=2), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
assert channels_last_unsafe(net[2]) and not channels_last_unsafe(net[0])
qm = prepare(net)
x = torch.randn(16, 1, 28, 28)
grads = []
for cl in (True, False):
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    out = torch.func.functional_call(qm, params, (x,), {"spec": "w8a8", "channels_last": cl})
    out.square().sum().backward()
    grads.append([params[k].grad for k in params])
for a, b in zip(*grads):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
from qnas import data
from qnas.train import train
info = data.dataset_info("fashion-mnist")
imgs = torch.randint(0, 255, (128, 1, 28, 28), dtype=torch.uint8)
labels = torch.randint(0, 10, (128,))
ds = data.Dataset(info, imgs, labels, imgs[:32], labels[:32], imgs[:32], labels[:32])
train(net, ds, 1, seed=0, batch_size=32, test=False)  # FP32: the module itself, in a safe layout
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
