"""Modules that are also functions: ``qnas.score(model)`` calls ``qnas.api.score`` while ``qnas.score.evaluate``
stays the module's. Imports nothing from qnas, so any module can use it without an import cycle."""

from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

__all__ = ["CallableModule", "make_callable"]


class CallableModule(types.ModuleType):
    """The class of ``qnas.score``, ``qnas.search``, ``qnas.finetune`` and ``qnas.export``: each is both a
    module (``qnas.score.evaluate``) and, called, the API function of its name (``qnas.score(model)``).

    Why: a package attribute named like a submodule is replaced by the module when that module is imported,
    so plain functions of those names would stop working as soon as anything imported the submodule.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:  # inspect.signature(qnas.score): the API function's
        return inspect.signature(self._function())

    def _function(self) -> Any:
        return getattr(importlib.import_module("qnas.api"), self.__name__.rpartition(".")[2])


def make_callable(module_name: str) -> None:
    """Turn the module ``module_name`` into a :class:`CallableModule` (called at the end of it)."""
    import sys

    module = sys.modules[module_name]
    module.__class__ = CallableModule
    name = module_name.rpartition(".")[2]
    module.__doc__ = (module.__doc__ or "") + (
        f"\n\nCalled, ``qnas.{name}(...)`` is the API function ``qnas.api.{name}``: see ``help(qnas.api.{name})``.\n")
