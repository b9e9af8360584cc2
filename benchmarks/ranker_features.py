"""The ranker's features for every ground-truth architecture, computed once per predictor and cached.

    OMP_NUM_THREADS=1 python benchmarks/ranker_features.py [--predictor NAME]

For each architecture of ground truth v1 (``benchmarks/ground_truth/v1``), v2 (``.../v2``) and the
hand-written ``user`` split (``user:<name>``, ``qnas.user_split``), the
features of ``qnas.ranker.candidate_features`` as the search computes them (the scorer on 1,000
validation images, the scorer's protocol), written to ``benchmarks/ground_truth/features.json`` keyed
by architecture string, with the predictor's weights digest, the feature version and the scoring protocol.
Resumable: architectures already in the file for the same predictor, feature version and protocol are
skipped (any change starts the table over); the file is rewritten
atomically after each one. Last line: ``archs=<n> seconds=<this run>``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas import user_split  # noqa: E402
from qnas.defaults import DEFAULT_HEAD, HEADS  # noqa: E402
from qnas.errors import QnasError  # noqa: E402
from qnas.ranker import FEATURE_VERSION, candidate_features  # noqa: E402
from qnas.scorer import make_scorer  # noqa: E402
from search_spaces import get_space  # noqa: E402

HERE = Path(__file__).resolve().parent / "ground_truth"
FEATURES = HERE / "features.json"


def truth_archs() -> list[str]:
    """Every architecture string of the ground-truth tables: v2's with result rows first (what the ranker
    is fitted on), then the user split, v1's 40 small ones and v2's still untrained."""
    plan = HERE / "v2" / "architectures.json"
    v2 = json.loads(plan.read_text())["architectures"] if plan.exists() else []
    budget_file = HERE / "v2" / "budget.json"
    budget = json.loads(budget_file.read_text())["budget"] if budget_file.exists() else ""
    trained = {p.name.rsplit("_", 2)[0] for p in (HERE / "v2" / "results").glob(f"*_{budget}_s0.json")}
    archs = [a["arch"] for a in v2 if a["id"] in trained]
    archs += [user_split.PREFIX + name for name in user_split.names()]
    v1 = HERE / "v1" / "architectures.json"
    if v1.exists():
        archs += json.loads(v1.read_text())["architectures"]
    archs += [a["arch"] for a in v2]
    return list(dict.fromkeys(archs))


def features(scorer: Any, space: Any, arch: str) -> dict[str, float]:
    """The ranker's features of a space architecture string or a user-split network."""
    if not user_split.is_user_arch(arch):
        return candidate_features(scorer, space.from_string(arch))
    module = user_split.build(arch, scorer.input_shape, scorer.num_classes)
    graph = scorer.graph(module)
    return candidate_features(scorer, None, scores=scorer.score_module(module, graph), module=module, graph=graph)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", default=None, help="predictor name or checkpoint (default: the shipped one)")
    ap.add_argument("--out", type=Path, default=FEATURES, help=f"feature table (default {FEATURES})")
    ap.add_argument("--val-size", type=positive_int, default=1000,
                    help="validation images (default 1000, the search's)")
    ap.add_argument("--head", choices=HEADS, default=DEFAULT_HEAD,
                    help=f"the classifier scores are measured with (default {DEFAULT_HEAD}, the search's)")
    ap.add_argument("--replace", action="store_true",
                    help="start the table again when --out holds features of another predictor, protocol, "
                         "validation size or feature version (default: refuse, the table is not discarded)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    space = get_space("convnets250k")
    scorer = make_scorer(space=space, predictor=args.predictor, val_size=args.val_size, ranker="none",
                         head=args.head)
    digest = scorer.predictor.digest
    try:
        table = json.loads(args.out.read_text()) if args.out.exists() else {}
    except ValueError as exc:
        raise QnasError(f"{args.out} is not a feature table ({exc}): move it away") from None
    ours = {"predictor_digest": digest, "feature_version": FEATURE_VERSION, "protocol": scorer.protocol,
            "val_size": args.val_size}
    differ = [k for k, v in ours.items() if table and table.get(k) != v]
    if differ and not args.replace:
        raise QnasError(f"{args.out} holds {len(table.get('features', {}))} architectures' features with another "
                        f"{', '.join(differ)}: not discarded (--replace to start it again, or another --out)")
    if differ or not table:
        table = {"predictor_digest": digest, "predictor": scorer.name, "feature_version": FEATURE_VERSION,
                 "val_size": args.val_size, "protocol": scorer.protocol, "features": {}}
    todo = [a for a in truth_archs() if a not in table["features"]]
    print(f"{len(table['features'])} architectures done, {len(todo)} to go", flush=True)
    t0 = time.perf_counter()
    for i, arch in enumerate(todo):
        t = time.perf_counter()
        table["features"][arch] = features(scorer, space, arch)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, args.out)
        print(f"[{i + 1}/{len(todo)}] {time.perf_counter() - t:.1f}s {arch}", flush=True)
    print(f"archs={len(table['features'])} seconds={time.perf_counter() - t0:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
