"""Checks of the Python API's arguments: a bad value is one QnasError that names the argument, never a
TypeError from deep inside torch, numpy or Optuna, and never a value quietly read as another (2.5 trials as 3,
0 as "the default"). The command line checks the same values with its argparse types (qnas.commands._args).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from qnas.errors import QnasError

__all__ = ["MAX_SEED", "count", "integer", "number", "seed"]

MAX_SEED = 2**32 - 1  # numpy's seed range, which Optuna's samplers use


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            optional: bool = False) -> int | None:
    """``value`` as an int (an integral number, not a bool), within [minimum, maximum]; None if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise QnasError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (f"at least {minimum}" if maximum is None else f"at most {maximum}" if minimum is None
                  else f"in [{minimum}, {maximum}]")
        raise QnasError(f"{name} must be {bounds}, got {value}")
    return value


def number(name: str, value: Any, *, positive: bool = True, optional: bool = False) -> float | None:
    """``value`` as a finite float (> 0 where ``positive``, else >= 0); None if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QnasError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise QnasError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return value


def seed(name: str, value: Any) -> int:
    """A random seed: an integer in [0, MAX_SEED]."""
    return integer(name, value, minimum=0, maximum=MAX_SEED)  # type: ignore[return-value]


def count(name: str, value: Any, *, optional: bool = False) -> int | None:
    """A size bound such as ``max_params``: a finite number >= 1 (``1e6`` is fine), as an int."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 1):
        raise QnasError(f"{name} must be a count of at least 1 (e.g. 1e6), got {value!r}")
    return int(value)
