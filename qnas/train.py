"""Reference trainer: SGD from a seeded random init, at FP32 or quantization-aware (STE) at a QuantSpec.

    result = train(module, data.load_dataset("fashion-mnist"), epochs=3, seed=0)            # FP32
    result = train(module, ds, epochs=3, spec=QuantSpec.parse("w4a4"), seed=0)                # QAT
    result.test["fp32"]["top1"], result.history[-1].val_top1

It gives the ground truth GHN-predicted parameters are judged against, so it is deliberately plain:
SGD with Nesterov momentum, linear warm-up then cosine (or step) decay per step, weight decay on conv
and linear weights only, gradient-norm clipping (BN-free nets), cross-entropy. Training runs through
the same executor as scoring (``qnas.quant``): BatchNorm on batch statistics, and under QAT the
weights (BN folded) and activations fake-quantized with straight-through gradients (``-noise`` specs:
NoiseQuant). At FP32 the module itself runs (channels_last): the same arithmetic as the executor without
its per-step bookkeeping, which dominates the step time of small nets.
Everything is seeded by ``seed`` (parameter init, data order, augmentation, noise), so a run repeats
exactly with the same thread count. ``checkpoint=PATH`` makes a long run resumable: the state is written
atomically every ``checkpoint_every`` seconds and at each epoch's end, and a rerun with the same
arguments continues from it, mid-epoch included, with the same result as an uninterrupted run.

After training, FP32 BatchNorm statistics are estimated on 1,024 training images and written into the
module's running statistics, so ``module.eval()`` is an ordinary trained model. Reported accuracies are
measured as scoring measures them (``qnas.score.evaluate``, ``bn_stats`` default ``calibrated``), with the
calibration taken from ``calib_size`` training images, never from the images being scored.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qnas import data
from qnas.defaults import DEFAULT_BN_STATS, DEFAULT_CALIB_SIZE
from qnas.errors import QnasError
from qnas.quant import QuantSpec, calibrate, channels_last_unsafe, parse_specs, prepare
from qnas.score import evaluate

__all__ = ["EpochLog", "TrainResult", "reset_parameters", "train", "unit_variance_init"]

SCHEDULES = ("cosine", "step")
RUNNING_STATS_IMAGES = 1024  # training images whose FP32 BN statistics become the running statistics
CKPT_FORMAT = "qnas-train-checkpoint"


@dataclass(frozen=True)
class EpochLog:
    epoch: int  # 1-based
    lr: float  # at the end of the epoch
    train_loss: float  # mean over the epoch's batches
    train_top1: float  # on the (augmented, quantized) training batches as they were seen
    val_top1: float | None  # at the training setting on the validation subset, if evaluated
    seconds: float


@dataclass
class TrainResult:
    spec: str  # the training setting
    epochs: int
    seed: int
    val: dict[str, dict[str, float]]  # setting -> {"top1", "top5"} on the validation subset
    test: dict[str, dict[str, float]]  # the same on the official test set
    history: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0
    diverged: bool = False  # the loss became non-finite; training stopped there


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialize every layer with PyTorch's default init, seeded (global RNG state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if callable(getattr(m, "reset_parameters", None)):
                m.reset_parameters()


def unit_variance_init(module: nn.Module, images: torch.Tensor) -> None:
    """Scale every conv/linear layer but the classifier so its output has unit standard deviation on
    ``images`` (LSUV, Mishkin & Matas 2016), in execution order.

    Nets without BatchNorm need it: PyTorch's default init shrinks the signal at every layer, and nets
    of the ``bn_free`` split stayed at chance without it (``benchmarks/ground_truth_recipe.py``).
    """
    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        for layer in layers[:-1]:
            seen: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
            try:
                module(images)
            finally:
                handle.remove()
            std = float(seen[0].std())
            if std > 0 and math.isfinite(std):
                layer.weight.div_(std)
                if layer.bias is not None:
                    layer.bias.div_(std)


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.1 ** sum(progress >= m for m in (0.5, 0.75))


def _subset(images: torch.Tensor, labels: torch.Tensor, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= len(labels):
        return images, labels
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], labels[idx]


def train(
    module: nn.Module,
    dataset: data.Dataset,
    epochs: int,
    *,
    spec: QuantSpec | str | None = None,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    warmup_steps: int = 200,
    clip_grad_norm: float = 5.0,
    augment: bool = False,
    seed: int = 0,
    reset: bool = True,
    train_size: int | None = None,
    val_size: int | None = None,
    val_every: int = 1,
    eval_specs: str | Iterable[str | QuantSpec] | None = None,
    bn_stats: str = DEFAULT_BN_STATS,
    calib_size: int = DEFAULT_CALIB_SIZE,
    test: bool = True,
    progress: Callable[[int, int], None] | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 300.0,
) -> TrainResult:
    """Train ``module``'s own parameters in place for ``epochs`` epochs and measure it.

    ``spec=None`` trains at FP32, a setting trains quantization-aware. ``reset`` re-initializes the
    parameters from ``seed`` first. ``train_size``/``val_size`` restrict training and validation to
    fixed subsets (quick runs). Final accuracies are measured at ``eval_specs`` (default: the training
    setting) on the validation subset and, with ``test``, the official test set. ``progress(step, total)``
    is called after every optimizer step. A net without BatchNorm is re-initialized with
    :func:`unit_variance_init` on 256 training images after the seeded init. ``device``: where training
    runs (e.g. ``cuda``); measuring runs on the CPU, and the module is left there. ``checkpoint``: see
    the module docstring.
    """
    spec = QuantSpec.parse(spec)
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise QnasError(f"epochs, batch size and learning rate must be positive (got {epochs}, {batch_size}, {lr})")
    if schedule not in SCHEDULES:
        raise QnasError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    specs = parse_specs(eval_specs) if eval_specs is not None else [spec]
    info = dataset.info
    train_x, train_y = _subset(dataset.train_images, dataset.train_labels, train_size, seed)
    steps_per_epoch = len(train_y) // batch_size
    if steps_per_epoch == 0:
        raise QnasError(f"{len(train_y)} training images are fewer than one batch of {batch_size}")
    val_x, val_y = data.val_subset(dataset, min(val_size or len(dataset.val_labels), len(dataset.val_labels)), seed=0)
    calib_x = data.normalize(_subset(train_x, train_y, max(calib_size, RUNNING_STATS_IMAGES), seed + 1)[0], info)

    if reset:
        reset_parameters(module, seed)
        if not _has_batchnorm(module):  # see unit_variance_init
            unit_variance_init(module, calib_x[:256])
    dev = torch.device(device)
    module.to(dev)
    qmodel = prepare(module)
    unsafe = any(isinstance(m, nn.Conv2d) and channels_last_unsafe(m) for m in module.modules())
    layout = torch.contiguous_format if unsafe else torch.channels_last  # see channels_last_unsafe
    net = module.to(memory_format=layout) if spec.is_float else None  # FP32: the module itself
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.dim() <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=momentum, nesterov=momentum > 0,
    )
    total = epochs * steps_per_epoch
    warmup = min(warmup_steps, total // 10)
    noise = torch.Generator(device=dev).manual_seed(seed + 2)
    result = TrainResult(spec=spec.name, epochs=epochs, seed=seed, val={}, test={})
    identity = json.dumps({"spec": spec.name, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                           "momentum": momentum, "weight_decay": weight_decay, "schedule": schedule,
                           "warmup": warmup, "clip": clip_grad_norm, "augment": augment, "seed": seed,
                           "train": len(train_y), "params": sorted(k for k, _ in module.named_parameters())})
    ckpt = Path(checkpoint) if checkpoint is not None else None
    state = _read_checkpoint(ckpt, identity) if ckpt is not None else None
    step, first_epoch, skip, loss_sum, correct, seen, elapsed = 0, 1, 0, 0.0, 0, 0, 0.0
    if state is not None:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        noise.set_state(state["noise"])  # a generator's state is a CPU byte tensor on every device
        step, elapsed = int(state["step"]), float(state["seconds"])
        first_epoch, skip = step // steps_per_epoch + 1, step % steps_per_epoch
        loss_sum, correct, seen = float(state["loss_sum"]), int(state["correct"]), int(state["seen"])
        result.history = [EpochLog(**h) for h in json.loads(state["history"])]
        result.diverged = bool(state["diverged"])

    def save() -> None:
        if ckpt is not None:
            _save_atomic({"format": CKPT_FORMAT, "identity": identity, "module": module.state_dict(),
                          "optimizer": optimizer.state_dict(), "noise": noise.get_state().cpu(), "step": step,
                          "seconds": elapsed + time.perf_counter() - start, "loss_sum": loss_sum,
                          "correct": correct, "seen": seen, "diverged": result.diverged,
                          "history": json.dumps([asdict(h) for h in result.history])}, ckpt)

    start = last_save = time.perf_counter()
    for epoch in range(first_epoch, epochs + 1):
        if result.diverged:
            break
        t0 = time.perf_counter()
        batches = data.iterate_batches(train_x, train_y, batch_size, seed=seed * 100_003 + epoch, info=info,
                                       shuffle=True, augment=augment, drop_last=True)
        for i, (x, y) in enumerate(batches):
            if i < skip:  # resumed mid-epoch: these batches were trained on before the interruption
                continue
            x, y = x.to(dev), y.to(dev)
            for group in optimizer.param_groups:
                group["lr"] = lr * _lr_factor(step, total, warmup, schedule)
            if net is not None:
                logits = net(x.contiguous(memory_format=layout))
            else:
                logits = qmodel(x, spec, generator=noise)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                result.diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), clip_grad_norm)
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if progress is not None:
                progress(step, total)
            if ckpt is not None and time.perf_counter() - last_save > checkpoint_every:
                save()
                last_save = time.perf_counter()
        skip = 0
        if result.diverged:
            break
        val_top1 = None
        if val_every > 0 and (epoch % val_every == 0 or epoch == epochs):
            module.cpu()
            acc = evaluate(qmodel, None, val_x, val_y, [spec], bn_stats=bn_stats, calib_images=calib_x[:calib_size])
            module.to(dev)
            val_top1 = acc[spec.name]["top1"]
        result.history.append(EpochLog(epoch, optimizer.param_groups[0]["lr"], loss_sum / max(seen, 1),
                                       correct / max(seen, 1), val_top1, time.perf_counter() - t0))
        loss_sum, correct, seen = 0.0, 0, 0
        save()
        last_save = time.perf_counter()

    module.cpu()
    module.to(memory_format=torch.contiguous_format)
    _store_bn_statistics(qmodel, module, calib_x[:RUNNING_STATS_IMAGES])
    result.val = evaluate(qmodel, None, val_x, val_y, specs, bn_stats=bn_stats, calib_images=calib_x[:calib_size])
    if test:
        test_x = data.normalize(dataset.test_images, info)
        result.test = evaluate(qmodel, None, test_x, dataset.test_labels, specs, bn_stats=bn_stats,
                               calib_images=calib_x[:calib_size])
    result.seconds = elapsed + time.perf_counter() - start
    return result


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path: Path, identity: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it belongs to this run (tensors and plain data only: no pickle code)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: one line, not a traceback)
        raise QnasError(f"{path} is not a readable training checkpoint ({type(exc).__name__}); "
                        "move it away to start over") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise QnasError(f"{path} is not a qnas training checkpoint; move it away to start over")
    if state.get("identity") != identity:
        raise QnasError(f"{path} was written by a run with other settings; move it away to start over")
    return state


def _store_bn_statistics(qmodel: nn.Module, module: nn.Module, calib_x: torch.Tensor) -> None:
    """Write FP32 BatchNorm statistics of the calibration images into the module's running buffers."""
    calibration = calibrate(qmodel, calib_x)  # type: ignore[arg-type]
    modules = dict(module.named_modules())
    with torch.no_grad():
        for name, (mean, var) in calibration.bn.items():
            bn = modules[name]
            if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
