"""benchmarks/faq_seed_noise.py on a tiny store and budget: it retrains the row's net once, runs the truth's FAQ
stage per seed, appends one line per run, skips runs already recorded, and refuses a net it cannot measure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import load_benchmark

ground_truth = load_benchmark("ground_truth")
faq_seed_noise = load_benchmark("faq_seed_noise")
TINY = "stem8-8:conv3-maxpool-16:conv3-maxpool-16:conv3-fc0"


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "v2"
    (store / "results").mkdir(parents=True)
    net = {"id": "id-000", "split": "id", "index": 0, "arch": TINY, "params": 1, "macs": 1}
    (store / "architectures.json").write_text(json.dumps({"architectures": [net], "agreement": [], "seed1": []}))
    stages = {"fp32": {"weights_sha256": "another-net"},
              "faq_w2a2": {"test_top1": 0.5, "provenance": {"git_commit": "0" * 40}}}
    row = {"key": "id-000_k20e5_s0", "arch": TINY, "test_images": 100, "stages": stages}
    (store / "results" / "id-000_k20e5_s0.json").write_text(json.dumps(row))
    return store


def test_faq_seed_noise_on_a_tiny_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ground_truth.BUDGETS, "k20e5", ground_truth.Budget(images=200, epochs=1, batch_size=50))
    store, out = _store(tmp_path), tmp_path / "runs.jsonl"
    argv = ["--net", "id-000", "--store", str(store), "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert faq_seed_noise.main([*argv, "--faq-seeds", "0,1"]) == 0
    last = dict(kv.split("=") for kv in capsys.readouterr().out.strip().splitlines()[-1].split())
    assert set(last) == {"faq_mean", "faq_sd", "faq_range", "row", "same_net", "runs"}
    assert last["runs"] == "2" and last["same_net"] == "0" and last["row"] == "50.00"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["faq_seed"] for r in records] == [0, 1] and {r["setting"] for r in records} == {"w2a2"}
    assert (tmp_path / "cache" / "id-000_k20e5_s0" / "fp32.pt").exists()  # trained once, kept
    assert not list((tmp_path / "cache").rglob("faq_*.pt"))  # each seed's checkpoint gone once it is done
    assert faq_seed_noise.main([*argv, "--faq-seeds", "1,2"]) == 0  # seed 1 is on record: only seed 2 runs
    assert [json.loads(line)["faq_seed"] for line in out.read_text().splitlines()] == [0, 1, 2]
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("runs=3")


@pytest.mark.parametrize(("args", "message"), [(["--net", "id-999"], "not a net of"),
                                               (["--net", "id-000", "--train-seed", "1"], "no row"),
                                               (["--net", "id-000", "--faq-seeds", "a"], "--faq-seeds")])
def test_faq_seed_noise_refuses_what_it_cannot_measure(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        faq_seed_noise.main([*args, "--store", str(_store(tmp_path)), "--out", str(tmp_path / "o.jsonl")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
