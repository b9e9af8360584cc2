"""Does a GHN-predicted start make FAQ finetuning faster than a random one? (shared/papers/000)

    OMP_NUM_THREADS=1 python benchmarks/faq_init.py [--predictor NAME|PATH] [--archs 5] [--epochs 6]
        [--train-size 1500] [--eval-size 1000] [--setting w4a4] [--json out.json]

For ``--archs`` small architectures of the ``id`` split (evenly spread over those with at most
``--max-params`` parameters, so it fits a CPU), the same FAQ run (``qnas.finetune``: same config, seed,
training subset and data order) starts once from the predictor's parameters for ``--setting`` and once
from PyTorch's default random initialization (seed 0). Top-1 at the setting is measured on a fixed
validation subset at the start (epoch 0) and after every epoch, each time on the deployed model (frozen
BatchNorm statistics and FAQ's calibrated ranges).

Per architecture, ``epochs_needed`` is the first epoch (0..E) at which the GHN-initialized run reaches
the random-init run's final accuracy, and ``ratio = epochs_needed / E`` (``inf`` if it never does). The
claim under test (GHN-QAT as a "better starting position") is that this ratio is small; the goal is
<= 0.33. The last line is ``epochs_ratio=<median over architectures>``.

About 5 minutes at one thread with the defaults (10 runs of ~9,000 training images each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, new_file, non_negative_int, positive_float, positive_int, run, write_new  # noqa: E402

from qnas import data  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.finetune import FAQConfig, finetune, initial_module  # noqa: E402
from qnas.predictors import default_predictor, load_predictor  # noqa: E402
from qnas.quant import QuantSpec  # noqa: E402
from search_spaces import get_space  # noqa: E402


def _choose(space, n: int, max_params: int, info) -> list:
    """``n`` architectures of the id split, evenly spread by size among those under ``max_params``."""
    small = sorted((space.count_params(g, info.input_shape, info.num_classes), i, g)
                   for i, g in enumerate(space.load_split("id")))
    small = [t for t in small if t[0] <= max_params]
    if len(small) < n:
        raise QnasError(f"only {len(small)} id-split architectures have <= {max_params} parameters; raise --max-params")
    step = len(small) / n
    return [small[int(k * step)] for k in range(n)]


def _epochs_needed(ghn_curve: list[float], target: float) -> float:
    return next((float(e) for e, acc in enumerate(ghn_curve) if acc >= target), float("inf"))


def main() -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--predictor", default=None, help="GHN name or checkpoint (default: the shipped one)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--setting", default="w4a4", help="quantization setting finetuned for (default w4a4)")
    p.add_argument("--archs", type=positive_int, default=5, help="architectures (default 5)")
    p.add_argument("--max-params", type=positive_int, default=30_000, help="size bound for the chosen architectures")
    p.add_argument("--epochs", type=positive_int, default=6, help="FAQ epochs per run (default 6)")
    p.add_argument("--train-size", type=positive_int, default=1500, help="training images per epoch (default 1500)")
    p.add_argument("--batch-size", type=positive_int, default=FAQConfig.batch_size)
    p.add_argument("--lr", type=positive_float, default=FAQConfig.lr)
    p.add_argument("--freeze-bn-at", type=float, default=FAQConfig.freeze_bn_at,
                   help="FAQConfig.freeze_bn_at for both runs (default: FAQConfig's)")
    p.add_argument("--eval-size", type=positive_int, default=1000,
                   help="validation images for the curves (default 1000)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--json", type=new_file, default=None, help="also write the curves here (a new file)")
    args = p.parse_args()
    try:
        return _run(args)
    except QnasError as exc:
        print(f"faq_init: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    info = data.dataset_info(args.dataset)
    name = args.predictor or default_predictor(info.name)
    if name is None:
        raise QnasError(f"no shipped predictor for {info.name}; pass --predictor PATH.pt (or 'random' for the floor)")
    predictor = load_predictor(name, dataset=info.name, input_shape=info.input_shape, num_classes=info.num_classes)
    ds = data.load_dataset(args.dataset, args.data_dir)
    evals = data.val_subset(ds, args.eval_size, seed=args.seed)
    setting = QuantSpec.parse(args.setting).name
    config = FAQConfig(setting=setting, epochs=args.epochs, train_size=args.train_size, batch_size=args.batch_size,
                       lr=args.lr, freeze_bn_at=args.freeze_bn_at, seed=args.seed)
    space = get_space("convnets250k")
    chosen = _choose(space, args.archs, args.max_params, info)
    print(f"FAQ at {setting}: {args.epochs} epochs x {args.train_size} images, lr {config.lr}, batch "
          f"{config.batch_size}, freeze_bn_at {config.freeze_bn_at}; predictor {predictor.header.name} "
          f"({predictor.header.train_steps} steps); "
          f"top-1 on {args.eval_size} validation images", flush=True)
    rows, ratios = [], []
    t0 = time.perf_counter()
    for params, index, genome in chosen:
        curves = {}
        for init in ("ghn", "random"):
            module, _ = initial_module(space, genome, info, init, predictor if init == "ghn" else None, setting,
                                       seed=args.seed)
            result = finetune(module, ds, config, eval_data=evals, val_data=evals, epoch_eval=evals)
            curves[init] = [result.before[setting]] + [h[f"top1_{setting}"] for h in result.history]
        needed = _epochs_needed(curves["ghn"], curves["random"][-1])
        ratio = needed / args.epochs
        ratios.append(ratio)
        rows.append({"arch": space.to_string(genome), "id_index": index, "params": params, "curves": curves,
                     "epochs_needed": needed, "ratio": ratio})
        fmt = " ".join(f"{100 * a:5.1f}" for a in curves["ghn"])
        fmr = " ".join(f"{100 * a:5.1f}" for a in curves["random"])
        print(f"id[{index}] {params:,} params  {space.to_string(genome)}\n  ghn    {fmt}\n  random {fmr}\n"
              f"  epochs for GHN-init to reach random's final {100 * curves['random'][-1]:.1f}%: {needed:g} "
              f"(ratio {ratio:.2f})  [{time.perf_counter() - t0:.0f}s]", flush=True)
    if args.json:
        write_new(args.json, json.dumps({"config": config.to_dict(), "predictor": predictor.header.name,
                                         "rows": rows}, indent=1) + "\n")
    print(f"epochs_ratio={statistics.median(ratios):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
