"""evaluate(), parameter sources and the `qnas score` command."""

from __future__ import annotations

import gzip
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qnas.cli import main
from qnas.errors import QnasError
from qnas.quant import calibrate, prepare
from qnas.score import evaluate, init_params
from search_spaces import convnets250k


def _net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    )


def _data(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_fp32_batch_mode_equals_training_mode_module() -> None:
    m = _net()
    x, y = _data()
    acc = evaluate(m, None, x, y, ["fp32"], bn_stats="batch", batch_size=64)
    m.train()
    with torch.no_grad():
        logits = torch.cat([m(xb) for xb in x.split(64)])
    top5 = logits.topk(5, 1).indices
    assert acc["fp32"]["top1"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert acc["fp32"]["top5"] == pytest.approx((top5 == y[:, None]).any(1).float().mean().item())


@pytest.mark.parametrize("mode", ["batch", "calibrated"])
def test_results_per_setting(mode: str) -> None:
    x, y = _data()
    acc = evaluate(_net(), None, x, y, "fp32,w8a8,w4a8,w4a4,w2a2", bn_stats=mode)
    assert list(acc) == ["fp32", "w8a8", "w4a8", "w4a4", "w2a2"]
    for a in acc.values():
        assert 0.0 <= a["top1"] <= a["top5"] <= 1.0


def test_calibrated_scores_do_not_depend_on_batch_size() -> None:
    m = prepare(_net())
    x, y = _data()
    calib = _data(128, seed=1)[0]
    a = evaluate(m, None, x, y, ["fp32", "w4a4"], calib_images=calib, batch_size=64)
    b = evaluate(m, None, x, y, ["fp32", "w4a4"], calib_images=calib, batch_size=37)
    # Equal up to float rounding (a conv's summation order depends on the batch size), which can move
    # a near-tied image of this untrained net; batch statistics change far more.
    for name in a:
        for k in ("top1", "top5"):
            assert abs(a[name][k] - b[name][k]) <= 1 / len(y) + 1e-9


def test_default_calibration_is_the_first_batch_at_each_setting() -> None:
    qm = prepare(_net())
    x, y = _data()
    acc = evaluate(qm, None, x, y, ["fp32", "w4a4"])  # calibrated on x[:64], its scores from that pass
    for setting in ("fp32", "w4a4"):
        calib = calibrate(qm, x[:64], spec=setting)
        with torch.no_grad():
            logits = torch.cat([qm(xb, setting, calib) for xb in x.split(64)])
        manual = (logits.argmax(1) == y).float().mean().item()
        assert abs(acc[setting]["top1"] - manual) <= 1 / len(y) + 1e-9  # float rounding aside


def test_params_dict_and_per_setting_callable() -> None:
    x, y = _data()
    donor = _net()
    with torch.no_grad():
        for p in donor.parameters():
            p.mul_(1.5).add_(0.1)
    params = {k: v.detach().clone() for k, v in donor.named_parameters()}
    target = _net()  # different parameters of its own
    for mode in ("batch", "calibrated"):
        assert evaluate(target, params, x, y, bn_stats=mode) == evaluate(donor, None, x, y, bn_stats=mode)
    own = {k: v.detach().clone() for k, v in target.named_parameters()}
    calls: list[str] = []

    def by_setting(spec):  # a bit-conditioned predictor gives different parameters per setting
        calls.append(spec.name)
        return params if spec.name == "w4a4" else own

    mixed = evaluate(target, by_setting, x, y, ["fp32", "w4a4"])
    assert calls == ["fp32", "w4a4"]
    assert mixed["w4a4"] == evaluate(donor, None, x, y, ["w4a4"])["w4a4"]
    assert mixed["fp32"] == evaluate(target, None, x, y, ["fp32"])["fp32"]


def test_top5_with_fewer_than_five_classes() -> None:
    x, _ = _data()
    y = torch.randint(0, 3, (len(x),))
    acc = evaluate(_net(classes=3), None, x, y, ["fp32"])
    assert acc["fp32"]["top5"] == 1.0


def test_evaluate_rejects_bad_input() -> None:
    x, y = _data()
    with pytest.raises(QnasError, match="bn_stats"):
        evaluate(_net(), None, x, y, bn_stats="running")
    with pytest.raises(QnasError, match="label"):
        evaluate(_net(), None, x, y[:-1])
    with pytest.raises(QnasError, match="w9a8"):
        evaluate(_net(), None, x, y, "fp32,w9a8")


def test_init_params_random_is_seeded() -> None:
    a, b, c = _net(), _net(), _net()
    assert init_params(a, "random", seed=3) is None
    init_params(b, "random", seed=3)
    init_params(c, "random", seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[0].weight, c[0].weight)
    for bad in ("glorot", "random:1", "trained", "trained:0", "trained:x"):
        with pytest.raises(QnasError):
            init_params(_net(), bad, dataset=object())


# ----------------------------------------------------------------------------- the command


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes((0, 0, 8, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST in the real file format (300 training, 50 test images)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 50)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_cli_scores_a_sampled_architecture(fashion_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    arch = convnets250k.to_string(convnets250k.sample(random.Random(1), max_params=100_000))
    argv = ["score", "--arch", arch, "--data-dir", str(fashion_dir), "--val-size", "20", "--calib-size", "16"]
    assert main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["arch"] == arch and record["init"] == "ghn" and record["bn_stats"] == "calibrated"
    assert record["granularity"] == "channel"  # the protocol `qnas search` scores with
    assert record["settings"] == {"fp32": "fp32", "w8a8": "w8a8-channel-fl8-minmax",
                                  "w4a8": "w4a8-channel-fl8-minmax", "w4a4": "w4a4-channel-fl8-minmax",
                                  "w2a2": "w2a2-channel-fl8-p99.5"}  # the first/last-layer rule of search/export
    assert main([*argv, "--bits", "w4a4", "--first-last-bits", "same", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"] == {"w4a4": "w4a4-channel-minmax"}
    assert list(record["accuracy"]) == ["fp32", "w8a8", "w4a8", "w4a4", "w2a2"]
    assert record["params"] == convnets250k.count_params(convnets250k.from_string(arch))
    # per-channel by default: the same numbers as naming -channel; tensorwise on request
    assert main([*argv, "--bits", "w4a4-channel,w2a2-tensor", "--json"]) == 0
    named = json.loads(capsys.readouterr().out)["accuracy"]
    assert named["w4a4-channel"] == record["accuracy"]["w4a4"]
    assert main([*argv, "--bits", "w2a2", "--granularity", "tensor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"]["w2a2"] == named["w2a2-tensor"]
    assert main([*argv, "--bits", "fp32,w4a4", "--bn-stats", "batch"]) == 0
    out = capsys.readouterr().out
    assert "w4a4" in out and "w8a8" not in out and "top-1" in out
    # the JSON genome form is accepted too
    genome_json = json.dumps(convnets250k.to_json(convnets250k.from_string(arch)))
    assert main(["score", "--arch", genome_json, "--data-dir", str(fashion_dir), "--val-size", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == arch
    # and a .json file: an export's arch.json (the genome under "genome") or a bare genome
    exported = tmp_path / "arch.json"
    exported.write_text(json.dumps({"format": "qnas-model", "arch": arch, "genome": json.loads(genome_json)}))
    bare = tmp_path / "genome.json"
    bare.write_text(genome_json)
    for path in (exported, bare):
        assert main(["score", "--arch", str(path), "--data-dir", str(fashion_dir), "--val-size", "8", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["arch"] == arch


def test_cli_trained_init(fashion_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = "stem8-8:conv3-maxpool-16:conv3-maxpool-16:conv3-fc0"
    argv = ["score", "--arch", arch, "--data-dir", str(fashion_dir), "--val-size", "16", "--init", "trained:1",
            "--bits", "fp32,w8a8", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["init"] == "trained:1" and set(record["accuracy"]) == {"fp32", "w8a8"}


@pytest.mark.parametrize(
    "extra",
    [["--bits", "w1a8"], ["--bits", "w4a4,w4a4"], ["--arch", "stem8-nonsense"], ["--init", "glorot"]],
)
def test_cli_bad_input_is_one_line(extra: list[str], fashion_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["score", "--arch", "stem8-8:conv3-maxpool-16:conv3-maxpool-16:conv3-fc0", "--data-dir", str(fashion_dir),
            "--val-size", "8"]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qnas: error:") and "\n" not in err
