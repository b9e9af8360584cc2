"""The reference trainer (qnas.train)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qnas import data
from qnas.errors import QnasError
from qnas.score import evaluate, init_params
from qnas.train import train
from search_spaces import convnets250k

TINY = "stem8-8:conv3-maxpool-16:conv3-maxpool-32:conv3-fc0"  # 6,866 parameters


def _synthetic(n_train: int = 512, n_eval: int = 128, seed: int = 0) -> data.Dataset:
    """A learnable 10-class problem in Fashion-MNIST's format: a bright 7x7 patch whose position is the class."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.randint(0, 90, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
        for i, c in enumerate(labels.tolist()):
            r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
            images[i, 0, r:r + 7, col:col + 7] = 230
        return images, labels

    info = data.dataset_info("fashion-mnist")
    (tx, ty), (vx, vy), (sx, sy) = split(n_train), split(n_eval), split(n_eval)
    return data.Dataset(info, tx, ty, vx, vy, sx, sy)


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_is_deterministic_by_seed() -> None:
    ds = _synthetic()
    runs = []
    for seed in (0, 0, 1):
        module = convnets250k.build(convnets250k.from_string(TINY))
        result = train(module, ds, 1, seed=seed, batch_size=64, warmup_steps=2, test=False)
        runs.append((result, _params(module)))
    (a, pa), (b, pb), (c, pc) = runs
    strip = [(h.epoch, h.lr, h.train_loss, h.train_top1, h.val_top1) for h in a.history]  # all but seconds
    assert strip == [(h.epoch, h.lr, h.train_loss, h.train_top1, h.val_top1) for h in b.history]
    assert a.val == b.val
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["stem.0.weight"], pc["stem.0.weight"])


def test_fp32_training_learns_and_leaves_an_ordinary_eval_module() -> None:
    ds = _synthetic(n_train=1024)
    module = convnets250k.build(convnets250k.from_string(TINY))
    result = train(module, ds, 3, seed=0, batch_size=64, lr=0.1, warmup_steps=5, eval_specs="fp32,w8a8")
    assert not result.diverged and len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.val["fp32"]["top1"] > 0.8 and result.test["fp32"]["top1"] > 0.8
    # BN statistics were written into the module: plain eval mode scores the same as the result.
    x, y = data.val_subset(ds, len(ds.val_labels))
    module.eval()
    with torch.no_grad():
        plain = (module(x).argmax(1) == y).float().mean().item()
    assert plain == pytest.approx(result.val["fp32"]["top1"], abs=1 / len(y) + 1e-9)


def test_quantization_aware_training_runs_at_its_setting() -> None:
    ds = _synthetic()
    module = convnets250k.build(convnets250k.from_string(TINY))
    result = train(module, ds, 2, spec="w4a4", seed=0, batch_size=64, lr=0.1, warmup_steps=5, test=False)
    assert result.spec == "w4a4" and list(result.val) == ["w4a4"]
    assert result.history[-1].val_top1 == result.val["w4a4"]["top1"]
    assert result.history[-1].train_loss < result.history[0].train_loss
    noise = train(convnets250k.build(convnets250k.from_string(TINY)), ds, 1, spec="w2a2-noise", seed=0,
                  batch_size=64, test=False, val_every=0)
    assert not noise.diverged and noise.history[0].val_top1 is None


def test_trained_init_for_scoring() -> None:
    ds = _synthetic(n_train=1024)
    module = convnets250k.build(convnets250k.from_string(TINY))
    before = module.stem[0].weight.detach().clone()
    assert init_params(module, "trained:2", dataset=ds, seed=0) is None  # trained in place
    assert not torch.equal(before, module.stem[0].weight)
    x, y = data.val_subset(ds, len(ds.val_labels))
    assert evaluate(module, None, x, y, ["fp32"])["fp32"]["top1"] > 0.2  # chance is 0.1; 16 steps


def test_bad_arguments() -> None:
    ds = _synthetic()
    module = convnets250k.build(convnets250k.from_string(TINY))
    for kwargs in ({"epochs": 0}, {"epochs": 1, "schedule": "linear"}, {"epochs": 1, "batch_size": 10_000},
                   {"epochs": 1, "spec": "w1a1"}):
        with pytest.raises(QnasError):
            train(module, ds, **kwargs)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="real Fashion-MNIST not installed (dataset-fashion-mnist)")
def test_quantization_ordering_after_brief_fp32_training() -> None:
    """A tiny net trained briefly at FP32: W8A8 within a point of FP32, W4A4 lower, W2A2 lower still."""
    ds = data.load_dataset("fashion-mnist", data_dir=FASHION)
    module = convnets250k.build(convnets250k.from_string(TINY))
    train(module, ds, 2, seed=0, batch_size=64, train_size=4096, test=False, val_every=0)
    x, y = data.val_subset(ds, 1000)
    calib = data.normalize(ds.train_images[:64], ds.info)
    acc = {k: v["top1"] for k, v in evaluate(module, None, x, y, "fp32,w8a8,w4a4,w2a2", calib_images=calib).items()}
    assert acc["fp32"] > 0.65, acc
    assert abs(acc["fp32"] - acc["w8a8"]) <= 0.01, acc
    assert acc["w8a8"] > acc["w4a4"] > acc["w2a2"], acc


class _Stop(Exception):
    pass


@pytest.mark.parametrize("spec", [None, "w4a4"])
def test_checkpointed_run_interrupted_mid_epoch_resumes_to_the_same_result(tmp_path: Path, spec: str | None) -> None:
    ds = _synthetic()
    kwargs = dict(spec=spec, seed=3, batch_size=64, warmup_steps=2, test=False, val_every=0)
    ref_module = convnets250k.build(convnets250k.from_string(TINY))
    ref = train(ref_module, ds, 2, **kwargs)

    def stop_at_11(step: int, _total: int) -> None:  # 8 steps per epoch: mid-way through epoch 2
        if step == 11:
            raise _Stop

    ckpt = tmp_path / "run.pt"
    module = convnets250k.build(convnets250k.from_string(TINY))
    with pytest.raises(_Stop):
        train(module, ds, 2, checkpoint=ckpt, checkpoint_every=0.0, progress=stop_at_11, **kwargs)
    assert ckpt.exists()
    resumed_module = convnets250k.build(convnets250k.from_string(TINY))
    resumed = train(resumed_module, ds, 2, checkpoint=ckpt, **kwargs)
    assert [round(h.train_loss, 6) for h in resumed.history] == [round(h.train_loss, 6) for h in ref.history]
    assert resumed.val == ref.val
    ref_state, state = ref_module.state_dict(), resumed_module.state_dict()
    assert all(torch.allclose(ref_state[k].float(), state[k].float(), atol=1e-6) for k in ref_state)


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    ds = _synthetic()
    ckpt = tmp_path / "run.pt"
    train(convnets250k.build(convnets250k.from_string(TINY)), ds, 1, seed=0, batch_size=64, test=False,
          val_every=0, checkpoint=ckpt)
    with pytest.raises(QnasError, match="other settings"):
        train(convnets250k.build(convnets250k.from_string(TINY)), ds, 1, seed=1, batch_size=64, test=False,
              val_every=0, checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(QnasError, match="not a readable"):
        train(convnets250k.build(convnets250k.from_string(TINY)), ds, 1, seed=0, batch_size=64, test=False,
              val_every=0, checkpoint=ckpt)
