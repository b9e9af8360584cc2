"""benchmarks/search_efficiency.py's own logic: the hypervolume and the on-disk score cache that lets a
killed run resume (the run itself costs hours: it is the benchmark, not a test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fakes import load_benchmark

from search_spaces import convnets250k

search_efficiency = load_benchmark("search_efficiency")
ARCHS = ("stem8-16:conv3-avgpool-32:sep3-fc0", "stem8-16:conv3,conv1+r-maxpool-32:mb3k3-fc64")


class CountingScorer:
    """The attributes CachedScorer reads from a real scorer, and a score that counts its calls."""

    name, version, protocol, settings, labels = "fake", "v1", "calibrated/channel", ("w4a4",), [0] * 16

    def __init__(self) -> None:
        self.calls = 0

    def score(self, genome) -> dict[str, float]:
        self.calls += 1
        return {"top1_w4a4": 0.1 * self.calls, "pred_top1_w4a4": 0.5 + 0.1 * self.calls}


def test_hypervolume_counts_accuracy_times_decades_under_the_bound() -> None:
    bound = 10_000
    # (0.5, 100): 0.5 x 2 decades; (0.8, 1000) adds (0.8 - 0.5) x 1 decade; the dominated point adds nothing.
    assert search_efficiency.hypervolume([(0.5, 100), (0.8, 1000), (0.4, 1000)], bound) == pytest.approx(1.3)
    assert search_efficiency.hypervolume([(0.9, 20_000)], bound) == 0.0  # infeasible


def test_a_killed_run_replays_its_cached_scores_and_another_scorer_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "scores.json"
    genomes = [convnets250k.from_string(a) for a in ARCHS]
    first = search_efficiency.CachedScorer(CountingScorer(), path)
    scores = [first.score(g) for g in genomes]
    assert first.scorer.calls == 2 and json.loads(path.read_text())["scores"].keys() == set(ARCHS)

    again = search_efficiency.CachedScorer(CountingScorer(), path)  # a new process: nothing scored yet
    assert [again.score(g) for g in genomes] == scores and again.scorer.calls == 0
    assert math.isclose(again.seconds, first.seconds)

    other = CountingScorer()
    other.protocol = "batch/tensor"
    with pytest.raises(SystemExit) as exit_info:
        search_efficiency.CachedScorer(other, path)
    assert exit_info.value.code == 2 and "another scorer" in capsys.readouterr().err
    path.write_text("not json")
    with pytest.raises(SystemExit) as exit_info:
        search_efficiency.CachedScorer(CountingScorer(), path)
    assert exit_info.value.code == 2
