"""The project-wide defaults, in one place and importable without torch (the CLI reads them for ``--help``).

    from qnas.defaults import DEFAULT_DATASET, SETTINGS
"""

from __future__ import annotations

__all__ = ["DEFAULT_DATASET", "DEFAULT_SPACE", "SETTINGS"]

# The dataset every command and function uses unless told otherwise (the shipped predictor's).
DEFAULT_DATASET = "fashion-mnist"
# The search space the shipped predictor was trained on and commands search by default.
DEFAULT_SPACE = "convnets250k"
# The settings a candidate is scored at, in report order: float, then falling weight/activation bits.
SETTINGS: tuple[str, ...] = ("fp32", "w8a8", "w4a8", "w4a4", "w2a2")
