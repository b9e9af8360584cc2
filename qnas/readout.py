"""The readout: a network's classifier solved in closed form on its own predicted features.

    readout = Readout(images, labels)                    # labelled training images, never the scored ones
    params = fit_head(qmodel, params, spec, calibration, readout)
    # every parameter as given (the GHN's), but the last layer's weight and bias: ridge regression of
    # one-hot labels on that layer's input, as the network computes it at ``spec``

Why: the GHN's predicted *features* are about as linearly separable on users' families (DenseNets,
wide shallow nets, LeNet, BN-free VGGs) as on the search space's nets, but its predicted *classifier*
throws 15-50 points of that away there (``benchmarks/head_probe.py``, docs/predictor.md). Solving the
last layer costs one ridge solve per setting and a forward pass over the fit images: no gradient step,
nothing trained. A temperature fitted on the same images scales the logits, so the cross-entropy is
meaningful (least squares on one-hot targets gives near-uniform softmax otherwise).

Scaling: the ridge standardizes each feature when the head's weights are float or 8-bit, and gives every
feature one common scale when they are quantized below 8 bits (``scaling="auto"``): per-feature
standardization hands rarely active, low-variance features large raw weights, and a 4- or 2-bit grid
sized by those leaves the rest at zero (``benchmarks/head_scaling.py``, docs/predictor.md).

Heads it solves: a ``Linear`` layer, or a 1x1 ``Conv2d`` whose output is pooled to the logits
(SqueezeNet), fitted on every pixel (subsampled to ``max_rows``). Other last layers (a spatial conv,
one followed by BatchNorm) keep the GHN's parameters: :func:`head_step` returns None for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qnas.errors import QnasError
from qnas.quant import Calibration, QuantModel, QuantSpec, Step, layer_bits

__all__ = ["DEFAULT_RIDGE", "SCALINGS", "Readout", "fit_head", "fit_size_of", "head_label", "head_step", "make_readout",
           "solve_head"]

DEFAULT_RIDGE = 10.0  # on standardized features; the same prior as benchmarks/head_probe.py
SCALINGS = ("auto", "feature", "global")  # how features are scaled for the ridge (module docstring)


@dataclass(frozen=True, eq=False)
class Readout:
    """The labelled images a head is fitted on (normalized, N x C x H x W), the ridge penalty and how the
    features are scaled for it (``auto``: per feature, or one scale for all where the head's weights are
    quantized below 8 bits; ``feature`` or ``global`` always)."""

    images: torch.Tensor
    labels: torch.Tensor
    ridge: float = DEFAULT_RIDGE
    batch_size: int = 64  # as scoring batches: the same results, faster than larger ones (scoring_overhead.py)
    max_rows: int = 50_000  # pixels of a convolutional head: a random subset of them beyond this
    seed: int = 0
    scaling: str = "auto"

    @classmethod
    def from_dataset(cls, ds: Any, size: int, seed: int = 0) -> Readout:
        """``size`` labelled images of ``ds``'s training split (``qnas.data.train_subset``; all of them when it
        holds fewer: the scorer's protocol string records how many)."""
        from qnas.data import train_subset

        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise QnasError(f"the fit size must be a positive number of images, got {size!r}")
        return cls(*train_subset(ds, min(size, len(ds.train_labels)), seed=seed), seed=seed)

    def __post_init__(self) -> None:
        if self.images.dim() < 2 or len(self.images) == 0 or len(self.images) != len(self.labels):
            raise QnasError(f"a readout needs labelled images, got {tuple(self.images.shape)} images and "
                            f"{tuple(self.labels.shape)} labels")
        if self.labels.dim() != 1 or self.labels.is_floating_point() or int(self.labels.min()) < 0:
            raise QnasError("a readout's labels must be class indices (a 1-D tensor of non-negative integers)")
        if not self.ridge > 0 or self.batch_size <= 0 or self.max_rows <= 0:
            raise QnasError(f"a readout needs a positive ridge penalty, batch size and row cap, got {self.ridge}, "
                            f"{self.batch_size}, {self.max_rows}")
        if self.scaling not in SCALINGS:
            raise QnasError(f"a readout's scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")

    @property
    def label(self) -> str:
        """``fit<N>``: how results record this head."""
        return f"fit{len(self.labels)}"

    @property
    def protocol_tag(self) -> str:
        """This head in a scoring protocol: ``fit`` at the default fit size, ``fit<N>`` at another."""
        from qnas.defaults import DEFAULT_FIT_SIZE

        return "fit" if len(self.labels) == DEFAULT_FIT_SIZE else self.label

    def scaling_at(self, head_bits: int | None) -> str:
        """``feature`` or ``global`` for a head whose weights have ``head_bits`` (None: float); ``auto`` takes one
        scale below 8 bits, where the grid is too coarse for the large weights of rare features."""
        if self.scaling != "auto":
            return self.scaling
        return "global" if head_bits is not None and head_bits < 8 else "feature"

    def protocol_tag_for(self, first_last_bits: int | None) -> str:
        """:attr:`protocol_tag` in a protocol with that first/last-layer rule, ``-gs`` added where heads below 8
        bits get one common feature scale (``auto`` without the rule, where the head has the setting's bits)."""
        common = self.scaling == "global" or (self.scaling == "auto" and first_last_bits is None)
        return self.protocol_tag + ("-gs" if common else "")


