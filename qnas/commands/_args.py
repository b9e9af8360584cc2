"""Argument types shared by commands: each rejects bad input with a one-line argparse error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from qnas import _checks as checks
from qnas.errors import QnasError

__all__ = [
    "add_act_ranges_arg",
    "add_head_args",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "param_count",
    "population",
    "positive_float",
    "positive_int",
    "predictor_name",
    "seed",
    "study_name",
]


def _checked(text: str, parse: Callable[[str], Any], check: Callable[[Any], Any], unparsed: str,
             refused: str | None = None) -> Any:
    """``check(parse(text))``: the rule of the Python API's argument check (``qnas._checks``), with argparse's
    message, "expected <unparsed>" when ``text`` does not parse, "expected <refused>" when the rule refuses it."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {unparsed}, got {text!r}") from None
    try:
        return check(value)
    except QnasError:
        raise argparse.ArgumentTypeError(f"expected {refused or unparsed}, got {text!r}") from None


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: checks.integer("", v, minimum=1), "a positive integer")


def non_negative_int(text: str) -> int:
    return _checked(text, int, lambda v: checks.integer("", v, minimum=0), "a non-negative integer")


def predictor_name(text: str) -> str:
    """``--predictor``: a shipped name, a checkpoint path or ``random``; never empty (which would mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a predictor name, checkpoint path or 'random', got ''")
    return text


def param_count(text: str) -> int:
    """A parameter budget such as ``1e7``, ``2500000`` or ``2.5e6``."""
    return _checked(text, float, lambda v: checks.count("", v), "a parameter count like 1e7",
                    "a parameter count of at least 1")


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, seconds)."""
    return _checked(text, float, lambda v: checks.number("", v), "a positive number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay)."""
    return _checked(text, float, lambda v: checks.number("", v, positive=False), "a number >= 0",
                    "a finite number >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def seed(text: str) -> int:
    """A random seed in [0, 2**32 - 1], the range numpy (and so Optuna's samplers) accepts."""
    return _checked(text, int, lambda v: checks.seed("", v), f"a seed in [0, {checks.MAX_SEED}]")


def study_name(text: str) -> str:
    """A study name that is safe as a file name under studies/ (see ``qnas.search.check_study_name``)."""
    from qnas.search import check_study_name

    try:
        return check_study_name(text)
    except QnasError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def population(text: str) -> int:
    """An NSGA-II population size (at least 2: a child needs two parents)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a population of at least 2, got {text!r}")
    return value


def add_act_ranges_arg(p: argparse.ArgumentParser) -> None:
    """``--act-ranges``, declared once for every command that scores with GHN-predicted parameters."""
    from qnas.defaults import ACT_RANGES

    p.add_argument("--act-ranges", choices=ACT_RANGES, default="auto",
                   help="activation ranges: auto (default; min/max at 3+ bits, 99.5th percentile at 2 bits) or "
                   "minmax at every bit-width (GHN-Q's protocol)")


def add_head_args(p: argparse.ArgumentParser, *, default: str | None, default_text: str, fit_size_default: str) -> None:
    """``--head`` and ``--fit-size``, declared once for every command that scores (search, score, eval-predictor)."""
    from qnas.defaults import HEADS

    p.add_argument("--head", choices=HEADS, default=default,
                   help="the classifier networks are scored with: 'fit' solves each one's last layer at every setting "
                   "on --fit-size labelled training images, on the features the network computes there; 'keep' keeps "
                   f"the one its parameters give, e.g. the GHN's (default {default_text}; docs/predictor.md compares "
                   "them)")
    p.add_argument("--fit-size", type=positive_int, default=None, metavar="N",
                   help=f"labelled training images the head is fitted on with --head fit (default: {fit_size_default})")
