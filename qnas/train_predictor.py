"""Training the GHN: float (GHN-2/GHN-Q), per-bit-width QAT (GHN-QAT) and bit-conditioned QAT.

One code path for the three regimes. Each step samples a meta-batch of architectures from the space,
the GHN predicts all their parameters in one batched pass (each architecture with its own bit setting),
every target network runs the *same* image batch through the quantized executor (SimQuant with the
straight-through estimator at >= 4 bits, NoiseQuant at 2 bits; BatchNorm on batch statistics), and the
mean cross-entropy is backpropagated into the GHN only.

Training is resumable exactly: the checkpoint holds the GHN, Adam, the step, the data position and every
random state, and is written atomically every few minutes, at the end and on Ctrl-C/SIGTERM. Under
``torchrun --nproc_per_node N`` each rank draws its own architectures, gradients are averaged with an
all-reduce (gloo on CPU, nccl on GPU), and the ranks stay in lockstep.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import random
import signal
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qnas.defaults import DEFAULT_DATASET
from qnas.errors import QnasError

__all__ = [
    "CHECKPOINT",
    "MAX_ARCH_LOSS",
    "TrainConfig",
    "Trainer",
    "check_device",
    "check_run_dir",
    "check_writable_dir",
    "export_predictor",
    "init_distributed",
    "lr_at",
    "training_spec",
]

CHECKPOINT = "last.pt"
MAX_ARCH_LOSS = 20.0  # cross-entropy above this (chance is ~2.3) marks a diverged target network


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored in its checkpoint, so a resumed run cannot drift."""

    regime: str = "float"  # float | qat
    bits: tuple[str, ...] = ("fp32",)  # settings drawn per architecture (one value: a per-bit GHN)
    conditioned: bool = False  # bit-width embedding in the GHN
    init: str | None = None  # predictor/checkpoint to start from (GHN-QAT finetunes a float GHN)
    dataset: str = DEFAULT_DATASET
    space: str = "convnets250k"
    steps: int = 5000
    meta_batch: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    clip: float = 5.0
    milestones: tuple[float, ...] = (0.67, 0.83)  # fractions of `steps` where lr *= 0.1 (GHN-2: 200/250 of 300)
    max_params: int = 1_000_000  # training architectures stay small so a step stays cheap on CPU
    max_nodes: int = 1500  # meta-batches with more graph nodes are redrawn (GHN-2: 2,200)
    bn_free: float = 0.0  # fraction of training architectures drawn without BatchNorm
    families: float = 0.0  # fraction drawn from qnas.families (the network families users bring), not the space
    augment: bool = True
    seed: int = 0
    ghn: dict[str, Any] = field(default_factory=dict)  # GHNConfig overrides (hidden, max_channels, ...)
    eval_every: int = 250
    eval_archs: int = 12
    eval_images: int = 500
    checkpoint_every: float = 300.0  # seconds

    def __post_init__(self) -> None:
        if self.regime not in ("float", "qat"):
            raise QnasError(f"regime must be float or qat, got {self.regime!r}")
        if self.regime == "float" and set(self.bits) != {"fp32"}:
            raise QnasError("the float regime trains at fp32 only; use --regime qat for other bit settings")
        if self.regime == "qat" and len(self.bits) > 1 and not self.conditioned:
            raise QnasError("several bit settings need a bit-conditioned GHN (--conditioned)")
        for name, frac in (("bn_free", self.bn_free), ("families", self.families)):
            if not 0.0 <= frac <= 1.0:
                raise QnasError(f"{name} must be a fraction in [0, 1], got {frac}")
        for name, v in (("steps", self.steps), ("meta_batch", self.meta_batch), ("batch_size", self.batch_size)):
            if v <= 0:
                raise QnasError(f"{name} must be positive, got {v}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["bits"], d["milestones"] = tuple(d["bits"]), tuple(d["milestones"])
        return cls(**d)


def training_spec(setting: str):
    """The quantizer used while training at ``setting``: NoiseQuant at 2 bits, SimQuant (STE) otherwise;
    activation ranges by the engine's rule (batch min/max, the 99.5th percentile at 2 bits), as scored."""
    from qnas.quant import QuantSpec

    spec = QuantSpec.parse(setting)
    low = [b for b in (spec.w_bits, spec.a_bits) if b is not None]
    if low and min(low) <= 2:
        return replace(spec, mode="noise")
    return spec


def lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * 0.1 ** sum(step >= int(m * cfg.steps) for m in cfg.milestones)


# ----------------------------------------------------------------------------- distributed helpers


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _dist_info()


def _all_reduce_grads(params: Sequence[torch.nn.Parameter], world: int) -> None:
    import torch.distributed as dist

    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _agree(flag: bool, world: int, *, every: bool) -> bool:
    """The same decision on every rank: all ranks true (``every``) or any rank true."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX)
    return bool(t.item())


# ----------------------------------------------------------------------------- checks before any work


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has: ``cpu``, ``cuda``/``cuda:N`` for an available GPU, or
    ``mps`` where available; a one-line QnasError otherwise (torch fails late, with a traceback)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise QnasError(f"--device {str(device)!r} is not a torch device (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise QnasError(f"--device {str(device)!r}: no CUDA GPU is available here (use --device cpu)")
        if dev.index is not None and dev.index >= count:
            raise QnasError(f"--device {str(device)!r}: this machine has {count} CUDA GPU(s), cuda:0 to "
                            f"cuda:{count - 1}")
        return dev
    if dev.type == "mps" and torch.backends.mps.is_available():
        return dev
    raise QnasError(f"--device {str(device)!r} cannot train here (use cpu"
                    + (", cuda or cuda:N" if torch.cuda.is_available() else "") + ")")


def check_writable_dir(path: Path, what: str) -> None:
    """QnasError (starting with ``what``, e.g. ``--out 'runs/a'``) unless ``path`` is a writable directory or
    can be created as one. Missing directories are created to find out and removed again, so a failed (or
    passed) check leaves nothing behind."""
    path = Path(path)
    for attempt in range(3):
        try:
            _probe_dir(path, what)
            return
        except (FileExistsError, FileNotFoundError) as exc:
            # another process (a torchrun rank probing too) made or removed a directory meanwhile: look again;
            # a place where nothing can ever be made (/proc) fails every time
            if attempt == 2:
                raise QnasError(f"{what}: cannot write to {str(path)!r} ({exc.strerror or exc})") from None
        except OSError as exc:
            raise QnasError(f"{what}: cannot write to {str(path)!r} ({exc.strerror or exc})") from None


def _probe_dir(path: Path, what: str) -> None:
    missing: list[Path] = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    if not here.is_dir():
        raise QnasError(f"{what}: {str(here)!r} is a file, not a directory")
    created: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        if not missing:
            # os.access says yes to root on read-only mounts and /proc: only writing tells
            fd, probe = tempfile.mkstemp(dir=here, prefix=".qnas-probe-")
            os.close(fd)
            os.unlink(probe)
    finally:
        for d in reversed(created):  # deepest first, and only what this check made
            try:
                d.rmdir()
            except OSError:
                pass


def check_run_dir(out: str | Path) -> None:
    """QnasError unless the run directory ``out`` exists as a writable directory or can be created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QnasError(f"--out {str(out)!r} is a file; give a directory for the run")
    check_writable_dir(out, f"--out {str(out)!r}")


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Holds the state of one run; ``run()`` trains until ``cfg.steps`` (or ``stop_after`` more steps)."""

    def __init__(self, cfg: TrainConfig, out: str | Path, *, data_dir: str | None = None, device: str = "cpu",
                 resume: bool = True, log=print) -> None:
        from qnas.data import dataset_info, load_dataset
        from qnas.ghn import GHN, GHNConfig
        from search_spaces import get_space

        self.out = Path(out)
        self.device = check_device(device)  # a bad device or run directory fails before any work
        check_run_dir(self.out)
        self.rank, self.world = init_distributed(str(self.device))
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        self.space = get_space(cfg.space)
        if cfg.bn_free > 0 and "bn" not in inspect.signature(self.space.sample).parameters:
            raise QnasError(f"search space {cfg.space!r} cannot sample BatchNorm-free nets (its sample() has no bn)")
        self.info = dataset_info(cfg.dataset)
        ckpt_path = self.out / CHECKPOINT
        state = None
        if resume and ckpt_path.exists():
            state, stored = _read_checkpoint(ckpt_path)
            if stored != cfg:
                diff = [k for k in cfg.to_json() if cfg.to_json()[k] != stored.to_json()[k]]
                raise QnasError(f"{ckpt_path} was made with other settings ({', '.join(diff)}); "
                                "use another --out or the same settings")
        elif not resume and ckpt_path.exists():
            raise QnasError(f"{ckpt_path} exists; resume it or choose another --out")
        self.cfg = cfg
        self.ds = load_dataset(cfg.dataset, data_dir)
        ghn_cfg = GHNConfig.from_dict({"num_classes": self.info.num_classes, "bit_conditioning": cfg.conditioned,
                                       **cfg.ghn})
        torch.manual_seed(cfg.seed)  # identical GHN init on every rank
        self.ghn = GHN(ghn_cfg).to(self.device)
        if state is None and cfg.init:
            self._load_init(cfg.init)
        self.opt = torch.optim.Adam(self.ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.epoch, self.batch_in_epoch = 0, 0
        self.arch_rng = random.Random(cfg.seed * 1000 + self.rank)
        self.noise = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + self.rank)
        self.elapsed = 0.0
        if state is not None:
            self._restore(state)
        self._models: OrderedDict[str, Any] = OrderedDict()  # arch -> (module, QuantModel), LRU
        from qnas.graph import GraphCache

        self.graphs = GraphCache(maxsize=4096)
        self._eval_set = None
        self._batches = None

    # -- state ------------------------------------------------------------------------------------

    def _load_init(self, init: str) -> None:
        from qnas.predictors import load_predictor

        src = load_predictor(init, dataset=self.cfg.dataset, input_shape=self.info.input_shape)
        own = self.ghn.state_dict()
        loaded = {k: v for k, v in src.ghn.state_dict().items() if k in own and own[k].shape == v.shape}
        self.ghn.load_state_dict(loaded, strict=False)  # the bit embedding is new when conditioning is added
        self.log(f"initialized {len(loaded)}/{len(own)} GHN tensors from {init}")

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self._restore_unchecked(state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QnasError(f"{self.out / CHECKPOINT} does not fit this run ({type(exc).__name__}: {reason}); "
                            "delete it to start over or choose another --out") from None

    def _restore_unchecked(self, state: dict[str, Any]) -> None:
        self.ghn.load_state_dict(state["ghn"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        self.elapsed = float(state["elapsed"])
        rng = state["rng"][self.rank]
        self.arch_rng.setstate((rng["py"][0], tuple(rng["py"][1]), rng["py"][2]))
        self.noise.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        self.log(f"resumed {self.out / CHECKPOINT} at step {self.step}")

    def _rng_state(self) -> dict[str, Any]:
        v, internal, gauss = self.arch_rng.getstate()
        return {"py": [v, list(internal), gauss], "noise": self.noise.get_state(), "torch": torch.get_rng_state()}

    def save(self) -> Path:
        """Atomic checkpoint (rank 0 writes; every rank's random state is gathered into it)."""
        rngs = [self._rng_state()]
        if self.world > 1:
            import torch.distributed as dist

            rngs = [None] * self.world
            dist.all_gather_object(rngs, self._rng_state())
        path = self.out / CHECKPOINT
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            state = {"ghn": self.ghn.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                     "epoch": self.epoch, "batch": self.batch_in_epoch, "elapsed": self.elapsed,
                     "rng": rngs, "config": json.dumps(self.cfg.to_json())}
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        return path

    # -- one step ---------------------------------------------------------------------------------

    def _model(self, genome) -> tuple[str, Any, Any]:
        """(key, module, quantized executor) of a space genome or a ``qnas.families`` key, cached by key."""
        from qnas import families
        from qnas.quant import prepare

        arch = genome if isinstance(genome, str) else self.space.to_string(genome)
        if arch in self._models:
            self._models.move_to_end(arch)
        else:
            module = (families.build(genome, self.info.input_shape, self.info.num_classes)
                      if isinstance(genome, str) else
                      self.space.build(genome, self.info.input_shape, self.info.num_classes))
            self._models[arch] = (module, prepare(module))
            if len(self._models) > 512:
                self._models.popitem(last=False)
        return arch, *self._models[arch]

    def _images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch; the epoch's order is a function of (seed, epoch) so resume is exact."""
        from qnas.data import iterate_batches

        while True:
            if self._batches is None:
                self._batches = iterate_batches(
                    self.ds.train_images, self.ds.train_labels, self.cfg.batch_size,
                    seed=self.cfg.seed * 100_003 + self.epoch, info=self.info, shuffle=True,
                    augment=self.cfg.augment, drop_last=True)
                for _ in range(self.batch_in_epoch):  # resuming mid-epoch
                    next(self._batches)
            batch = next(self._batches, None)
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            self._batches, self.epoch, self.batch_in_epoch = None, self.epoch + 1, 0

    def _meta_batch(self) -> list[tuple[Any, str]]:
        from qnas import families

        cfg = self.cfg
        for _ in range(100):
            picks = []
            for _ in range(cfg.meta_batch):
                # Draws are skipped at families == 0 and bn_free == 0, so older runs replay exactly.
                if cfg.families > 0 and self.arch_rng.random() < cfg.families:
                    key = families.sample_key(self.arch_rng, cfg.max_params, self.info.input_shape,
                                              self.info.num_classes)
                    picks.append((key, self.arch_rng.choice(cfg.bits)))
                    continue
                bn = {"bn": self.arch_rng.random() >= cfg.bn_free} if cfg.bn_free > 0 else {}
                g = self.space.sample(self.arch_rng, cfg.max_params, self.info.input_shape, self.info.num_classes,
                                      **bn)
                picks.append((g, self.arch_rng.choice(cfg.bits)))
            graphs = [self._graph(g) for g, _ in picks]
            if sum(gr.num_nodes for gr in graphs) <= cfg.max_nodes:
                return picks
        return picks

    def _graph(self, genome):
        from qnas.graph import to_graph

        arch, module, _ = self._model(genome)
        return to_graph(module, self.info.input_shape, self.ghn.config.s_max, cache=self.graphs, key=arch)

    def train_step(self) -> dict[str, float]:
        from qnas.graph import batch_graphs

        cfg = self.cfg
        picks = self._meta_batch()
        x, y = self._images()
        x, y = x.to(self.device), y.to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, self.step)
        self.ghn.train()
        graphs = [self._graph(g) for g, _ in picks]
        preds = self.ghn(batch_graphs(graphs).to(self.device), [b for _, b in picks])
        losses = []
        correct = 0
        for (g, bits), params in zip(picks, preds):
            _, _, qmodel = self._model(g)
            logits = torch.func.functional_call(qmodel, params, (x,),
                                                {"spec": training_spec(bits), "generator": self.noise})
            losses.append(F.cross_entropy(logits, y))
            correct += int((logits.argmax(1) == y).sum())
        # An architecture whose quantized forward blew up (BN folded over a near-constant channel
        # magnifies weight rounding error without bound) is left out of the mean instead of wrecking
        # the step with a clipped but meaningless gradient; the step is skipped only if none is left.
        keep = [loss for loss in losses if bool(torch.isfinite(loss.detach())) and float(loss.detach()) < MAX_ARCH_LOSS]
        dropped = len(losses) - len(keep)
        loss = torch.stack(keep).mean() if keep else torch.stack(losses).mean()
        self.opt.zero_grad(set_to_none=True)
        # Collectives must stay matched: every rank skips, or none does.
        ok = _agree(bool(keep), self.world, every=True)
        if ok:
            loss.backward()
            params = [p for p in self.ghn.parameters() if p.requires_grad]
            _all_reduce_grads(params, self.world)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip)  # identical on all ranks after all-reduce
            ok = bool(torch.isfinite(norm))
        if ok:
            self.opt.step()
        self.step += 1
        return {"loss": float(loss.detach()), "acc": correct / (len(picks) * len(y)), "skipped": float(not ok),
                "dropped": float(dropped),
                "nodes": float(sum(gr.num_nodes for gr in graphs))}

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Mean top-1 on a few held-out `id` architectures at each trained setting (validation images)."""
        from qnas.data import val_subset
        from qnas.graph import batch_graphs

        if self._eval_set is None:
            genomes = [g for g in self.space.load_split("id")
                       if self.space.count_params(g, self.info.input_shape, self.info.num_classes)
                       <= self.cfg.max_params][: self.cfg.eval_archs]
            self._eval_set = (genomes, *val_subset(self.ds, self.cfg.eval_images, seed=0))
        genomes, xs, ys = self._eval_set
        self.ghn.eval()
        out = {}
        with torch.no_grad():
            for bits in self.cfg.bits:
                accs = []
                for g in genomes:
                    arch, _, qmodel = self._model(g)
                    params = self.ghn(batch_graphs([self._graph(g)]).to(self.device), [bits])[0]
                    hits = 0
                    for xb, yb in zip(xs.split(64), ys.split(64)):
                        logits = torch.func.functional_call(qmodel, params, (xb.to(self.device),), {"spec": bits})
                        hits += int((logits.argmax(1).cpu() == yb).sum())
                    accs.append(hits / len(ys))
                out[bits] = sum(accs) / len(accs)
        return out

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``stop_after`` more steps); checkpoint on the way and at the end."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        stop = {"flag": False}

        def on_signal(signum, frame):  # SIGTERM: finish the step, checkpoint, exit
            stop["flag"] = True

        old = signal.signal(signal.SIGTERM, on_signal) if self._main_thread() else None
        target = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        last_ckpt, t_start, ema = time.time(), time.time() - self.elapsed, None
        bar = _progress(progress and self.rank == 0)
        task = bar.add_task("train", total=cfg.steps, completed=self.step, loss=float("nan"),
                            lr=lr_at(cfg, self.step))
        interrupted = False
        try:
            with bar:
                while self.step < target and not stop["flag"]:
                    t0 = time.perf_counter()
                    m = self.train_step()
                    self.elapsed = time.time() - t_start
                    if not m["skipped"]:
                        ema = m["loss"] if ema is None else 0.98 * ema + 0.02 * m["loss"]
                    self._record(m, time.perf_counter() - t0)
                    bar.update(task, completed=self.step, loss=float("nan") if ema is None else ema,
                               lr=lr_at(cfg, self.step))
                    if _agree(time.time() - last_ckpt > cfg.checkpoint_every, self.world, every=False):
                        self.save()
                        last_ckpt = time.time()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.save()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return {"step": self.step, "interrupted": interrupted or stop["flag"], "loss_ema": ema}

    def _record(self, m: dict[str, float], seconds: float) -> None:
        """Append the step to train_log.csv; every ``eval_every`` steps validate into eval_log.csv."""
        if self.rank != 0:
            return
        _append_csv(self.out / "train_log.csv", {
            "step": self.step, "loss": round(m["loss"], 5), "acc": round(m["acc"], 4),
            "lr": lr_at(self.cfg, self.step - 1), "skipped": int(m["skipped"]), "dropped": int(m["dropped"]),
            "nodes": int(m["nodes"]),
            "seconds": round(seconds, 3), "elapsed": round(self.elapsed, 1)})
        if m["skipped"]:
            self.log(f"step {self.step}: skipped (loss {m['loss']:.3g})")
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            accs = self.evaluate()
            _append_csv(self.out / "eval_log.csv",
                        {"step": self.step, **{f"top1_{k}": round(v, 4) for k, v in accs.items()}})
            self.log(f"step {self.step}: val top-1 " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accs.items()))

    @staticmethod
    def _main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()


def run_config(out: str | Path) -> TrainConfig:
    """The training settings stored in a run directory's checkpoint (one-line QnasError without one)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise QnasError(f"no checkpoint {path}")
    return _read_checkpoint(path)[1]


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], TrainConfig]:
    """A run checkpoint and its config, or a one-line QnasError for a truncated, foreign or unsafe file."""
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it is about to refuse: noise before our one line
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"expected a dict, found {type(state).__name__}")
        return state, TrainConfig.from_json(json.loads(state["config"]))
    except QnasError as exc:
        raise QnasError(f"{path} holds an invalid run config ({exc}); delete it or choose another --out") from None
    except Exception as exc:  # UnpicklingError, EOFError/RuntimeError for junk, KeyError/TypeError for other files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only load failed" in reason.lower():
            # torch's own advice (weights_only=False) would run the file's code: never repeat it
            reason = "it holds objects a safe load refuses; qnas never unpickles arbitrary code"
        raise QnasError(f"cannot resume from {path}: not a readable qnas run checkpoint ({reason}); delete it to "
                        "start over or choose another --out") from None


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]train-predictor[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.1e}"), TimeElapsedColumn(),
                    disable=not enabled)


