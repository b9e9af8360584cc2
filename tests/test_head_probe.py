"""benchmarks/head_probe.py: the ridge probe, its bad inputs, and one real network end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakes import load_benchmark

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


head_probe = load_benchmark("head_probe")


def test_the_probe_separates_separable_features_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    centres = 3 * torch.randn(4, 16, generator=g)
    f = centres[y] + torch.randn(400, 16, generator=g)
    assert head_probe.probe_accuracy(f[:300], y[:300], f[300:], y[300:], 4) > 0.95
    noise = torch.randn(400, 16, generator=g)
    assert head_probe.probe_accuracy(noise[:300], y[:300], noise[300:], y[300:], 4) < 0.5


@pytest.mark.parametrize("argv, needle", [(["--splits", "nope"], "--splits"), (["--splits", ""], "--splits"),
                                          (["--n", "0"], "--n"), (["--probe-images", "3"], "--probe-images"),
                                          (["--predictor", "no-such-predictor"], "no-such-predictor")])
def test_bad_input_is_one_line_exit_2(argv, needle, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        head_probe.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and needle in err[-1]


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="real Fashion-MNIST not installed (dataset-fashion-mnist)")
def test_one_space_network_end_to_end(capsys, monkeypatch) -> None:
    monkeypatch.setenv("QNAS_DATA_DIR", str(FASHION_DIR.parent))
    assert head_probe.main(["--splits", "id", "--n", "1", "--images", "200", "--probe-images", "200"]) == 0
    last = dict(kv.split("=") for kv in capsys.readouterr().out.strip().splitlines()[-1].split())
    assert set(last) == {"ghn_id", "probe_id", "head_gap_id"}
    assert 0 <= float(last["ghn_id"]) <= 100 and 0 <= float(last["probe_id"]) <= 100
    assert float(last["head_gap_id"]) == pytest.approx(float(last["probe_id"]) - float(last["ghn_id"]), abs=0.15)
