"""Symmetric vs asymmetric weight grids, same predicted parameters (the measurement behind
``qnas.quant.SYMMETRIC_WEIGHT_BITS``; results in docs/quantization.md).

    OMP_NUM_THREADS=1 python benchmarks/weight_grid.py [--predictor NAME|PATH] [--archs 12] [--images 500]

For the first ``--archs`` architectures of the ``id`` split with at most 5e5 parameters (the GHN's
training range), the predictor's parameters for each setting are evaluated on ``--images`` fixed
validation images as the search scores them (``qnas.score.evaluate``, ``bn_stats="calibrated"``,
per-channel weights) with asymmetric weights (``-wasym``: zero point, ``2**bits`` levels, the engine
before this convention) and symmetric ones (``-wsym``: zero point 0, ``2**bits - 1`` levels).
Prints mean top-1 per setting and grid; the last line is ``w8a8=<asym>/<sym> w4a4=... w2a2=...``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas import data  # noqa: E402
from qnas.predictors import default_predictor, load_predictor  # noqa: E402
from qnas.score import evaluate  # noqa: E402
from search_spaces import convnets250k  # noqa: E402


def main() -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default=None, help="predictor (default: the shipped one for fashion-mnist)")
    ap.add_argument("--archs", type=positive_int, default=12, help="id-split architectures (default 12)")
    ap.add_argument("--images", type=positive_int, default=500, help="validation images (default 500)")
    ap.add_argument("--settings", default="w8a8,w4a4,w2a2", help="settings (default w8a8,w4a4,w2a2)")
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args()
    settings = list(dict.fromkeys(t.strip() for t in args.settings.split(",") if t.strip()))
    if not settings or not all(re.fullmatch(r"w[248]a[248]", t) for t in settings):  # the bits the GHN embeds
        ap.error(f"--settings: of w8a8, w4a4, w2a2 and the like (weight grids have no FP32), got {args.settings!r}")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ds = data.load_dataset("fashion-mnist")
    pred = load_predictor(args.predictor or default_predictor("fashion-mnist"), dataset="fashion-mnist")
    x, y = data.val_subset(ds, args.images, seed=0)
    archs = [g for g in convnets250k.load_split("id") if convnets250k.count_params(g) <= 5e5][: args.archs]
    acc: dict[tuple[str, str], list[float]] = {}
    for genome in archs:
        module = convnets250k.build(genome)
        for setting in settings:
            params = pred.predict(module, setting)
            specs = {grid: f"{setting}-channel-{grid}" for grid in ("wasym", "wsym")}
            res = evaluate(module, params, x, y, list(specs.values()), bn_stats="calibrated")
            for grid, name in specs.items():
                acc.setdefault((setting, grid), []).append(100 * res[name]["top1"])
    means = {k: sum(v) / len(v) for k, v in acc.items()}
    print(f"{len(archs)} id nets, {args.images} validation images, calibrated BN, per-channel weights "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'setting':8s} {'asymmetric':>11s} {'symmetric':>10s} {'sym - asym':>11s} {'nets sym better':>16s}")
    for s in settings:
        a, b = acc[(s, "wasym")], acc[(s, "wsym")]
        better = sum(bi > ai for ai, bi in zip(a, b, strict=True))
        ma, mb = means[(s, "wasym")], means[(s, "wsym")]
        print(f"{s:8s} {ma:10.1f}% {mb:9.1f}% {mb - ma:+10.1f} {better:>10d}/{len(a)}")
    print(" ".join(f"{s}={means[(s, 'wasym')]:.1f}/{means[(s, 'wsym')]:.1f}" for s in settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
