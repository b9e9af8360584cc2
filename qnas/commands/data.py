"""`qnas data`: list the registered datasets and check that one is present and intact."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qnas.defaults import DEFAULT_DATASET

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="list datasets and check that one is present and intact",
        description="Datasets are looked up by name; files are searched under --data-dir, $QNAS_DATA_DIR, "
        "the user cache and system directories (Debian's dataset-fashion-mnist).",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    listing = sub.add_parser(
        "list", help="list the registered datasets", description="List the registered datasets (reads no files)."
    )
    listing.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    listing.set_defaults(func=_list)

    check = sub.add_parser(
        "check",
        help="load a dataset and summarize it",
        description="Find, parse and split a dataset, then print where it came from, split sizes, image "
        "shape and per-class counts. Missing or corrupt data is a one-line error (exit 2).",
    )
    check.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        metavar="NAME",
        help=f"dataset name, as `qnas data list` shows them (default: {DEFAULT_DATASET})",
    )
    check.add_argument("--data-dir", type=Path, metavar="DIR", help="directory searched first for the files")
    check.add_argument(
        "--download", action="store_true", help="download into the user cache (md5 checked) if not found"
    )
    check.add_argument("--json", action="store_true", help="print JSON on stdout instead of tables")
    check.set_defaults(func=_check)


def _list(args: argparse.Namespace) -> int:
    from qnas import data

    infos = [data.dataset_info(name) for name in data.list_datasets()]
    if args.json:
        print(json.dumps([_info_json(info) for info in infos], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="qnas datasets")
    for column in ("name", "input shape", "classes", "mean", "std"):
        table.add_column(column)
    for info in infos:
        table.add_row(
            info.name,
            "x".join(map(str, info.input_shape)),
            str(info.num_classes),
            _floats(info.mean),
            _floats(info.std),
        )
    Console().print(table)
    return 0


def _check(args: argparse.Namespace) -> int:
    from qnas import data

    start = time.perf_counter()
    ds = data.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    seconds = time.perf_counter() - start
    summary = _summary(ds, seconds)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_summary(summary)
    return 0


def _info_json(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "input_shape": list(info.input_shape),
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "mean": list(info.mean),
        "std": list(info.std),
    }


def _summary(ds: Any, seconds: float) -> dict[str, Any]:
    import torch

    from qnas import data

    splits = {
        "train": ds.train_labels,
        "val": ds.val_labels,
        "test": ds.test_labels,
    }
    per_class = {
        split: torch.bincount(labels, minlength=ds.info.num_classes).tolist() for split, labels in splits.items()
    }
    return {
        **_info_json(ds.info),
        "source": str(ds.source),
        "counts": {split: len(labels) for split, labels in splits.items()},
        "official_train": len(ds.train_labels) + len(ds.val_labels),
        "split_seed": data.SPLIT_SEED,
        "per_class": per_class,
        "load_seconds": round(seconds, 3),
    }


def _floats(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = summary["counts"]
    overview = Table(title=f"{summary['name']}: OK", show_header=False)
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("source", summary["source"])
    overview.add_row("image shape", "x".join(map(str, summary["input_shape"])) + " (C x H x W), uint8")
    overview.add_row("classes", str(summary["num_classes"]))
    overview.add_row(
        "official train",
        f"{summary['official_train']:,} = {counts['train']:,} train + {counts['val']:,} validation "
        f"(split seed {summary['split_seed']})",
    )
    overview.add_row("test", f"{counts['test']:,}")
    overview.add_row("normalization", f"mean {_floats(summary['mean'])}, std {_floats(summary['std'])}")
    overview.add_row("load time", f"{summary['load_seconds']:.2f} s")

    per_class = Table(title="images per class")
    for column in ("class", "name", "train", "val", "test"):
        per_class.add_column(column, justify="left" if column == "name" else "right")
    for k, name in enumerate(summary["class_names"]):
        per_class.add_row(str(k), name, *(f"{summary['per_class'][s][k]:,}" for s in ("train", "val", "test")))
    per_class.add_section()
    per_class.add_row("", "min / max", *_min_max(summary["per_class"][s] for s in ("train", "val", "test")))

    console = Console()
    console.print(overview)
    console.print(per_class)


def _min_max(columns: Any) -> list[str]:
    return [f"{min(c):,} / {max(c):,}" for c in columns]
