"""`qnas finetune` (FAQ on chosen candidates of a study) and `qnas export` (deployable model directories)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qnas.commands._args import (
    non_negative_float,
    positive_float,
    positive_int,
    predictor_name,
    seed,
    study_name,
)
from qnas.commands._output import pct, print_architectures
from qnas.errors import QnasError

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["add_parser"]

_STORAGE_HELP = "Optuna storage URL (default sqlite:///studies/NAME.db, what `qnas search` writes)"


def _trial_list(text: str) -> list[int]:
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected trial numbers like 3,7, got {text!r}") from None
    if not numbers or any(n < 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"expected trial numbers like 3,7, got {text!r}")
    return numbers


def _first_last_bits(text: str) -> int | str | None:
    from qnas.quant import parse_first_last_bits

    if text == "study":  # export's default: the rule the trial was finetuned or searched with
        return text
    try:
        return parse_first_last_bits(text)
    except QnasError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_FIRST_LAST_HELP = ("first and last weight layers, the network input and the last layer's input: 8 (kept at 8 bits) "
                    "or 'same' (quantized at the setting); qnas.quant.first_last_rule, as search scores")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from qnas.defaults import FAQ as d
    f = subparsers.add_parser(
        "finetune",
        help="FAQ-finetune chosen candidates of a study at a bit setting, from GHN-predicted parameters",
        description="Quantized finetuning after FAQ (McKinstry et al.): start from the predictor's parameters, "
        "calibrate activation ranges on a few batches (99.99th/99.9th percentile) and freeze them, clip "
        "weights at a multiple of their std, keep first/last layer at 8 bits, train with fake quantization "
        "(STE) by SGD with momentum and an exponential decay to 1e-6, re-estimate BatchNorm statistics. "
        "Writes studies/NAME/finetune/<trial>.json (accuracy before/after at fp32 and the setting on the test "
        "set, history) and <trial>-<setting>.safetensors; an interrupted candidate resumes from its last "
        "epoch. Defaults fit a CPU: "
        f"{d.epochs} epochs over {d.train_size:,} training images, batch {d.batch_size}, lr {d.lr}.",
    )
    f.add_argument("--study", type=study_name, required=True, help="study name (as given to `qnas search --study`)")
    f.add_argument("--storage", help=_STORAGE_HELP)
    pick = f.add_mutually_exclusive_group()
    pick.add_argument("--trials", "--trial", type=_trial_list, help="trial numbers, e.g. 3,7 (--trial: the same)")
    pick.add_argument("--top-k", type=positive_int, default=None,
                      help="the K most accurate distinct candidates of the Pareto front (default 3)")
    f.add_argument("--bits", default=None, help="setting: 8, 4, 2 (wBaB) or a name like w4a8 (default: the "
                   "study's target)")
    f.add_argument("--granularity", choices=("channel", "tensor"), default=None,
                   help="weight scales: per output channel or per tensor (FAQ) (default: what the study scored "
                   "with, per channel for studies of this version)")
    f.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"epochs (default {d.epochs})")
    f.add_argument("--train-size", type=positive_int, default=d.train_size,
                   help=f"training images per epoch, a fixed random subset (default {d.train_size:,}; the "
                   "training split has 55,000)")
    f.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    f.add_argument("--lr", type=positive_float, default=d.lr,
                   help=f"initial learning rate, decayed exponentially to {d.final_lr:g} (default {d.lr})")
    f.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay,
                   help=f"on conv/linear weights (default {d.weight_decay:g})")
    f.add_argument("--init", choices=("ghn", "random"), default="ghn",
                   help="start from the predictor's parameters (default) or PyTorch's random init")
    f.add_argument("--predictor", type=predictor_name, default=None,
                   help="GHN name or checkpoint for --init ghn (default: the study's predictor, else the shipped one)")
    fl = f.add_mutually_exclusive_group()
    fl.add_argument("--first-last-bits", type=_first_last_bits, default="study",
                    help=_FIRST_LAST_HELP + ", or 'study' (default: the rule the study was searched with)")
    fl.add_argument("--no-first-last-8bit", action="store_true", help="the same as --first-last-bits same")
    f.add_argument("--freeze-bn-at", type=float, default=d.freeze_bn_at, metavar="FRACTION",
                   help="train the first FRACTION of the steps with BatchNorm on batch statistics, then freeze "
                   "(default 0: frozen from the start, best from GHN-predicted parameters; 0.5 helps --init random)")
    f.add_argument("--test-size", type=positive_int, default=None, help="test images for before/after (default all)")
    f.add_argument("--data-dir", default=None, help="where the dataset files are (default: standard places)")
    f.add_argument("--out-root", type=Path, default=Path("studies"), help="results go to OUT_ROOT/NAME/finetune "
                   "(default studies); the study's report shows the latest run of each trial and setting, "
                   "whichever OUT_ROOT it used")
    f.add_argument("--restart", action="store_true", help="redo candidates already finetuned at this setting and "
                   "ignore their checkpoints")
    f.add_argument("--seed", type=seed, default=0, help="data order and subset (default 0)")
    f.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    f.add_argument("--quiet", action="store_true", help="no progress display")
    f.set_defaults(func=_finetune)

    e = subparsers.add_parser(
        "export",
        help="export trials as model directories: weights, quant params, ONNX float/int8 QDQ/low-bit QCDQ",
        description="Write, per model, arch.json, model.safetensors, quant.json (scale and zero point of every "
        "quantized tensor), model.onnx (float, BatchNorm folded), model_int8_qdq.onnx and, below 8 bits, "
        "model_wXaX_qcdq.onnx (QuantizeLinear -> Clip -> DequantizeLinear), and a README.md model card. Uses "
        "the FAQ-finetuned weights of `qnas finetune` when present, else the predictor's parameters (the last "
        "layer solved on labelled training images where the study scored that way, the default). Every "
        "ONNX file is run in onnxruntime on test images and compared with the PyTorch fake-quant model; a "
        "mismatch exits with 1. --trial writes to OUT; --pareto writes OUT/trial-N per Pareto trial. Each "
        "directory is written beside its place and renamed into it when complete.",
    )
    e.add_argument("--study", type=study_name, required=True, help="study name")
    e.add_argument("--storage", help=_STORAGE_HELP)
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", "--trials", type=int, dest="trial", help="trial number (--trials: the same)")
    which.add_argument("--pareto", action="store_true", help="every trial of the Pareto front")
    e.add_argument("--out", required=True, type=Path, help="output directory")
    e.add_argument("--bits", default=None, help="low-bit ONNX setting: 8, 4, 2 or e.g. w4a8 (default: the finetuned "
                   "setting, else the study's target)")
    e.add_argument("--force", action="store_true", help="overwrite an existing export")
    e.add_argument("--predictor", type=predictor_name, default=None,
                   help="GHN for trials that were not finetuned (default: the study's)")
    e.add_argument("--verify-size", type=positive_int, default=1000, help="test images for the ONNX check "
                   "(default 1000)")
    e.add_argument("--test-size", type=positive_int, default=None,
                   help="test images for the model card's accuracies (default 1,000; the test set has 10,000)")
    e.add_argument("--first-last-bits", type=_first_last_bits, default="study",
                   help=_FIRST_LAST_HELP + " (default: the finetuned run's rule, else the study's, else 8)")
    e.add_argument("--no-timing", action="store_true", help="skip the onnxruntime latency in the model card")
    e.add_argument("--quiet", action="store_true", help="no progress display")
    e.add_argument("--data-dir", default=None, help="where the dataset files are")
    e.add_argument("--out-root", type=Path, default=Path("studies"), help="where `qnas finetune` wrote its results "
                   "(default studies)")
    e.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    e.set_defaults(func=_export)


def _trial_progress(field: str, *, quiet: bool) -> Progress:
    """One bar per trial on stderr, its ``field`` the trial's current stage; off with --quiet and off a terminal
    (no stray lines in logs and pipes, no blank line before an error)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn(f"{{task.fields[{field}]}}"), TimeElapsedColumn(), console=console,
                    disable=quiet or not console.is_terminal)


