"""Quantization settings: :class:`QuantSpec`, parsing setting names, and the first/last-layer rule.

**Settings.** ``w<bits>a<bits>`` (2 to 8 bits, 32 = float) with suffixes that name the quantizer
(:meth:`QuantSpec.parse`); ``SETTINGS`` are GHN-Q's Table 1, any other name parses too.

**Symmetric weights.** Which weight bit-widths use the signed zero-point-0 grid is the rule in
``SYMMETRIC_WEIGHT_BITS`` (measured in docs/quantization.md); a setting can force either grid with
``-wsym`` / ``-wasym``.

**First and last layers** (:func:`first_last_rule`, the one rule search, finetune and export share):
by default the first and last weight layers, the network input and the last layer's input stay at
``FIRST_LAST_BITS`` (8) when a setting is lower (the ``-fl8`` suffix).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from qnas.defaults import GRANULARITIES
from qnas.errors import QnasError

__all__ = [
    "DEFAULT_SETTINGS",
    "FIRST_LAST_BITS",
    "FLOAT_BITS",
    "LOW_BITS",
    "LOW_BIT_ACT_PERCENTILE",
    "MAX_BITS",
    "MIN_BITS",
    "MODES",
    "SETTINGS",
    "SYMMETRIC_WEIGHT_BITS",
    "QuantSpec",
    "describe_first_last",
    "engine_setting",
    "first_last_rule",
    "layer_bits",
    "parse_first_last_bits",
    "parse_specs",
    "setting_names",
    "with_granularity",
]

MIN_BITS, MAX_BITS = 2, 8
# Activation ranges at <= 2 bits: a percentile instead of min/max (with 4 levels one outlier otherwise takes
# a whole level); 3+ bits keep GHN-Q's min/max. Figures: benchmarks/activation_ranges.py, docs/scoring.md.
LOW_BITS, LOW_BIT_ACT_PERCENTILE = 2, 99.5
FLOAT_BITS = 32  # "32" in a setting name (w32a8) means float
# Weight bit-widths quantized symmetric (zero point 0) by default; the others asymmetric. 8 bits: what
# onnxruntime's int8 kernels run fast; below 8: chosen by accuracy, docs/quantization.md.
SYMMETRIC_WEIGHT_BITS: frozenset[int] = frozenset({8})
# The first/last-layer rule: first and last weight layers, network input and last layer's input at this
# many bits when a setting is lower (FAQ's recipe; see first_last_rule).
FIRST_LAST_BITS = 8
MODES = ("sim", "noise")


@dataclass(frozen=True)
class QuantSpec:
    """One quantization setting; ``None`` bits mean float. ``QuantSpec()`` is FP32.

    ``first_last_8bit`` keeps the first and last weight layers, the network input and the input of the
    last layer at 8 bits (FAQ's recipe) when the setting is lower.
    ``a_percentile``: activation ranges from the q-th percentile (and the (100-q)-th) instead of min/max
    (100 = min/max, GHN-Q); ``None`` is the default rule: min/max at 3+ bits, the
    ``LOW_BIT_ACT_PERCENTILE`` at <= ``LOW_BITS`` (see :meth:`act_percentile`).
    ``w_symmetric``: symmetric signed weights (zero point 0) or asymmetric unsigned ones; ``None`` is the
    default rule, ``SYMMETRIC_WEIGHT_BITS`` (see :meth:`weight_symmetric`).
    """

    w_bits: int | None = None
    a_bits: int | None = None
    mode: str = "sim"  # "sim": round (SimQuant, STE) | "noise": uniform noise of one step (NoiseQuant)
    granularity: str = "tensor"  # weights: one range per tensor | per output channel
    first_last_8bit: bool = False
    a_percentile: float | None = None  # activation range rule (None: by bits, see act_percentile)
    w_symmetric: bool | None = None  # weight grid (None: by bits, see weight_symmetric)

    def __post_init__(self) -> None:
        for what, bits in (("weight", self.w_bits), ("activation", self.a_bits)):
            if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)
                                     or not MIN_BITS <= bits <= MAX_BITS):
                raise QnasError(
                    f"{what} bits must be an integer from {MIN_BITS} to {MAX_BITS} (or None for float), "
                    f"got {bits!r}"
                )
        if self.mode not in MODES:
            raise QnasError(f"quantization mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.granularity not in GRANULARITIES:
            raise QnasError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        q = self.a_percentile
        if q is not None and (isinstance(q, bool) or not isinstance(q, int | float) or not 50.0 < q <= 100.0):
            raise QnasError(f"activation percentile must be in (50, 100] (100 = min/max), got {q!r}")
        if self.w_symmetric is not None and not isinstance(self.w_symmetric, bool):
            raise QnasError(f"w_symmetric must be True, False or None, got {self.w_symmetric!r}")

    def weight_symmetric(self, bits: int) -> bool:
        """Whether ``bits``-bit weights use the symmetric signed grid (zero point 0)."""
        if self.w_symmetric is not None:
            return self.w_symmetric
        return bits in SYMMETRIC_WEIGHT_BITS

    def act_percentile(self, bits: int) -> float:
        """Percentile of the activation range at a point quantized to ``bits`` (100: min/max)."""
        if self.a_percentile is not None:
            return float(self.a_percentile)
        return LOW_BIT_ACT_PERCENTILE if bits <= LOW_BITS else 100.0

    def spelled_out(self) -> QuantSpec:
        """This setting with the default activation-range rule made explicit (``w2a2`` -> ``w2a2-p99.5``,
        ``w4a4`` -> ``w4a4-minmax``): the same quantizer, a name that says everything."""
        if self.a_bits is None or self.a_percentile is not None:
            return self
        return replace(self, a_percentile=self.act_percentile(self.a_bits))

    @property
    def is_float(self) -> bool:
        return self.w_bits is None and self.a_bits is None

    @property
    def name(self) -> str:
        """Canonical name, parsed back by :meth:`parse`: ``fp32``, ``w4a8``, ``w2a2-noise``, ``w4a4-channel-fl8``,
        ``w2a2-minmax``, ``w4a4-p99.9``, ``w4a4-wsym``."""
        if self.is_float:
            base = "fp32"
        else:
            base = f"w{self.w_bits or FLOAT_BITS}a{self.a_bits or FLOAT_BITS}"
        suffix = "".join(
            s for s, on in (("-noise", self.mode == "noise"), ("-channel", self.granularity == "channel"),
                            ("-fl8", self.first_last_8bit)) if on
        )
        q = self.a_percentile
        if q is not None:
            suffix += "-minmax" if q == 100.0 else f"-p{float(q):g}"
        if self.w_symmetric is not None:
            suffix += "-wsym" if self.w_symmetric else "-wasym"
        return base + suffix

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, value: str | QuantSpec | tuple[int, int] | None) -> QuantSpec:
        """``"fp32"``, ``"w4a8"`` (2-8 bits, 32 = float) with optional ``-noise``, ``-channel``, ``-fl8``,
        ``-minmax`` / ``-p99.9`` (activation ranges),
        ``-wsym`` / ``-wasym`` (weight grid) suffixes; a ``(w_bits, a_bits)`` pair with 32 for float;
        ``None`` is FP32."""
        if value is None:
            return cls()
        if isinstance(value, QuantSpec):
            return value
        if isinstance(value, tuple | list):
            if len(value) != 2:
                raise QnasError(f"expected (weight bits, activation bits), got {value!r}")
            w, a = (_bits_from_int(b, value) for b in value)
            return cls(w, a)
        if not isinstance(value, str):
            raise QnasError(f"cannot read a quantization setting from {value!r}")
        text = value.strip().lower()
        base, *suffixes = text.split("-")
        kwargs: dict[str, Any] = {}
        for s in suffixes:
            key = {"noise": ("mode", "noise"), "sim": ("mode", "sim"), "channel": ("granularity", "channel"),
                   "tensor": ("granularity", "tensor"), "fl8": ("first_last_8bit", True),
                   "minmax": ("a_percentile", 100.0), "wsym": ("w_symmetric", True),
                   "wasym": ("w_symmetric", False)}.get(s)
            m = re.fullmatch(r"p(\d+(?:\.\d+)?)", s)
            if key is None and m:
                key = ("a_percentile", float(m.group(1)))
            if key is None or key[0] in kwargs:
                raise QnasError(f"bad quantization setting {value!r}: unknown or repeated suffix {s!r} "
                                "(allowed: -noise, -channel, -tensor, -fl8, -minmax, -p<percentile>, -wsym, -wasym)")
            kwargs[key[0]] = key[1]
        if base in ("fp32", "float", "float32"):
            return cls(**kwargs)
        m = re.fullmatch(r"w(\d+)a(\d+)", base)
        if not m:
            raise QnasError(f"bad quantization setting {value!r}: expected fp32 or w<bits>a<bits> such as "
                            f"w4a8, with bits from {MIN_BITS} to {MAX_BITS} (32 = float)")
        w, a = (_bits_from_int(int(g), value) for g in m.groups())
        return cls(w, a, **kwargs)


def _bits_from_int(bits: Any, setting: Any) -> int | None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise QnasError(f"bad quantization setting {setting!r}: bits must be integers")
    if bits == FLOAT_BITS:
        return None
    if not MIN_BITS <= bits <= MAX_BITS:
        raise QnasError(f"bad quantization setting {setting!r}: bits must be from {MIN_BITS} to {MAX_BITS} "
                        f"(or {FLOAT_BITS} for float), got {bits}")
    return bits


# The settings of GHN-Q's Table 1, by name; any other wXaY parses too.
SETTINGS: Mapping[str, QuantSpec] = MappingProxyType(
    {s.name: s for s in (QuantSpec(), QuantSpec(8, 8), QuantSpec(4, 8), QuantSpec(4, 4), QuantSpec(2, 2))}
)
DEFAULT_SETTINGS: tuple[str, ...] = tuple(SETTINGS)


def parse_specs(value: str | Iterable[str | QuantSpec]) -> list[QuantSpec]:
    """``"fp32,w8a8,w4a4"`` (or a list of names/specs) -> specs, in order; empty or repeated is an error."""
    items = value.split(",") if isinstance(value, str) else list(value)
    specs = [QuantSpec.parse(v.strip() if isinstance(v, str) else v) for v in items]
    if not specs:
        raise QnasError("no quantization settings given")
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise QnasError(f"quantization setting(s) given twice: {', '.join(repeated)}")
    return specs


def engine_setting(setting: str, *, granularity: str, act_ranges: str = "auto",
                   first_last_bits: int | str | None = FIRST_LAST_BITS) -> str:
    """The engine's setting for a reported name under a scoring protocol: ``w4a4`` -> ``w4a4-channel-fl8`` with
    per-channel scales and the first/last-layer rule (``-minmax`` added with ``act_ranges="minmax"``); a name
    that says its own weight scales or ranges keeps them. The one mapping every scoring entry point uses."""
    parse_first_last_bits(first_last_bits)  # a bad value is an error even where no layer is quantized
    if QuantSpec.parse(setting).is_float:
        return setting
    name = with_granularity([setting], granularity)[0]
    name = f"{name}-minmax" if act_ranges == "minmax" and "minmax" not in name.split("-") else name
    return first_last_rule(name, first_last_bits).name


def setting_names(bits: str | int | Iterable[str | int]) -> tuple[str, ...]:
    """The settings a user asked for, as names: ``"w4a4"``, ``"fp32, w4a4"``, ``4`` or ``"4"`` (= w4a4; also 8
    and 2) or a list of those; stripped, lower case. QnasError if none is named or one is named twice (the
    names are checked as settings by :func:`parse_specs`, where they are measured)."""
    if isinstance(bits, bool) or not isinstance(bits, str | numbers.Integral | Iterable):
        raise QnasError(f"bits must be a setting such as 'w4a4', a bit count such as 4, or a list of those; "
                        f"got {bits!r}")
    items = ([t for t in bits.split(",") if t.strip()] if isinstance(bits, str) else
             [int(bits)] if isinstance(bits, numbers.Integral) else list(bits))
    names = [str(b).strip().lower() for b in items]
    names = [f"w{n}a{n}" if n in ("8", "4", "2") else n for n in names]
    if not names:
        raise QnasError("no setting named (e.g. 'w4a4' or 'fp32,w4a4')")
    if len(set(names)) != len(names):
        raise QnasError(f"a setting is named twice: {', '.join(names)}")
    return tuple(names)


def with_granularity(value: str | Iterable[str], granularity: str) -> list[str]:
    """Setting names with a default weight granularity: ``w4a4`` -> ``w4a4-channel`` for ``"channel"``.

    A name that says ``-channel`` or ``-tensor`` itself keeps it; fp32 has no weight scales.
    """
    if granularity not in GRANULARITIES:
        raise QnasError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        name = item.strip()
        suffixes = name.lower().split("-")[1:]
        explicit = "channel" in suffixes or "tensor" in suffixes
        spec = QuantSpec.parse(name)
        out.append(spec.name if spec.is_float or explicit else replace(spec, granularity=granularity).name)
    return out


def parse_first_last_bits(value: str | int | None) -> int | None:
    """``--first-last-bits``: ``8`` (first/last layers at 8 bits) or ``same`` / ``None`` (at the setting)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("same", "none", "off")):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or text != str(FIRST_LAST_BITS):
        raise QnasError(f"first/last-layer bits must be {FIRST_LAST_BITS} or 'same' (quantized at the setting), "
                        f"got {value!r}")
    return FIRST_LAST_BITS


