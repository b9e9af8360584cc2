"""GHN training: loss goes down, exact resume, gradients through the quantizers, DDP lockstep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qnas.errors import QnasError
from qnas.train_predictor import TrainConfig, Trainer, lr_at, training_spec

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()
    and not os.environ.get("QNAS_DATA_DIR"),
    reason="Fashion-MNIST not installed (make setup installs it)",
)

TINY_GHN = {"hidden": 16, "max_channels": 16, "decoder_hidden": 16, "decoder_mid": 32}


def tiny(**kw) -> TrainConfig:
    base = dict(steps=8, meta_batch=2, batch_size=16, max_params=30_000, ghn=TINY_GHN, eval_every=0,
                checkpoint_every=1e9, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out: Path) -> list[float]:
    rows = (out / "train_log.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[1]) for r in rows]


def _heldout_loss(tr: Trainer) -> float:
    """Mean cross-entropy of GHN-predicted parameters on fixed architectures and validation images."""
    import random

    from qnas.data import val_subset
    from qnas.graph import batch_graphs

    x, y = val_subset(tr.ds, 256, seed=1)
    rng = random.Random(11)
    genomes = [tr.space.sample(rng, 15_000) for _ in range(4)]
    with torch.no_grad():
        preds = tr.ghn(batch_graphs([tr._graph(g) for g in genomes]), ["fp32"] * 4)
        losses = [torch.nn.functional.cross_entropy(
            torch.func.functional_call(tr._model(g)[2], p, (x,)), y) for g, p in zip(genomes, preds)]
    return float(torch.stack(losses).mean())


def test_training_reduces_loss(tmp_path):
    tr = Trainer(tiny(steps=40, lr=3e-3, meta_batch=2, batch_size=32, max_params=15_000), tmp_path)
    before = _heldout_loss(tr)
    tr.run(progress=False)
    after = _heldout_loss(tr)
    assert len(_losses(tmp_path)) == 40
    assert after < before - 0.03, (before, after)  # measured: 2.337 -> 2.269


def test_resume_is_exact(tmp_path):
    cfg = tiny(regime="qat", bits=("fp32", "w4a4", "w2a2"), conditioned=True, steps=6, milestones=(0.5,))
    a = Trainer(cfg, tmp_path / "a")
    a.run(progress=False)
    b1 = Trainer(cfg, tmp_path / "b")
    b1.run(stop_after=3, progress=False)
    assert b1.step == 3 and (tmp_path / "b" / "last.pt").exists()
    b2 = Trainer(cfg, tmp_path / "b")  # a new process would do the same: everything comes from last.pt
    assert b2.step == 3
    b2.run(progress=False)
    sa, sb = a.ghn.state_dict(), b2.ghn.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_resume_with_other_settings_is_refused(tmp_path):
    Trainer(tiny(steps=1), tmp_path).run(progress=False)
    with pytest.raises(QnasError, match="other settings"):
        Trainer(tiny(steps=1, lr=0.5), tmp_path)


def test_qat_gradients_flow_through_quantizers(tmp_path):
    tr = Trainer(tiny(regime="qat", bits=("w4a4",), meta_batch=1), tmp_path)
    tr.train_step()
    grads = [p.grad for p in tr.ghn.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    # The quantizer really acts: w2a2 logits differ from fp32 for the same predicted parameters.
    from qnas.graph import batch_graphs

    g = tr.space.sample(__import__("random").Random(0), 30_000)
    _, _, qm = tr._model(g)
    params = tr.ghn(batch_graphs([tr._graph(g)]), ["w4a4"])[0]
    x = torch.randn(8, 1, 28, 28)
    out_f = torch.func.functional_call(qm, params, (x,), {"spec": "fp32"})
    out_q = torch.func.functional_call(qm, params, (x,), {"spec": "w2a2"})
    assert not torch.allclose(out_f, out_q)
    assert training_spec("w2a2").mode == "noise" and training_spec("w4a4").mode == "sim"


def test_config_validation_and_schedule():
    with pytest.raises(QnasError):
        TrainConfig(regime="float", bits=("w4a4",))
    with pytest.raises(QnasError):
        TrainConfig(regime="qat", bits=("w4a4", "w2a2"), conditioned=False)
    cfg = TrainConfig(steps=100, milestones=(0.5, 0.75))
    assert lr_at(cfg, 0) == 1e-3 and lr_at(cfg, 50) == pytest.approx(1e-4) and lr_at(cfg, 99) == pytest.approx(1e-5)


def test_bn_free_fraction_draws_nets_without_batchnorm(tmp_path):
    with pytest.raises(QnasError):
        TrainConfig(bn_free=1.5)
    drawn = {}
    for frac in (0.0, 0.5, 1.0):
        tr = Trainer(tiny(bn_free=frac, meta_batch=8, ghn={**TINY_GHN, "standardize": True}), tmp_path / str(frac))
        drawn[frac] = [g.bn for _ in range(4) for g, _ in tr._meta_batch()]
    assert all(drawn[0.0]) and not any(drawn[1.0])
    assert 5 <= drawn[0.5].count(False) <= 27  # 32 draws at p=0.5
    # A BN-free step with standardized weights trains (no dropped or skipped architecture).
    tr = Trainer(tiny(bn_free=1.0, ghn={**TINY_GHN, "standardize": True}), tmp_path / "run")
    m = tr.train_step()
    assert m["skipped"] == 0 and m["dropped"] == 0 and m["loss"] < 20


def test_families_fraction_draws_family_networks_and_trains(tmp_path):
    from qnas import families

    with pytest.raises(QnasError):
        TrainConfig(families=-0.1)
    tr = Trainer(tiny(families=1.0, meta_batch=4, max_params=200_000, ghn={**TINY_GHN, "standardize": True}),
                 tmp_path / "fam")
    picks = tr._meta_batch()
    assert all(isinstance(k, str) and families.family_of(k) for k, _ in picks)
    m = tr.train_step()
    assert m["skipped"] == 0 and m["loss"] < 20
    from qnas.predictors import read_header
    from qnas.train_predictor import export_predictor

    assert read_header(export_predictor(tr, tmp_path / "fam.pt", "fam")).families == families.FAMILIES
    space_only = Trainer(tiny(meta_batch=4), tmp_path / "space")._meta_batch()
    assert not any(isinstance(g, str) for g, _ in space_only)


def test_cli_bn_free_turns_standardization_on_and_rejects_bad_fractions(capsys):
    from qnas.cli import build_parser, main
    from qnas.commands.train import config_from_args

    def cfg(*extra):
        return config_from_args(build_parser().parse_args(["train-predictor", "--out", "x", *extra]))

    assert "standardize" not in cfg().ghn
    assert cfg("--bn-free", "0.3").ghn["standardize"] is True and cfg("--bn-free", "0.3").bn_free == 0.3
    assert cfg("--bn-free", "0.3", "--no-standardize").ghn["standardize"] is False
    with pytest.raises(SystemExit) as info:
        main(["train-predictor", "--out", "x", "--bn-free", "1.5"])
    assert info.value.code == 2
    assert "fraction" in capsys.readouterr().err


_DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from qnas.train_predictor import TrainConfig, Trainer
import torch.distributed as dist
cfg = TrainConfig(steps=3, meta_batch=1, batch_size=8, max_params=15_000, eval_every=0, checkpoint_every=1e9,
                  ghn={"hidden": 16, "max_channels": 16, "decoder_hidden": 16, "decoder_mid": 32})
tr = Trainer(cfg, sys.argv[1])
tr.run(progress=False)
flat = torch.cat([p.detach().reshape(-1) for p in tr.ghn.parameters()])
torch.save(flat, f"{sys.argv[1]}/rank{tr.rank}.pt")
dist.barrier()  # neither rank tears its sockets down while the other still talks (a SIGABRT seen under load)
dist.destroy_process_group()
"""