def _finetune(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from qnas.api import finetune
    from qnas.finetune import Hooks

    progress = _trial_progress("status", quiet=args.quiet)

    def hooks(trial, setting: str) -> Hooks:
        task = progress.add_task(f"trial {trial.number} {setting}", total=None, status="starting")
        return Hooks(
            on_phase=lambda text: progress.update(task, status=text),
            on_step=lambda done, total, loss: progress.update(task, completed=done, total=total,
                                                              status=f"loss {loss:.3f}"),
        )

    with progress:
        runs = finetune(
            args.study, storage=args.storage, trials=args.trials, top_k=args.top_k, bits=args.bits,
            granularity=args.granularity, init=args.init, predictor=args.predictor,
            first_last_bits=None if args.no_first_last_8bit else args.first_last_bits, data_dir=args.data_dir,
            root=args.out_root, test_size=args.test_size, restart=args.restart, hooks=hooks,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            train_size=args.train_size, freeze_bn_at=args.freeze_bn_at, seed=args.seed)
        for task, run in zip(progress.task_ids, runs):
            progress.update(task, status="already done (--restart to redo)" if run.get("skipped") else "done")
    for r in runs:
        if "replaced_summary" in r:
            print(f"note: the study's report now shows this run for trial {r['trial']} at {r['setting']} "
                  f"(it showed {r['replaced_summary']})", file=sys.stderr)
    setting = runs[0]["setting"] if runs else ""
    if args.json:
        keep = ("trial", "arch", "setting", "init", "before", "after", "seconds", "weights", "bn_reestimated",
                "skipped")
        print(json.dumps([{k: r[k] for k in keep if k in r} for r in runs], indent=1))
        return 0
    images = runs[0]["test_images"] if runs else 0
    table = Table(title=f"FAQ finetuning at {setting} (top-1 in % on {images} test images)")
    for col in ("trial", "fp32 before", "fp32 after", f"{setting} before", f"{setting} after", "s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in runs:
        cells = (pct(r[w][k]) for k in ("fp32", setting) for w in ("before", "after"))
        table.add_row(str(r["trial"]), *cells, f"{r['seconds']:.0f}")
    out = Console(soft_wrap=True)  # results on stdout, progress on stderr
    out.print(table)
    print_architectures(out, [(r["trial"], str(r["arch"])) for r in runs])
    return 0


def _export(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from qnas.api import export
    from qnas.export import ExportHooks, VerificationError

    progress = _trial_progress("stage", quiet=args.quiet)

    def hooks(trial, out: Path) -> ExportHooks:
        task = progress.add_task(f"trial {trial.number} -> {out}", total=None, stage="loading")

        def stage(name: str, total: int | None) -> None:
            progress.update(task, stage=name, total=total, completed=0)

        return ExportHooks(on_stage=stage, on_advance=lambda n: progress.advance(task, n))

    try:
        with progress:
            results = export(
                args.study, args.out, trial=args.trial, pareto=args.pareto, bits=args.bits,
                predictor=args.predictor, storage=args.storage, data_dir=args.data_dir, root=args.out_root,
                force=args.force, verify_size=args.verify_size, test_size=args.test_size,
                first_last_bits=args.first_last_bits, latency_rounds=0 if args.no_timing else 20, hooks=hooks)
            for task in progress.task_ids:
                progress.update(task, stage="done")
    except VerificationError as exc:
        sys.stderr.write(f"qnas: error: {exc}\n")
        return 1
    if args.json:
        print(json.dumps([{"trial": t, "out": str(r.out_dir), "files": r.files, "metrics": r.metrics,
                           "latency_ms": r.latency_ms, "verification": r.verification} for t, r in results], indent=1))
        return 0
    for t, r in results:
        table = Table(title=f"trial {t} -> {r.out_dir}  (top-1 " + ", ".join(
            f"{k} {pct(v)}%" for k, v in r.metrics.items()) + ")")
        for col in ("file", "bytes", "ms/image", "max |diff|", "top-1 agree", "ORT fused: agree"):
            table.add_column(col)
        for f, size in r.files.items():
            v = r.verification.get(f, {})
            ms = f"{r.latency_ms[f]:.3f}" if f in r.latency_ms else ""
            table.add_row(f, f"{size:,}", ms, f"{v['max_abs_diff']:.2e}" if v else "",
                          f"{100 * v['top1_agreement']:.2f}%" if v else "",
                          f"{100 * v['fused_top1_agreement']:.2f}%" if "fused_top1_agreement" in v else "")
        Console(soft_wrap=True).print(table)  # results on stdout, progress on stderr
    return 0
