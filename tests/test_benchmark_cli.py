"""Bad input to the benchmark scripts: one line on stderr and exit code 2, before any work, and no result file
replaced. Each case runs the script as a user does (``python benchmarks/X.py``), so the exit path is the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


CASES = [
    ("ranking.py", ["--store", "/nonexistent/store"]),
    ("ranking.py", ["--kinds", "bogus"]),
    ("ranking.py", ["--budget", "bogus"]),
    ("ranking.py", ["--json", "existing.json"]),
    ("pick_regret.py", ["--scores", "existing.json", "--budget", "bogus"]),
    ("pick_regret.py", ["--scores", "existing.json", "--target", ""]),
    ("tau_gap.py", ["--scores", "existing.json", "--target", ""]),
    ("tau_gap.py", ["--scores", "existing.json", "--budget", "bogus"]),
    ("ranker_combinations.py", ["--targets", "bogus"]),
    ("truth_noise.py", ["--store", "/nonexistent/store"]),
    ("truth_noise.py", ["--draws", "0"]),
    ("budget_agreement.py", ["--store", "."]),  # a directory without a plan: QnasError, one line
    ("weight_grid.py", ["--threads", "0"]),
    ("weight_grid.py", ["--settings", "fp32"]),
    ("activation_ranges.py", ["--settings", "fp32"]),
    ("search_efficiency.py", ["--seeds", "a"]),
    ("search_efficiency.py", ["--samplers", "random"]),
    ("search_efficiency.py", ["--target", "9"]),
    ("search_overhead.py", ["--trials", "1"]),
    ("search_overhead.py", ["--sampler", "bogus"]),
    ("predictor_table.py", ["--shipped", ""]),
    ("predictor_table.py", ["--json", "existing.json"]),
    ("ghn_speed.py", ["--archs", "0"]),
    ("scoring_overhead.py", ["--repeats", "0"]),
    ("faq_init.py", ["--epochs", "0"]),
    ("faq_init.py", ["--json", "existing.json"]),
    ("deploy.py", ["--json", "existing.json"]),
    ("deploy.py", ["--test-size", "0"]),
    ("ort_kernels.py", ["--rounds", "0"]),
    ("faq_seed_noise.py", ["--net", "x", "--faq-seeds", "1,-1"]),
    ("ground_truth.py", ["run", "--phase", "truth", "--test-images", "0"]),
    ("head_scaling.py", ["--n", "0"]),
    ("faq_head.py", ["--setting", "fp32"]),
]


@pytest.mark.parametrize(("script", "args"), CASES, ids=[f"{s}:{' '.join(a)}" for s, a in CASES])
def test_bad_input_is_one_line_and_exit_2(script: str, args: list[str], tmp_path: Path) -> None:
    existing = tmp_path / "existing.json"
    existing.write_text('{"scores": {}}\n')
    res = _run(script, *args, cwd=tmp_path)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(script) and ": error: " in lines[0], res.stderr  # no usage block
    assert existing.read_text() == '{"scores": {}}\n'  # never replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.json"]  # nothing written


def test_ranker_features_keeps_a_table_of_another_predictor(tmp_path: Path) -> None:
    table = tmp_path / "features.json"
    before = json.dumps({"predictor_digest": "another", "feature_version": 0, "protocol": "p", "val_size": 1000,
                         "features": {"stem8-8:conv3-fc0": {"params": 1.0}}})
    table.write_text(before)
    res = _run("ranker_features.py", "--predictor", "random", "--out", str(table), cwd=tmp_path)
    assert res.returncode == 2 and "not discarded" in res.stderr and "--replace" in res.stderr, res.stderr
    assert table.read_text() == before