def first_last_rule(spec: QuantSpec | str, first_last_bits: int | None = FIRST_LAST_BITS) -> QuantSpec:
    """``spec`` under the first/last-layer rule shared by search, finetune and export: with
    ``first_last_bits=8`` (default) the first and last weight layers, the network input and the last
    layer's input stay at 8 bits when the setting is lower (``-fl8``); ``None``: quantized at the setting."""
    spec = QuantSpec.parse(spec)
    return replace(spec, first_last_8bit=parse_first_last_bits(first_last_bits) is not None)


def describe_first_last(spec: QuantSpec) -> str:
    """One line for records and model cards: what the first/last-layer rule of ``spec`` is."""
    if spec.first_last_8bit:
        return (f"first and last weight layers, the network input and the last layer's input at {FIRST_LAST_BITS} "
                "bits (first_last_bits=8)")
    return "every layer at the setting's bits (first_last_bits=same)"


def layer_bits(bits: int | None, first_last: bool, spec: QuantSpec) -> int | None:
    """Bits of a weight layer or activation point under ``spec``'s first/last-layer rule (``bits``: the
    setting's; ``first_last``: the layer is one the rule covers)."""
    if bits is not None and bits < FIRST_LAST_BITS and first_last and spec.first_last_8bit:
        return FIRST_LAST_BITS
    return bits
