"""The readout: the last layer solved in closed form on a network's own features (qnas.readout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qnas.errors import QnasError
from qnas.quant import QuantSpec, calibrate, prepare
from qnas.readout import Readout, fit_head, head_step, solve_head
from qnas.score import evaluate


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is which of 4 quadrants is bright: a pooled-feature linear head can read it."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = 0.3 * torch.randn(n, 1, 12, 12, generator=gen)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, 6 * r : 6 * r + 6, 6 * q : 6 * q + 6] += 2.0
    return x, y


def _linear_head_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 4))


def _conv_head_net(relu: bool) -> nn.Module:  # SqueezeNet's head: a 1x1 conv pooled to the logits
    torch.manual_seed(0)
    tail = [nn.ReLU()] if relu else []
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(6), nn.Conv2d(8, 4, 1), *tail,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_the_head_is_the_ridge_solution_on_the_features_up_to_a_temperature() -> None:
    net = _linear_head_net()
    x, y = _separable(300, 0)
    readout = Readout(x, y, ridge=3.0)
    qm = prepare(net)
    params = fit_head(qm, None, QuantSpec.parse("fp32"), None, readout)
    feats = net[:-1](x).detach().double().numpy()  # what the last layer reads, computed independently
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    a = np.hstack([(feats - mu) / sd, np.ones((len(feats), 1))])
    reg = 3.0 * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalized
    w = np.linalg.solve(a.T @ a + reg, a.T @ np.eye(4)[y.numpy()])
    coef = (w[:-1] / sd[:, None]).T
    got = params["4.weight"].double().numpy()
    ratio = got / coef
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-3)  # the same solution, scaled by one temperature
    assert ratio.flat[0] > 0
    bias = w[-1] - coef @ mu
    assert np.allclose(params["4.bias"].double().numpy(), bias * ratio.flat[0], rtol=1e-3, atol=1e-6)
    assert set(params) == {"4.weight", "4.bias"}  # the other layers keep what they were given


def test_a_fitted_head_reads_features_a_random_head_does_not() -> None:
    x, y = _separable(400, 1)
    tx, ty = _separable(400, 2)
    net = _linear_head_net()
    plain = evaluate(net, None, tx, ty, ["fp32", "w4a4"])
    fitted = evaluate(net, None, tx, ty, ["fp32", "w4a4"], readout=Readout(x, y))
    assert plain["fp32"]["top1"] < 0.5  # a random head on 4 classes
    assert fitted["fp32"]["top1"] > 0.9
    assert fitted["w4a4"]["top1"] > 0.8
    assert fitted["fp32"]["loss"] < plain["fp32"]["loss"]  # the temperature makes the loss meaningful


@pytest.mark.parametrize("relu", [False, True])
def test_a_pooled_1x1_conv_head_is_fitted_on_its_pixels(relu: bool) -> None:
    x, y = _separable(300, 3)
    tx, ty = _separable(300, 4)
    net = _conv_head_net(relu)
    assert head_step(prepare(net)) is not None
    # At 4 bits the head's output range (after the fitted head's ReLU) must be measured again.
    acc = evaluate(net, None, tx, ty, ["fp32", "w4a4"], readout=Readout(x, y), calib_size=64)
    assert acc["fp32"]["top1"] > 0.7
    assert acc["w4a4"]["top1"] > 0.6


def test_heads_it_cannot_solve_keep_their_parameters() -> None:
    torch.manual_seed(0)
    spatial = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    qm = prepare(spatial)
    assert head_step(qm) is None
    x, y = _separable(50, 5)
    given = {"2.weight": torch.ones(4, 8, 3, 3)}
    assert fit_head(qm, given, QuantSpec.parse("fp32"), None, Readout(x, y)) == given


def test_non_finite_features_keep_the_given_head() -> None:
    net = _linear_head_net()
    x, y = _separable(50, 6)
    qm = prepare(net)
    huge = {"0.weight": torch.full((8, 1, 3, 3), float("inf"))}
    assert fit_head(qm, huge, QuantSpec.parse("fp32"), None, Readout(x, y)) == huge


def test_features_are_the_quantized_ones_at_a_quantized_setting() -> None:
    net = _linear_head_net()
    x, y = _separable(200, 7)
    qm = prepare(net)
    spec = QuantSpec.parse("w4a4")
    cal = calibrate(qm, x[:64], spec=spec)
    fp = fit_head(qm, None, QuantSpec.parse("fp32"), None, Readout(x, y))
    q = fit_head(qm, None, spec, cal, Readout(x, y))
    assert not torch.allclose(fp["4.weight"], q["4.weight"])


def test_a_readout_needs_labelled_images_and_a_positive_penalty() -> None:
    x, y = _separable(10, 8)
    with pytest.raises(QnasError, match="labelled images"):
        Readout(x, y[:5])
    with pytest.raises(QnasError, match="ridge"):
        Readout(x, y, ridge=0.0)
    with pytest.raises(QnasError, match="batch size"):
        Readout(x, y, batch_size=0)
    with pytest.raises(QnasError, match="class indices"):
        Readout(x, y.float())


def test_a_bias_free_head_is_the_ridge_solution_without_an_intercept() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 4, bias=False))
    x, y = _separable(300, 9)
    params = fit_head(prepare(net), None, QuantSpec.parse("fp32"), None, Readout(x, y, ridge=3.0))
    feats = net[:-1](x).detach().double().numpy()  # post-ReLU: a large mean a bias-free head must not drop
    sd = feats.std(0) + 1e-6
    a = feats / sd
    w = np.linalg.solve(a.T @ a + 3.0 * np.eye(a.shape[1]), a.T @ np.eye(4)[y.numpy()])
    coef = (w / sd[:, None]).T
    ratio = params["4.weight"].double().numpy() / coef
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-3) and ratio.flat[0] > 0
    assert set(params) == {"4.weight"}
    tx, ty = _separable(300, 10)
    assert evaluate(net, None, tx, ty, ["fp32"], readout=Readout(x, y))["fp32"]["top1"] > 0.9


def test_a_last_layer_narrower_than_the_classes_is_not_a_head() -> None:
    net = _linear_head_net()  # 4 outputs
    qm = prepare(net)
    assert head_step(qm, num_classes=4) is not None and head_step(qm, num_classes=10) is None
    x, _ = _separable(50, 11)
    labels = torch.arange(50) % 10  # labels the 4-wide layer cannot be the classifier of
    assert fit_head(qm, {}, QuantSpec.parse("fp32"), None, Readout(x, labels)) == {}


def test_the_protocol_names_a_fit_size_other_than_the_default() -> None:
    from qnas.defaults import DEFAULT_FIT_SIZE
    from qnas.readout import head_label

    x, y = _separable(20, 12)
    assert Readout(x, y).protocol_tag == Readout(x, y).label == "fit20" == head_label(Readout(x, y))
    big = Readout(torch.zeros(DEFAULT_FIT_SIZE, 1, 2, 2), torch.zeros(DEFAULT_FIT_SIZE, dtype=torch.long))
    assert big.protocol_tag == "fit" and big.label == f"fit{DEFAULT_FIT_SIZE}"
    assert head_label(None) == "keep"


def test_solving_the_head_leaves_the_calibration_as_it_was() -> None:
    """Why an export reuses a setting's calibration across the head solve: where the head gives the float logits,
    no activation range and no BatchNorm statistic depends on the last layer that solve_head writes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 4))
    x, y = _separable(120, 9)
    qm, spec = prepare(net), QuantSpec.parse("w4a4")
    before = calibrate(qm, x[:64], spec=spec)
    assert solve_head(net, qm, spec, before, Readout(x, y))
    after = calibrate(qm, x[:64], spec=spec)
    assert after.ranges == before.ranges and before.ranges
    assert before.bn.keys() == after.bn.keys() and before.bn
    assert all(torch.equal(a, b) for k in before.bn for a, b in zip(before.bn[k], after.bn[k], strict=True))
    assert not head_step(qm).quant
    # A 1x1 conv head pooled to the logits is itself quantized (pooling requantizes): its range moves with the
    # solve, so the export calibrates again there.
    conv = _conv_head_net(relu=False)
    qc = prepare(conv)
    before = calibrate(qc, x[:64], spec=spec)
    assert head_step(qc).quant and solve_head(conv, qc, spec, before, Readout(x, y))
    assert calibrate(qc, x[:64], spec=spec).ranges != before.ranges


