"""Test doubles shared by several test modules (import them: ``from fakes import FakeScorer``)."""

from __future__ import annotations

import hashlib

from qnas.defaults import SETTINGS
from search_spaces import convnets250k as S


class FakeScorer:
    """A cheap deterministic ``qnas.search.Scorer`` over convnets250k: the accuracy is a function of the
    architecture (lower at fewer bits); counts how often it is called. ``name``: the predictor it records."""

    version = "0"

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.calls: list[str] = []

    def score(self, genome) -> dict[str, float]:
        arch = S.to_string(genome)
        self.calls.append(arch)
        h = int(hashlib.sha256(arch.encode()).hexdigest()[:8], 16) / 2**32
        base = 0.5 + 0.4 * h
        out = {}
        for i, s in enumerate(SETTINGS):
            out[f"top1_{s}"] = base - 0.05 * i
            out[f"top5_{s}"] = min(1.0, base + 0.3)
        return out
