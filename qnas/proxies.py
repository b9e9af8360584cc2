"""Zero-cost proxies: score an untrained CNN from one or two passes at initialization.

    synflow(module, input_shape)   # Tanaka et al. 2020, as used by Abdelfattah et al. 2021
    naswot(module, images)         # Mellor et al. 2021, "Neural Architecture Search without Training"

They are the cheap baselines the GHN predictor must beat (benchmarks/ranking.py) and cheap scorers
in their own right. Both read the module's *current* parameters (seed its construction to make a
score reproducible) and neither changes the module: they work on a deep copy.

SynFlow. Replace every parameter by its absolute value, feed one all-ones input, let R be the sum
of the outputs; the score is the sum of |theta * dR/dtheta| (the paper's "synaptic saliency") over
the weights of every conv and linear layer, the prunable parameters SynFlow was defined on and what
the Zero-Cost Proxies code sums (biases still carry signal, they are just not scored). BatchNorm is
removed, as in that code (``bn=False``): with a single constant input, batch statistics would subtract the signal
away, and BN at initialization (scale 1, shift 0, running var 1) is an identity up to 1/sqrt(1+eps)
anyway. The pass runs in float64 because R is a product over depth and overflows float32 for deep
nets. With all weights positive, max pooling passes the same paths as average pooling would
weight, so pooling needs no special case.

NASWOT. For a mini-batch of N images, every ReLU unit gives each image a binary code (active or
not); K_H[i, j] = number of units where images i and j agree (N_A minus the Hamming distance of
their codes, summed over all ReLU layers); the score is log|det K_H|. The codes are read from every
ReLU-like call of the forward pass, module (``nn.ReLU``) or functional (``F.relu``, ``x.relu()``), through a
``TorchFunctionMode``, so a user's net with functional activations is scored like one with modules.
Networks whose units separate the images well get a kernel close to diagonal and a high score.
BatchNorm uses batch statistics (training mode, as in the paper's code) on the copy, so no running
statistics are touched. A net
whose codes cannot tell two images apart has a singular kernel: its score is -inf, the honest
bottom of the ranking.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from qnas.errors import QnasError

__all__ = ["naswot", "synflow"]

# ReLU-like calls, each > 0 exactly where its input is (nn.ReLU, nn.Hardswish, nn.SiLU call these; nn.ReLU6
# calls F.hardtanh with min_val 0).
_RELU_CALLS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
                         F.hardswish, F.silu})
_SCORED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # layers whose weights SynFlow sums


def _without_batchnorm(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every BatchNorm layer replaced by an identity."""
    net = copy.deepcopy(module)
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.Identity())
    return net


def synflow(module: nn.Module, input_shape: Sequence[int]) -> float:
    """SynFlow score of ``module`` at its current parameters (higher is better); float64, >= 0.

    ``input_shape`` is (C, H, W) of one image. Returns ``inf`` only if R overflows float64.
    """
    if len(input_shape) != 3:
        raise QnasError(f"synflow needs input_shape (C, H, W), got {tuple(input_shape)}")
    net = _without_batchnorm(module).to(torch.float64).eval()
    weights = [m.weight for m in net.modules() if isinstance(m, _SCORED) and m.weight.requires_grad]
    if not weights:
        raise QnasError("synflow needs a module with trainable conv or linear weights")
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    for p in net.parameters():
        p.grad = None
    x = torch.ones((1, *input_shape), dtype=torch.float64)
    with torch.enable_grad():
        net(x).sum().backward()
    with torch.no_grad():
        return sum(float((w * w.grad).abs().sum()) for w in weights if w.grad is not None)


class _ReluCodes(TorchFunctionMode):
    """Passes the output of every ReLU-like call of a forward pass to ``record`` (nested calls are not seen:
    a mode is off while its own handler runs, so ``nn.ReLU`` -> ``F.relu`` -> ``torch.relu`` counts once)."""

    def __init__(self, record) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        relu6 = func is F.hardtanh and (args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)) == 0.0
        if (func in _RELU_CALLS or relu6) and isinstance(out, torch.Tensor):
            self.record(out)
        return out


def naswot(module: nn.Module, images: torch.Tensor) -> float:
    """NASWOT score log|K_H| of ``module`` on a mini-batch ``images`` (N, C, H, W), higher is better.

    Reads every ReLU-like activation (ReLU, ReLU6, Hardswish, SiLU: each positive exactly where its input
    is, so the code is the ReLU's), as a module or a function; a net with none is an error rather than a
    meaningless score. Returns ``-inf`` when K_H is singular.
    """
    if images.dim() != 4 or len(images) < 2:
        raise QnasError(f"naswot needs a batch of at least 2 images (N, C, H, W), got {tuple(images.shape)}")
    net = copy.deepcopy(module).train()
    n = len(images)
    kernel = torch.zeros(n, n, dtype=torch.float64)
    layers = [0]

    def _record(out: torch.Tensor) -> None:
        # Output > 0 equals input > 0 for ReLU, and stays right for in-place ReLUs.
        code = (out.detach().reshape(n, -1) > 0).to(torch.float32)
        # Agreements c c^T + (1-c)(1-c)^T = units - s_i - s_j + 2 c c^T (s: active units per image), one
        # matmul; float32 counts are exact below 2^24 units per layer.
        units = code.shape[1]
        if units >= 1 << 24:
            code = code.double()
        both_on = (code @ code.T).double()
        active = code.sum(1).double()
        kernel.add_(units - active[:, None] - active[None, :] + 2.0 * both_on)
        layers[0] += 1

    params = list(net.parameters())
    with torch.no_grad(), _ReluCodes(_record):
        net(images.to(params[0].dtype if params else images.dtype))
    if not layers[0]:
        raise QnasError("naswot reads binary codes from ReLU-like activations (ReLU, ReLU6, Hardswish, SiLU); "
                        "this net has none")
    sign, logdet = torch.linalg.slogdet(kernel)
    if sign <= 0:  # singular (or numerically so): no images told apart
        return -math.inf
    return float(logdet)
