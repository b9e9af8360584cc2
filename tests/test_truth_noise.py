"""benchmarks/truth_noise.py on a tiny store: cached trained weights must reproduce their rows, the
pairing and the ceilings come out on the last line, and a seed ceiling stays off it below 8 pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fakes import load_benchmark

from qnas import data
from search_spaces import get_space

truth_noise = load_benchmark("truth_noise")
ground_truth = load_benchmark("ground_truth")


def _store(tmp_path: Path) -> tuple[Path, Path]:
    """Three untrained `id` nets (their real FP32 accuracy on the test images in their rows), weights of
    two of them in a worker cache, a second seed for two."""
    space = get_space("convnets250k")
    ds = data.load_dataset("fashion-mnist")
    tx, ty = ground_truth.balanced(ds.test_images, ds.test_labels, truth_noise.TEST_IMAGES, ds.info.num_classes)
    x = data.normalize(tx, ds.info)
    calib = data.normalize(ground_truth.balanced(ds.train_images, ds.train_labels, ground_truth.CALIB_IMAGES,
                                                 ds.info.num_classes)[0], ds.info)
    store, cache = tmp_path / "v2", tmp_path / "cache"
    (store / "results").mkdir(parents=True)
    archs = [{"id": f"id-{i:03d}", "split": "id", "arch": space.to_string(g)}
             for i, g in enumerate(space.load_split("id")[:3])]
    (store / "architectures.json").write_text(json.dumps(
        {"architectures": archs, "agreement": [], "seed1": [a["id"] for a in archs[:2]]}))
    prov = {"provenance": {"git_commit": "0" * 40}}
    for i, a in enumerate(archs):
        torch.manual_seed(i)
        module = space.build(space.from_string(a["arch"]), ds.info.input_shape, ds.info.num_classes).eval()
        fp32 = float(truth_noise.correctness(module, x[:200], ty[:200], calib).mean())  # cheap: 200 images
        if i < 2:
            (cache / f"{a['id']}_k20e5_s0").mkdir(parents=True)
            torch.save(module.state_dict(), cache / f"{a['id']}_k20e5_s0" / "fp32.pt")
            fp32 = float(truth_noise.correctness(module, x, ty, calib).mean())
        for seed in (0, 1) if i < 2 else (0,):
            row = {"arch": a["arch"], "stages": {
                "ptq": {"test_top1_fp32": fp32 - 0.01 * seed, **prov,
                        **{f"test_top1_{s}": 0.1 for s in ("w8a8-channel", "w4a8-channel", "w4a4-channel",
                                                           "w2a2-channel")}},
                "faq_w4a4": {"test_top1": 0.80 + 0.05 * i + 0.004 * seed, **prov},
                "faq_w2a2": {"test_top1": 0.50 + 0.10 * i - 0.02 * seed, **prov}}}
            (store / "results" / f"{a['id']}_k20e5_s{seed}.json").write_text(json.dumps(row))
    return store, cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return _store(tmp_path_factory.mktemp("truth_noise"))


def test_truth_noise_on_a_tiny_store(tiny: tuple[Path, Path], capsys) -> None:
    store, cache = tiny
    assert truth_noise.main(["--store", str(store), "--cache", str(cache), "--draws", "50"]) == 0
    out = capsys.readouterr().out
    assert out.count("reproduced") == 2 and "2 nets, 1 pairs" in out
    figures = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert set(figures) == {"pairing", "ceiling_fp32", "ceiling_w4a4", "ceiling_w2a2", "n", "n_pairing", "seed_pairs"}
    assert 0 < float(figures["pairing"]) <= 2 and figures["n_pairing"] == "2" and figures["seed_pairs"] == "2"
    # W2A2 is 10 points apart per net, far above 2,000 images' noise: the order survives every redraw.
    assert float(figures["ceiling_w2a2"]) == 1.0
    assert "+1.00 +1.00 points" in out and "-0.40 -0.40 points" in out and "+2.00 +2.00 points" in out
    assert "fewer than 8: w4a4's ceiling_seed is left off" in out


def test_cached_weights_of_another_net_stop_it(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    store = shutil.copytree(tiny[0], tmp_path / "v2")
    row_path = store / "results" / "id-000_k20e5_s0.json"
    row = json.loads(row_path.read_text())
    row["stages"]["ptq"]["test_top1_fp32"] += 0.05
    row_path.write_text(json.dumps(row))
    with pytest.raises(SystemExit, match="not the measured net"):
        truth_noise.main(["--store", str(store), "--cache", str(tiny[1]), "--draws", "5"])
