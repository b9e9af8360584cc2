"""Where parameters come from (``--init NAME[:ARG]`` of ``qnas score``): a registry of sources.

    params = init_params(module, "ghn", dataset=ds)       # GHN-predicted, per setting
    params = init_params(module, "trained:3", dataset=ds) # SGD-trained in place (None: the module's own)

A new source is one more entry in ``INITS``: ``function(module, arg, *, dataset, seed, **options) -> Params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from qnas.errors import QnasError
from qnas.score import Params
from qnas.train import reset_parameters, train

__all__ = ["INITS", "init_params", "trained_epochs"]



def _random_init(module: nn.Module, arg: str, *, dataset: Any, seed: int, **_: Any) -> Params:
    if arg:
        raise QnasError(f"--init random takes no argument, got random:{arg}")
    reset_parameters(module, seed)
    return None


def trained_epochs(arg: str) -> int:
    """The EPOCHS of ``--init trained:EPOCHS``; QnasError unless a positive whole number."""
    try:
        epochs = int(arg)
    except ValueError:
        raise QnasError(f"--init trained:EPOCHS needs a whole number of epochs, got {arg!r}") from None
    if epochs <= 0:
        raise QnasError(f"--init trained:EPOCHS needs at least one epoch, got {epochs}")
    return epochs


def _trained_init(module: nn.Module, arg: str, *, dataset: Any, seed: int, progress: Any = None,
                  **_: Any) -> Params:
    epochs = trained_epochs(arg)
    if dataset is None:
        raise QnasError("--init trained needs a dataset to train on")
    train(module, dataset, epochs, seed=seed, progress=progress, val_every=0, test=False)
    return None


# name -> function(module, arg, *, dataset, seed, **options) returning Params (None: the module's own,
# left in the module). The GHN adds "ghn" here.
def _ghn_init(module: nn.Module, arg: str, **kwargs: Any) -> Params:
    from qnas.predictors import ghn_init  # lazy: scoring without a GHN never imports it

    return ghn_init(module, arg, **kwargs)


INITS: dict[str, Callable[..., Params]] = {"random": _random_init, "trained": _trained_init, "ghn": _ghn_init}


def init_params(module: nn.Module, init: str, *, dataset: Any = None, seed: int = 0, **options: Any) -> Params:
    """Parameters for ``module`` from the source named by ``init`` (``random``, ``trained:EPOCHS``).

    May modify ``module`` in place (re-initialization, training) and return ``None`` (use the module's
    own parameters), or return a dict / a ``spec -> dict`` callable for :func:`evaluate`.
    """
    name, _, arg = init.partition(":")
    if name not in INITS:
        raise QnasError(f"unknown --init {init!r} (choose from {', '.join(f'{k}' for k in INITS)}; "
                        "trained takes :EPOCHS)")
    return INITS[name](module, arg, dataset=dataset, seed=seed, **options)


