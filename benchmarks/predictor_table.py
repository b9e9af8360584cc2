"""GHN-QAT's open question on our data: float GHN vs per-bit QAT GHNs vs one bit-conditioned GHN.

Every predictor is scored on the same held-out `id` architectures and the same test images, in
GHN-Q's Table-1 layout (mean +- standard error; max, top-1), with the random-init floor beside them.
Both BatchNorm protocols are reported for the shipped predictor: `batch` (GHN-Q: statistics of each
test batch of 64, folded into the weights, tensorwise weight quantization) and `calibrated` (frozen
statistics and ranges, as deployed).

    python benchmarks/predictor_table.py --float runs/float.pt --w4a4 runs/qat-w4a4.pt \
        --w2a2 runs/qat-w2a2.pt --conditioned runs/condch591.pt --n 40 --images 1000

``--float``/``--w4a4``/``--w2a2``/``--conditioned`` are the comparable-budget runs (same float start,
same QAT steps); ``--shipped`` (default: the package's predictor) is scored beside them.
Last line: ``ratio_w4a4=<mean W4A4 / mean FP32 of the shipped predictor on id> ratio_w2a2=<...>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, new_file, positive_int, run, write_new  # noqa: E402

SETTINGS = ("fp32", "w8a8", "w4a8", "w4a4", "w2a2")


def main() -> int:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--float", dest="float_", default=None, help="float-trained GHN (GHN-Q)")
    ap.add_argument("--w4a4", default=None, help="GHN-QAT finetuned at w4a4")
    ap.add_argument("--w2a2", default=None, help="GHN-QAT finetuned at w2a2 (NoiseQuant)")
    ap.add_argument("--conditioned", default=None, help="bit-conditioned GHN trained with the same budget")
    ap.add_argument("--shipped", default="fashion-mnist", help="the shipped predictor (default fashion-mnist)")
    ap.add_argument("--n", type=positive_int, default=40, help="id-split architectures (default 40)")
    ap.add_argument("--images", type=positive_int, default=1000, help="test images (default 1000)")
    ap.add_argument("--bn-stats", default="calibrated", choices=("batch", "calibrated"))
    ap.add_argument("--granularity", default="channel", choices=("channel", "tensor"),
                    help="weight scales of the quantized settings (default channel, qnas's scoring protocol)")
    ap.add_argument("--also-ghnq", action="store_true",
                    help="also score the shipped predictor under GHN-Q's protocol (batch BN, tensorwise)")
    ap.add_argument("--head", default="keep", choices=("keep", "fit"),
                    help="classifier: the GHN's own (default: GHN-Q's table compares predicted parameters) or the "
                    "fitted head the search scores with")
    ap.add_argument("--threads", type=positive_int, default=1,
                    help="torch threads (default 1, like every benchmark here)")
    ap.add_argument("--json", type=new_file, default=None, help="write all results here (a new file)")
    args = ap.parse_args()
    if not any((args.float_, args.w4a4, args.w2a2, args.conditioned, args.shipped)):
        ap.error("no predictor to score: give --shipped or one of --float, --w4a4, --w2a2, --conditioned")
    torch.set_num_threads(args.threads)

    from qnas.data import load_dataset
    from qnas.predictors import load_predictor
    from qnas.predictors.evaluation import evaluate_predictor, format_cell

    ds = load_dataset("fashion-mnist")
    suffix = "" if args.granularity == "tensor" else "-channel"
    specs = [s if s == "fp32" else s + suffix for s in SETTINGS]
    rows: list[tuple[str, str, dict]] = []
    t0 = time.perf_counter()
    columns = [("float GHN (GHN-Q)", args.float_), ("GHN-QAT w4a4", args.w4a4), ("GHN-QAT w2a2", args.w2a2),
               ("bit-conditioned", args.conditioned), ("bit-conditioned (shipped)", args.shipped)]
    shipped = None
    floor = None
    for label, name in columns:
        if not name:
            continue
        pred = load_predictor(name, dataset="fashion-mnist")
        done = iter(range(1, args.n + 1))  # progress on stderr: with the fitted head a column takes ~an hour

        def progress(split: str, arch: str, label: str = label, done=done) -> None:
            print(f"{label}: {next(done, args.n)}/{args.n} architectures, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)

        res = _rename(evaluate_predictor(pred, ds, splits=["id"], n=args.n, settings=specs, bn_stats=args.bn_stats,
                                         images=args.images, floor=floor is None, head=args.head,
                                         on_arch=progress), specs)
        if floor is None:
            floor = {s: res["table"][s]["random"] for s in SETTINGS}
        rows.append((label, f"{args.bn_stats}/{args.granularity}", res))
        if label.endswith("(shipped)"):
            shipped = res
            if args.also_ghnq:
                ghnq = evaluate_predictor(pred, ds, splits=["id"], n=args.n, settings=SETTINGS, bn_stats="batch",
                                          images=args.images, floor=False, head=args.head)
                rows.append((label, "batch/tensor (GHN-Q)", ghnq))

    header = f"{'predictor':28s} {'protocol':20s} " + " ".join(f"{s:>22s}" for s in SETTINGS)
    print(f"id split, first {args.n} architectures, {args.images} test images, top-1 mean ± sem; max")
    print(header)
    floor_cells = " ".join(f"{format_cell(floor[s]['top1']):>22s}" for s in SETTINGS)
    print(f"{'random init (floor)':28s} {args.bn_stats + '/' + args.granularity:20s} " + floor_cells)
    for label, bn, res in rows:
        cells = [format_cell(res["table"][s]["id"]["top1"]) for s in SETTINGS]
        print(f"{label:28s} {bn:20s} " + " ".join(f"{c:>22s}" for c in cells))
    if args.json:
        write_new(args.json, json.dumps({"rows": [{"predictor": lbl, "bn_stats": bn, "table": r["table"]}
                                                        for lbl, bn, r in rows], "floor": floor}, indent=1))
    if shipped is not None:
        mean = {s: shipped["table"][s]["id"]["top1"]["mean"] for s in SETTINGS}
        print(f"ratio_w4a4={mean['w4a4'] / mean['fp32']:.3f} ratio_w2a2={mean['w2a2'] / mean['fp32']:.3f} "
              f"seconds={time.perf_counter() - t0:.0f}")
    else:
        print(f"columns={len(rows)} seconds={time.perf_counter() - t0:.0f}")
    return 0


def _rename(res: dict, specs: list[str]) -> dict:
    """Report ``w4a4-channel`` under ``w4a4`` so rows of both protocols line up."""
    res["table"] = {s.split("-")[0]: res["table"][s] for s in specs}
    return res


if __name__ == "__main__":
    raise SystemExit(run(main))
