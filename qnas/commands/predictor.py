"""`qnas eval-predictor`: GHN-Q's Table 1 for a predictor on the held-out architecture splits."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from qnas.commands._args import add_head_args, non_negative_int, predictor_name, seed
from qnas.defaults import DEFAULT_DATASET, DEFAULT_HEAD, SETTINGS
from qnas.errors import QnasError

__all__ = ["add_parser"]

DEFAULT_SETTINGS = ",".join(SETTINGS)


def _splits(text: str) -> list[str]:
    from qnas.predictors.evaluation import SPLITS

    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in SPLITS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected splits from {','.join(SPLITS)}, got {text!r}")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"split given twice in {text!r}")
    return items


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval-predictor",
        help="accuracy of GHN-predicted parameters on the held-out splits (GHN-Q Table 1)",
        description="Predict the parameters of the held-out architectures of each split (id, deep, wide, "
        "bn_free of the search space; user: hand-written networks of the families users bring, also summarized "
        "per family), evaluate them at every bit setting on a fixed subset of the test set, and print GHN-Q's "
        "Table 1: rows are settings (top-1 and top-5), columns splits, cells 'mean ± standard error; max' in "
        "percent. The 'random' column evaluates the same architectures with PyTorch's default "
        "initialization, the floor a predictor must beat.",
    )
    p.add_argument("--predictor", type=predictor_name, metavar="P",
                   help="shipped predictor name, checkpoint path or 'random' (default: the shipped predictor "
                   "for --dataset)")
    p.add_argument("--dataset", default=DEFAULT_DATASET, metavar="NAME", help=f"dataset (default {DEFAULT_DATASET})")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="directory searched first for the dataset files")
    p.add_argument("--splits", type=_splits, default=["id", "deep", "wide", "bn_free", "user"],
                   help="comma-separated splits (default id,deep,wide,bn_free,user)")
    p.add_argument("--n", type=non_negative_int, default=0,
                   help="architectures per split, the first N in committed order (default 0: all)")
    p.add_argument("--settings", "--bits", dest="bits", default=DEFAULT_SETTINGS, metavar="LIST",
                   help=f"comma-separated settings (default {DEFAULT_SETTINGS}; --bits: the same)")
    p.add_argument("--granularity", choices=("channel", "tensor"), default="channel",
                   help="weight scales of settings that do not name theirs (-channel/-tensor): per output channel "
                   "(qnas's scoring protocol, default) or per tensor (GHN-Q's protocol)")
    p.add_argument("--bn-stats", choices=("batch", "calibrated"),
                   help="BatchNorm statistics: per test batch of 64 (GHN-Q) or calibrated once "
                   "(default: the scoring default)")
    add_head_args(p, default=DEFAULT_HEAD, default_text=DEFAULT_HEAD, fit_size_default="as many as test images")
    p.add_argument("--images", type=non_negative_int, default=1000,
                   help="test images, a fixed subset (default 1000; 0: the full test set, as GHN-Q)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate random initialization as the floor column (default on)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random-init floor and noise (default 0)")
    p.add_argument("--json", action="store_true", help="print the table and per-architecture results as JSON")
    p.add_argument("--record", action="store_true",
                   help="also write the table into the checkpoint's header (eval_table), merged by setting with "
                   "a table measured the same way; a table measured another way is replaced, but not by one "
                   "covering fewer architectures, test images, splits or settings (see --force)")
    p.add_argument("--force", action="store_true",
                   help="with --record: replace the recorded table even by one that covers less")
    p.set_defaults(func=_eval_predictor)


def _eval_predictor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qnas.data import dataset_info, load_dataset
    from qnas.predictors import default_predictor, load_predictor
    from qnas.predictors.evaluation import evaluate_predictor
    from qnas.quant import parse_specs, setting_names, with_granularity
    from search_spaces import get_space

    info = dataset_info(args.dataset)
    name = args.predictor or default_predictor(args.dataset)
    if name is None:
        raise QnasError(f"no shipped predictor for {args.dataset}; pass --predictor PATH.pt or --predictor random")
    predictor = load_predictor(name, dataset=args.dataset, input_shape=info.input_shape,
                               num_classes=info.num_classes, seed=args.seed)
    # bad settings fail before reading data
    settings = [s.name for s in parse_specs(with_granularity(setting_names(args.bits), args.granularity))]
    if args.record and predictor.path is None:
        raise QnasError("--record writes into a checkpoint's header; --predictor random has none")
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    space = get_space(predictor.header.search_space)
    from qnas.predictors.evaluation import check_record, split_networks

    if args.record and not args.force:  # refuse before the evaluation, not after it
        check_record(predictor.path, ds, space, splits=args.splits, n=args.n or None, settings=settings,
                     images=args.images or None, bn_stats=args.bn_stats)

    total = sum(len(split_networks(space, s, args.n or None, info)) for s in args.splits)
    err = Console(stderr=True)
    progress = Progress(TextColumn("[bold]eval-predictor[/] {task.fields[split]}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    start, done = time.perf_counter(), [0]

    def on_arch(split: str, arch: str) -> None:
        progress.update(task, advance=1, split=split)
        done[0] += 1
        if not err.is_terminal:  # a log file gets a line per network instead of a bar it never shows
            err.print(f"eval-predictor: {done[0]}/{total} ({split}) {time.perf_counter() - start:.0f}s {arch}",
                      markup=False, highlight=False, soft_wrap=True)

    with progress:
        task = progress.add_task("eval", total=total, split="")
        result = evaluate_predictor(
            predictor, ds, splits=args.splits, n=args.n or None, settings=settings, bn_stats=args.bn_stats,
            images=args.images or None, floor=args.floor, seed=args.seed, head=args.head, fit_size=args.fit_size,
            on_arch=on_arch,
        )
    if args.record:
        from qnas.predictors.evaluation import record_eval_table

        command = (f"qnas eval-predictor --predictor {name} --dataset {args.dataset} --splits {','.join(args.splits)} "
                   f"--n {args.n} --bits {','.join(settings)} --images {args.images} --seed {args.seed}"
                   + (f" --bn-stats {args.bn_stats}" if args.bn_stats else "")
                   + f" --head {args.head}"
                   + (f" --fit-size {args.fit_size}" if args.head == "fit" and args.fit_size else ""))
        record_eval_table(predictor.path, result, command, force=args.force)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    console = Console()
    if not console.is_terminal:  # piped: rich would wrap to 80 columns and split every cell
        console = Console(width=200)
    console.print(_table(result))
    if result["families"]:
        console.print(_family_table(result))
    return 0


def _table(result: dict[str, Any]):
    from rich.table import Table

    from qnas.predictors.evaluation import RANDOM_COLUMN, SPLIT_TITLES, format_cell

    pred = result["predictor"]
    columns = [*result["splits"]]
    if any(RANDOM_COLUMN in row for row in result["table"].values()):
        columns.append(RANDOM_COLUMN)
    counts = {c: next(iter(result["table"].values()))[c]["top1"]["n"] for c in columns}
    title = (f"predictor {pred['name']} ({pred['train_steps']} training steps) on {result['dataset']}: "
             f"{result['test_images']} test images, BN {result['bn_stats']}, head {result['head']}")
    table = Table(title=title, caption="mean ± standard error; max, accuracy in % over architectures")
    table.add_column("setting", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    for c in columns:
        label = "random init" if c == RANDOM_COLUMN else SPLIT_TITLES.get(c, c)
        table.add_column(f"{label} (n={counts[c]})", justify="right", no_wrap=True)
    for setting, row in result["table"].items():
        for metric in ("top1", "top5"):
            table.add_row(setting if metric == "top1" else "", "top-1" if metric == "top1" else "top-5",
                          *(format_cell(row.get(c, {}).get(metric)) for c in columns),
                          end_section=metric == "top5")
    return table


def _family_table(result: dict[str, Any]):
    """The user split per family: where a predictor fails on the networks users bring."""
    from rich.table import Table

    from qnas.predictors.evaluation import format_cell

    fams = result["families"]
    table = Table(title="user split by family (top-1)", caption="mean ± standard error; max, in %")
    table.add_column("setting", no_wrap=True)
    for f, rows in fams.items():
        table.add_column(f"{f} (n={next(iter(rows.values()))['top1']['n']})", justify="right", no_wrap=True)
    for setting in result["settings"]:
        table.add_row(setting, *(format_cell(fams[f][setting]["top1"]) for f in fams))
    return table
