"""GHN cost per candidate next to the cost of evaluating it: is the predictor a small share of scoring?

    OMP_NUM_THREADS=1 python benchmarks/ghn_speed.py [--archs 16] [--images 1000] [--predictor random] [--head fit]

For architectures spread by parameter count over the ``id`` split, per candidate (best of
``--repeats`` runs, one thread by default, ``torch.no_grad``):

* ``graph``: ``to_graph`` (fx trace, virtual edges), uncached;
* ``ghn b1``: one GHN call for this candidate alone, one bit setting;
* ``ghn b8``: one GHN call for 8 candidates at one setting, divided by 8 (the batched path);
* ``ghn 5set``: one GHN call predicting all scored settings of this candidate (a bit-conditioned GHN
  predicts parameters per setting; the batch holds the same graph once per setting);
* ``eval``: ``qnas.score.evaluate`` of the candidate at those settings on ``--images`` validation
  images, with the predicted parameters (default BN mode, tracing and calibration included) and the
  search's default head (``--head fit``: the last layer solved on 1,000 training images per setting;
  ``keep``: the GHN's own).

``share = (graph + ghn 5set) / (graph + ghn 5set + eval)``: the GHN's part of scoring one candidate.
The last line is ``ghn_share=<median share>``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas.defaults import DEFAULT_FIT_SIZE, DEFAULT_HEAD, HEADS  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.ghn import predict_many  # noqa: E402
from qnas.graph import batch_graphs, to_graph  # noqa: E402
from qnas.predictors import load_predictor  # noqa: E402
from qnas.readout import Readout, make_readout  # noqa: E402
from qnas.score import evaluate  # noqa: E402
from search_spaces import convnets250k  # noqa: E402

SETTINGS = ["fp32", "w8a8", "w4a8", "w4a4", "w2a2"]
INPUT_SHAPE = (1, 28, 28)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _images(n: int, head: str) -> tuple[torch.Tensor, torch.Tensor, Readout | None, str]:
    """Validation images and labels, and the readout the head is fitted on (None for ``keep``)."""
    try:
        from qnas import data

        ds = data.load_dataset("fashion-mnist")
        x, y = data.val_subset(ds, n, seed=0)
        readout = make_readout(ds, head, None, default=DEFAULT_FIT_SIZE, seed=0)
        return x, y, readout, "fashion-mnist validation subset"
    except QnasError as exc:  # no dataset here (or a corrupt one, named below): timing does not depend on the pixels
        gen = torch.Generator().manual_seed(0)
        fit = None if head == "keep" else Readout(torch.randn(DEFAULT_FIT_SIZE, *INPUT_SHAPE, generator=gen),
                                                  torch.randint(0, 10, (DEFAULT_FIT_SIZE,), generator=gen))
        return (torch.randn(n, *INPUT_SHAPE, generator=gen), torch.randint(0, 10, (n,), generator=gen), fit,
                f"random ({exc})")


def _spread(n: int) -> list:
    genomes = sorted(convnets250k.load_split("id"), key=convnets250k.count_params)
    return [genomes[int((i + 0.5) / n * len(genomes))] for i in range(n)]


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=positive_int, default=16,
                        help="architectures (a multiple of 8), spread by size")
    parser.add_argument("--images", type=positive_int, default=1000,
                        help="validation images for evaluate (default 1000)")
    parser.add_argument("--predictor", default="random", help="predictor name or checkpoint (default random)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    parser.add_argument("--head", choices=HEADS, default=DEFAULT_HEAD,
                        help=f"the classifier scoring uses (default {DEFAULT_HEAD}, as the search)")
    args = parser.parse_args()
    if args.archs % 8:
        parser.error("--archs must be a multiple of 8")
    torch.set_num_threads(args.threads)
    pred = load_predictor(args.predictor, input_shape=INPUT_SHAPE)
    ghn = pred.ghn
    x, y, readout, source = _images(args.images, args.head)
    genomes = _spread(args.archs)
    modules = [convnets250k.build(g, INPUT_SHAPE, 10) for g in genomes]
    print(f"GHN {args.predictor} ({ghn.num_parameters:,} params); {args.images} images ({source}); "
          f"{args.threads} thread(s), torch {torch.__version__}; settings {'+'.join(SETTINGS)}; head {args.head}")
    print(f"{'params':>9} {'nodes':>5} {'graph ms':>8} {'ghn b1':>7} {'ghn b8':>7} {'5set ms':>8} "
          f"{'eval ms':>8} {'share':>6}  arch")
    b1_all, b8_all, shares = [], [], []
    with torch.no_grad():
        graphs = [to_graph(m, INPUT_SHAPE, ghn.config.s_max) for m in modules]
        b8 = {}
        for i in range(0, len(graphs), 8):
            chunk = graphs[i : i + 8]
            per = _best(lambda chunk=chunk: ghn(batch_graphs(chunk), "w4a4"), args.repeats) / len(chunk)
            b8.update({j: per for j in range(i, i + len(chunk))})
        for i, (genome, module, graph) in enumerate(zip(genomes, modules, graphs, strict=True)):
            t_graph = _best(lambda module=module: to_graph(module, INPUT_SHAPE, ghn.config.s_max), args.repeats)
            t_b1 = _best(lambda graph=graph: ghn(batch_graphs([graph]), "w4a4"), args.repeats)
            t_5 = _best(lambda graph=graph: ghn(batch_graphs([graph] * len(SETTINGS)), SETTINGS), args.repeats)
            params = dict(zip(SETTINGS, predict_many(ghn, [graph] * len(SETTINGS), SETTINGS), strict=True))
            t_eval = _best(lambda module=module, params=params: evaluate(
                module, lambda spec: params[spec.name], x, y, SETTINGS, readout=readout), max(1, args.repeats - 2))
            share = (t_graph + t_5) / (t_graph + t_5 + t_eval)
            b1_all.append(t_b1)
            b8_all.append(b8[i])
            shares.append(share)
            print(f"{convnets250k.count_params(genome):>9,} {graph.num_nodes:>5} {t_graph * 1e3:>8.1f} "
                  f"{t_b1 * 1e3:>7.1f} {b8[i] * 1e3:>7.1f} {t_5 * 1e3:>8.1f} {t_eval * 1e3:>8.1f} {share:>6.3f}  "
                  f"{convnets250k.to_string(genome)}", flush=True)
    print(f"median GHN ms per candidate: batch of 1 {statistics.median(b1_all) * 1e3:.1f}, "
          f"batch of 8 {statistics.median(b8_all) * 1e3:.1f} (sum over all: {sum(b1_all) * 1e3:.0f} vs "
          f"{sum(b8_all) * 1e3:.0f})")
    print(f"ghn_share={statistics.median(shares):.3f}")


if __name__ == "__main__":
    raise SystemExit(run(main))
