"""How far can any scorer agree with ground truth v2? The part of its noise no scorer can predict.

    OMP_NUM_THREADS=1 python benchmarks/truth_noise.py [--budget k20e5] [--cache ~/.cache/qnas/ground_truth]
        [--draws 2000]

Every v2 accuracy is measured on the same 2,000 class-balanced test images. Another draw of 2,000 images
would order the nets differently, and so would another training seed; no scorer can predict either.
Three figures:

* **pairing**: the trained FP32 nets whose weights are still in the workers' cache are run again on
  those images (their accuracy must equal the row's, else the script stops); for every pair of them
  the variance of their accuracy difference over test images, relative to what independent errors
  would give. Nets err on the same hard images, so this is below 1.
* **ceiling**: for each target (FP32; W4A4 and W2A2 after FAQ) the rows' accuracies are taken as the
  expected accuracies and redrawn ``--draws`` times with normal noise of the paired size
  (``sqrt(pairing * p(1-p)/n)``, FP32's pairing at every target: the FAQ weights are not kept);
  ``ceiling`` is the mean Kendall tau between the rows' order and a redrawn one: about what a perfect
  predictor of expected accuracy reaches against the measured truth.
  It ignores seed noise, so it is an upper bound.
* **ceiling_seed**: the same with seed noise added, its variance half the mean squared difference
  between the seed-0 and seed-1 rows of the nets retrained so far (one figure for all nets; on the last
  line from ``MIN_SEED_PAIRS`` pairs on).

Last line: ``pairing=<v> ceiling_<target>=<v> [ceiling_seed_<target>=<v>] ... n=<nets> n_pairing=<nets>
seed_pairs=<nets>`` for FP32, W4A4 and W2A2.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, existing_path, positive_int, run  # noqa: E402
from ground_truth import BUDGETS, CALIB_IMAGES, DATASET, SPACE, balanced, build_arch  # noqa: E402
from ranking import STORE, load_v2  # noqa: E402

from qnas import data  # noqa: E402
from qnas.quant import QuantSpec, calibrate, prepare  # noqa: E402
from search_spaces import get_space  # noqa: E402

TEST_IMAGES = 2000  # ground_truth.py's --test-images default, which every v2 row used
MIN_SEED_PAIRS = 8  # fewer pairs print their seed ceiling but keep it off the last line: one outlier rules it


def correctness(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, calib: torch.Tensor) -> np.ndarray:
    """Per-image correctness at FP32 as ground_truth.py's PTQ stage scores it (BN folded, calibrated)."""
    model, spec = prepare(module), QuantSpec.parse("fp32")
    with torch.inference_mode():
        cal = calibrate(model, calib, spec=spec)
        pred = torch.cat([model(xb, spec, cal).argmax(1) for xb in x.split(64)])
    return (pred == y).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=existing_path, default=STORE, help=f"the ground-truth store (default {STORE})")
    ap.add_argument("--budget", choices=list(BUDGETS), default="k20e5",
                    help="v2 budget (default k20e5, the truth budget)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "qnas" / "ground_truth",
                    help="the ground-truth workers' cache of trained weights")
    ap.add_argument("--draws", type=positive_int, default=2000, help="redraws per target (default 2000)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    truth, seed1, _, what = load_v2(args.budget, args.store)
    print(what, flush=True)
    ds = data.load_dataset(DATASET)
    tx, ty = balanced(ds.test_images, ds.test_labels, TEST_IMAGES, ds.info.num_classes)
    x = data.normalize(tx, ds.info)
    # The PTQ stage calibrates on the first images per class of the budget's training set, which are the
    # first per class of the full one.
    calib = data.normalize(balanced(ds.train_images, ds.train_labels, CALIB_IMAGES, ds.info.num_classes)[0], ds.info)
    space = get_space(SPACE)

    results = args.store / "results"
    cached = {json.loads((results / f"{d.name}.json").read_text())["arch"]: d
              for d in sorted(args.cache.glob(f"*_{args.budget}_s0"))
              if (d / "fp32.pt").exists() and (results / f"{d.name}.json").exists()}
    hits: dict[str, np.ndarray] = {}
    for arch, acc in sorted(truth["fp32"].items()):
        key = cached.get(arch)
        if key is None:
            continue
        module = build_arch(space, arch, ds.info)
        module.load_state_dict(torch.load(key / "fp32.pt", map_location="cpu", weights_only=True))
        hits[arch] = correctness(module.eval(), x, ty, calib)
        if abs(hits[arch].mean() - acc) > 1e-9:
            sys.exit(f"truth_noise.py: error: {key.name}'s cached weights score {hits[arch].mean():.4f}, "
                     f"its row {acc:.4f}: not the measured net")
        print(f"  {key.name}: FP32 {100 * acc:.2f}% reproduced", flush=True)
    ratios = []
    for a, b in itertools.combinations(hits.values(), 2):
        paired = np.var(a.astype(float) - b.astype(float))
        independent = a.mean() * (1 - a.mean()) + b.mean() * (1 - b.mean())
        ratios.append(paired / independent)
    pairing = float(np.mean(ratios)) if ratios else 1.0
    if ratios:
        print(f"pairing: {len(hits)} nets, {len(ratios)} pairs; paired / independent variance of an accuracy "
              f"difference: mean {pairing:.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
    else:  # the widest noise, so the lowest ceiling
        print(f"pairing: fewer than 2 trained nets in {args.cache}: independent errors assumed (1.0)")

    rng = np.random.default_rng(0)
    figures: dict[str, float] = {}
    for target in ("fp32", "w4a4", "w2a2"):
        p = np.array(list(truth[target].values()))
        if len(p) < 2:
            print(f"{target}: {len(p)} nets measured, no ranking to bound")
            continue
        se = np.sqrt(pairing * p * (1 - p) / TEST_IMAGES)
        # Seed noise from the second-seed retrains: var(s0 - s1) = 2 var(seed), both on the same images.
        diffs = np.array([truth[target][a] - s1 for a, s1 in seed1[target].items() if a in truth[target]])
        seed_sd = float(np.sqrt(np.mean(diffs**2) / 2)) if len(diffs) else 0.0
        for name, noise in (("ceiling", se), ("ceiling_seed", np.sqrt(se**2 + seed_sd**2))):
            taus = [stats.kendalltau(p, p + rng.normal(0.0, noise)).statistic for _ in range(args.draws)]
            figures[f"{name}_{target}"] = float(np.mean(taus))
            print(f"{target} {name}: {len(p)} nets, spread (sd) {100 * p.std():.2f} points, noise "
                  f"{100 * noise.mean():.2f} points; tau {figures[f'{name}_{target}']:.3f} "
                  f"[{np.percentile(taus, 2.5):.2f}, {np.percentile(taus, 97.5):.2f}]")
        print(f"  {target} seed pairs: {len(diffs)}, seed 0 - seed 1 " + " ".join(f"{100 * d:+.2f}" for d in diffs)
              + f" points: seed sd {100 * seed_sd:.2f}", flush=True)
        if len(diffs) < MIN_SEED_PAIRS:
            print(f"  ({len(diffs)} seed pairs, fewer than {MIN_SEED_PAIRS}: {target}'s ceiling_seed is left off the "
                  "last line)")
            del figures[f"ceiling_seed_{target}"]
    print(f"pairing={pairing:.3f} " + " ".join(f"{k}={v:.3f}" for k, v in figures.items())
          + f" n={len(truth['w4a4'])} n_pairing={len(hits)} seed_pairs={len(seed1['w4a4'])}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
