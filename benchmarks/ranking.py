"""Does the predictor rank architectures like real (quantized) training does?

    OMP_NUM_THREADS=1 python benchmarks/ranking.py [--predictor NAME] [--val-size 500] [--json out.json]

Reads the committed ground truth (``benchmarks/ground_truth/ground_truth.json``: architectures of the
``id`` split trained from scratch at FP32 and with QAT at W4A4, see ``benchmarks/ground_truth.py``) and
scores the same architectures, side by side in this run, with:

* ``predictor``: the shipped GHN (``--predictor``, default: the shipped checkpoint for the dataset),
  scored exactly as the search scores a candidate (``qnas.scorer.GHNScorer.score``: predicted
  parameters, top-1 on ``--val-size`` fixed validation images, the scorer's BN mode, weight
  granularity taken from the ground-truth settings, e.g. ``w4a4-channel`` -> per-channel);
* ``random GHN``: the same with an untrained GHN (``--ghn-seed``), the floor of the GHN approach;
* ``params``, ``MACs``: analytic counts of the space (more is better, as a prior);
* ``synflow``, ``NASWOT``: zero-cost proxies of ``qnas.proxies`` at the init the ground truth was
  trained from (``qnas.train.reset_parameters(module, --init-seed)``); NASWOT on ``--naswot-batch``
  fixed validation images (``val_subset(ds, n, seed=1)``).

When a replicate table trained with another seed exists (``<truth dir>/seed1/ground_truth.json``, made
by ``ground_truth.py --seed 1 --out benchmarks/ground_truth/seed1``), a ``seed-1 retrain`` row shows how
well the training itself agrees with itself: the noise ceiling no scorer can be expected to beat.

For each ground-truth setting (fp32, w4a4, and w2a2 when present): Kendall tau-b, Spearman rho and
the top-5 overlap (how many of the truly best 5 are in the scorer's best 5). Setting-free scorers
(params, MACs, proxies) get the same score at every setting. The last line is
``tau_ghn_w4a4=<v> tau_params_w4a4=<v> tau_synflow_w4a4=<v>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qnas import data  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.predictors import default_predictor  # noqa: E402
from qnas.proxies import naswot, synflow  # noqa: E402
from qnas.quant import QuantSpec  # noqa: E402
from qnas.ranking import kendall_tau, spearman_rho, top_k_overlap  # noqa: E402
from qnas.scorer import DEFAULT_GRANULARITY, GHNScorer, make_scorer  # noqa: E402
from qnas.train import reset_parameters  # noqa: E402
from search_spaces import get_space  # noqa: E402

GROUND_TRUTH = Path(__file__).resolve().parent / "ground_truth" / "v1" / "ground_truth.json"


def _load_truth(path: Path) -> tuple[dict, list[str], dict[str, list[float]]]:
    """The table, its architectures in order, and test top-1 per setting (only complete settings)."""
    table = json.loads(path.read_text())
    archs = table["architectures"]
    by_key = {(r["arch"], r["setting"]): r for r in table["rows"]}
    truth = {}
    for setting in table["settings"]:
        values = [by_key.get((a, setting)) for a in archs]
        done = [(a, r) for a, r in zip(archs, values) if r is not None]
        if len(done) < len(archs):
            print(f"note: {setting}: {len(done)} of {len(archs)} architectures trained; using those", file=sys.stderr)
        truth[setting] = {a: r["test_top1"] for a, r in done}
    return table, archs, truth


def _seeded_module(space, genome, info: data.DatasetInfo, seed: int) -> torch.nn.Module:
    """The module at the init the ground truth trained from (the trainer's own seeded re-init)."""
    module = space.build(genome, info.input_shape, info.num_classes)
    reset_parameters(module, seed)
    return module


def _scorer_protocol(settings: list[str]) -> tuple[dict[str, str], str]:
    """Ground-truth setting -> the scorer's setting name (``w4a4-channel`` -> ``w4a4``), and the granularity."""
    specs = {s: QuantSpec.parse(s) for s in settings}
    quantized = [sp for sp in specs.values() if not sp.is_float]
    grans = {sp.granularity for sp in quantized} or {DEFAULT_GRANULARITY}
    if len(grans) > 1 or any(sp.mode != "sim" or sp.first_last_8bit for sp in quantized):
        raise QnasError(f"the scorer cannot reproduce ground-truth settings {settings} (one granularity, sim mode)")
    base = {s: "fp32" if sp.is_float else f"w{sp.w_bits or 32}a{sp.a_bits or 32}" for s, sp in specs.items()}
    return base, grans.pop()


def _ghn_scores(scorer: GHNScorer, genomes: dict, base: dict[str, str]) -> dict[str, dict[str, float]]:
    """{setting: {arch: top-1}} exactly as the search scores a candidate (``GHNScorer.score``)."""
    out: dict[str, dict[str, float]] = {s: {} for s in base}
    for arch, genome in genomes.items():
        acc = scorer.score(genome)
        for s, b in base.items():
            out[s][arch] = acc[f"top1_{b}"]
    return out


def _timed(label: str, fn: Callable[[], object], timings: dict[str, float]) -> object:
    """Run ``fn`` and record its CPU time (wall time would count other processes on a shared machine)."""
    t = time.process_time()
    result = fn()
    timings[label] = time.process_time() - t
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--truth", type=Path, default=GROUND_TRUTH, help="ground-truth JSON (default: the committed one)")
    ap.add_argument("--predictor", default=None, help="predictor name or checkpoint (default: shipped for the dataset)")
    ap.add_argument("--val-size", type=int, default=1000,
                    help="validation images the GHN scorers evaluate on (default 1000, the search's default)")
    ap.add_argument("--naswot-batch", type=int, default=128, help="images in NASWOT's mini-batch (default 128)")
    ap.add_argument("--init-seed", type=int, default=None,
                    help="seed of the init the proxies score (default: the ground truth's training seed)")
    ap.add_argument("--ghn-seed", type=int, default=0, help="seed of the random GHN (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-replicate", dest="replicate", action="store_false",
                    help="leave out the seed-1 retraining row (the noise ceiling), read from <truth dir>/seed1/")
    ap.add_argument("--json", type=Path, default=None, help="also write all scores and correlations here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    table, archs, truth = _load_truth(args.truth)
    space = get_space(table["space"])
    ds = data.load_dataset(table["dataset"])
    info = ds.info
    xn, _ = data.val_subset(ds, args.naswot_batch, seed=1)
    settings = list(truth)
    init_seed = args.init_seed if args.init_seed is not None else int(table.get("budget", {}).get("seed", 0))
    genomes = {a: space.from_string(a) for a in archs}
    modules = {a: _seeded_module(space, g, info, init_seed) for a, g in genomes.items()}

    name = args.predictor or default_predictor(table["dataset"])
    timings: dict[str, float] = {}
    scores: dict[str, dict[str, dict[str, float]]] = {}  # scorer -> setting -> arch -> score
    base, granularity = _scorer_protocol(settings)

    def scorer(predictor: str, seed: int) -> GHNScorer:
        s = make_scorer(space=space, dataset=table["dataset"], predictor=predictor, val_size=args.val_size,
                        granularity=granularity, seed=seed)
        x, y = data.val_subset(ds, args.val_size, seed=0)  # the same images whatever the GHN's seed
        return dataclasses.replace(s, settings=tuple(dict.fromkeys(base.values())), images=x, labels=y)

    if name is None:
        print(f"note: no shipped predictor for {table['dataset']}; the predictor row is left out", file=sys.stderr)
    else:
        pred = scorer(name, 0)
        scores[f"predictor ({name})"] = _timed("predictor", lambda: _ghn_scores(pred, genomes, base), timings)
    rand = scorer("random", args.ghn_seed)
    scores["random GHN"] = _timed("random GHN", lambda: _ghn_scores(rand, genomes, base), timings)
    shape, classes = info.input_shape, info.num_classes
    flat = {
        "params": lambda: {a: float(space.count_params(g, shape, classes)) for a, g in genomes.items()},
        "MACs": lambda: {a: float(space.count_macs(g, shape, classes)) for a, g in genomes.items()},
        "synflow": lambda: {a: synflow(m, info.input_shape) for a, m in modules.items()},
        "NASWOT": lambda: {a: naswot(m, xn) for a, m in modules.items()},
    }
    for label, fn in flat.items():
        per_arch = _timed(label, fn, timings)
        scores[label] = {s: per_arch for s in settings}
    replicate = args.truth.parent / "seed1" / "ground_truth.json"
    if args.replicate and replicate.exists():
        # The same training with another seed: its agreement with the truth is the noise ceiling,
        # the best tau any scorer can be expected to reach against this ground truth.
        _, _, rep_truth = _load_truth(replicate)
        scores["seed-1 retrain"] = {s: rep_truth.get(s, {}) for s in settings}
        timings["seed-1 retrain"] = 0.0

    results: dict[str, dict[str, dict[str, float]]] = {}
    for scorer, by_setting in scores.items():
        results[scorer] = {}
        for s in settings:
            done = [a for a in truth[s] if a in by_setting[s]]  # a partial replicate covers fewer
            t = [truth[s][a] for a in done]
            p = [by_setting[s][a] for a in done]
            if len(done) < 5:
                results[scorer][s] = {"tau": math.nan, "rho": math.nan, "top5": math.nan, "n": len(done)}
                continue
            results[scorer][s] = {"tau": kendall_tau(t, p), "rho": spearman_rho(t, p), "top5": top_k_overlap(t, p, 5),
                                  "n": len(done)}

    from rich.console import Console
    from rich.table import Table

    budget = table.get("budget", {})
    title = (f"Ranking vs trained ground truth: {len(archs)} archs of {table['space']}/{table['split']}, "
             f"{budget.get('summary', '')}; scorer val subset {args.val_size}")
    out = Table(title=title)
    out.add_column("scorer")
    for s in settings:
        out.add_column(f"{s} tau", justify="right")
        out.add_column(f"{s} rho", justify="right")
        out.add_column(f"{s} top5", justify="right")
    out.add_column("n", justify="right")
    out.add_column("CPU s", justify="right")
    timing_key = {f"predictor ({name})": "predictor"}
    for scorer, by_setting in results.items():
        row = [scorer]
        for s in settings:
            r = by_setting[s]
            cells = [f"{r['tau']:+.3f}", f"{r['rho']:+.3f}", f"{r['top5']}/5"]
            row += ["-", "-", "-"] if math.isnan(r["tau"]) else cells
        row.append("/".join(sorted({str(by_setting[s]["n"]) for s in settings})))
        row.append(f"{timings[timing_key.get(scorer, scorer)]:.1f}")
        out.add_row(*row)
    Console(width=200).print(out)
    n_truth = {s: len(v) for s, v in truth.items()}
    print(f"ground truth rows per setting: {n_truth}")

    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "scores": scores, "timings": timings,
                                         "predictor": name, "val_size": args.val_size}, indent=1) + "\n")

    w4a4 = next((s for s, b in base.items() if b == "w4a4"), "w4a4")

    def tau(scorer: str) -> str:
        r = results.get(scorer, {}).get(w4a4)
        return "nan" if r is None or math.isnan(r["tau"]) else f"{r['tau']:.3f}"

    ghn_row = f"predictor ({name})" if name is not None else "random GHN"
    print(f"tau_ghn_w4a4={tau(ghn_row)} tau_params_w4a4={tau('params')} tau_synflow_w4a4={tau('synflow')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
