"""One CLI dialect: --help without torch, architecture strings never folded, a line per trial on stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qnas.search import load_study

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("space", "data", "score", "search", "report", "studies", "show", "finetune", "export", "train-predictor",
            "eval-predictor")


def test_help_imports_no_torch() -> None:
    code = ("import sys\nfrom qnas.cli import build_parser\np = build_parser()\n"
            f"for cmd in [[], *[[c] for c in {COMMANDS!r}]]:\n"
            "    try:\n        p.parse_args([*cmd, '--help'])\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'optuna', 'pandas', 'plotly') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)


def _qnas(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "qnas.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("dialect")
    run = _qnas(["search", "--trials", "3", "--predictor", "random", "--val-size", "16", "--max-params", "2e5",
                 "--study", "d", "--seed", "1"], root)
    assert run.returncode == 0, run.stderr
    return root, run


def test_search_prints_a_line_per_trial_on_stdout_and_warns_about_random_search(searched) -> None:
    _, run = searched
    lines = run.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines[:3]] == ["trial 0", "trial 1", "trial 2"]
    assert "Pareto front" in run.stdout and "architectures (trial, --arch string):" in run.stdout
    assert "fewer than the NSGA-II population (20)" in run.stderr and "3 trials in" in run.stderr


def test_show_never_folds_the_architecture_string(searched) -> None:
    root, _ = searched
    archs = {t.user_attrs["arch"] for t in load_study("d", f"sqlite:///{root / 'studies' / 'd.db'}").trials
             if "top1_fp32" in t.user_attrs}
    run = _qnas(["show", "--study", "d"], root)  # piped, 80 columns
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert archs and all(any(ln.strip().endswith(a) for ln in lines) for a in archs)


def test_device_other_than_cpu_is_refused(tmp_path: Path) -> None:
    run = _qnas(["search", "--device", "cuda", "--trials", "1"], tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--device" in run.stderr
