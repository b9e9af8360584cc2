"""Ground truth v2: what users get from an architecture, trained for real, for benchmarks/ranking.py.

    python benchmarks/ground_truth.py plan                       # (re)write architectures.json: the fixed rule
    python benchmarks/ground_truth.py run --phase agreement --workers 2 > runs/gt.log 2>&1 &
    python benchmarks/ground_truth.py run --phase truth --budget k10e2 --workers 2
    python benchmarks/ground_truth.py run --phase user --budget k10e2 --workers 2
    python benchmarks/ground_truth.py status                     # what is done, what is left, CPU-hours
    python benchmarks/ground_truth.py merge --from DIR           # add another machine's stages (a GPU run's)

Three phases share one store (``benchmarks/ground_truth/v2/results/``, one JSON file per (architecture,
budget, seed), committed):

* ``agreement``: 16 architectures at every budget of ``BUDGETS`` (from the 63 SGD steps of ground
  truth v1 to 5 epochs over 20,000 images), FP32 and W4A4: ``benchmarks/budget_agreement.py`` ranks
  each budget against the longest, which decides the truth budget.
* ``truth``: all 80 architectures at the chosen ``--budget``, FP32, W4A4 and W2A2, and a second
  training seed for 24 of them (the noise ceiling), after every first seed: the ranking's rows come first.
* ``user``: the hand-written networks of ``qnas.user_split`` (architectures ``user:<name>``, ids
  ``user-<name>``; not in ``architectures.json``) at the truth ``--budget``, FP32 and W4A4: how the
  predictor does on the families users bring.

**Which architectures** (``plan``, committed as ``architectures.json``): 80 parameter-count targets
spaced evenly in log10 from 1e4 to 1e7 (stratified: target i at 10^(4 + 3 (i + 0.5) / 80)); each
target goes to the held-out split (``id``, ``deep``, ``wide``, ``bn_free``) with the fewest picks so
far among those whose size range covers it, so every split gets 20; there, of the 3 unused architectures
nearest in log-parameters, the one with the fewest MACs (training cost grows with MACs, up to 2 hours
for one 1e7-parameter net at the longest budget: the choice trades a little randomness for a table that
fits a CPU). The ``agreement`` 16: the 80 sorted by size in 16 groups of 5, the fewest MACs of each.
The ``seed 1`` 24: evenly spaced ranks of the 80 sorted by size.

**What each (architecture, budget, seed) gets**, in stages, each saved as soon as it is done:

1. ``fp32``: the reference trainer (``qnas.train.train``: SGD Nesterov, cosine, warm-up, seeded
   init) on the budget's fixed class-balanced training images (the first images//10 of each class in
   official order), checkpointed every 5 minutes;
2. ``ptq``: the trained FP32 net measured at FP32 and quantized after training (post-training
   quantization, the engine's default ranges, per-channel weights) at every setting of ``PTQ_SETTINGS``:
   the quantization *sensitivity* a quantization-aware score must predict;
3. ``faq_w4a4`` (and ``faq_w2a2`` in the truth phase): FAQ finetuning of the trained FP32 net with
   qnas's recipe (``qnas.finetune.FAQConfig`` defaults: first and last layer at 8 bits, per-channel
   weights, learning rate decayed exponentially to 1e-6 from ``FAQ_LR``: small, as FAQ finetunes
   pretrained nets), one epoch over the budget's training images: the quantized model a user deploys.

**One quantizer for the truth table.** The agreement phase ran before the engine's 8-bit weights became
symmetric (``QUANT_ENGINE_SINCE``). The truth phase re-measures ``ptq``/``faq_*`` stages measured before
that commit (the agreement rows at the chosen budget) from the same trained weights; the old stage stays
in the row under ``superseded``, which ``budget_agreement.py`` reads, so each study sees one engine.

Accuracies are top-1 on a fixed class-balanced subset of the official test set (``--test-images``,
first 200 per class), BatchNorm statistics and activation ranges calibrated on 256 training images.

**Workers.** ``--workers N`` runs N processes with one torch thread each (``--threads T``: T each, for
one worker on otherwise idle cores, e.g. for the biggest nets; ``--device cuda`` trains,
finetunes and measures on a GPU: many small nets share it, one process each). They share the store: a
worker takes a job by an exclusive ``flock`` on its lock file (``STORE/.locks``, ignored by git), which
the kernel releases when the process dies, so ``kill -9`` leaves nothing stale; a restarted run skips
finished stages and resumes an interrupted training from its checkpoint (in ``--cache``, outside the
work tree). Trained FP32 weights are kept there too, so a later stage (W2A2 in the truth phase) reuses
them; if they are gone the training is repeated, which is bit-reproducible only on the same kind of CPU
(``cpu_capability`` in the provenance: AVX2 and AVX-512 kernels train different nets): when the weights'
fingerprint differs from the row's (or the row has none), every stage is measured again from the new
net, the old net's stages kept whole under ``retrained_away`` (``superseded`` keeps meaning a stage of
an older quantizer), so a row's ``stages`` never mix two nets. Jobs with a trained net whose weights are
in this machine's cache and stages left go first; then a worker follows the plan's order, or with
``--order cheap`` the fewest MACs first (one such worker beside one in plan order turns small nets and
their second seeds into rows within hours while the other trains the big ones; the final table is the
same, only the order of its rows differs).
``--hours H`` bounds a run that must end by a known time (a machine lent for a session): a worker
takes a job only if the cost model (``status``'s linear fit on the committed stages, with ``HOURS_MARGIN``
for its misses) expects it to end within H hours of the start, a trained net whose weights are not in
this machine's cache counting its training again (and every stage again where it was trained on another
kind of machine); it stops when no job left fits, so no training is cut
off half-way and lost with the machine.
A job that raises (a diverged finetuning, a damaged checkpoint) is recorded in
``STORE/failed/<key>.json`` and skipped, also by later runs until ``--retry-failed``; the others go on.
Every stage records its provenance: command, git commit, hashes of the engine files, torch and Python
versions, device, CPU capability (torch's kernels), threads, CPU and wall seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_float, positive_int  # noqa: E402

import qnas  # noqa: E402
from qnas import data, user_split  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.finetune import FAQConfig, finetune  # noqa: E402
from qnas.ranker import macs as ranker_macs  # noqa: E402
from qnas.score import evaluate  # noqa: E402
from qnas.train import train  # noqa: E402
from search_spaces import get_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORE = Path(__file__).resolve().parent / "ground_truth" / "v2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qnas" / "ground_truth"
SPACE, DATASET = "convnets250k", "fashion-mnist"
SPLITS = ("id", "deep", "wide", "bn_free")
N_ARCHS, N_AGREEMENT, N_SEED1, NEAREST = 80, 16, 24, 3
LOG_MIN, LOG_MAX = 4.0, 7.0


@dataclasses.dataclass(frozen=True)
class Budget:
    """One training budget: ``epochs`` over the first ``images``//10 training images of each class."""

    images: int
    epochs: int
    batch_size: int
    lr: float = 0.05

    @property
    def steps(self) -> int:
        return self.epochs * ((self.images // 10 * 10) // self.batch_size)

    @property
    def passes(self) -> int:
        return self.epochs * (self.images // 10 * 10)


# Shortest first; the last is the reference of the agreement study. s63 is ground truth v1's budget.
BUDGETS: dict[str, Budget] = {
    "s63": Budget(2048, 1, 32),
    "k10e1": Budget(10_000, 1, 64),
    "k10e2": Budget(10_000, 2, 64),
    "k20e2": Budget(20_000, 2, 64),
    "k20e5": Budget(20_000, 5, 64),
}
PTQ_SETTINGS = ("fp32", "w8a8-channel", "w4a8-channel", "w4a4-channel", "w2a2-channel",
                "w4a4-channel-fl8", "w2a2-channel-fl8")
FAQ_SETTINGS = {"agreement": ("w4a4",), "truth": ("w4a4", "w2a2"), "user": ("w4a4",)}
CALIB_IMAGES = 256
# FAQ's learning rate from a *trained* start (qnas finetune's 0.05 is for GHN-predicted starts and loses
# accuracy here): benchmarks/ground_truth_recipe.py, docs/ground_truth.md.
FAQ_LR = {"w4a4": 0.002, "w2a2": 0.01}
# The quantizer the truth phase measures with: ptq/faq stages measured by an older engine (the agreement
# phase ran before this commit: asymmetric 8-bit weights) are measured again there, the old stage kept under
# "superseded" in the row. FP32 training did not change, so the trained nets are reused.
QUANT_ENGINE_SINCE = "cd48ba41ac675f6fc53c4b7133142f7377fd169f"
# The code a row's numbers depend on; hashed into every stage's provenance.
# The quantization engine is a package: every module in it (found, so a new one is hashed too) and the op table.
ENGINE_FILES = (*sorted(p.relative_to(REPO).as_posix() for p in (REPO / "qnas" / "quant").glob("*.py")),
                "qnas/ops.py", "qnas/train.py", "qnas/score.py", "qnas/data.py", "qnas/finetune.py",
                "search_spaces/convnets250k/__init__.py", "qnas/user_split.py")


# ----------------------------------------------------------------------------- which architectures


def plan(space: Any, info: data.DatasetInfo) -> dict[str, Any]:
    """The fixed selection rule of the module docstring, as the committed ``architectures.json``."""
    pool: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        pool[split] = []
        for index, g in enumerate(space.load_split(split)):
            params = space.count_params(g, info.input_shape, info.num_classes)
            pool[split].append({"id": f"{split}-{index:03d}", "split": split, "index": index,
                                "arch": space.to_string(g), "params": params,
                                "macs": space.count_macs(g, info.input_shape, info.num_classes),
                                "log_params": math.log10(params)})
    span = {s: (min(p["log_params"] for p in pool[s]), max(p["log_params"] for p in pool[s])) for s in SPLITS}
    picks: dict[str, int] = dict.fromkeys(SPLITS, 0)
    used: set[str] = set()
    chosen = []
    for i in range(N_ARCHS):
        target = LOG_MIN + (LOG_MAX - LOG_MIN) * (i + 0.5) / N_ARCHS
        cover = [s for s in SPLITS if span[s][0] - 0.1 <= target <= span[s][1] + 0.1] or list(SPLITS)
        split = min(cover, key=lambda s: (picks[s], SPLITS.index(s)))
        picks[split] += 1
        near = sorted((p for p in pool[split] if p["id"] not in used),
                      key=lambda p: (abs(p["log_params"] - target), p["id"]))[:NEAREST]
        pick = min(near, key=lambda p: (p["macs"], p["id"]))
        used.add(pick["id"])
        chosen.append({k: v for k, v in pick.items() if k != "log_params"})
    chosen.sort(key=lambda p: (p["params"], p["id"]))
    group = N_ARCHS // N_AGREEMENT
    agreement = [min(chosen[group * i: group * (i + 1)], key=lambda p: (p["macs"], p["id"]))["id"]
                 for i in range(N_AGREEMENT)]
    seed1 = [chosen[round(i * (N_ARCHS - 1) / (N_SEED1 - 1))]["id"] for i in range(N_SEED1)]
    return {"space": SPACE, "dataset": DATASET,
            "rule": "see the docstring of benchmarks/ground_truth.py (plan)",
            "architectures": chosen, "agreement": agreement, "seed1": seed1}


def visit_order(n: int) -> list[int]:
    """0..n-1 in bit-reversed order (0, n/2, n/4, 3n/4, ...): any prefix is spread over all sizes."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits)]
    return [k for k in keys if k < n]


@dataclasses.dataclass(frozen=True)
class Job:
    arch: dict[str, Any]
    budget: str
    seed: int
    faq: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.arch['id']}_{self.budget}_s{self.seed}"

    refresh: bool = False  # re-measure ptq/faq stages of an engine older than QUANT_ENGINE_SINCE

    @property
    def stages(self) -> tuple[str, ...]:
        return ("fp32", "ptq") + tuple(f"faq_{s}" for s in self.faq)

    def todo(self, result: dict[str, Any] | None) -> list[str]:
        """The stages still to run on ``result`` (the stored row, or None)."""
        have = {} if result is None else result["stages"]
        return [s for s in self.stages
                if s not in have or (self.refresh and s != "fp32" and stale(have[s]["provenance"]["git_commit"]))]


def user_architectures() -> list[dict[str, Any]]:
    """The ``user`` split's networks as plan entries (``arch`` = ``user:<name>``), in registry order."""
    info = data.dataset_info(DATASET)
    out = []
    for i, name in enumerate(user_split.names()):
        module = user_split.build(name, info.input_shape, info.num_classes)
        out.append({"id": f"user-{name}", "split": "user", "index": i, "arch": user_split.PREFIX + name,
                    "params": sum(p.numel() for p in module.parameters()),
                    "macs": ranker_macs(module, info.input_shape)})
    return out


ORDERS = ("plan", "cheap")  # how a worker walks the jobs: work_order


def jobs(archs: dict[str, Any], phase: str, budget: str | None) -> list[Job]:
    by_id = {a["id"]: a for a in archs["architectures"]}
    faq = FAQ_SETTINGS[phase]
    if phase == "agreement":
        ids = archs["agreement"]
        return [Job(by_id[ids[i]], b, 0, faq) for i in visit_order(len(ids)) for b in BUDGETS]
    if budget not in BUDGETS:
        raise QnasError(f"the truth phase needs --budget, one of {', '.join(BUDGETS)}")
    if phase == "user":  # the hand-written user split (qnas.user_split), FP32 and W4A4
        return [Job(a, budget, 0, faq, refresh=True) for a in user_architectures()]
    ids = [a["id"] for a in archs["architectures"]]
    seed1 = set(archs["seed1"])
    # Seed-1 retrains after every seed-0 job: each seed-0 row is a ranking row, while the noise ceiling
    # is only read once its 24 pairs exist (a quarter of the CPU-hours left, ranking rows ~25% sooner).
    order = [ids[i] for i in visit_order(len(ids))]
    return ([Job(by_id[a], budget, 0, faq, refresh=True) for a in order]
            + [Job(by_id[a], budget, 1, faq, refresh=True) for a in order if a in seed1])


# ----------------------------------------------------------------------------- data


def balanced(images: torch.Tensor, labels: torch.Tensor, n: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n/classes images of each class, in official order: fixed, balanced, no RNG involved."""
    per = n // classes
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in range(classes)]).sort().values
    return images[idx], labels[idx]


# ----------------------------------------------------------------------------- store


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_result(store: Path, key: str) -> dict[str, Any] | None:
    path = store / "results" / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


@contextmanager
def claimed(lock_dir: Path, key: str) -> Iterator[bool]:
    """Hold an exclusive lock on ``key`` if no other live process holds it (released when we die)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def engine_hashes() -> dict[str, str]:
    return {f: hashlib.sha256((REPO / f).read_bytes()).hexdigest()[:16] for f in ENGINE_FILES}


@functools.cache
def _engine_commit_known() -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{QUANT_ENGINE_SINCE}^{{commit}}"], cwd=REPO,
                          capture_output=True, timeout=10).returncode == 0


@functools.cache
def stale(commit: str) -> bool:
    """Whether a stage measured at ``commit`` predates the quantizer of QUANT_ENGINE_SINCE: a commit git knows
    and that does not contain it. One git cannot resolve (a copy without history) counts as current."""
    commit = commit.removesuffix("+dirty")
    try:
        if not _engine_commit_known():
            raise QnasError(f"this git history lacks commit {QUANT_ENGINE_SINCE[:12]} (a shallow clone?): cannot "
                            "tell stale quantizer stages from current ones")
        known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True,
                               timeout=10).returncode == 0
        newer = subprocess.run(["git", "merge-base", "--is-ancestor", QUANT_ENGINE_SINCE, commit], cwd=REPO,
                               capture_output=True, timeout=10).returncode == 0
    except OSError:
        return False
    return known and not newer


def commit_of(stage: dict[str, Any]) -> str:
    return stage.get("provenance", {}).get("git_commit", "")


def git_commit(paths: tuple[str, ...] = ENGINE_FILES) -> str:
    """HEAD (``+dirty`` when one of ``paths``, the engine files by default, differs from it); a copy without
    git history (a device run) names its commit in ``$QNAS_GIT_COMMIT``."""
    if os.environ.get("QNAS_GIT_COMMIT"):
        return os.environ["QNAS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------- one job


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of trained weights (names and values), so a later stage can check it measures them."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_weights_match(weights: Path, fp32_stage: dict[str, Any]) -> bool:
    """Whether ``weights`` exist and are the net the row's FP32 stage recorded (rows before the fingerprint:
    trusted; a re-measured ``ptq`` stage must still reproduce their FP32 accuracy)."""
    if not weights.exists():
        return False
    want = fp32_stage.get("weights_sha256")
    return want is None or weights_sha256(torch.load(weights, map_location="cpu", weights_only=True)) == want


def build_arch(space: Any, arch: str, info: data.DatasetInfo) -> torch.nn.Module:
    """A search-space architecture string, or ``user:<name>`` for a network of the user split."""
    if user_split.is_user_arch(arch):
        return user_split.build(arch, info.input_shape, info.num_classes)
    return space.build(space.from_string(arch), info.input_shape, info.num_classes)



def stored_test_images(store: Path) -> set[int]:
    """The numbers of test images the store's rows were measured on (one, in a consistent store)."""
    rows = (json.loads(path.read_text()) for path in (store / "results").glob("*.json"))
    return {row["test_images"] for row in rows if "test_images" in row}


def check_test_images(store: Path, test_images: int) -> None:
    """Refuse, before any work, a run whose test set is not the one every stored row was measured on: rows of
    two test sets would be ranked against each other."""
    stored = stored_test_images(store)
    if stored and stored != {test_images}:
        raise QnasError(f"{store}'s rows are measured on {', '.join(map(str, sorted(stored)))} test images, not "
                        f"--test-images {test_images}: use that number or another --store")


def check_row(result: dict, job: Job, test_images: int) -> None:
    """Refuse to add stages to a stored row of another net, or one measured on another number of test images
    (one row's stages are compared with each other)."""
    if any(k in result and result[k] != job.arch[k] for k in ("arch", "params", "macs")):
        raise QnasError(f"{job.key}: the stored row describes another net ({result['params']:,} params) than "
                        f"{job.arch['arch']} ({job.arch['params']:,}): move the row away to measure it again")
    if result["test_images"] != test_images:
        raise QnasError(f"{job.key}: the stored row is measured on {result['test_images']} test images, not "
                        f"--test-images {test_images}: use its number or another --store")


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.space = get_space(SPACE)
        full = data.load_dataset(DATASET)
        self.info = full.info
        self.full = full
        tx, ty = balanced(full.test_images, full.test_labels, args.test_images, self.info.num_classes)
        self.test = (data.normalize(tx, self.info), ty)
        self.engine = engine_hashes()  # of the code this process imported (the work tree may change later)
        self.provenance = {"git_commit": git_commit(), "engine_sha256": self.engine, "torch": torch.__version__,
                           "qnas": qnas.__version__, "python": platform.python_version(),
                           "machine": platform.machine(), "host": socket.gethostname(),
                           "threads": torch.get_num_threads(), "device": args.device,
                           # the float kernels torch picked: training is bit-reproducible only on the same kind
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "command": "python " + " ".join(sys.argv)}

    def dataset(self, budget: Budget) -> data.Dataset:
        x, y = balanced(self.full.train_images, self.full.train_labels, budget.images, self.info.num_classes)
        return dataclasses.replace(self.full, train_images=x, train_labels=y)

    def log(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} w{self.args.worker_id} {text}", flush=True)

    def run(self, job: Job) -> None:
        store, cache = self.args.store, self.args.cache / job.key
        result = read_result(store, job.key) or {
            "key": job.key, **{k: job.arch[k] for k in ("id", "split", "index", "arch", "params", "macs")},
            "budget": job.budget, "budget_definition": dataclasses.asdict(BUDGETS[job.budget]),
            "steps": BUDGETS[job.budget].steps, "seed": job.seed, "test_images": self.args.test_images,
            "calib_images": CALIB_IMAGES, "stages": {}}
        check_row(result, job, self.args.test_images)
        todo = job.todo(result)
        if not todo:
            return
        weights = cache / "fp32.pt"
        fp32 = result["stages"].get("fp32")
        if fp32 is not None and "fp32" not in todo and not cached_weights_match(weights, fp32):
            weights.unlink(missing_ok=True)  # another net's weights (a crashed or another machine's run)
            trained_on = fp32["provenance"]["device"]
            if torch.device(trained_on).type != torch.device(self.args.device).type:
                # The later stages must measure the recorded net, which only its device type may reproduce.
                self.log(f"{job.key}: trained on {trained_on}, weights not here: left for a {trained_on} worker")
                return
        budget = BUDGETS[job.budget]
        ds = self.dataset(budget)
        module = build_arch(self.space, job.arch["arch"], self.info)
        if "fp32" not in todo and not weights.exists():
            self.log(f"{job.key}: trained weights not in the cache; training again")
            t0, c0 = time.perf_counter(), time.process_time()
            again = self.train_fp32(job, budget, ds, module, cache)
            if fp32.get("weights_sha256") != again["weights_sha256"]:  # a row without one cannot be vouched for
                # Another CPU's float kernels (or a GPU's) train another net; every stage must measure one net.
                self.log(f"{job.key}: training again gave another net ({again['weights_sha256']}, the row's "
                         f"{fp32.get('weights_sha256')}): the row is measured again from it (the old net's stages "
                         f"kept under 'retrained_away')")
                away = {"weights_sha256": fp32.get("weights_sha256"), "stages": result["stages"]}
                if "superseded" in result:
                    away["superseded"] = result.pop("superseded")
                result.setdefault("retrained_away", []).append(away)
                result["stages"] = {"fp32": self.stamp(again, t0, c0)}
                atomic_write(store / "results" / f"{job.key}.json", json.dumps(result, indent=1) + "\n")
                todo = [s for s in job.stages if s != "fp32"]
        for stage in todo:
            t0, c0 = time.perf_counter(), time.process_time()  # the stage's own time: the cost model fits it
            if stage == "fp32":
                out = self.train_fp32(job, budget, ds, module, cache)
            else:
                module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
                if stage == "ptq":
                    out = self.ptq(module, ds)
                else:  # the FAQ checkpoint names the weights it starts from
                    start = (result["stages"].get("fp32", {}).get("weights_sha256")
                             or weights_sha256(module.state_dict()))
                    out = self.faq(job, stage[4:], ds, module, cache, start)
            out = self.stamp(out, t0, c0)
            old = result["stages"].get(stage)
            if (stage == "ptq" and old is not None and "weights_sha256" not in result["stages"]["fp32"]
                    and old["test_top1_fp32"] != out["test_top1_fp32"]):
                raise QnasError(f"{job.key}: the cached trained weights score {out['test_top1_fp32']:.4f} at FP32, "
                                f"the row's net {old['test_top1_fp32']:.4f}: another net, not re-measuring it")
            if old is not None:  # a stale measurement, kept for provenance (the first one, if several)
                result.setdefault("superseded", {}).setdefault(stage, old)
            result["stages"][stage] = out
            atomic_write(store / "results" / f"{job.key}.json", json.dumps(result, indent=1) + "\n")
            acc = {k: v for k, v in out.items() if k.startswith("test_top1")}
            self.log(f"{job.key} {stage} done in {out['provenance']['wall_seconds']:.0f}s: "
                     + " ".join(f"{k[10:] or 'top1'}={v:.4f}" for k, v in acc.items()))

    def stamp(self, out: dict[str, Any], t0: float, c0: float) -> dict[str, Any]:
        """A stage's measurements with their provenance (wall and CPU seconds since t0 / c0)."""
        return {**out, "provenance": {**self.provenance, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "wall_seconds": round(time.perf_counter() - t0, 1),
                                      "cpu_seconds": round(time.process_time() - c0, 1)}}

    def train_fp32(self, job: Job, budget: Budget, ds: data.Dataset, module: torch.nn.Module,
                   cache: Path) -> dict[str, Any]:
        last = [time.perf_counter()]

        def progress(step: int, total: int) -> None:
            if time.perf_counter() - last[0] > 120:
                last[0] = time.perf_counter()
                self.log(f"{job.key} fp32 step {step}/{total}")

        self.log(f"{job.key}: training fp32, {budget.steps} steps, {job.arch['params']:,} params, "
                 f"{job.arch['macs'] / 1e6:.0f}M MACs")
        result = train(module, ds, budget.epochs, seed=job.seed, batch_size=budget.batch_size, lr=budget.lr,
                       val_size=500, val_every=0, eval_specs="fp32", calib_size=CALIB_IMAGES, test=False,
                       progress=progress, device=self.args.device, checkpoint=cache / "train.pt")
        torch.save(module.state_dict(), cache / "fp32.tmp")
        os.replace(cache / "fp32.tmp", cache / "fp32.pt")
        sha = weights_sha256(module.state_dict())
        (cache / "train.pt").unlink(missing_ok=True)
        last_epoch = result.history[-1] if result.history else None
        return {"diverged": result.diverged,
                "train_loss": None if last_epoch is None else round(last_epoch.train_loss, 5),
                "train_top1": None if last_epoch is None else round(last_epoch.train_top1, 5),
                "val_top1": result.val["fp32"]["top1"], "train_seconds": round(result.seconds, 1),
                "weights_sha256": sha}

    def ptq(self, module: torch.nn.Module, ds: data.Dataset) -> dict[str, Any]:
        calib = data.normalize(balanced(ds.train_images, ds.train_labels, CALIB_IMAGES, self.info.num_classes)[0],
                               self.info)
        dev = torch.device(self.args.device)  # on a GPU machine measuring runs there too
        acc = evaluate(module.to(dev), None, self.test[0].to(dev), self.test[1].to(dev), PTQ_SETTINGS,
                       calib_images=calib.to(dev))
        module.cpu()
        return {f"test_top1_{s}": acc[s]["top1"] for s in PTQ_SETTINGS} | {"settings": list(PTQ_SETTINGS)}

    def faq(self, job: Job, setting: str, ds: data.Dataset, module: torch.nn.Module,
            cache: Path, start: str) -> dict[str, Any]:
        budget = BUDGETS[job.budget]
        cfg = FAQConfig(setting=setting, epochs=1, train_size=None, lr=FAQ_LR[setting], seed=job.seed)
        self.log(f"{job.key}: FAQ {setting}, 1 epoch over {len(ds.train_labels):,} images")
        res = finetune(module, ds, cfg, eval_data=self.test, checkpoint=cache / f"faq_{setting}.pt",
                       identity=f"{job.key} from trained fp32 {start}", device=self.args.device)
        (cache / f"faq_{setting}.pt").unlink(missing_ok=True)
        name = res.setting
        return {"test_top1": res.after[name], "test_top1_fp32_after": res.after["fp32"],
                "test_top1_before": res.before[name], "setting": cfg.spec.name, "config": cfg.to_dict(),
                "bn_reestimated": res.bn_reestimated, "steps": math.ceil(budget.images // 10 * 10 / cfg.batch_size)}


# ----------------------------------------------------------------------------- commands


def load_plan(store: Path) -> dict[str, Any]:
    path = store / "architectures.json"
    if not path.exists():
        raise QnasError(f"{path} is missing: run `python benchmarks/ground_truth.py plan` first")
    return json.loads(path.read_text())


def claims_dir(store: Path) -> Path:
    """Where job claims live: in the store, so every run on it (any --cache) takes the same locks."""
    return store / ".locks"


def failed_path(store: Path, key: str) -> Path:
    return store / "failed" / f"{key}.json"


def work_order(todo: list[Job], store: Path, order: str, cache: Path) -> list[Job]:
    """The order a worker tries jobs in: ``plan`` keeps ``jobs``'s order; ``cheap`` takes the fewest MACs
    first (a net's seed 0 before its seed 1), for a worker that adds rows and seed pairs fast beside one
    that works through the big nets. Either way jobs whose net is trained, with its weights in this
    machine's cache, go first: minutes, not hours (on another machine they must train again)."""
    if order == "cheap":
        todo = sorted(todo, key=lambda j: (j.arch["macs"], j.seed))

    def must_train(job: Job) -> bool:
        return "fp32" in job.todo(read_result(store, job.key)) or not (cache / job.key / "fp32.pt").exists()

    return sorted(todo, key=must_train)


def worker_main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    worker = Worker(args)
    todo = work_order(jobs(load_plan(args.store), args.phase, args.budget), args.store, args.order, args.cache)
    deadline = args.deadline or (None if args.hours is None else time.time() + args.hours * 3600)
    fits = cost_model(args.store) if deadline is not None else {}
    done, skipped = 0, 0
    for job in todo:
        result = read_result(args.store, job.key)
        if not job.todo(result) or (failed_path(args.store, job.key).exists() and not args.retry_failed):
            continue
        if deadline is not None:
            here = (args.cache / job.key / "fp32.pt").exists()
            fp32 = None if result is None else result["stages"].get("fp32")
            cpu = estimate_seconds(job, result, fits, here, same_machine_kind(fp32, args.device))
            need = HOURS_MARGIN * cpu / args.threads  # wall time, if the threads sped it up fully
            if time.time() + need > deadline:
                skipped += 1
                continue
        with claimed(claims_dir(args.store), job.key) as mine:
            if not mine:
                continue
            try:
                worker.run(job)
            except Exception as exc:  # one broken job (a diverged FAQ, a damaged checkpoint) must not stop the run
                worker.log(f"{job.key} FAILED: {exc.__class__.__name__}: {exc} (recorded; --retry-failed to retry)")
                failed_path(args.store, job.key).parent.mkdir(exist_ok=True)
                atomic_write(failed_path(args.store, job.key), json.dumps({
                    "key": job.key, "error": f"{exc.__class__.__name__}: {exc}",
                    "traceback": traceback.format_exc().splitlines()[-12:], "git_commit": git_commit(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
                continue
            failed_path(args.store, job.key).unlink(missing_ok=True)
            done += 1
            if args.limit is not None and done >= args.limit:
                break
    worker.log("no job left for this worker" + (f" ({skipped} would not end within --hours)" if skipped else ""))
    return 0


def run_main(args: argparse.Namespace) -> int:
    """Start ``--workers`` processes of this script (one torch thread each) and wait for them."""
    load_plan(args.store)  # fail early, with one line
    jobs(load_plan(args.store), args.phase, args.budget)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    deadline = None if args.hours is None else time.time() + args.hours * 3600
    procs = []
    for i in range(args.workers):
        cmd = [sys.executable, __file__, "worker", "--phase", args.phase, "--worker-id", str(i),
               "--store", str(args.store), "--cache", str(args.cache), "--device", args.device,
               "--test-images", str(args.test_images), "--order", args.order, "--threads", str(args.threads)]
        if args.budget:
            cmd += ["--budget", args.budget]
        if args.limit is not None:
            cmd += ["--limit", str(args.limit)]
        if args.hours is not None:  # one deadline for all, from now
            cmd += ["--deadline", str(deadline)]
        if args.retry_failed:
            cmd += ["--retry-failed"]
        procs.append(subprocess.Popen(cmd, env=env))
        time.sleep(2)  # stagger: each takes the next free job

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return max(codes, key=abs) if any(codes) else 0


def stage_work(stage: str, macs: int, budget: Budget) -> float:
    """What a stage's CPU time scales with: MACs x images through the net (training passes, FAQ's one
    epoch, PTQ's fixed test and calibration images)."""
    if stage == "fp32":
        return macs * budget.passes
    if stage.startswith("faq_"):
        return macs * (budget.images // 10 * 10)
    return float(macs)


def cost_points(store: Path) -> dict[str, list[tuple[float, float]]]:
    """Per stage kind (fp32, ptq, faq): (work, CPU seconds) of every committed stage run on a CPU."""
    points: dict[str, list[tuple[float, float]]] = {"fp32": [], "ptq": [], "faq": []}
    for path in (store / "results").glob("*.json"):
        r = json.loads(path.read_text())
        budget = BUDGETS.get(r.get("budget", ""))
        if budget is None or "macs" not in r:
            continue
        for stage, out in r["stages"].items():
            kind = "faq" if stage.startswith("faq_") else stage
            if kind in points and out["provenance"].get("device", "cpu") == "cpu":
                points[kind].append((stage_work(stage, r["macs"], budget), out["provenance"]["cpu_seconds"]))
    return points


def cost_model(store: Path) -> dict[str, tuple[float, float]]:
    """Per stage kind (fp32, ptq, faq), CPU seconds = a + b x work, least squares over every committed stage
    (``numpy.polyfit``): the estimate ``status`` prints for what is left."""
    import numpy as np

    fits = {}
    for kind, pts in cost_points(store).items():
        if len(pts) >= 3:
            b, a = np.polyfit([w for w, _ in pts], [c for _, c in pts], 1)
            fits[kind] = (max(float(a), 0.0), float(b))
    return fits


def cost_misses(store: Path, fits: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Per fitted stage kind, the median and 90th percentile of measured / estimated CPU seconds: how far
    one stage's estimate can be off (what ``HOURS_MARGIN`` must cover)."""
    import numpy as np

    out = {}
    for kind, pts in cost_points(store).items():
        if kind in fits:
            a, b = fits[kind]
            ratio = [c / (a + b * w) for w, c in pts if a + b * w > 0]
            if ratio:  # none where the fit is not positive anywhere
                out[kind] = (float(np.median(ratio)), float(np.percentile(ratio, 90)))
    return out


HOURS_MARGIN = 2.0  # the linear fit misses single stages both ways (docs/ground_truth.md, "Working to a deadline")


def estimate_seconds(job: Job, result: dict[str, Any] | None, fits: dict[str, tuple[float, float]],
                     weights_here: bool = True, reproducible: bool = True) -> float:
    """The cost model's CPU seconds for ``job``'s stages left on ``result`` (one thread). Where later stages
    need trained weights this machine does not have, the FP32 training again, and every stage when the net
    was trained on another kind of machine (``reproducible`` False: retraining gives another net)."""
    left = job.todo(result)
    if left and "fp32" not in left and not weights_here:
        left = ["fp32", *left] if reproducible else list(job.stages)
    total = 0.0
    for s in left:
        a, b = fits.get("faq" if s.startswith("faq_") else s, (0.0, 0.0))  # none yet: status counts 0, --hours refuses
        total += max(a + b * stage_work(s, job.arch["macs"], BUDGETS[job.budget]), 0.0)
    return total


def same_machine_kind(fp32: dict[str, Any] | None, device: str) -> bool:
    """Whether training again here reproduces the row's FP32 net: same device type, same CPU kernels."""
    if fp32 is None or "weights_sha256" not in fp32:
        return False
    prov = fp32.get("provenance", {})
    return (torch.device(prov.get("device", "cpu")).type == torch.device(device).type == "cpu"
            and prov.get("cpu_capability") == torch.backends.cpu.get_cpu_capability())


def status_main(args: argparse.Namespace) -> int:
    archs = load_plan(args.store)
    fits = cost_model(args.store)
    misses = cost_misses(args.store, fits)
    if misses:
        print("cost model, measured / estimated CPU time per stage (median, 90th percentile): "
              + ", ".join(f"{k} {m:.2f} {p:.2f}" for k, (m, p) in misses.items()))
    for phase, budget in (("agreement", None), ("truth", args.budget), ("user", args.budget)):
        if phase != "agreement" and budget is None:
            continue
        todo = jobs(archs, phase, budget)
        stages = sum(len(j.stages) for j in todo)
        done, cpu, estimate = 0, 0.0, 0.0
        for j in todo:
            r = read_result(args.store, j.key) or {"stages": {}}
            left = j.todo(r)
            done += sum(s not in left for s in j.stages)
            cpu += sum(r["stages"][s]["provenance"]["cpu_seconds"] for s in j.stages
                       if s in r["stages"] and s not in left)
            estimate += estimate_seconds(j, r, fits)
        failed = sum(failed_path(args.store, j.key).exists() for j in todo)
        print(f"{phase}: {done}/{stages} stages of {len(todo)} jobs done, {cpu / 3600:.2f} CPU-hours spent, "
              f"~{estimate / 3600:.1f} CPU-hours left (one thread; a linear fit on the committed stages)"
              + (f"; {failed} jobs failed (STORE/failed/, skipped until --retry-failed)" if failed else ""))
    return 0


def same_net(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two FP32 stages describe one trained net (its fingerprint, or where and when it was trained)."""
    if a.get("weights_sha256") and b.get("weights_sha256"):
        return a["weights_sha256"] == b["weights_sha256"]
    key = ("device", "finished", "host")
    return all(a["provenance"].get(k) == b["provenance"].get(k) for k in key)


def merge_main(args: argparse.Namespace) -> int:
    """Merge result files from another machine (``--from DIR``, e.g. a device run's results) into the store.

    A row is merged only where both sides describe the same trained net: a row new here is taken whole; a
    row with the same FP32 stage gets the stages it lacks; a row whose FP32 stage is another net's (both
    machines trained it) or that is measured on another number of test images keeps ours and is reported.
    Rows a local worker is writing are skipped (merge again later)."""
    if args.source is None or not args.source.is_dir():
        raise QnasError("merge needs --from DIR, a directory of result files")
    added, conflicts, busy = 0, [], []
    ours = stored_test_images(args.store)
    for path in sorted(args.source.glob("*.json")):
        remote = json.loads(path.read_text())
        if ours and remote.get("test_images") not in ours:  # another test set: not comparable with our rows
            conflicts.append(path.stem)
            continue
        with claimed(claims_dir(args.store), path.stem) as mine:
            if not mine:
                busy.append(path.stem)
                continue
            local = read_result(args.store, path.stem)
            if local is None or not local["stages"]:
                merged = remote
            elif remote["test_images"] != local["test_images"] or (
                    "fp32" in remote["stages"] and not same_net(local["stages"]["fp32"], remote["stages"]["fp32"])):
                conflicts.append(path.stem)
                continue
            else:
                merged = {**local, "stages": {**remote["stages"], **local["stages"]}}
                if remote.get("superseded") or local.get("superseded"):
                    merged["superseded"] = {**remote.get("superseded", {}), **local.get("superseded", {})}
                for stage, theirs in remote["stages"].items():  # a current measurement beats a stale one
                    ours = local["stages"].get(stage)
                    if stage != "fp32" and ours is not None and stale(commit_of(ours)) \
                            and not stale(commit_of(theirs)):
                        merged.setdefault("superseded", {}).setdefault(stage, ours)
                        merged["stages"][stage] = theirs
            new = sum(local is None or merged["stages"][k] is not local["stages"].get(k) for k in merged["stages"])
            if new > 0:
                atomic_write(args.store / "results" / path.name, json.dumps(merged, indent=1) + "\n")
                added += new
    print(f"merged {added} new stages from {args.source}")
    if conflicts:
        print(f"kept ours, another net or test set there: {', '.join(conflicts)}")
    if busy:
        print(f"being written by a worker here, merge again later: {', '.join(busy)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("plan", "run", "worker", "status", "merge"):
        p = sub.add_parser(name)
        p.add_argument("--store", type=Path, default=STORE, help=f"results store (default {STORE})")
        p.add_argument("--cache", type=Path, default=CACHE,
                       help=f"checkpoints and trained weights (default {CACHE})")
        p.add_argument("--budget", choices=list(BUDGETS), default=None, help="truth phase: the budget")
        if name == "merge":
            p.add_argument("--from", dest="source", type=Path, default=None,
                           help="directory of result files from another machine")
        if name in ("run", "worker"):
            p.add_argument("--phase", choices=list(FAQ_SETTINGS), required=True)
            p.add_argument("--workers", type=positive_int, default=2, help="worker processes (default 2)")
            p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                           help="training device (default cuda when present)")
            p.add_argument("--test-images", type=positive_int, default=2000, help="class-balanced test images (2000)")
            p.add_argument("--limit", type=positive_int, default=None, help="stop each worker after this many jobs")
            p.add_argument("--hours", type=positive_float, default=None,
                           help="take only jobs the cost model expects to end within this many hours "
                                "(a machine lent for a session); default: no bound")
            p.add_argument("--order", choices=ORDERS, default="plan",
                           help="plan: the plan's order (default); cheap: fewest MACs first")
            p.add_argument("--retry-failed", action="store_true",
                           help="retry jobs that failed before (recorded in STORE/failed/)")
            p.add_argument("--threads", type=positive_int, default=1,
                           help="torch threads per worker (default 1; more only for one worker on idle cores, "
                                "e.g. the biggest nets: several multi-threaded processes slow each other)")
            p.add_argument("--worker-id", type=int, default=0, help=argparse.SUPPRESS)
            p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)  # run's --hours
    args = ap.parse_args(argv)
    try:
        if args.command == "plan":
            info = data.dataset_info(DATASET)
            archs = plan(get_space(SPACE), info)
            path = args.store / "architectures.json"
            if path.exists() and json.loads(path.read_text()) != archs:
                raise QnasError(f"{path} exists with another selection; results refer to it: not overwritten")
            atomic_write(path, json.dumps(archs, indent=1) + "\n")
            print(f"{path}: {len(archs['architectures'])} architectures")
            return 0
        if args.command == "status":
            return status_main(args)
        if args.command == "merge":
            return merge_main(args)
        if args.hours is not None and set(cost_model(args.store)) != {"fp32", "ptq", "faq"}:
            raise QnasError("--hours needs the cost model, fitted on at least 3 committed stages of each kind "
                            "(fp32, ptq, faq): run without it first")
        check_test_images(args.store, args.test_images)
        return worker_main(args) if args.command == "worker" else run_main(args)
    except QnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
