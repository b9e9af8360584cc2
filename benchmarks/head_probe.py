"""Where the predictor fails on a network: its features or its classifier.

For each network, FP32 top-1 on the fixed test subset twice, from one set of GHN-predicted parameters:

* ``ghn``: every parameter from the GHN (BatchNorm statistics from the calibration images, as scoring
  calibrates them);
* ``probe``: the GHN's parameters up to the classifier's input, and a ridge-regression classifier fitted
  on ``--probe-images`` training images in its place: the best a linear head does on those features.

``probe - ghn`` (the head gap) is what the predicted classifier loses on features the GHN predicted well;
a family whose probe is high and whose ``ghn`` is low fails in its head, not in its features. A diagnostic
for the predictor's training (docs/predictor.md), not a score: the probe uses labels.

    OMP_NUM_THREADS=1 python benchmarks/head_probe.py                 # user split and 20 `id` nets
    OMP_NUM_THREADS=1 python benchmarks/head_probe.py --predictor runs/fam.pt --splits user

Last line: ``ghn_<split>=<mean %> probe_<split>=<mean %> head_gap_<split>=<mean points> ...``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

import qnas  # noqa: E402
from qnas import data  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.predictors import read_header, resolve_predictor_name  # noqa: E402
from qnas.predictors.evaluation import SPLITS, split_networks, test_subset  # noqa: E402
from search_spaces import get_space  # noqa: E402

RIDGE = 10.0  # on standardized features: a mild prior, the probe is fitted on a few thousand images
CALIB_IMAGES = 256


def _calibrate_bn(module: nn.Module, images: torch.Tensor) -> None:
    """BatchNorm statistics from ``images`` (one pass, exact averages), then eval mode."""
    bns = [m for m in module.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    module.train()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch gives its exact statistics
    with torch.no_grad():
        module(images)
    module.eval()


def _classifier(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise QnasError("no nn.Linear classifier (a convolutional head has no probe here)")
    return linears[-1]


def _features_and_logits(module: nn.Module, head: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    hook = head.register_forward_hook(lambda _m, inp, _out: got.__setitem__("f", inp[0].flatten(1)))
    try:
        with torch.no_grad():
            logits = module(x)
    finally:
        hook.remove()
    return got["f"], logits


def probe_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                   classes: int) -> float:
    """Top-1 of a ridge regression onto one-hot labels, on standardized features (closed form)."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6

    def design(f: torch.Tensor) -> torch.Tensor:
        return torch.cat([(f - mu) / sd, torch.ones(len(f), 1)], 1).double()

    a = design(train_f)
    w = torch.linalg.solve(a.T @ a + RIDGE * torch.eye(a.shape[1], dtype=a.dtype),
                           a.T @ nn.functional.one_hot(train_y, classes).double())
    return float(((design(test_f) @ w).argmax(1) == test_y).double().mean())


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default=None, help="predictor name or .pt path (default: the shipped one)")
    ap.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    ap.add_argument("--splits", default="user,id", help=f"comma-separated, of {', '.join(SPLITS)} (default user,id)")
    ap.add_argument("--n", type=positive_int, default=20,
                    help="networks per search-space split (default 20; user: all)")
    ap.add_argument("--images", type=positive_int, default=1000, help="test images (default 1000)")
    ap.add_argument("--probe-images", type=positive_int, default=3000, help="training images the probe is fitted on "
                    "(default 3000)")
    args = ap.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    if not splits or any(s not in SPLITS for s in splits):
        ap.error(f"--splits: choose from {', '.join(SPLITS)}, got {args.splits!r}")
    if args.n < 1 or args.images < 1 or args.probe_images < 10:
        ap.error("--n and --images must be positive and --probe-images at least 10")
    torch.set_num_threads(1)
    try:
        predictor = resolve_predictor_name(args.predictor, args.dataset)
        header = read_header(predictor)
        ds = data.load_dataset(args.dataset)
    except QnasError as exc:
        ap.error(str(exc))
    info = ds.info
    x, y = test_subset(ds, args.images)
    calib, _ = data.val_subset(ds, CALIB_IMAGES, seed=0)
    n_train = min(args.probe_images, len(ds.train_labels))
    tx, ty = data.normalize(ds.train_images[:n_train], info), ds.train_labels[:n_train]
    space = get_space(header.search_space)
    print(f"predictor {header.name} ({header.train_steps} steps); {len(y)} test images, probe fitted on "
          f"{n_train} training images; FP32 top-1 %", flush=True)
    print(f"{'split':7s} {'network':34s} {'family':15s} {'ghn':>6s} {'probe':>6s} {'gap':>6s}")
    figures: list[str] = []
    for split in splits:
        rows: list[tuple[str, float, float]] = []
        for arch, family, make in split_networks(space, split, None if split == "user" else args.n, info):
            module = make()
            try:
                head = _classifier(module)
            except QnasError:
                print(f"{split:7s} {arch[:34]:34s} {family:15s} (no linear classifier: skipped)", flush=True)
                continue
            module.load_state_dict(qnas.predict_params(module, "fp32", dataset=args.dataset, predictor=predictor),
                                   strict=False)
            _calibrate_bn(module, calib)
            test_f, logits = _features_and_logits(module, head, x)
            train_f, _ = _features_and_logits(module, head, tx)
            ghn = 100 * float((logits.argmax(1) == y).double().mean())
            probe = 100 * probe_accuracy(train_f, ty, test_f, y, info.num_classes)
            rows.append((family or split, ghn, probe))
            print(f"{split:7s} {arch[:34]:34s} {family:15s} {ghn:6.1f} {probe:6.1f} {probe - ghn:+6.1f}", flush=True)
        if not rows:
            continue
        if split == "user":
            for fam in sorted({r[0] for r in rows}):
                fr = [r for r in rows if r[0] == fam]
                print(f"  family {fam:15s} n={len(fr)} ghn {statistics.mean(r[1] for r in fr):5.1f} "
                      f"probe {statistics.mean(r[2] for r in fr):5.1f}")
        g, p = statistics.mean(r[1] for r in rows), statistics.mean(r[2] for r in rows)
        print(f"{split}: n={len(rows)} ghn {g:.1f} probe {p:.1f} head gap {p - g:+.1f} points", flush=True)
        figures += [f"ghn_{split}={g:.1f}", f"probe_{split}={p:.1f}", f"head_gap_{split}={p - g:.1f}"]
    print(" ".join(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