def fit_size_of(protocol: str) -> int | None:
    """The fit size a scoring protocol's head tag names, the inverse of :meth:`Readout.protocol_tag_for`
    (``fit``, ``fit<N>``, either with ``-gs``); None where the protocol scored the network's own head."""
    from qnas.defaults import DEFAULT_FIT_SIZE

    head = protocol.split("/")[-1].removesuffix("-gs")
    if not head.startswith("fit"):
        return None
    if head == "fit":
        return DEFAULT_FIT_SIZE
    if not (head[3:].isascii() and head[3:].isdigit()) or int(head[3:]) < 1:
        raise QnasError(f"the scoring protocol {protocol!r} names no fit size ({head!r})")
    return int(head[3:])


def make_readout(ds: Any, head: str, fit_size: int | None, *, default: int, seed: int = 0) -> Readout | None:
    """The readout ``head`` scores with (None for ``keep``): ``fit_size`` training images of ``ds``, else
    ``default``; a fit size with another head is an error. The one place every scoring entry point asks."""
    if fit_size is not None and head != "fit":
        raise QnasError(f"a fit size applies to the fitted head only (head 'fit'), not {head!r}")
    return Readout.from_dataset(ds, default if fit_size is None else fit_size, seed=seed) if head == "fit" else None


def head_label(readout: Readout | None) -> str:
    """How results record the head: ``keep`` (the parameters' own) or ``fit<N>``."""
    return "keep" if readout is None else readout.label


def head_step(model: QuantModel, num_classes: int | None = None) -> Step | None:
    """The step of ``model``'s last weight layer if a readout can replace it, else None (also when its
    width is not ``num_classes``: then the logits come from somewhere else)."""
    weighted = [s for s in model.program if s.kind in ("conv", "linear")]
    if not weighted:
        return None
    step = weighted[-1]
    if step.bn is not None:
        return None
    if num_classes is not None and _width(step) != num_classes:
        return None
    if step.kind == "conv":
        m = step.module
        if m.kernel_size != (1, 1) or m.groups != 1 or m.stride != (1, 1) or m.padding not in ((0, 0), "valid"):
            return None
    return step


def _width(step: Step) -> int:
    return step.module.out_features if step.kind == "linear" else step.module.out_channels


