"""`qnas space ...`: sample architectures, inspect one, verify the committed held-out splits."""

from __future__ import annotations

import argparse
import json
import random
import sys

from rich.console import Console
from rich.table import Table

from qnas.commands._args import param_count, positive_int, seed
from qnas.errors import QnasError

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("space", help="sample and inspect search-space architectures")
    sub = p.add_subparsers(dest="space_command", metavar="SUBCOMMAND", parser_class=type(p))
    sub.required = True

    s = sub.add_parser("sample", help="print random architectures with their params and MACs")
    _add_space_args(s)
    s.add_argument("--n", type=positive_int, default=10, help="how many architectures (default 10)")
    s.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    s.add_argument("--max-params", type=param_count, default=10_000_000, help="parameter bound, e.g. 1e6")
    s.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    s.set_defaults(func=_sample)

    i = sub.add_parser("info", help="params, MACs and canonical forms of one architecture")
    _add_space_args(i)
    i.add_argument("arch", help="architecture string or genome JSON")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_info)

    sp = sub.add_parser("splits", help="verify (or regenerate) the committed held-out splits")
    _add_space_args(sp)
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="verify splits match their generator (default)")
    mode.add_argument("--write", action="store_true", help="regenerate the split files from their seeds")
    sp.set_defaults(func=_splits)


def _add_space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="convnets250k", help="search space name (default convnets250k)")
    p.add_argument("--input-shape", default="1,28,28", type=_shape, help="C,H,W of the input (default 1,28,28)")
    p.add_argument("--num-classes", type=positive_int, default=10, help="classifier outputs (default 10)")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W like 1,28,28, got {text!r}") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected C,H,W like 1,28,28, got {text!r}")
    return shape  # type: ignore[return-value]


def _record(space, g, args) -> dict:
    return {
        "arch": space.to_string(g),
        "genome": space.to_json(g),
        "params": space.count_params(g, args.input_shape, args.num_classes),
        "macs": space.count_macs(g, args.input_shape, args.num_classes),
    }


def _table(records: list[dict], title: str) -> Table:
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("architecture", overflow="fold")
    for k, r in enumerate(records):
        table.add_row(str(k), f"{r['params']:,}", f"{r['macs']:,}", r["arch"])
    return table


def _sample(args: argparse.Namespace) -> int:
    from search_spaces import get_space

    space = get_space(args.space)
    rng = random.Random(args.seed)
    records = [
        _record(space, space.sample(rng, args.max_params, args.input_shape, args.num_classes), args)
        for _ in range(args.n)
    ]
    if args.json:
        json.dump(records, sys.stdout)
        sys.stdout.write("\n")
    else:
        Console().print(_table(records, f"{args.n} architectures from {args.space} (seed {args.seed})"))
    return 0


def _info(args: argparse.Namespace) -> int:
    from search_spaces import get_space

    space = get_space(args.space)
    record = _record(space, space.parse(args.arch), args)
    if args.json:
        print(json.dumps(record))
    else:
        Console().print(_table([record], args.space))
    return 0


def _splits(args: argparse.Namespace) -> int:
    from search_spaces import get_space

    space = get_space(args.space)
    if not hasattr(space, "check_splits"):
        raise QnasError(f"search space {args.space!r} has no held-out splits")
    if args.write:
        for name in space.SPLIT_SIZES:
            print(f"wrote {space.write_split(name)}")
        return 0
    table = Table(title=f"held-out splits of {args.space}")
    for col in ("split", "architectures", "matches generator"):
        table.add_column(col)
    status = space.check_splits()
    for name, ok in status.items():
        n = len(space.load_split(name)) if ok else 0
        table.add_row(name, str(n), "[green]yes[/]" if ok else "[red]NO[/]")
    Console().print(table)
    if not all(status.values()):
        bad = ", ".join(k for k, v in status.items() if not v)
        raise QnasError(f"split(s) {bad} differ from their generator; run `qnas space splits --write` to regenerate")
    return 0
