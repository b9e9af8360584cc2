"""Ground truth for benchmarks/ranking.py: train architectures of the ``id`` split for real, FP32 and QAT.

    OMP_NUM_THREADS=1 nohup python benchmarks/ground_truth.py > runs/ground_truth.log 2>&1 &

Which architectures (fixed rule, committed as ``benchmarks/ground_truth/architectures.json``): the
``id`` split of convnets250k restricted to at most ``--max-params`` (1M: the edge range the GHN is
trained on and the range the CPU budget affords), sorted by parameter count (ties by string), and
``--archs`` (40) of them at evenly spaced positions, smallest and largest included.

What each gets (the budget, fixed and stated in the table): the reference trainer
(``qnas.train.train``) from its seeded re-initialization, once at FP32 and once with quantization-aware
training at W4A4 with per-output-channel weight scales (``w4a4-channel``: the scorer's default
granularity, ``qnas.scorer.DEFAULT_GRANULARITY``, and what int8 runtimes deploy; straight-through
gradients), for one epoch over a fixed class-balanced subset of the training
split (the first ``--train-images``//10 images of each class in official order; default 2,048, i.e.
2,040 images, batch 32, peak lr 0.05: 63 SGD steps). Then top-1/top-5 at the training setting on a fixed subset of
the test set (the first ``--test-images``/10 per class, default 2,000) and on the scorer's validation
subset (``data.val_subset(ds, --val-images, seed=0)``, the images benchmarks/ranking.py scores on),
with BatchNorm statistics and activation ranges calibrated on ``--calib-images`` training images
(``bn_stats="calibrated"``, the deployed int8 behaviour). FP32 rows also record post-training
quantization of the FP32 net at the same setting (``*_ptq_w4a4-channel``).

The default budget was chosen to fit about an hour on one CPU thread (measured here: ~1.3 s per
training image summed over the 40 architectures for FP32 + W4A4, plus evaluation): short enough that
it ranks how fast and how robustly an architecture learns, not its converged accuracy. Say so when
quoting it.

Resumable and safe to kill: each finished (architecture, setting) row is written to
``ground_truth.json`` (and ``ground_truth.csv``) at once, atomically; a rerun skips finished rows and
refuses to mix rows made under another budget or with other versions of the engine's files (their
hashes are in every run record, with torch/qnas versions, the git commit and the command).
Architectures are visited in bit-reversed order of size, so a partial table still spans all sizes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qnas  # noqa: E402
from qnas import data  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.train import train  # noqa: E402  (the engine's reference trainer)
from search_spaces import get_space  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "ground_truth"
SPACE, SPLIT, DATASET = "convnets250k", "id", "fashion-mnist"
PTQ_SETTINGS = ("w4a4-channel",)  # the FP32 net is also measured quantized after training


# ----------------------------------------------------------------------------- which architectures


def select_architectures(space: Any, n: int, max_params: int, info: data.DatasetInfo) -> list[str]:
    """``n`` architectures of the split at evenly spaced parameter-count ranks (see module docstring)."""
    pool = [(space.count_params(g, info.input_shape, info.num_classes), space.to_string(g))
            for g in space.load_split(SPLIT)]
    pool = sorted(p for p in pool if p[0] <= max_params)
    if len(pool) < n:
        raise QnasError(f"only {len(pool)} {SPLIT} architectures have <= {max_params:,} parameters; need {n}")
    return [pool[round(i * (len(pool) - 1) / (n - 1))][1] for i in range(n)]


def _visit_order(n: int) -> list[int]:
    """0..n-1 in bit-reversed order (0, n/2, n/4, 3n/4, ...): any prefix is spread over all sizes."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits)]
    return [k for k in keys if k < n]


# ----------------------------------------------------------------------------- data


