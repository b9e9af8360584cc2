"""Scoring overhead: ``evaluate`` over fp32+w8a8+w4a8+w4a4+w2a2 vs 5x bare FP32 inference.

    OMP_NUM_THREADS=1 python benchmarks/scoring_overhead.py [--archs 8] [--images 1000] [--bn-stats both] [--head both]

For a spread of architectures of the ``id`` split (by parameter count, up to ``--max-params``), on the
same validation images, side by side in one run:

* ``bare``: the faster of two plain FP32 inference variants of the module, BatchNorm folded into the
  convs (``torch.fx.experimental.optimization.fuse``, eval mode), under ``torch.inference_mode``, batches
  of 64: NCHW, or NHWC (explicit NHWC strides for 1-channel images, which are both layouts and would
  otherwise make the first conv pick NCHW for the whole net), NHWC weights, in-place ReLUs;
* ``evaluate``: ``qnas.score.evaluate`` over the five settings with the parameters passed as a dict (as
  the search passes GHN predictions), tracing (``prepare``) and calibration included: what scoring one
  candidate costs beyond predicting its parameters. With ``--head fit`` (the scoring default) the last layer
  is solved at every setting on as many labelled training images as validation images (``qnas.readout``),
  as the search scores; ``--head keep`` scores with the parameters as given.

Times are CPU seconds of this process (``time.process_time``: other processes on a shared machine
inflate them far less than wall time), the best of ``--repeats`` runs after a one-batch warm-up. The
ratio is ``evaluate / (5 x bare)``; the last line is ``overhead_ratio=<median>`` for the default BN
mode (``qnas.score.DEFAULT_BN_STATS``) and head (``qnas.defaults.DEFAULT_HEAD``), then the other head's
median where both are timed. The default of 1,000 images is the search's ``--val-size``.
Use one thread (the default) when other processes share the machine: two multi-threaded torch
processes on two cores slow each other down many times over.
"""

from __future__ import annotations

import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_float, positive_int, run  # noqa: E402

from qnas.defaults import DEFAULT_HEAD, HEADS  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.readout import Readout  # noqa: E402
from qnas.score import DEFAULT_BN_STATS, evaluate  # noqa: E402
from search_spaces import convnets250k  # noqa: E402

SETTINGS = ["fp32", "w8a8", "w4a8", "w4a4", "w2a2"]


def _best(run: Callable[[torch.Tensor, torch.Tensor], object], x: torch.Tensor, y: torch.Tensor,
          repeats: int) -> float:
    run(x[:64], y[:64])  # warm-up: allocator, oneDNN primitive caches
    times = []
    for _ in range(repeats):
        t = time.process_time()
        run(x, y)
        times.append(time.process_time() - t)
    return min(times)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # explicit NHWC strides, else the first conv picks NCHW (see _nhwc in qnas/quant/_model.py)
        n, _, h, w = x.shape
        return x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def _nhwc_model(module: nn.Module) -> nn.Module:
    """NHWC after every conv (no-ops once the input is NHWC), NHWC weights, in-place ReLUs."""
    gm = fx.symbolic_trace(module)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            with gm.graph.inserting_after(node):
                new = gm.graph.call_method("contiguous", (node,), {"memory_format": torch.channels_last})
            node.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)
        if node.op == "call_module" and isinstance(modules[node.target], nn.ReLU):
            modules[node.target].inplace = True
    gm.recompile()
    return gm.to(memory_format=torch.channels_last)


def bare_fp32_seconds(module: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    folded = fuse(copy.deepcopy(module).eval())
    best = float("inf")
    for model, layout in ((folded, torch.Tensor.contiguous), (_nhwc_model(folded), _nhwc)):
        def run(xs: torch.Tensor, _: torch.Tensor, model: nn.Module = model, layout=layout) -> None:
            with torch.inference_mode():
                for xb in layout(xs).split(64):
                    model(xb)
        best = min(best, _best(run, x, y, repeats))
    return best


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor, Readout, str]:
    """Validation images and the readout's training images, ``n`` of each (as the search scores)."""
    try:
        from qnas import data

        ds = data.load_dataset("fashion-mnist")
        x, y = data.val_subset(ds, n, seed=0)
        return x, y, Readout.from_dataset(ds, n, seed=0), "fashion-mnist validation subset"
    except QnasError as exc:  # no dataset here (or a corrupt one, named below): timing does not depend on the pixels
        gen = torch.Generator().manual_seed(0)
        x, fit = torch.randn(2, n, 1, 28, 28, generator=gen)
        y, fit_y = torch.randint(0, 10, (2, n), generator=gen)
        return x, y, Readout(fit, fit_y), f"random ({exc})"


