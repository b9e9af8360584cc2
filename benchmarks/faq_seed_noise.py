"""How much of a ground-truth label's seed noise is FAQ's own? FAQ again, with other seeds, from one trained net.

    OMP_NUM_THREADS=1 python benchmarks/faq_seed_noise.py --net deep-089 --train-seed 1 --faq-seeds 0,1,2
        [--setting w2a2] [--out benchmarks/results/faq_seed_noise.jsonl] [--store DIR] [--cache DIR]

A v2 row's W2A2 (or W4A4) label is one FAQ run (seed = the row's seed) from one trained net. Two rows of one
architecture differ by both the training seed and the FAQ seed. This trains the net again exactly as
``ground_truth.py`` does (its budget and seed; the weights are cached), says whether its weights' fingerprint
is the row's (it is only on the same kind of CPU: otherwise it is another draw of the same training), then
runs the truth's own FAQ stage with each ``--faq-seeds`` seed. The FAQ seed picks the calibration batches
and the order of the training images.

Appends one JSON line per FAQ run to ``--out`` as it goes; runs already there are skipped (rerun after a
kill). Last line: ``faq_mean=<top-1 %> faq_sd=<points> faq_range=<points> row=<top-1 %> same_net=<0|1>
runs=<n>`` over every run of this net, training seed and setting in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ground_truth as G  # noqa: E402
from benchcli import ArgumentParser, int_list, non_negative_int, run  # noqa: E402

BUDGET = "k20e5"  # the truth budget (budget.json): the rows this measures
OUT = Path(__file__).resolve().parent / "results" / "faq_seed_noise.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", required=True, help="a ground-truth net's id, e.g. deep-089")
    ap.add_argument("--train-seed", type=non_negative_int, default=0, help="the row's training seed (default 0)")
    ap.add_argument("--faq-seeds", type=int_list, default=[0, 1, 2], help="FAQ seeds, comma-separated (default 0,1,2)")
    ap.add_argument("--setting", choices=sorted(G.FAQ_LR), default="w2a2", help="the FAQ setting (default w2a2)")
    ap.add_argument("--out", type=Path, default=OUT, help=f"JSON lines, appended (default {OUT})")
    ap.add_argument("--store", type=Path, default=G.STORE, help=f"the ground-truth store (default {G.STORE})")
    ap.add_argument("--cache", type=Path, default=G.CACHE.parent / "faq_seed_noise",
                    help="where the retrained weights are kept")
    args = ap.parse_args(argv)
    seeds = args.faq_seeds
    if not args.out.parent.is_dir():
        ap.error(f"no directory {args.out.parent} to write {args.out.name} in")
    plan = {a["id"]: a for a in G.load_plan(args.store)["architectures"]}
    if args.net not in plan:
        ap.error(f"--net {args.net}: not a net of {args.store}")
    key = f"{args.net}_{BUDGET}_s{args.train_seed}"
    row = G.read_result(args.store, key)
    stage = f"faq_{args.setting}"
    if row is None or "fp32" not in row["stages"] or stage not in row["stages"]:
        ap.error(f"{key}: no row with a trained net and a {stage} stage in {args.store}")
    if G.stale(row["stages"][stage]["provenance"]["git_commit"]):  # ranking.py would not use it either
        ap.error(f"{key}: its {stage} stage was measured with an older quantizer; ground_truth.py re-measures it")
    torch.set_num_threads(1)

    # the row's test images: the runs are compared with its accuracy
    worker = G.Worker(argparse.Namespace(test_images=row["test_images"], worker_id=0, device="cpu", store=args.store,
                                         cache=args.cache))
    budget = G.BUDGETS[BUDGET]
    ds = worker.dataset(budget)
    job = G.Job(arch=plan[args.net], budget=BUDGET, seed=args.train_seed, faq=(args.setting,))
    cache = args.cache / key
    cache.mkdir(parents=True, exist_ok=True)
    module = G.build_arch(worker.space, job.arch["arch"], worker.info)
    weights = cache / "fp32.pt"
    if not weights.exists():  # train_fp32 writes fp32.pt only once training is complete
        worker.train_fp32(job, budget, ds, module, cache)
    start = G.weights_sha256(torch.load(weights, map_location="cpu", weights_only=True))
    same = start == row["stages"]["fp32"].get("weights_sha256")
    worker.log(f"{key}: weights {start}, the row's {row['stages']['fp32'].get('weights_sha256')}"
               f" ({'the same net' if same else 'another draw of the same training'})")

    def runs() -> list[dict]:
        lines = args.out.read_text().splitlines() if args.out.exists() else []
        return [r for r in map(json.loads, lines) if (r["net"], r["train_seed"], r["setting"], r["weights_sha256"])
                == (args.net, args.train_seed, args.setting, start)]

    done = {r["faq_seed"] for r in runs()}
    for seed in seeds:
        if seed in done:
            continue
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        own = cache / f"faq_seed{seed}"  # each seed's resumable FAQ checkpoint apart from the others'
        own.mkdir(exist_ok=True)
        out = worker.faq(dataclasses.replace(job, seed=seed), args.setting, ds, module, own, start)
        record = {"net": args.net, "train_seed": args.train_seed, "setting": args.setting, "faq_seed": seed,
                  "weights_sha256": start, "same_net_as_row": same, "test_top1": out["test_top1"],
                  "test_top1_before": out["test_top1_before"], "test_top1_fp32_after": out["test_top1_fp32_after"],
                  "row_test_top1": row["stages"][stage]["test_top1"], "provenance": worker.provenance}
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        worker.log(f"{key} FAQ {args.setting} seed {seed}: {100 * out['test_top1']:.2f}% "
                   f"(the row's, seed {args.train_seed}: {100 * record['row_test_top1']:.2f}%)")

    top1 = [100 * r["test_top1"] for r in runs()]
    sd = statistics.stdev(top1) if len(top1) > 1 else float("nan")
    print(f"faq_mean={statistics.mean(top1):.2f} faq_sd={sd:.2f} faq_range={max(top1) - min(top1):.2f} "
          f"row={100 * row['stages'][stage]['test_top1']:.2f} same_net={int(same)} runs={len(top1)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