def _balanced(images: torch.Tensor, labels: torch.Tensor, n: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n/classes images of each class, in official order: fixed, balanced, no RNG involved."""
    per = n // classes
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in range(classes)]).sort().values
    return images[idx], labels[idx]


# ----------------------------------------------------------------------------- one row


def _row(space: Any, arch: str, setting: str, ds: data.Dataset, budget: dict[str, Any]) -> dict[str, Any]:
    """Train one architecture at one setting with the reference trainer and measure it."""
    info = ds.info
    genome = space.from_string(arch)
    module = space.build(genome, info.input_shape, info.num_classes)  # train() re-initializes it from the seed
    eval_specs = [setting] + [s for s in PTQ_SETTINGS if setting == "fp32" and s != setting]
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(
        module, ds, budget["epochs"], spec=setting, seed=budget["seed"], batch_size=budget["batch_size"],
        lr=budget["lr"], val_size=budget["val_images"], val_every=0, eval_specs=eval_specs,
        bn_stats=budget["bn_stats"], calib_size=budget["calib_images"], test=True,
    )
    last = result.history[-1] if result.history else None
    row = {
        "arch": arch, "setting": setting,
        "params": space.count_params(genome, info.input_shape, info.num_classes),
        "macs": space.count_macs(genome, info.input_shape, info.num_classes),
        "test_top1": result.test[setting]["top1"], "test_top5": result.test[setting]["top5"],
        "val_top1": result.val[setting]["top1"], "val_top5": result.val[setting]["top5"],
        "train_loss": None if last is None else round(last.train_loss, 5),
        "train_top1": None if last is None else round(last.train_top1, 5),
        "train_seconds": None if last is None else round(last.seconds, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),  # wall clock: inflated when the CPU is shared
        "cpu_seconds": round(time.process_time() - c0, 2),  # this process's CPU time, the real cost
        "diverged": result.diverged,
    }
    for s in eval_specs[1:]:  # post-training quantization of the FP32 net, same calibration
        row[f"test_top1_ptq_{s}"] = result.test[s]["top1"]
        row[f"val_top1_ptq_{s}"] = result.val[s]["top1"]
    return row


# ----------------------------------------------------------------------------- table I/O


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# The code a row's numbers depend on; hashed into every run record, and a resume refuses a change,
# because the engine's files may be edited without a commit in between.
ENGINE_FILES = ("qnas/quant.py", "qnas/train.py", "qnas/score.py", "qnas/data.py",
                "search_spaces/convnets250k/__init__.py")


def _engine_hashes() -> dict[str, str]:
    repo = Path(__file__).resolve().parents[1]
    return {f: hashlib.sha256((repo / f).read_bytes()).hexdigest()[:16] for f in ENGINE_FILES}


def _git_commit() -> str:
    try:
        repo = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", type=int, default=40, help="architectures (default 40)")
    ap.add_argument("--max-params", type=int, default=1_000_000, help="largest architecture (default 1e6)")
    ap.add_argument("--settings", default="fp32,w4a4-channel",
                    help="training settings, engine names (default fp32,w4a4-channel)")
    ap.add_argument("--train-images", type=int, default=2048, help="training images, class-balanced (default 2048)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs over them (default 1)")
    ap.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    ap.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate (default 0.05, the trainer's)")
    ap.add_argument("--test-images", type=int, default=2000, help="test images, class-balanced (default 2000)")
    ap.add_argument("--val-images", type=int, default=500, help="validation subset, seed 0 (default 500)")
    ap.add_argument("--calib-images", type=int, default=256, help="BN calibration images (default 256)")
    ap.add_argument("--seed", type=int, default=0, help="init, data-order and calibration seed (default 0)")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default benchmarks/ground_truth)")
    ap.add_argument("--limit", type=int, default=None, help="stop after this many new rows (timing runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the table's timings are one-thread figures

    space = get_space(SPACE)
    full = data.load_dataset(DATASET)
    info = full.info
    archs = select_architectures(space, args.archs, args.max_params, info)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    # The trainer trains on all of ds.train_* and tests on all of ds.test_*: hand it the fixed subsets.
    train_x, train_y = _balanced(full.train_images, full.train_labels, args.train_images, info.num_classes)
    test_x, test_y = _balanced(full.test_images, full.test_labels, args.test_images, info.num_classes)
    ds = dataclasses.replace(full, train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y)
    budget = {
        "trainer": "qnas.train.train (defaults unless listed: SGD nesterov 0.9, wd 5e-4, cosine, warm-up "
                   "min(200, steps/10), clip 5, no augmentation)",
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "steps": args.epochs * (len(train_y) // args.batch_size),  # the trainer drops the last partial batch
        "train_images": args.train_images, "train_images_used": len(train_y),
        "train_subset": "first train_images//10 per class of the training split",
        "test_images": args.test_images, "test_subset": "first test_images/10 per class of the official test set",
        "val_images": args.val_images, "val_subset": "qnas.data.val_subset(ds, val_images, seed=0)",
        "bn_stats": "calibrated", "calib_images": args.calib_images, "seed": args.seed, "settings": settings,
        "ptq": list(PTQ_SETTINGS),
        "summary": f"{args.epochs} epoch x {args.train_images} train images, batch {args.batch_size}, "
                   f"test on {args.test_images}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _atomic_write(args.out / "architectures.json", json.dumps({
        "space": SPACE, "split": SPLIT, "max_params": args.max_params, "count": len(archs),
        "rule": f"{SPLIT} split, params <= {args.max_params}, sorted by (params, string), "
                f"{len(archs)} at evenly spaced ranks round(i*(N-1)/({len(archs)}-1))",
        "architectures": archs}, indent=1) + "\n")

    table_path = args.out / "ground_truth.json"
    table: dict[str, Any]
    if table_path.exists():
        table = json.loads(table_path.read_text())
        if table["budget"] != budget or table["architectures"] != archs:
            raise SystemExit(f"{table_path} was made with another budget or architecture list; "
                             "move it away or rerun with the same arguments")
    else:
        table = {"space": SPACE, "split": SPLIT, "dataset": DATASET, "settings": settings,
                 "architectures": archs, "budget": budget, "runs": [], "rows": []}
    engine = _engine_hashes()
    for run in table["runs"]:
        if run.get("engine_sha256", engine) != engine:
            raise SystemExit(f"{table_path} has rows made with other versions of {', '.join(ENGINE_FILES)} "
                             f"({run['engine_sha256']} vs now {engine}); move it away to start over")
    table["runs"].append({
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python " + " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__, "qnas": qnas.__version__,
        "python": platform.python_version(), "machine": platform.machine(), "git_commit": _git_commit(),
        "threads": torch.get_num_threads(), "engine_sha256": engine,
    })
    done = {(r["arch"], r["setting"]) for r in table["rows"]}

    todo = [(archs[i], s) for i in _visit_order(len(archs)) for s in settings if (archs[i], s) not in done]
    print(f"{len(done)} rows done, {len(todo)} to go; budget: {budget['summary']}", flush=True)
    for count, (arch, setting) in enumerate(todo[: args.limit]):
        row = _row(space, arch, setting, ds, budget)
        table["rows"].append(row)
        _atomic_write(table_path, json.dumps(table, indent=1) + "\n")
        _atomic_write(args.out / "ground_truth.csv", _csv(table["rows"]))
        print(f"[{len(done) + count + 1}/{len(archs) * len(settings)}] {setting:5s} test {row['test_top1']:.4f} "
              f"val {row['val_top1']:.4f} train {row['train_seconds']}s total {row['total_seconds']:.1f}s "
              f"cpu {row['cpu_seconds']:.1f}s {row['params']:>8,d} {arch}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
