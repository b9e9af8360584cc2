"""Search-space plugins, looked up by name: ``get_space("convnets250k")``.

A space is a module (or package) under ``search_spaces/`` exposing ``NAME``, ``Genome``,
``sample(rng, max_params, input_shape, num_classes)`` (an optional ``bn=False`` keyword samples
BatchNorm-free nets, for ``train-predictor --bn-free``), ``suggest(trial)``,
``build(genome, input_shape, num_classes)``, ``count_params``, ``count_macs``, ``to_string``,
``from_string``, ``parse``, ``to_json``, ``from_json`` and ``load_split(name)``. Add a module here and
use it with ``--space NAME``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from qnas.errors import QnasError

DEFAULT_SPACE = "convnets250k"
REQUIRED = ("sample", "suggest", "build", "count_params", "count_macs", "to_string", "from_string", "parse",
            "to_json", "from_json")


def available_spaces() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_space(name: str = DEFAULT_SPACE) -> ModuleType:
    """Import ``search_spaces.<name>`` and check it implements the space protocol."""
    if name not in available_spaces():
        raise QnasError(f"unknown search space {name!r} (available: {', '.join(available_spaces())})")
    module = importlib.import_module(f"{__name__}.{name}")
    missing = [f for f in REQUIRED if not hasattr(module, f)]
    if missing:
        raise QnasError(f"search space {name!r} lacks {', '.join(missing)}")
    return module
