"""`qnas score`: accuracy of one architecture at several quantization settings."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from qnas.commands._args import add_act_ranges_arg, add_head_args, param_count, positive_int, seed
from qnas.errors import QnasError

__all__ = ["add_parser"]

_BN_HELP = ("BatchNorm statistics and activation ranges: 'calibrated' = measured once per setting on the "
            "first --calib-size images in the network quantized at that setting, then frozen (a deployable "
            "int8 network, batch-independent, fast); 'batch' = recomputed on every test batch of "
            "--batch-size (GHN-Q's protocol)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from qnas.defaults import (
        BN_MODES,
        DEFAULT_BN_STATS,
        DEFAULT_CALIB_SIZE,
        DEFAULT_DATASET,
        DEFAULT_GRANULARITY,
        DEFAULT_SPACE,
        GRANULARITIES,
    )
    from qnas.defaults import SETTINGS as DEFAULT_SETTINGS
    from qnas.limits import DEFAULT_MAX_MACS, DEFAULT_MAX_PARAMS

    p = subparsers.add_parser(
        "score",
        help="accuracy of one architecture at FP32, W8A8, W4A8, W4A4, W2A2",
        description="Build an architecture of the search space (or take any nn.Module), give it parameters (--init) "
        "and measure top-1/top-5 on a fixed validation subset with fake quantization: BatchNorm folded into the "
        "weights, "
        "weights with per-output-channel (or, --granularity tensor, per-tensor) and activations with "
        "per-tensor asymmetric uniform ranges (min/max; at 2 activation bits the 99.5th percentile, -minmax in a "
        "setting name turns that off). The defaults are the protocol `qnas search` scores with.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--arch", metavar="ARCH",
                      help="architecture string (as printed by `qnas space sample`), genome JSON, or a .json file "
                      "holding either (e.g. an export's arch.json)")
    what.add_argument("--module", metavar="FILE.py:FACTORY",
                      help="any traceable nn.Module: FACTORY() in FILE.py (or package.module:FACTORY) returns it; it "
                      "takes the dataset's images and returns class logits. Layers the predictor never saw are "
                      "warned about")
    p.add_argument("--space", default=DEFAULT_SPACE, help=f"search space (default {DEFAULT_SPACE})")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset name (default {DEFAULT_DATASET})")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="directory searched first for the dataset")
    p.add_argument("--init", default="ghn", metavar="SOURCE",
                   help="where parameters come from: 'ghn[:PREDICTOR]' (predicted by the shipped or given GHN), "
                   "'random' (seeded PyTorch init) or 'trained:EPOCHS' (the reference SGD trainer, FP32) "
                   "(default ghn)")
    p.add_argument("--settings", "--bits", dest="bits", default=",".join(DEFAULT_SETTINGS), metavar="LIST",
                   help="comma-separated settings: fp32 or wXaY with X, Y in 2..8, optional suffixes -noise, "
                   f"-channel, -fl8 (default {','.join(DEFAULT_SETTINGS)})")
    p.add_argument("--granularity", choices=GRANULARITIES, default=DEFAULT_GRANULARITY,
                   help="weight scales of settings that do not name theirs (-channel/-tensor): one per output "
                   f"channel or one per tensor (GHN-Q) (default {DEFAULT_GRANULARITY}, as `qnas search`)")
    add_act_ranges_arg(p)
    p.add_argument("--first-last-bits", default="8", metavar="8|same",
                   help="first and last weight layers (and the input and the last layer's input) at 8 bits when a "
                   "setting is lower (default, as `qnas search`, finetune and export), or 'same': at the setting")
    p.add_argument("--bn-stats", choices=BN_MODES, default=DEFAULT_BN_STATS,
                   help=f"{_BN_HELP} (default {DEFAULT_BN_STATS})")
    add_head_args(p, default=None, default_text="fit with --init ghn, as `qnas search` scores; keep otherwise",
                  fit_size_default="with --init ghn and the ranker, as many as its features were scored with (1000 "
                  "for the shipped one), as `qnas search`; --val-size otherwise")
    p.add_argument("--ranker", default="auto",
                   help="with --init ghn and --arch, also print the ranker's predicted trained top-1 ('pred.'): "
                   "'auto' (default) the ranker shipped beside the predictor, 'none', or a ranker JSON file")
    p.add_argument("--val-size", type=positive_int, default=1000,
                   help="validation images, a fixed subset for a given --seed (default 1000)")
    p.add_argument("--calib-size", type=positive_int, default=None,
                   help=f"calibration images for --bn-stats calibrated, the first of the validation subset, at most "
                   f"--val-size (default {DEFAULT_CALIB_SIZE} or --val-size if smaller)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the init, training and subset (default 0)")
    p.add_argument("--max-params", type=param_count, default=DEFAULT_MAX_PARAMS,
                   help="refuse larger architectures before building them (default 1e7, the space's bound)")
    p.add_argument("--max-macs", type=param_count, default=DEFAULT_MAX_MACS,
                   help="refuse architectures needing more multiply-accumulates per image (default 2e9)")
    p.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    from qnas import data
    from qnas.defaults import DEFAULT_CALIB_SIZE, DEFAULT_HEAD
    from qnas.limits import check_arch_size
    from qnas.quant import engine_setting, parse_specs, setting_names
    from search_spaces import get_space

    # Results keep the names asked for (w4a4), as `qnas search` reports them; "settings" spells out the engine's.
    ghn = args.init.split(":")[0] == "ghn"
    if args.head is None:
        args.head = DEFAULT_HEAD if ghn else "keep"
    names = list(setting_names(args.bits))
    specs = parse_specs([engine_setting(n, granularity=args.granularity, act_ranges=args.act_ranges,
                                        first_last_bits=args.first_last_bits) for n in names])  # fails before work
    if args.calib_size is None:
        args.calib_size = min(DEFAULT_CALIB_SIZE, args.val_size)
    elif args.bn_stats == "calibrated" and args.calib_size > args.val_size:
        raise QnasError(f"--calib-size {args.calib_size} is larger than --val-size {args.val_size}: calibration "
                        "images are taken from the validation subset")
    if args.ranker not in ("auto", "none") and (args.module or not ghn):
        raise QnasError("--ranker applies to --init ghn on an --arch (the ranker predicts from the GHN's scores of "
                        "an architecture of the space)")
    info = data.dataset_info(args.dataset)
    err = Console(stderr=True)
    if args.module:
        from qnas.api import check_io, load_factory
        from qnas.ranker import macs

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            module = load_factory(args.module)
        check_io(module, info.input_shape, info.num_classes)
        if ghn:  # scored as qnas.score scores a module: coverage, head and chance-level checks included
            _emit(_score_as_search(args, module, names, specs, err), args.json)
            return 0
        n_params, n_macs = sum(p.numel() for p in module.parameters()), macs(module, info.input_shape)
        if n_params > args.max_params or n_macs > args.max_macs:
            raise QnasError(f"{type(module).__name__} has {n_params:,} parameters and {n_macs:,} MACs per image, "
                            f"over the bounds of {args.max_params:,} and {args.max_macs:,} (raise --max-params / "
                            "--max-macs)")
        arch = args.module
    else:
        space = get_space(args.space)
        genome = space.parse(_arch_text(args.arch))
        n_params, n_macs = check_arch_size(space, genome, info.input_shape, info.num_classes,
                                           max_params=args.max_params, max_macs=args.max_macs)
        arch = space.to_string(genome)
        if ghn:  # scored as `qnas search` scores it, with the ranker's prediction
            _emit(_score_as_search(args, arch, names, specs, err), args.json)
            return 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            module = space.build(genome, info.input_shape, info.num_classes)
    _emit(_score_own(args, module, arch, n_params, n_macs, names, specs, err), args.json)
    return 0


def _record(args: argparse.Namespace, names: list[str], specs: list[Any], **fields: Any) -> dict[str, Any]:
    """What `qnas score` prints (a table, or with --json this dict): the request, then ``fields``."""
    return {"arch": fields.pop("arch"), "space": None if args.module else args.space, "dataset": args.dataset,
            "params": fields.pop("params"), "macs": fields.pop("macs"), "init": args.init, "bn_stats": args.bn_stats,
            "granularity": args.granularity, "head": fields.pop("head"),
            # the engine's full setting per reported name: weight scales and activation-range rule spelled out
            "settings": {name: spec.spelled_out().name for name, spec in zip(names, specs)},
            "val_size": args.val_size, "calib_size": args.calib_size if args.bn_stats == "calibrated" else None,
            "seed": args.seed, **fields}


def _score_as_search(args: argparse.Namespace, model: Any, names: list[str], specs: list[Any],
                     err: Any) -> dict[str, Any]:
    """``--init ghn``: scored by ``qnas.score`` (for an architecture, the scorer ``qnas search`` uses: the same
    numbers it records, with the ranker's predicted trained top-1 where it applies)."""
    from qnas.api import score

    start = time.perf_counter()
    with err.status(f"scoring at {', '.join(s.name for s in specs)}", spinner="dots"):
        result = score(model, bits=names, dataset=args.dataset, data_dir=args.data_dir,
                       predictor=args.init.partition(":")[2] or None, space=args.space, val_size=args.val_size,
                       seed=args.seed, ranker=args.ranker, bn_stats=args.bn_stats, granularity=args.granularity,
                       act_ranges=args.act_ranges, first_last_bits=args.first_last_bits, head=args.head,
                       fit_size=args.fit_size, max_params=args.max_params, max_macs=args.max_macs,
                       calib_size=args.calib_size, batch_size=args.batch_size)
    return _record(args, names, specs, arch=args.module or result.arch, params=result.params, macs=result.macs,
                   head=result.head, accuracy=result.accuracy, predicted=result.predicted,
                   predicted_error=result.predicted_error,
                   predictor=result.predictor, protocol=result.protocol,
                   seconds={"score": round(time.perf_counter() - start, 3)})


def _score_own(args: argparse.Namespace, module: Any, arch: str, n_params: int, n_macs: int, names: list[str],
               specs: list[Any], err: Any) -> dict[str, Any]:
    """``--init random`` or ``trained:N``: the module's own parameters, measured under the same protocol."""
    from qnas import data
    from qnas.readout import head_label, make_readout
    from qnas.score import evaluate

    ds = data.load_dataset(args.dataset, data_dir=args.data_dir)
    start = time.perf_counter()
    params = _init(module, args, ds, err)
    init_seconds = time.perf_counter() - start
    x, y = data.val_subset(ds, args.val_size, seed=args.seed)
    readout = make_readout(ds, args.head, args.fit_size, default=args.val_size, seed=args.seed)
    start = time.perf_counter()
    with err.status(f"scoring at {', '.join(s.name for s in specs)}", spinner="dots"):
        acc = evaluate(module, params, x, y, specs, bn_stats=args.bn_stats, batch_size=args.batch_size,
                       calib_size=args.calib_size, seed=args.seed, readout=readout)
    return _record(args, names, specs, arch=arch, params=n_params, macs=n_macs, head=head_label(readout),
                   accuracy={name: acc[spec.name] for name, spec in zip(names, specs)},
                   seconds={"init": round(init_seconds, 3), "score": round(time.perf_counter() - start, 3)})


def _emit(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        json.dump(record, sys.stdout)
        sys.stdout.write("\n")
    else:
        _print(record)


def _arch_text(value: str) -> str:
    """``--arch`` as the space parses it: a ``.json`` file is read (an export's arch.json: its genome)."""
    if not value.strip().endswith(".json") or value.strip().startswith("{"):
        return value
    path = Path(value.strip())
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QnasError(f"cannot read --arch {value!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if isinstance(data, dict) and "genome" in data:
        data = data["genome"]
    return data if isinstance(data, str) else json.dumps(data)


def _init(module: Any, args: argparse.Namespace, ds: Any, err: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from qnas.inits import init_params, trained_epochs

    source, _, arg = args.init.partition(":")
    if source != "trained":
        return init_params(module, args.init, dataset=ds, seed=args.seed)
    trained_epochs(arg)  # a bad value fails before the progress bar takes a line
    columns = (TextColumn(f"training ({args.init})"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("train", total=None)
        return init_params(module, args.init, dataset=ds, seed=args.seed,
                           progress=lambda step, total: bar.update(task, completed=step, total=total))


def _print(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from qnas.commands._output import pct

    acc = record["accuracy"]
    ref = acc.get("fp32", {}).get("top1")
    console = Console(soft_wrap=True)
    console.print(record["arch"], markup=False, highlight=False)  # on its own line, never folded: users copy it
    caption = (f"{record['dataset']}, {record['val_size']} validation images (seed {record['seed']}), init "
               f"{record['init']}, head {record['head']}, BN {record['bn_stats']}, {record['granularity']} weight "
               "scales, "
               f"{record['seconds']['score']:.1f} s")
    table = Table(title=f"{record['params']:,} params, {record['macs']:,} MACs", title_justify="left",
                  caption=caption, caption_justify="left")
    predicted = record.get("predicted", {})
    for col in (("setting",) + (("pred. %",) if predicted else ()) + ("top-1 %", "top-5 %")
                + (("top-1 vs fp32",) if ref is not None else ())):
        table.add_column(col, justify="right" if col != "setting" else "left")
    for name, a in acc.items():
        row = [name] + ([pct(predicted.get(name))] if predicted else []) + [pct(a["top1"]), pct(a["top5"])]
        if ref is not None:
            row.append("" if name == "fp32" else f"{100 * (a['top1'] - ref):+.2f}")
        table.add_row(*row)
    console.print(table)
    if predicted:
        errors = record.get("predicted_error", {})
        off = (" off by " + ", ".join(f"{e:.2f} ({s})" for s, e in errors.items())
               + " points on average, out of fold on the nets it was fitted on") if errors else ""
        console.print(f"pred. = the ranker's predicted top-1 after training (qnas.ranker{';' if off else ''}{off}); "
                      f"top-1/top-5 = the GHN-predicted parameters as scored; {record['predictor']}", highlight=False)