def fit_head(
    model: QuantModel,
    params: Mapping[str, torch.Tensor] | None,
    spec: QuantSpec,
    calibration: Calibration | None,
    readout: Readout,
    *,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
) -> dict[str, torch.Tensor]:
    """``params`` with the last layer's weight (and bias, if it has one) solved on ``readout``'s images.

    The features are the last layer's input as ``model`` computes it at ``spec`` with ``calibration``
    (so quantized where the setting quantizes it). Unsupported heads and non-finite features (a network
    whose predicted parameters diverge) return ``params`` unchanged: the GHN's head is then the score.
    """
    from sklearn.linear_model import Ridge

    out = dict(params or {})
    step = head_step(model)
    if step is None or _width(step) <= int(readout.labels.max()):  # narrower than the labels: not the classifier
        return out
    classes = _width(step)
    tap = step.inputs[0]
    taps: dict[str, list[torch.Tensor]] = {tap: []}
    with torch.inference_mode():
        for xb in readout.images.split(readout.batch_size):
            model(xb, spec, calibration, params=out, taps=taps, generator=generator, channels_last=channels_last)
    feats = torch.cat(taps[tap]).float()
    labels = readout.labels
    if step.kind == "conv":  # every pixel is a sample with its image's label
        n, c = feats.shape[:2]
        pixels = feats.shape[2] * feats.shape[3]
        feats = feats.permute(0, 2, 3, 1).reshape(-1, c)
        labels = labels.repeat_interleave(pixels)
        if len(feats) > readout.max_rows:
            keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(readout.seed))[: readout.max_rows]
            feats, labels = feats[keep], labels[keep]
    else:
        feats = feats.flatten(1)
    if not bool(torch.isfinite(feats).all()):
        return out
    x = feats.double().numpy()
    own = dict(model.named_parameters())
    has_bias = step.pnames[1] in own
    # Centre only where a bias can carry the mean back: without one, logits = x @ coef.T exactly.
    mu, sd = (x.mean(0) if has_bias else np.zeros(x.shape[1])), x.std(0) + 1e-6
    if readout.scaling_at(layer_bits(spec.w_bits, step.w8, spec)) == "global":
        sd = np.full_like(sd, math.sqrt(float(np.mean(x.var(0)))) + 1e-6)  # the features' RMS spread, shared
    y = np.zeros((len(labels), classes))  # one-hot targets for every class, whether the fit images hold it or not
    y[np.arange(len(labels)), labels.numpy()] = 1.0
    # Cholesky solves the (F, F) system, or the (N, N) one where features outnumber images (a flatten).
    reg = Ridge(alpha=readout.ridge, fit_intercept=has_bias, solver="cholesky").fit((x - mu) / sd, y)
    coef = reg.coef_ / sd  # back to raw features: logits = x @ coef.T + intercept
    intercept = (reg.intercept_ - coef @ mu) if has_bias else np.zeros(classes)
    scale = _temperature(x @ coef.T + intercept, labels.numpy())
    weight = torch.from_numpy(coef * scale).float()
    name_w, name_b = step.pnames[0], step.pnames[1]
    out[name_w] = weight.view(own[name_w].shape)
    if has_bias:
        out[name_b] = torch.from_numpy(intercept * scale).float()
    return out


def solve_head(module: torch.nn.Module, model: QuantModel, spec: QuantSpec, calibration: Calibration | None,
               readout: Readout) -> bool:
    """Write :func:`fit_head`'s last layer into ``module``'s own parameters (``model`` traced from it), as an
    export ships it; False where the head cannot be solved and the module keeps its own."""
    own = dict(module.named_parameters())
    solved = fit_head(model, own, spec, calibration, readout)
    changed = [name for name, value in solved.items() if value is not own[name]]
    with torch.no_grad():
        for name in changed:
            own[name].copy_(solved[name])
    return bool(changed)


def _temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The scale of ``logits`` that minimizes their cross-entropy on ``labels`` (searched in log space)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-log_softmax(logits * math.exp(log_t), axis=1)[rows, labels].mean())

    return math.exp(minimize_scalar(loss, bounds=(-4.0, 6.0), method="bounded").x)
