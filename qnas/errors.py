"""The one exception type the CLI turns into a one-line message and exit code 2, and SIGTERM as Ctrl-C."""

from __future__ import annotations

from typing import Any

__all__ = ["QnasError", "QnasWarning", "Terminated", "raise_terminated"]


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
