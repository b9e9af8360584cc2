"""`qnas train-predictor`: train a GHN (float, per-bit QAT or bit-conditioned QAT), resumably."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qnas.commands._args import fraction, param_count, positive_float, positive_int, seed
from qnas.defaults import DEFAULT_DATASET, DEFAULT_SPACE
from qnas.errors import QnasError

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-predictor",
        help="train a GHN parameter predictor (resumes from --out/last.pt)",
        description="Train a graph hypernetwork on architectures sampled from the space. Regimes: float "
        "(GHN-2/GHN-Q), qat with one --bits setting (GHN-QAT, one GHN per bit-width), or qat with several "
        "--bits and --conditioned (one bit-conditioned GHN). Checkpoints every few minutes and on Ctrl-C; "
        "re-running the same command resumes exactly. Runs data-parallel under torchrun.",
    )
    p.add_argument("--out", required=True, help="run directory (checkpoint last.pt, train_log.csv, eval_log.csv)")
    p.add_argument("--regime", choices=("float", "qat"), default="float", help="training regime (default float)")
    p.add_argument("--settings", "--bits", dest="bits", default=None, metavar="LIST",
                   help="settings drawn per architecture, e.g. w4a4 or fp32,w8a8,w4a4,w2a2 (default fp32; --bits: the "
                   "same)")
    p.add_argument("--conditioned", action="store_true", help="bit-width embedding in the GHN (one GHN, all bits)")
    p.add_argument("--start-from", "--init", dest="init", default=None, metavar="PREDICTOR",
                   help="predictor name or checkpoint to start from (QAT finetuning; --init: the same)")
    p.add_argument("--steps", type=positive_int, default=5000, help="total training steps (default 5000)")
    p.add_argument("--stop-after", type=positive_int, default=None, help="stop after this many steps in this run")
    p.add_argument("--meta-batch", type=positive_int, default=8, help="architectures per step (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--max-params", type=param_count, default=1_000_000,
                   help="bound on training architectures, keeps steps cheap (default 1e6)")
    p.add_argument("--bn-free", type=fraction, default=0.0, metavar="F",
                   help="fraction of training architectures drawn without BatchNorm (default 0)")
    p.add_argument("--families", type=fraction, default=0.0, metavar="F",
                   help="fraction of training architectures drawn from the network families users bring "
                   "(qnas.families: DenseNet, deep plain/residual, wide, VGG, SqueezeNet, MobileNet; default 0)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="scaled weight standardization of BN-free nets' predicted weights (default: on with "
                   "--bn-free or --families, which draw BN-free nets)")
    p.add_argument("--hidden", type=positive_int, default=None, help="GHN node state size (default 32)")
    p.add_argument("--max-channels", type=positive_int, default=None, help="GHN decoded block size (default 64)")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset (default {DEFAULT_DATASET})")
    p.add_argument("--data-dir", default=None, help="where the dataset files are")
    p.add_argument("--space", default=DEFAULT_SPACE, help=f"search space (default {DEFAULT_SPACE})")
    p.add_argument("--seed", type=seed, default=0, help="seed (default 0)")
    p.add_argument("--eval-every", type=positive_int, default=250, help="validate every N steps (default 250)")
    p.add_argument("--checkpoint-every", type=positive_float, default=300.0,
                   help="seconds between checkpoints (default 300)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--export", default=None, metavar="PATH.pt",
                   help="write the trained GHN as a predictor here (and its header as PATH.json); an existing file is "
                   "replaced only when it is an export of this same run, or with --force")
    p.add_argument("--force", action="store_true", help="let --export replace files that are not this run's export")
    p.add_argument("--export-only", action="store_true",
                   help="write --export from the run's last checkpoint without training (its training settings are "
                   "read from the checkpoint; flags such as --regime or --steps are not needed, and must match "
                   "the run when given)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from qnas.train_predictor import TrainConfig

    bits = tuple(b.strip().lower() for b in (args.bits or "fp32").split(",") if b.strip())
    # BN-free training needs standardized weights (without, their logits reach 1e6+): on by default there.
    standardize = args.standardize if args.standardize is not None else (args.bn_free > 0 or args.families > 0
                                                                         or None)
    ghn = {k: v for k, v in (("hidden", args.hidden), ("max_channels", args.max_channels),
                             ("standardize", standardize)) if v is not None}
    return TrainConfig(
        regime=args.regime, bits=bits, conditioned=args.conditioned, init=args.init, dataset=args.dataset,
        space=args.space, steps=args.steps, meta_batch=args.meta_batch, batch_size=args.batch_size, lr=args.lr,
        max_params=args.max_params, bn_free=args.bn_free, families=args.families, seed=args.seed, ghn=ghn,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from qnas.quant import QuantSpec
    from qnas.train_predictor import Trainer, check_device, check_run_dir, export_predictor, run_config

    check_device(args.device)  # before anything: torch fails late and with a traceback
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export_only and not args.export:
        raise QnasError("--export-only needs --export PATH.pt")
    # exporting a finished run should not need its training flags repeated: the checkpoint has them
    cfg = run_config(args.out) if args.export_only else config_from_args(args)
    if args.export_only:
        _check_given_flags(args, cfg)
    for b in cfg.bits:
        QuantSpec.parse(b)  # one-line error for a bad setting before any work
    check_run_dir(args.out)
    if args.export:
        check_export_target(Path(args.export), cfg, force=args.force)
    trainer = Trainer(cfg, args.out, data_dir=args.data_dir, device=args.device)
    if args.export_only:
        path = export_predictor(trainer, args.export, name=Path(args.export).stem)
        trainer.log(f"exported predictor {path} (step {trainer.step})")
        return 0
    result = trainer.run(stop_after=args.stop_after, progress=not args.quiet)
    trainer.log(f"step {result['step']}/{cfg.steps}; checkpoint {trainer.out / 'last.pt'}")
    if args.export and trainer.rank == 0:
        path = export_predictor(trainer, args.export, name=Path(args.export).stem)
        trainer.log(f"exported predictor {path}")
    return 130 if result["interrupted"] else 0


def _check_given_flags(args: argparse.Namespace, stored) -> None:
    """Training flags given with --export-only must match the run's: an export is never of other settings."""
    from qnas.cli import build_parser

    default = config_from_args(build_parser().parse_args(["train-predictor", "--out", str(args.out)])).to_json()
    given, run = config_from_args(args).to_json(), stored.to_json()
    differ = [k for k in given if given[k] != default[k] and given[k] != run[k]]
    if differ:
        raise QnasError(f"{Path(args.out) / 'last.pt'} was trained with other settings ({', '.join(differ)}); "
                        "--export-only exports the run as trained: drop those flags")


def check_export_target(path: Path, cfg, force: bool) -> None:
    """Refuse to replace an existing predictor file (or its .json header) that this run did not write."""
    from qnas.predictors import read_header
    from qnas.train_predictor import check_writable_dir

    if path.suffix != ".pt":
        raise QnasError(f"--export {str(path)!r}: predictor checkpoints end in .pt")
    check_writable_dir(path.parent, f"--export {str(path)!r}")  # else it fails after training, with torch's message
    existing = [p for p in (path, path.with_suffix(".json")) if p.exists()]
    if not existing or force:
        if path.is_dir():
            raise QnasError(f"--export {str(path)!r} is a directory")
        return
    try:
        notes = json.loads(read_header(path).notes or "{}")
        same_run = isinstance(notes, dict) and notes.get("train_config") == json.loads(json.dumps(cfg.to_json()))
    except (QnasError, ValueError):
        same_run = False
    if not same_run:
        raise QnasError(f"--export: {', '.join(repr(str(p)) for p in existing)} exists and is not an export of this "
                        "run; pass --force to replace it, or choose another path")
