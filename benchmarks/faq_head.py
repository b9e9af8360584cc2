"""Does FAQ finetuning gain from starting at the solved head?

    OMP_NUM_THREADS=1 python benchmarks/faq_head.py [--archs 4] [--setting w4a4] [--epochs 1] [--train-size 2000]

``qnas export`` gives a trial that is not finetuned the last layer its study scored: solved by ridge
regression on 1,000 labelled training images at the setting (``qnas.readout``), which beats the GHN's own
classifier by 1-4 points. ``qnas finetune`` starts FAQ from the GHN's parameters, classifier included. This
runs the same FAQ (``qnas.finetune``, its defaults but ``--epochs`` and ``--train-size``, seed 0) on the first
``--archs`` `id` nets of 2e4-3e5 parameters from both starts: the GHN's parameters, and the same with the
last layer solved as export solves it. Top-1 at the setting on 1,000 validation images, before (FAQ's own
calibration of the start) and after. Last line:
``before_ghn=<mean %> before_solved=<mean %> after_ghn=<mean %> after_solved=<mean %> n=<nets>``.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas import data  # noqa: E402
from qnas.finetune import FAQConfig, finetune, initial_module, layout, random_subset, set_bn_stats  # noqa: E402
from qnas.predictors import default_predictor, load_predictor  # noqa: E402
from qnas.quant import FIRST_LAST_BITS, QuantSpec, calibrate, first_last_rule  # noqa: E402
from qnas.readout import Readout, solve_head  # noqa: E402
from search_spaces import convnets250k  # noqa: E402

FIT_SIZE = 1000  # the search's (qnas.defaults.DEFAULT_FIT_SIZE)
CALIB_IMAGES = 320  # as qnas export calibrates


def solve(module: torch.nn.Module, ds: data.Dataset, setting: str) -> None:
    """The last layer solved as ``qnas export`` solves it for a trial that is not finetuned, in place."""
    qmodel, _ = layout(module)
    calib = data.normalize(ds.train_images[random_subset(len(ds.train_labels), None, 0)[:CALIB_IMAGES]], ds.info)
    set_bn_stats(module, calibrate(qmodel, calib).bn)
    spec = first_last_rule(replace(QuantSpec.parse(setting), granularity="channel"), FIRST_LAST_BITS)
    solve_head(module, qmodel, spec, calibrate(qmodel, calib, spec=spec), Readout.from_dataset(ds, FIT_SIZE, seed=0))


def main() -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", type=positive_int, default=4, help="id nets of 2e4-3e5 parameters (default 4)")
    ap.add_argument("--setting", default="w4a4", help="the FAQ setting (default w4a4)")
    ap.add_argument("--epochs", type=positive_int, default=1, help="FAQ epochs (default 1)")
    ap.add_argument("--train-size", type=positive_int, default=2000, help="training images per epoch (default 2000)")
    args = ap.parse_args()
    FAQConfig(setting=args.setting)  # a bad setting fails here, before the dataset loads
    torch.set_num_threads(1)

    ds = data.load_dataset("fashion-mnist")
    pred = load_predictor(default_predictor("fashion-mnist"), dataset="fashion-mnist")
    archs = [g for g in convnets250k.load_split("id") if 2e4 <= convnets250k.count_params(g) <= 3e5][: args.archs]
    evals = data.val_subset(ds, 1000, seed=0)
    config = FAQConfig(setting=args.setting, epochs=args.epochs, train_size=args.train_size, seed=0)
    runs: dict[str, list[tuple[float, float]]] = {"ghn": [], "solved": []}
    print(f"{'params':>8s} {'start':7s} {'before':>7s} {'after':>7s} {'s':>4s}")
    for genome in archs:
        for start in runs:
            t = time.perf_counter()
            module, _ = initial_module(convnets250k, genome, ds.info, "ghn", pred, args.setting)
            module.eval()
            if start == "solved":
                solve(module, ds, args.setting)
            res = finetune(module, ds, config, eval_data=evals)
            runs[start].append((100 * res.before[args.setting], 100 * res.after[args.setting]))
            print(f"{convnets250k.count_params(genome):8,d} {start:7s} {runs[start][-1][0]:6.2f}% "
                  f"{runs[start][-1][1]:6.2f}% {time.perf_counter() - t:4.0f}", flush=True)
    means = {(s, i): statistics.fmean(r[i] for r in rs) for s, rs in runs.items() for i in (0, 1)}
    print(f"before_ghn={means[('ghn', 0)]:.2f} before_solved={means[('solved', 0)]:.2f} "
          f"after_ghn={means[('ghn', 1)]:.2f} after_solved={means[('solved', 1)]:.2f} n={len(archs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