def _spread(n: int, max_params: float) -> list:
    try:
        genomes = convnets250k.load_split("id")
    except QnasError:  # a checkout without the committed splits ("unknown split")
        rng = random.Random(0)
        genomes = [convnets250k.sample(rng) for _ in range(500)]
    genomes = sorted((g for g in genomes if convnets250k.count_params(g) <= max_params), key=convnets250k.count_params)
    return [genomes[int((i + 0.5) / n * len(genomes))] for i in range(n)]


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=positive_int, default=8,
                        help="architectures, spread by parameter count (default 8)")
    parser.add_argument("--max-params", type=positive_float, default=2e6, help="largest architecture (default 2e6)")
    parser.add_argument("--images", type=positive_int, default=1000, help="validation images (default 1000)")
    parser.add_argument("--repeats", type=positive_int, default=2,
                        help="timed runs per measurement, best kept (default 2)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--bn-stats", choices=("batch", "calibrated", "both"), default=DEFAULT_BN_STATS,
                        help=f"BN modes to time (default {DEFAULT_BN_STATS}, the scoring default)")
    parser.add_argument("--head", choices=(*HEADS, "both"), default="both",
                        help=f"last layer: fitted per setting, as given, or both (default both; scoring: "
                        f"{DEFAULT_HEAD})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y, fit, source = _images(args.images)
    bns = ["calibrated", "batch"] if args.bn_stats == "both" else [args.bn_stats]
    heads = [DEFAULT_HEAD, *(h for h in HEADS if h != DEFAULT_HEAD)] if args.head == "both" else [args.head]
    modes = [(b, h) for b in bns for h in heads]
    print(f"{args.images} images ({source}), batch 64, {args.threads} thread(s), torch {torch.__version__}; "
          f"settings {'+'.join(SETTINGS)}; default bn_stats={DEFAULT_BN_STATS}, head={DEFAULT_HEAD} (fitted on "
          f"{len(fit.labels)} training images); CPU seconds")
    print(f"{'params':>9} {'bare ms':>8} " + " ".join(f"{b + '/' + h + ' ms':>18} {'ratio':>6}" for b, h in modes)
          + "  arch")
    ratios: dict[tuple[str, str], list[float]] = {m: [] for m in modes}
    for genome in _spread(args.archs, args.max_params):
        torch.manual_seed(0)
        module = convnets250k.build(genome)
        params = {k: v.detach().clone() for k, v in module.named_parameters()}
        bare = bare_fp32_seconds(module, x, y, args.repeats)
        row = f"{convnets250k.count_params(genome):>9,} {bare * 1e3:>8.1f} "
        for mode in modes:
            def run(xs: torch.Tensor, ys: torch.Tensor, mode: tuple[str, str] = mode, module: nn.Module = module,
                    params: dict = params) -> None:
                evaluate(module, params, xs, ys, SETTINGS, bn_stats=mode[0], readout=fit if mode[1] == "fit" else None)
            t = _best(run, x, y, args.repeats)
            ratios[mode].append(t / (5 * bare))
            row += f"{t * 1e3:>18.1f} {ratios[mode][-1]:>6.2f} "
        print(row + " " + convnets250k.to_string(genome), flush=True)
    for b, h in modes:
        print(f"median ratio {b}/{h}: {statistics.median(ratios[b, h]):.3f}")
    bn = DEFAULT_BN_STATS if DEFAULT_BN_STATS in bns else bns[0]
    line = f"overhead_ratio={statistics.median(ratios[bn, heads[0]]):.3f}"
    line += "".join(f" overhead_ratio_{h}={statistics.median(ratios[bn, h]):.3f}" for h in heads[1:])
    print(line)


if __name__ == "__main__":
    raise SystemExit(run(main))
