"""Which layers a predictor has seen in training, and a check that names the ones it has not.

    problems = unseen_layers(graph, space="convnets250k")   # [] for every architecture of the space

A GHN predicts parameters for any graph it can read, but for a layer its training never contained
(for a predictor trained on the space alone: a 7x7 kernel, a grouped convolution that is not depthwise,
a concatenation; with the network families, ``FAMILIES_COVERAGE``, fewer) the prediction is an
extrapolation that can score at chance level. Callers turn the list into a
:class:`UnseenLayerWarning` or, with ``strict``, a :class:`qnas.QnasError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qnas.defaults import DEFAULT_SPACE
from qnas.errors import QnasError, QnasWarning

__all__ = ["COVERAGE", "FAMILIES_COVERAGE", "ChanceScoreWarning", "LayerCoverage", "UnseenLayerWarning", "check_graph",
           "coverage_of", "unseen_layers"]


class UnseenLayerWarning(QnasWarning):
    """A layer the predictor never saw in training: its predicted parameters are an extrapolation."""


class ChanceScoreWarning(QnasWarning):
    """A network scored at chance level with predicted parameters: the score says nothing about it."""


@dataclass(frozen=True)
class LayerCoverage:
    """The layers of a search space, as the graph a GHN reads describes them (``qnas.graph.OPS``)."""

    ops: frozenset[str]  # graph ops the space produces
    kernels: frozenset[int]  # square kernel sizes of its convolutions
    depthwise_only: bool = True  # grouped and dilated convolutions are all depthwise


# Registry: search-space name -> the layers its architectures contain (what a predictor trained on it saw).
COVERAGE: dict[str, LayerCoverage] = {
    "convnets250k": LayerCoverage(
        ops=frozenset({"input", "conv", "group_conv", "dil_conv", "linear", "bn", "bias", "max_pool", "avg_pool",
                       "add", "glob_avg"}),
        kernels=frozenset({1, 3, 5}),
    ),
}


# What the network families of qnas.families contain (a predictor trained with --families saw these too).
FAMILIES_COVERAGE = LayerCoverage(
    ops=frozenset({"input", "conv", "group_conv", "linear", "bn", "bias", "max_pool", "avg_pool", "add", "concat",
                   "glob_avg"}),
    kernels=frozenset({1, 3, 5, 7}),
)


def coverage_of(space: str, families: Sequence[str] = ()) -> LayerCoverage | None:
    """The layers a predictor trained on ``space`` (and on ``families`` of qnas.families) has seen."""
    cover = COVERAGE.get(space)
    if cover is None or not families:
        return cover
    fam = FAMILIES_COVERAGE
    return LayerCoverage(ops=cover.ops | fam.ops, kernels=cover.kernels | fam.kernels,
                         depthwise_only=cover.depthwise_only and fam.depthwise_only)


def unseen_layers(graph: Any, space: str = DEFAULT_SPACE, families: Sequence[str] = ()) -> list[str]:
    """One message per layer of ``graph`` (a ``qnas.graph.ArchGraph``) outside what a predictor trained on
    ``space`` (and ``families``) has seen."""
    cover = coverage_of(space, families)
    if cover is None:
        return []  # a space without a declared vocabulary: nothing to compare with
    where = f"{space} or the training families" if families else space
    problems: list[str] = []
    for v, op in enumerate(graph.ops):
        shape, label = graph.shapes[v], graph.labels[v]
        if op not in cover.ops:
            problems.append(f"{label!r}: operation {op!r} never occurs in {where}")
        elif op in ("conv", "group_conv", "dil_conv"):
            kh, kw = shape[2], shape[3]
            if kh != kw or kh not in cover.kernels:
                seen = "/".join(str(k) for k in sorted(cover.kernels))
                problems.append(f"{label!r}: {kh}x{kw} kernel (the predictor saw {seen} square kernels only)")
            if op != "conv" and cover.depthwise_only and shape[1] != 1:
                what = "dilated" if op == "dil_conv" else "grouped"
                problems.append(f"{label!r}: {what} convolution that is not depthwise (never in {where})")
    return problems


def check_graph(graph: Any, space: str = DEFAULT_SPACE, *, families: Sequence[str] = (), strict: bool = False,
                stacklevel: int = 3) -> list[str]:
    """:func:`unseen_layers`, each warned as an :class:`UnseenLayerWarning` (``strict``: one QnasError)."""
    problems = unseen_layers(graph, space, families)
    if problems and strict:
        raise QnasError(f"the predictor has never seen {_summary(problems)}")
    for p in problems:
        warnings.warn(f"the predictor has never seen {p}: its parameters for it are an extrapolation",
                      UnseenLayerWarning, stacklevel=stacklevel)
    return problems


def _summary(problems: Sequence[str]) -> str:
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"
