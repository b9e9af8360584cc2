"""How the fitted head scales its features: per feature, or one scale for all (qnas.readout).

For each network, the GHN's parameters with the last layer solved on ``--fit-size`` training images
(``qnas.readout``), scored on the fixed test subset at every setting twice: the ridge on standardized
features (``feature``) and on features sharing one scale (``global``). ``qnas.readout``'s default
(``auto``) takes ``global`` exactly where the head's weights are quantized below 8 bits: the settings
without the first/last-layer rule (GHN-Q's Table 1 protocol, ``--first-last-bits same``); under the rule
(``-fl8``, the search's default) the head stays at 8 bits and ``auto`` is ``feature``.

    OMP_NUM_THREADS=1 python benchmarks/head_scaling.py                  # 12 `id` nets and 12 user nets

Last line: ``gain_<setting>=<points>`` (``global`` minus ``feature``, mean top-1 over every network) per
setting, then ``auto_gain=<points>`` (``auto`` minus ``feature`` averaged over the settings) and ``n=``.
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
from qnas.errors import QnasError  # noqa: E402
from qnas.graph import batch_graphs, to_graph  # noqa: E402
from qnas.predictors import load_predictor  # noqa: E402
from qnas.predictors.evaluation import SPLITS, split_networks, test_subset  # noqa: E402
from qnas.quant import layer_bits, parse_specs, prepare  # noqa: E402
from qnas.readout import Readout, head_step  # noqa: E402
from qnas.score import evaluate  # noqa: E402
from search_spaces import get_space  # noqa: E402

SETTINGS = ("fp32,w8a8-channel,w4a8-channel,w4a4-channel,w2a2-channel,"
            "w4a8-channel-fl8,w4a4-channel-fl8,w2a2-channel-fl8")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default="fashion-mnist", help="predictor name or .pt path (default: shipped)")
    ap.add_argument("--splits", default="id,user", help=f"comma-separated, of {', '.join(SPLITS)} (default id,user)")
    ap.add_argument("--n", type=positive_int, default=12, help="networks per split (default 12)")
    ap.add_argument("--settings", default=SETTINGS, help="settings (default: GHN-Q's at channel weight scales, "
                    "and the quantized ones under the first/last-layer rule)")
    ap.add_argument("--images", type=positive_int, default=1000, help="test images (default 1000)")
    ap.add_argument("--fit-size", type=positive_int, default=1000,
                    help="training images the head is fitted on (default 1000)")
    args = ap.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    if not splits or any(s not in SPLITS for s in splits):
        ap.error(f"--splits: choose from {', '.join(SPLITS)}, got {args.splits!r}")
    if args.n < 1 or args.images < 1 or args.fit_size < 1:
        ap.error("--n, --images and --fit-size must be positive")
    torch.set_num_threads(1)
    try:
        specs = parse_specs(args.settings)
        predictor = load_predictor(args.predictor, dataset="fashion-mnist")
        ds = data.load_dataset("fashion-mnist")
    except QnasError as exc:
        ap.error(str(exc))
    names = [s.name for s in specs]
    ghn = predictor.ghn.eval()
    space = get_space(predictor.header.search_space)
    x, y = test_subset(ds, args.images)
    fit = Readout.from_dataset(ds, args.fit_size, seed=0)
    readouts = {how: replace(fit, scaling=how) for how in ("feature", "global")}
    t0 = time.perf_counter()
    print(f"predictor {predictor.header.name}; {len(y)} test images, head fitted on {args.fit_size}; "
          "top-1 %, feature / global", flush=True)
    print(f"{'split':6s} {'network':40s} " + " ".join(f"{n:>22s}" for n in names), flush=True)
    acc: dict[str, dict[str, list[float]]] = {how: {n: [] for n in names} for how in ("feature", "global", "auto")}
    for split in splits:
        for arch, _family, make in split_networks(space, split, args.n, ds.info):
            module = make()
            qmodel = prepare(module)
            step = head_step(qmodel, ds.info.num_classes)
            if step is None:
                print(f"{split:6s} {arch[:40]:40s} (no head qnas can fit: skipped)", flush=True)
                continue
            with torch.no_grad():
                graph = to_graph(module, ds.info.input_shape, ghn.config.s_max)
                preds = dict(zip(names, ghn(batch_graphs([graph] * len(specs)), specs), strict=True))
            got = {how: evaluate(qmodel, lambda s, p=preds: p[s.name], x, y, specs, readout=r)
                   for how, r in readouts.items()}
            for spec in specs:
                auto = fit.scaling_at(layer_bits(spec.w_bits, step.w8, spec))  # what the default fits
                for how in ("feature", "global"):
                    acc[how][spec.name].append(100 * got[how][spec.name]["top1"])
                acc["auto"][spec.name].append(acc[auto][spec.name][-1])
            cells = [f"{acc['feature'][n][-1]:5.1f} / {acc['global'][n][-1]:5.1f}" for n in names]
            print(f"{split:6s} {arch[:40]:40s} " + " ".join(f"{c:>22s}" for c in cells)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    count = len(acc["feature"][names[0]])
    if count == 0:
        print("no network with a head qnas can fit", file=sys.stderr)
        return 1
    print(f"\nmean top-1 % over {count} networks (auto: what qnas.readout uses)")
    for how in ("feature", "global", "auto"):
        print(f"{how:8s} " + " ".join(f"{n}={statistics.fmean(acc[how][n]):.1f}" for n in names))
    gains = {n: statistics.fmean(acc["global"][n]) - statistics.fmean(acc["feature"][n]) for n in names}
    auto_gain = statistics.fmean(statistics.fmean(acc["auto"][n]) - statistics.fmean(acc["feature"][n]) for n in names)
    print(" ".join(f"gain_{n}={g:+.2f}" for n, g in gains.items()) + f" auto_gain={auto_gain:+.2f} n={count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
