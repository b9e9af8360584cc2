"""qnas: quantization-aware neural architecture search for edge CNNs.

Candidates are scored under fake quantization with parameters predicted by a graph hypernetwork,
so no candidate is trained during the search.

    import qnas
    qnas.score(my_module, bits="w4a4").top1("w4a4")     # any nn.Module, or an architecture string
    qnas.search("api-demo", bits=4, max_params=1e6, trials=30)
    qnas.finetune("api-demo", top_k=2); qnas.export("api-demo", "winners", pareto=True)
    net = qnas.load("winners/trial-28")

Names are imported on first use (``qnas.api``), so ``import qnas`` does not import torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from qnas.errors import QnasError, QnasWarning

if TYPE_CHECKING:
    from torch import nn

    from qnas.api import Score, Search, build, export, finetune, make_search, predict_params, score, search
    from qnas.coverage import ChanceScoreWarning, UnseenLayerWarning

__version__ = "0.1.0"

__all__ = [
    "ChanceScoreWarning",
    "QnasError",
    "QnasWarning",
    "Score",
    "Search",
    "UnseenLayerWarning",
    "__version__",
    "build",
    "export",
    "finetune",
    "load",
    "make_search",
    "predict_params",
    "score",
    "search",
]

# Public name -> the module defining it; imported on first attribute access (PEP 562).
_LAZY = {
    "Score": "qnas.api", "Search": "qnas.api", "build": "qnas.api", "make_search": "qnas.api",
    "predict_params": "qnas.api", "ChanceScoreWarning": "qnas.coverage", "UnseenLayerWarning": "qnas.coverage",
}
# Modules that are also the API function of their name when called (qnas.callable_module.CallableModule).
_CALLABLE_MODULES = ("export", "finetune", "score", "search")


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"qnas.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qnas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load(path: str | os.PathLike[str], *, max_params: int | None = None, max_macs: int | None = None) -> nn.Module:
    """The PyTorch module exported by `qnas export` to ``path`` (eval mode); see ``qnas.export.load``.
    Imported lazily: ``import qnas`` stays cheap.

    ``arch.json`` is size-checked before anything is built (``qnas.limits``; defaults cover the whole
    search space): a hand-edited architecture cannot exhaust memory. Raise the bounds for bigger nets.
    """
    import json
    from pathlib import Path

    from qnas import _checks as checks
    from qnas import limits
    from search_spaces import get_space

    if not isinstance(path, str | os.PathLike):
        raise QnasError(f"path must be an export directory, got {path!r}")
    max_params, max_macs = checks.count("max_params", max_params, optional=True), \
        checks.count("max_macs", max_macs, optional=True)
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
                           max_params=limits.DEFAULT_MAX_PARAMS if max_params is None else max_params,
                           max_macs=limits.DEFAULT_MAX_MACS if max_macs is None else max_macs,
                           hint="pass larger max_params / max_macs to qnas.load if it is meant")
    from qnas.export import load as load_export

    return load_export(path)