def export_predictor(trainer: Trainer, path: str | Path, name: str, eval_table: dict | None = None) -> Path:
    """Write the trained GHN as a predictor checkpoint with its header (dataset, space, bits, steps, table)."""
    from qnas.predictors import PredictorHeader, read_header, save_predictor

    info = trainer.info
    from qnas.families import FAMILIES

    # A QAT run finetunes an earlier predictor: the header counts the steps of both, and what both saw.
    try:
        init = read_header(trainer.cfg.init) if trainer.cfg.init else None
    except QnasError:  # the starting checkpoint is gone: count this run only
        init = None
    init_steps = init.train_steps if init is not None else 0
    seen = set(init.families if init is not None else ()) | (set(FAMILIES) if trainer.cfg.families > 0 else set())
    header = PredictorHeader(
        name=name, dataset=info.name, input_shape=tuple(info.input_shape), num_classes=info.num_classes,
        mean=tuple(info.mean), std=tuple(info.std), search_space=trainer.cfg.space,
        ghn_config=trainer.ghn.config.to_dict(), bits_trained=tuple(trainer.cfg.bits),
        families=tuple(f for f in FAMILIES if f in seen),
        train_steps=init_steps + trainer.step, eval_table=eval_table or {},
        notes=json.dumps({"train_config": trainer.cfg.to_json(), "steps": {"init": init_steps, "run": trainer.step}}),
    )
    return save_predictor(path, trainer.ghn.cpu().eval(), header)

