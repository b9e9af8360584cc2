"""The one exception type the CLI turns into a one-line message and exit code 2, and SIGTERM as Ctrl-C."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

__all__ = ["QnasError", "QnasWarning", "Terminated", "raise_terminated", "warn"]

_PACKAGE = str(Path(__file__).resolve().parent)


class QnasError(Exception):
    """A user-facing error: bad input, missing data, mismatched checkpoint.

    The CLI prints ``qnas: error: <message>`` and exits with code 2; library callers can catch it.
    """


class QnasWarning(UserWarning):
    """A warning about the user's input or result (a layer the predictor never saw); the CLI prints it as
    ``qnas: warning: <message>``."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so every cleanup that handles Ctrl-C handles it too."""


def raise_terminated(signum: int, frame: Any) -> None:
    """A SIGTERM handler: raise :class:`Terminated` where the signal lands, as Python does for SIGINT."""
    raise Terminated


def warn(message: str | Warning, category: type[Warning] = QnasWarning) -> None:
    """``warnings.warn`` pointed at the first caller outside qnas, however many qnas frames lie between
    (``qnas.score`` goes through its module's ``__call__``; ``qnas.search`` through ``make_search``)."""
    frame, level = inspect.currentframe(), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
