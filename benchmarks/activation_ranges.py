"""Low-bit activation ranges: min/max vs percentiles, same predicted parameters.

    OMP_NUM_THREADS=1 python benchmarks/activation_ranges.py [--predictor NAME|PATH] [--archs 12] [--images 500]
        [--head keep|fit]

For the first ``--archs`` architectures of the ``id`` split with at most 5e5 parameters (the GHN's
training range), the predictor's parameters for each setting are evaluated on ``--images`` fixed
validation images as the search scores them (``qnas.score.evaluate``, ``bn_stats="calibrated"``: BN
statistics and activation ranges measured in the network quantized at that setting) with min/max
ranges (``-minmax``, GHN-Q), with the engine's default rule (``LOW_BIT_ACT_PERCENTILE`` at 2 bits) and
at each percentile of a sweep (``-pQ``); and with FAQ's calibration (``qnas.finetune.faq_calibration``:
BN statistics and percentile ranges of the *float* network on 256 training images). Prints mean top-1
per setting and rule (``--head fit``: the search's classifier, a head fitted per setting and rule on
``DEFAULT_FIT_SIZE`` training images, ``qnas.readout``; the FAQ rows keep the GHN's classifier, which is
what FAQ starts from); the last line is ``<setting>_minmax=<v> <setting>_default=<v> <setting>_best=<v>``
for each setting.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas import data  # noqa: E402
from qnas import finetune as ft  # noqa: E402
from qnas.defaults import DEFAULT_FIT_SIZE  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.predictors import default_predictor, load_predictor  # noqa: E402
from qnas.quant import QuantSpec  # noqa: E402
from qnas.readout import make_readout  # noqa: E402
from qnas.score import evaluate  # noqa: E402
from search_spaces import convnets250k  # noqa: E402

PERCENTILES = (99.99, 99.9, 99.5, 99.0, 98.0)
FAQ_PERCENTILES = (99.9, 99.0)


def main() -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default=None, help="predictor (default: the shipped one for fashion-mnist)")
    ap.add_argument("--archs", type=positive_int, default=12, help="id-split architectures (default 12)")
    ap.add_argument("--images", type=positive_int, default=500, help="validation images (default 500)")
    ap.add_argument("--settings", default="w4a4-channel,w2a2-channel", help="settings (default w4a4/w2a2 per-channel)")
    ap.add_argument("--head", default="keep", choices=("keep", "fit"),
                    help="classifier: the GHN's own (default) or the fitted head the search scores with")
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args()
    settings = list(dict.fromkeys(t.strip() for t in args.settings.split(",") if t.strip()))
    try:  # checked now, not after the dataset and the predictor are loaded
        specs = {t: QuantSpec.parse(t) for t in settings}
    except QnasError as exc:
        ap.error(f"--settings: {exc}")
    if not settings or any(spec.a_bits is None for spec in specs.values()):
        ap.error(f"--settings: settings with quantized activations, e.g. w2a2-channel, got {args.settings!r}")
    torch.set_num_threads(args.threads)

    ds = data.load_dataset("fashion-mnist")
    pred = load_predictor(args.predictor or default_predictor("fashion-mnist"), dataset="fashion-mnist")
    x, y = data.val_subset(ds, args.images, seed=0)
    readout = make_readout(ds, args.head, None, default=DEFAULT_FIT_SIZE, seed=0)
    calib = data.normalize(ds.train_images[:256], ds.info)
    archs = [g for g in convnets250k.load_split("id") if convnets250k.count_params(g) <= 5e5][: args.archs]
    means: dict[tuple[str, str], float] = {}
    for setting, spec in specs.items():
        rules = {"minmax": replace(spec, a_percentile=100.0), "default": spec,
                 **{f"p{q:g}": replace(spec, a_percentile=q) for q in PERCENTILES}}
        acc: dict[str, list[float]] = {}
        for genome in archs:
            module = convnets250k.build(genome)
            params = pred.predict(module, setting.split("-")[0])
            res = evaluate(module, params, x, y, list(rules.values()), bn_stats="calibrated", readout=readout)
            for how, rule in rules.items():
                acc.setdefault(how, []).append(res[rule.name]["top1"])
            with torch.no_grad():
                ft.load_params(module, params)
            qmodel, lay = ft.layout(module)
            for q in FAQ_PERCENTILES:
                cal = ft.faq_calibration(qmodel, lay, calib, spec, low_bit_percentile=q)
                acc.setdefault(f"faq p{q:g}", []).append(ft.accuracy(qmodel, cal, spec, x, y))
        for how, values in acc.items():
            means[(setting, how)] = 100 * sum(values) / len(values)
            print(f"{setting:14s} {how:10s} {means[(setting, how)]:5.1f}%", flush=True)
    figures = []
    for t in settings:
        key, best = t.removesuffix("-channel"), max(v for (s, _), v in means.items() if s == t)
        figures += [f"{key}_minmax={means[(t, 'minmax')]:.1f}", f"{key}_default={means[(t, 'default')]:.1f}",
                    f"{key}_best={best:.1f}"]
    print(" ".join(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