def test_the_protocol_tag_reads_back_as_the_fit_size() -> None:
    from qnas.readout import fit_size_of

    x, y = _separable(20, 12)
    for scaling, rule in (("auto", 8), ("auto", None), ("global", 8), ("feature", None)):
        tag = Readout(x, y, scaling=scaling).protocol_tag_for(rule)
        assert fit_size_of(f"calibrated/channel/a2p99.5/fl8/w8sym/{tag}") == 20, tag
    assert fit_size_of("calibrated/channel/a2p99.5/fl8/w8sym") is None  # the network's own head
    for bad in ("fit0", "fitX", "fit-1", "fit\u00b2"):
        with pytest.raises(QnasError, match="names no fit size"):
            fit_size_of(f"calibrated/{bad}")


def _with_rare_features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight informative features and eight that are zero but on a few images (tiny variance)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=gen)
    x = 0.5 * torch.randn(n, 16, generator=gen)
    x[torch.arange(n), y] += 1.5
    x[torch.arange(n), 4 + y] += 1.5
    rare = torch.zeros(n, 8)
    rare[torch.randperm(n, generator=gen)[:16], torch.arange(16) % 8] = 0.05
    return torch.cat([x, rare], 1).view(n, 1, 1, 24), y


def test_a_head_quantized_below_8_bits_is_fitted_with_one_scale_for_every_feature() -> None:
    # Standardized, the rare features get raw weights that size the 4-bit grid and zero the rest.
    torch.manual_seed(0)
    qm = prepare(nn.Sequential(nn.Flatten(), nn.Linear(24, 4)))
    x, y = _with_rare_features(400, 0)
    tx, ty = _with_rare_features(400, 1)
    settings = ["fp32", "w8a8-channel", "w4a8-channel", "w2a8-channel"]
    acc = {s: {k: v["top1"] for k, v in evaluate(qm, None, tx, ty, settings, readout=Readout(x, y, scaling=s)).items()}
           for s in ("auto", "feature", "global")}
    for low in ("w4a8-channel", "w2a8-channel"):
        assert acc["auto"][low] == acc["global"][low] > 0.9
    assert acc["feature"]["w4a8-channel"] < 0.7 and acc["feature"]["w2a8-channel"] < 0.5
    for at_8_bits_or_float in ("fp32", "w8a8-channel"):
        assert acc["auto"][at_8_bits_or_float] == acc["feature"][at_8_bits_or_float] > 0.9
    # Under the first/last-layer rule the head stays at 8 bits: standardized per feature again.
    fl8 = evaluate(qm, None, tx, ty, ["w4a8-channel-fl8"], readout=Readout(x, y))["w4a8-channel-fl8"]["top1"]
    assert fl8 == evaluate(qm, None, tx, ty, ["w4a8-channel-fl8"],
                           readout=Readout(x, y, scaling="feature"))["w4a8-channel-fl8"]["top1"]
    assert [Readout(x, y).scaling_at(b) for b in (None, 8, 4, 2)] == ["feature", "feature", "global", "global"]
    # Protocols say so where the scores differ: without the rule (the head at the setting's bits).
    assert Readout(x, y).protocol_tag_for(8) == "fit400" == Readout(x, y, scaling="feature").protocol_tag_for(None)
    assert Readout(x, y).protocol_tag_for(None) == "fit400-gs" == Readout(x, y, scaling="global").protocol_tag_for(8)
    with pytest.raises(QnasError, match="scaling"):
        Readout(x, y, scaling="none")


def test_solve_head_writes_the_fitted_head_into_the_module_or_reports_it_could_not() -> None:
    x, y = _separable(80, 7)
    net = _linear_head_net()
    qm = prepare(net)
    expected = fit_head(qm, dict(net.named_parameters()), QuantSpec.parse("fp32"), None, Readout(x, y))
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    assert solve_head(net, qm, QuantSpec.parse("fp32"), None, Readout(x, y))
    after = dict(net.named_parameters())
    assert torch.equal(after["4.weight"], expected["4.weight"]) and torch.equal(after["4.bias"], expected["4.bias"])
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("4."))
    torch.manual_seed(0)
    spatial = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    kept = {k: v.detach().clone() for k, v in spatial.named_parameters()}
    assert not solve_head(spatial, prepare(spatial), QuantSpec.parse("fp32"), None, Readout(x, y))
    assert all(torch.equal(v, kept[k]) for k, v in spatial.named_parameters())