def test_two_cpu_processes_train_in_lockstep(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    # ...and they did train (different architectures per rank, averaged gradients).
    assert (tmp_path / "last.pt").exists()


def test_exported_qat_predictor_counts_the_steps_of_its_start(tmp_path):
    import json

    from qnas.predictors import load_predictor
    from qnas.train_predictor import export_predictor

    first = Trainer(tiny(steps=2), tmp_path / "float")
    first.run(progress=False)
    start = export_predictor(first, tmp_path / "float.pt", "float")
    qat = Trainer(tiny(steps=3, regime="qat", bits=("w4a4-channel",), init=str(start)), tmp_path / "qat")
    qat.run(progress=False)
    header = load_predictor(str(export_predictor(qat, tmp_path / "qat.pt", "qat"))).header
    assert header.train_steps == 5 and json.loads(header.notes)["steps"] == {"init": 2, "run": 3}


def test_cli_export_only_reads_the_training_settings_from_the_checkpoint(tmp_path):
    """`--export-only` should not need the run's training flags again (they are in last.pt)."""
    from qnas.cli import main
    from qnas.predictors import read_header

    cfg = tiny(regime="qat", bits=("w4a4",), steps=1)
    Trainer(cfg, tmp_path / "run").run(progress=False)
    out = tmp_path / "ghn.pt"
    assert main(["train-predictor", "--out", str(tmp_path / "run"), "--export-only", "--export", str(out),
                 "--quiet"]) == 0
    assert read_header(out).bits_trained == ("w4a4",)
    # a flag given anyway must be the run's: an export is never of other settings than asked for
    assert main(["train-predictor", "--out", str(tmp_path / "run"), "--export-only", "--export", str(out),
                 "--regime", "qat", "--quiet"]) == 0
    assert main(["train-predictor", "--out", str(tmp_path / "run"), "--export-only", "--export", str(out),
                 "--regime", "float", "--bits", "w2a2", "--quiet"]) == 2
    assert main(["train-predictor", "--out", str(tmp_path / "none"), "--export-only", "--export", str(out)]) == 2
