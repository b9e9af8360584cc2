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


def load(path: str | os.PathLike[str], *, max_params: int | None = None, max_macs: int | None = None) -> nn.Module:
    """The PyTorch module exported by `qnas export` to ``path`` (eval mode); see ``qnas.export.load``.
    Imported lazily: ``import qnas`` stays cheap.

    ``arch.json`` is size-checked before anything is built (``qnas.limits``; defaults cover the whole
    search space): a hand-edited architecture cannot exhaust memory. Raise the bounds for bigger nets.
    """
    import json
    from pathlib import Path

    from qnas import limits
    from search_spaces import get_space

    arch_file = Path(path) / "arch.json"
    try:
        arch = json.loads(arch_file.read_text())
        space = get_space(str(arch["space"]))
        genome = space.from_json(arch["genome"])
        shape, classes = tuple(int(d) for d in arch["input_shape"]), int(arch["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QnasError(f"{str(arch_file)!r} is not a readable qnas architecture ({type(exc).__name__}: {exc})") \
            from None
    limits.check_arch_size(space, genome, shape, classes,
                           max_params=max_params or limits.DEFAULT_MAX_PARAMS,
                           max_macs=max_macs or limits.DEFAULT_MAX_MACS,
                           hint="pass larger max_params / max_macs to qnas.load if it is meant")
    from qnas.export import load as load_export

    return load_export(path)
