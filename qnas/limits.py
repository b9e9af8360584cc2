"""Size bounds checked before an architecture given by a user (``--arch``, ``arch.json``) is built.

Parameter and MAC counts are analytic, so an architecture that would exhaust memory (a stem of 99,999
channels) is refused in microseconds instead of being built and killed by the kernel.
"""

from __future__ import annotations

from typing import Any

from qnas.errors import QnasError

__all__ = ["DEFAULT_MAX_MACS", "DEFAULT_MAX_PARAMS", "check_arch_size"]

# Every architecture the space samples fits: its bound is 1e7 parameters and its held-out splits reach
# 1.4e9 MACs per image.
DEFAULT_MAX_PARAMS = 10_000_000
DEFAULT_MAX_MACS = 2_000_000_000


def check_arch_size(space: Any, genome: Any, input_shape: tuple[int, ...], num_classes: int, *,
                    max_params: int = DEFAULT_MAX_PARAMS, max_macs: int = DEFAULT_MAX_MACS,
                    hint: str = "raise --max-params / --max-macs") -> tuple[int, int]:
    """(params, MACs) of ``genome``, or QnasError when either is over its bound."""
    params = int(space.count_params(genome, tuple(input_shape), num_classes))
    macs = int(space.count_macs(genome, tuple(input_shape), num_classes))
    if params > max_params:
        raise QnasError(f"architecture has {params:,} parameters, over the bound of {max_params:,} ({hint})")
    if macs > max_macs:
        raise QnasError(f"architecture needs {macs:,} MACs per image, over the bound of {max_macs:,} ({hint})")
    return params, macs
