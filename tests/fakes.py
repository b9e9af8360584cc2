"""Test doubles and helpers shared by several test modules (import them: ``from fakes import FakeScorer``)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]


def worker_env() -> dict[str, str]:
    """The environment of a ``qnas`` subprocess: this checkout's qnas, one thread (two torch processes with
    2 threads each on 2 cores slow each other ~25x)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def spawn_search(*args: str, preexec: Callable[[], object] | None = None) -> subprocess.Popen:
    """``qnas search ARGS`` in a subprocess, stdout and stderr piped (text)."""
    return subprocess.Popen([sys.executable, "-m", "qnas.cli", "search", *args], cwd=ROOT, env=worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)


def run_workers(*args: str, seeds: Iterable[int], timeout: float,
                preexec: Callable[[], object] | None = None) -> list[str]:
    """One ``qnas search ARGS --seed SEED`` per seed, all started together; waits for every one and asserts
    it exited 0. Their stderr, in the order of ``seeds``."""
    workers = [spawn_search(*args, "--seed", str(seed), preexec=preexec) for seed in seeds]
    errs = []
    for w in workers:
        _, err = w.communicate(timeout=timeout)
        assert w.returncode == 0, err
        errs.append(err)
    return errs


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as module ``name``, importing its sibling scripts as the scripts themselves do."""
    root = Path(__file__).resolve().parents[1]
    if str(root / "benchmarks") not in sys.path:
        sys.path.insert(0, str(root / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, root / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of ``qnas ARGV`` in this process; argparse errors exit through SystemExit."""
    from qnas.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err
