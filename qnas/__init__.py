"""qnas: quantization-aware neural architecture search for edge CNNs.

Candidates are scored under fake quantization with parameters predicted by a graph hypernetwork,
so no candidate is trained during the search.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qnas.errors import QnasError

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"

__all__ = ["QnasError", "__version__", "load"]


def load(path: str | os.PathLike[str]) -> nn.Module:
    """The PyTorch module exported by `qnas export` to ``path`` (eval mode); see ``qnas.export.load``.
    Imported lazily: ``import qnas`` stays cheap."""
    from qnas.export import load as _load

    return _load(path)
