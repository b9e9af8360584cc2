"""SynFlow and NASWOT: analytic values on tiny nets, determinism, no side effects, degenerate nets last."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qnas.errors import QnasError
from qnas.proxies import naswot, synflow


def _small_cnn(seed: int, bn: bool = True, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1, bias=not bn)]
    layers += [nn.BatchNorm2d(width)] if bn else []
    layers += [nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(width, width, 3, padding=1, bias=not bn)]
    layers += [nn.BatchNorm2d(width)] if bn else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    return nn.Sequential(*layers)


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_synflow_equals_depth_times_R_for_bias_free_linear_chain() -> None:
    # R is linear in each layer's weights, so sum(theta * dR/dtheta) over one layer is R itself.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))
    w1, w2 = net[0].weight.detach().double().abs(), net[1 + 1].weight.detach().double().abs()
    r = float((w2 @ w1 @ torch.ones(4, dtype=torch.float64)).sum())
    assert synflow(net, (1, 1, 4)) == pytest.approx(2 * r, rel=1e-12)


def test_synflow_removes_batchnorm_and_leaves_module_untouched() -> None:
    with_bn, without_bn = _small_cnn(1, bn=True), _small_cnn(1, bn=False)
    # Same conv weights (biases of the BN-free net zeroed): removing BN must give the same score.
    with torch.no_grad():
        convs = [[m for m in net if isinstance(m, nn.Conv2d)] for net in (with_bn, without_bn)]
        for a, b in zip(*convs):
            b.weight.copy_(a.weight)
            b.bias.zero_()
        without_bn[-1].load_state_dict(with_bn[-1].state_dict())
    before = {k: v.clone() for k, v in with_bn.state_dict().items()}
    s1, s2 = synflow(with_bn, (1, 12, 12)), synflow(with_bn, (1, 12, 12))
    assert math.isfinite(s1) and s1 > 0 and s1 == s2
    assert s1 == pytest.approx(synflow(without_bn, (1, 12, 12)), rel=1e-9)
    for k, v in with_bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert next(with_bn.parameters()).dtype == torch.float32


def test_synflow_ranks_disconnected_net_last() -> None:
    good, dead = _small_cnn(2), _small_cnn(2)
    with torch.no_grad():
        dead[4].weight.zero_()  # the second conv passes nothing: no path from input to output
    # Only the classifier bias still reaches R, and biases are not scored: exactly zero.
    assert synflow(dead, (1, 12, 12)) == 0.0 < synflow(good, (1, 12, 12))
    # More channels, more paths: a wider net scores higher at the same init scheme.
    assert synflow(_small_cnn(3, width=16), (1, 12, 12)) > synflow(_small_cnn(3, width=2), (1, 12, 12))
    with pytest.raises(QnasError, match="input_shape"):
        synflow(good, (12, 12))


def test_naswot_known_kernel() -> None:
    # Codes [1, 0] and [1, 1] over N_A = 2 units: K = [[2, 1], [1, 2]], det 3.
    x = torch.tensor([[1.0, -1.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    assert naswot(nn.ReLU(), x) == pytest.approx(math.log(3.0))


def test_naswot_finite_deterministic_and_side_effect_free() -> None:
    net, x = _small_cnn(4), _images()
    stats = net[1].running_mean.clone()
    a, b = naswot(net, x), naswot(net, x)
    assert math.isfinite(a) and a == b
    assert torch.equal(net[1].running_mean, stats) and net[1].num_batches_tracked.item() == 0


def test_naswot_ranks_dead_and_constant_nets_last() -> None:
    x = _images()
    good, dead = _small_cnn(5, bn=False), _small_cnn(5, bn=False)
    with torch.no_grad():
        dead[0].bias.fill_(-1e3)  # every first-layer unit off for every image -> constant downstream
    assert naswot(dead, x) == -math.inf < naswot(good, x)
    with pytest.raises(QnasError, match="has none"):
        naswot(nn.Sequential(nn.Flatten(), nn.Linear(144, 10)), x)
    with pytest.raises(QnasError, match="at least 2"):
        naswot(good, x[:1])


def test_proxies_run_on_a_search_space_net() -> None:
    from search_spaces import convnets250k

    genome = convnets250k.from_string("stem8-8:sep3,mb3k3+r-maxpool-16:dil3+r-convs2-32:conv1-fc16")
    torch.manual_seed(0)
    net = convnets250k.build(genome)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert math.isfinite(synflow(net, (1, 28, 28))) and synflow(net, (1, 28, 28)) > 0
    assert math.isfinite(naswot(net, x))


def test_naswot_reads_hardswish_and_silu_as_their_relu_codes() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 12, 12)
    conv = nn.Conv2d(1, 4, 3)
    scores = [naswot(nn.Sequential(conv, act(), nn.Flatten(), nn.Linear(400, 3)), x)
              for act in (nn.ReLU, nn.Hardswish, nn.SiLU)]
    assert scores[0] == scores[1] == scores[2] and math.isfinite(scores[0])


def test_naswot_reads_functional_activations_as_their_modules() -> None:
    """A user's net calling F.relu / x.relu() / F.relu6 scores exactly as the same net with modules."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 12, 12)
    conv, lin = nn.Conv2d(1, 4, 3), nn.Linear(400, 16)

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.lin = conv, lin

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return F.relu6(self.lin(torch.flatten(F.relu(self.conv(t)), 1))).relu()

    modules = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), lin, nn.ReLU6(), nn.ReLU())
    assert naswot(Functional(), x) == naswot(modules, x)
    assert math.isfinite(naswot(Functional(), x))
    # F.hardtanh is ReLU-like only as ReLU6 (min 0): a tanh-like clamp alone gives no codes
    with pytest.raises(QnasError, match="has none"):
        naswot(nn.Sequential(nn.Flatten(), nn.Linear(144, 10), nn.Hardtanh()), x)
