"""The project-wide defaults and choices, in one place and importable without torch (the CLI reads them to
build ``--help``; the library modules import them from here).

    from qnas.defaults import DEFAULT_DATASET, SETTINGS
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACT_RANGES",
    "BN_MODES",
    "DEFAULT_BN_STATS",
    "DEFAULT_CALIB_SIZE",
    "DEFAULT_DATASET",
    "DEFAULT_GRANULARITY",
    "DEFAULT_FIT_SIZE",
    "DEFAULT_HEAD",
    "DEFAULT_POPULATION",
    "DEFAULT_SAMPLER",
    "DEFAULT_SPACE",
    "FAQ",
    "GRANULARITIES",
    "HEADS",
    "SAMPLERS",
    "SETTINGS",
    "FAQDefaults",
]

# The dataset every command and function uses unless told otherwise (the shipped predictor's).
DEFAULT_DATASET = "fashion-mnist"
# The search space the shipped predictor was trained on and commands search by default.
DEFAULT_SPACE = "convnets250k"
# The settings a candidate is scored at, in report order: float, then falling weight/activation bits.
SETTINGS: tuple[str, ...] = ("fp32", "w8a8", "w4a8", "w4a4", "w2a2")

# Weight scales: one per output channel by default, since with BatchNorm folded one scale per tensor lets the
# widest channel set the step for all (measured in docs/scoring.md, step 3); "tensor" is GHN-Q's protocol.
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
DEFAULT_GRANULARITY = "channel"
# Activation ranges: "auto" = min/max at 3+ bits and a percentile at 2 bits (qnas.quant.LOW_BIT_ACT_PERCENTILE,
# benchmarks/activation_ranges.py); "minmax" everywhere is GHN-Q's.
ACT_RANGES: tuple[str, ...] = ("auto", "minmax")
# BatchNorm statistics while scoring: frozen after a calibration pass (deployable) or per test batch (GHN-Q).
BN_MODES: tuple[str, ...] = ("batch", "calibrated")
DEFAULT_BN_STATS = "calibrated"
DEFAULT_CALIB_SIZE = 64  # calibration images for bn_stats="calibrated": one batch, as GHN-Q's statistics
# The classifier a candidate is scored with: "fit" solves the last layer on the GHN's features (qnas.readout;
# the GHN's own head fails on users' families, docs/predictor.md), "keep" keeps the predicted one (faster).
HEADS: tuple[str, ...] = ("fit", "keep")
DEFAULT_HEAD = "fit"  # fitted on DEFAULT_FIT_SIZE training images with a ranker, else on as many as are scored
# The fit size the protocol's plain "/fit" stands for (the search's default --val-size, on which the shipped
# ranker's features were scored); other sizes are spelled out ("/fit256"): a smaller fit scores lower.
DEFAULT_FIT_SIZE = 1000

# Optuna samplers; the default is chosen by benchmarks/search_efficiency.py (docs/search.md).
SAMPLERS: tuple[str, ...] = ("nsga2", "tpe", "random")
DEFAULT_SAMPLER = "nsga2"
DEFAULT_POPULATION = 20  # NSGA-II: fewer complete trials than this are its random first generation


@dataclass(frozen=True)
class FAQDefaults:
    """Defaults of ``qnas.finetune.FAQConfig`` that the CLI shows in ``--help``: sized for a CPU."""

    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.05
    final_lr: float = 1e-6
    weight_decay: float = 5e-5
    train_size: int = 10_000
    freeze_bn_at: float = 0.0


FAQ = FAQDefaults()
