"""ConvNets-250K: the mobile-friendly CNN space of GHN-Q (shared/papers/002).

An architecture is a stem conv, three stages separated by two downsampling ops, and a head:

    stem16-32:conv3,sep5+r-maxpool-64:mb6k3+r,dil3-convs2-128:conv1-fc128

Each stage has a width and 1-4 blocks (more in the ``deep`` split); each block is one op from
``OPS`` with an optional residual connection (identity, or a 1x1 conv+BN projection when the
channel count changes). The head is global average pooling, an optional hidden linear layer and
the classifier. Nets without BatchNorm (the ``bn_free`` split) carry a ``-nobn`` suffix and give
every conv a bias instead.

The Optuna search space is fixed-length (every parameter is suggested on every trial, as NSGA-II's
crossover needs), while a :class:`Genome` keeps only the active blocks, so two trials that differ
only in inactive slots are the same architecture with the same string and cache key.
"""

from __future__ import annotations

import json
import math
import numbers
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qnas.errors import QnasError

NAME = "convnets250k"
MAX_PARAMS = 10_000_000
NUM_STAGES = 3
MIN_LOG_PARAMS = 4.0  # log10 of the smallest sizes `sample` aims for
MAX_DEPTH = 4  # blocks per stage sampled for training/search; the `deep` split goes beyond

# op name -> (kind, kernel, expansion); `dil` ops are depthwise with dilation 2.
OPS: dict[str, tuple[str, int, int]] = {
    "conv1": ("conv", 1, 1),
    "conv3": ("conv", 3, 1),
    "conv5": ("conv", 5, 1),
    "sep3": ("sep", 3, 1),
    "sep5": ("sep", 5, 1),
    "dil3": ("dil", 3, 1),
    "dil5": ("dil", 5, 1),
    "mb1k3": ("mb", 3, 1),
    "mb3k3": ("mb", 3, 3),
    "mb6k3": ("mb", 3, 6),
    "mb1k5": ("mb", 5, 1),
    "mb3k5": ("mb", 5, 3),
    "mb6k5": ("mb", 5, 6),
}
DOWNSAMPLE = ("convs2", "maxpool", "avgpool")
STEM_WIDTHS = (8, 16, 24, 32)
# Increasing width choices per stage: small early, a few hundred channels late.
STAGE_WIDTHS = ((8, 16, 24, 32, 48, 64), (16, 32, 48, 64, 96, 128), (32, 64, 96, 128, 192, 256, 384))
HIDDEN = (0, 64, 128, 256)
# OOD splits of GHN-Q: deeper and wider than anything sampled for training.
DEEP_DEPTHS = (5, 6, 7, 8)
WIDE_STAGE_WIDTHS = ((96, 128, 160), (192, 256, 320), (448, 512, 640))
SPLIT_SIZES = {"id": 500, "deep": 100, "wide": 100, "bn_free": 100}
SPLIT_SEEDS = {"id": 2501, "deep": 2502, "wide": 2503, "bn_free": 2504}
_SPLIT_DIR = Path(__file__).parent / "splits"


@dataclass(frozen=True)
class Block:
    op: str
    residual: bool = False


@dataclass(frozen=True)
class Stage:
    width: int
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Genome:
    """One architecture; frozen and hashable, so it can key caches directly."""

    stem: int
    stages: tuple[Stage, ...]
    downsample: tuple[str, ...]  # between consecutive stages
    hidden: int = 0  # width of the optional hidden linear layer (0: none)
    bn: bool = True

    def __post_init__(self) -> None:
        _validate(self)

    def __str__(self) -> str:
        return to_string(self)


def _validate(g: Genome) -> None:
    if g.stem <= 0 or g.hidden < 0:
        raise QnasError(f"bad genome: stem {g.stem} and hidden {g.hidden} must be positive")
    if not g.stages or len(g.downsample) != len(g.stages) - 1:
        raise QnasError("bad genome: need one downsampling op between each pair of stages")
    for d in g.downsample:
        if d not in DOWNSAMPLE:
            raise QnasError(f"bad genome: unknown downsampling {d!r} (choose from {', '.join(DOWNSAMPLE)})")
    for s in g.stages:
        if s.width <= 0 or not s.blocks:
            raise QnasError("bad genome: every stage needs a positive width and at least one block")
        for b in s.blocks:
            if b.op not in OPS:
                raise QnasError(f"bad genome: unknown op {b.op!r} (choose from {', '.join(OPS)})")


# ----------------------------------------------------------------------------- string and JSON forms


def to_string(g: Genome) -> str:
    """Compact, human-readable form, e.g. ``stem16-32:conv3,sep5+r-maxpool-64:mb6k3-fc0``."""
    parts = [f"stem{g.stem}"]
    for i, stage in enumerate(g.stages):
        if i:
            parts.append(g.downsample[i - 1])
        blocks = ",".join(b.op + ("+r" if b.residual else "") for b in stage.blocks)
        parts.append(f"{stage.width}:{blocks}")
    parts.append(f"fc{g.hidden}")
    if not g.bn:
        parts.append("nobn")
    return "-".join(parts)


def from_string(text: str) -> Genome:
    """Inverse of :func:`to_string`; a malformed string raises QnasError naming the bad token."""
    tokens = text.strip().split("-")
    try:
        if len(tokens) < 3 or not tokens[0].startswith("stem"):
            raise ValueError("must start with stem<width>")
        stem = int(tokens[0][4:])
        bn = True
        if tokens[-1] == "nobn":
            bn, tokens = False, tokens[:-1]
        if not tokens[-1].startswith("fc"):
            raise ValueError("must end with fc<hidden>")
        hidden = int(tokens[-1][2:])
        body = tokens[1:-1]
        if len(body) % 2 != 1:
            raise ValueError("stages and downsampling ops must alternate")
        stages, downs = [], []
        for i, tok in enumerate(body):
            if i % 2:
                downs.append(tok)
                continue
            width, _, blocks = tok.partition(":")
            if not blocks:
                raise ValueError(f"stage {tok!r} must look like <width>:<op>[+r],...")
            parsed = []
            for b in blocks.split(","):
                op, res = (b[:-2], True) if b.endswith("+r") else (b, False)
                parsed.append(Block(op, res))
            stages.append(Stage(int(width), tuple(parsed)))
    except ValueError as exc:
        raise QnasError(f"cannot parse architecture {text!r}: {exc}") from None
    return Genome(stem, tuple(stages), tuple(downs), hidden, bn)


def to_json(g: Genome) -> dict[str, Any]:
    return {
        "stem": g.stem,
        "stages": [
            {"width": s.width, "blocks": [{"op": b.op, "residual": b.residual} for b in s.blocks]}
            for s in g.stages
        ],
        "downsample": list(g.downsample),
        "hidden": g.hidden,
        "bn": g.bn,
    }


def _show(value: Any) -> str:
    """``value`` as JSON for an error message, cut short so the message stays one short line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_int(value: Any, field: str) -> int:
    """``value`` as an int, refusing bools, non-integral or non-finite floats and strings."""
    # bool is an Integral too: `true` must not become 1
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QnasError(f"bad genome JSON: {field} must be an integer, got {_show(value)}")
    if not isinstance(value, numbers.Integral):
        # a float is harmless only when it is a whole, finite number (24.0 is 24; 24.5 and 1e400 are not)
        if not math.isfinite(value) or not float(value).is_integer():
            raise QnasError(f"bad genome JSON: {field} must be an integer, got {_show(value)}")
    return int(value)


def _json_bool(value: Any, field: str) -> bool:
    # "no" is truthy: only JSON true/false mean a boolean
    if not isinstance(value, bool):
        raise QnasError(f"bad genome JSON: {field} must be true or false, got {_show(value)}")
    return value


def _json_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise QnasError(f"bad genome JSON: {field} must be a string, got {_show(value)}")
    return value


def _json_field(d: Any, key: str, where: str, default: Any = ...) -> Any:
    """``d[key]``, with a one-line error when ``d`` is not an object or lacks ``key`` (and has no default)."""
    if not isinstance(d, dict):
        raise QnasError(f"bad genome JSON: {where or 'the genome'} must be an object, got {_show(d)}")
    if key not in d:
        if default is ...:
            raise QnasError(f"bad genome JSON: missing field {where + '.' if where else ''}{key}")
        return default
    return d[key]


def _json_list(value: Any, field: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):  # tuples: genomes built in Python rather than read from JSON
        raise QnasError(f"bad genome JSON: {field} must be a list, got {_show(value)}")
    return value


def from_json(d: dict[str, Any]) -> Genome:
    """Inverse of :func:`to_json`; strict about types, so a typo is an error rather than a different net."""
    stages = []
    for i, s in enumerate(_json_list(_json_field(d, "stages", ""), "stages")):
        where = f"stages[{i}]"
        width = _json_int(_json_field(s, "width", where), f"{where}.width")
        blocks = []
        for j, b in enumerate(_json_list(_json_field(s, "blocks", where), f"{where}.blocks")):
            bwhere = f"{where}.blocks[{j}]"
            blocks.append(Block(_json_str(_json_field(b, "op", bwhere), f"{bwhere}.op"),
                                _json_bool(_json_field(b, "residual", bwhere), f"{bwhere}.residual")))
        stages.append(Stage(width, tuple(blocks)))
    downsample = tuple(_json_str(x, f"downsample[{k}]")
                       for k, x in enumerate(_json_list(_json_field(d, "downsample", ""), "downsample")))
    stem = _json_int(_json_field(d, "stem", ""), "stem")
    hidden = _json_int(_json_field(d, "hidden", "", 0), "hidden")
    return Genome(stem, tuple(stages), downsample, hidden, _json_bool(_json_field(d, "bn", "", True), "bn"))


def parse(text: str) -> Genome:
    """Accept either the string form or the JSON form (as text)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise QnasError(f"bad genome JSON: {exc}") from None
    return from_string(text)


# ----------------------------------------------------------------------------- sampling


def _sample_unbounded(rng: random.Random, *, depths=(1, 2, 3, 4), widths=STAGE_WIDTHS, bn=True) -> Genome:
    stages = []
    for i in range(NUM_STAGES):
        depth = rng.choice(depths)
        blocks = tuple(Block(rng.choice(tuple(OPS)), rng.random() < 0.5) for _ in range(depth))
        stages.append(Stage(rng.choice(widths[i]), blocks))
    downs = tuple(rng.choice(DOWNSAMPLE) for _ in range(NUM_STAGES - 1))
    return Genome(rng.choice(STEM_WIDTHS), tuple(stages), downs, rng.choice(HIDDEN), bn)


def sample(
    rng: random.Random,
    max_params: int = MAX_PARAMS,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    bn: bool = True,
) -> Genome:
    """Sample an architecture of at most ``max_params`` parameters, log-uniform in size
    (``bn=False``: without BatchNorm, as in the ``bn_free`` split).

    Uniform choices per slot alone bunch sizes around 1e5-1e6; drawing a target size
    log-uniformly in [1e4, max_params] and rejecting genomes far from it spreads them evenly
    over the orders of magnitude, so the GHN sees small and large nets alike.
    """
    return _sample_bounded(rng, max_params, input_shape, num_classes, bn=bn)


def _sample_bounded(rng, max_params, input_shape, num_classes, log_uniform=True, **kwargs) -> Genome:
    lo, hi = MIN_LOG_PARAMS, math.log10(max_params)
    target = rng.uniform(lo, hi) if log_uniform and hi > lo + 0.5 else None
    best, best_gap = None, math.inf
    for _ in range(20_000):
        g = _sample_unbounded(rng, **kwargs)
        n = count_params(g, input_shape, num_classes)
        if n > max_params:
            continue
        gap = 0.0 if target is None else abs(math.log10(n) - target)
        if gap <= 0.25:
            return g
        if gap < best_gap:
            best, best_gap = g, gap
    if best is None:
        raise QnasError(f"could not sample an architecture with at most {max_params:,} parameters")
    return best


def suggest(trial: Any) -> Genome:
    """Optuna define-by-run: suggests every parameter on every trial (fixed-length genome)."""
    stem = trial.suggest_categorical("stem", list(STEM_WIDTHS))
    stages = []
    for i in range(NUM_STAGES):
        width = trial.suggest_categorical(f"s{i}_width", list(STAGE_WIDTHS[i]))
        depth = trial.suggest_int(f"s{i}_depth", 1, MAX_DEPTH)
        blocks = []
        for j in range(MAX_DEPTH):
            op = trial.suggest_categorical(f"s{i}_b{j}_op", list(OPS))
            res = trial.suggest_categorical(f"s{i}_b{j}_res", [False, True])
            if j < depth:
                blocks.append(Block(op, res))
        stages.append(Stage(width, tuple(blocks)))
    downs = tuple(trial.suggest_categorical(f"down{i}", list(DOWNSAMPLE)) for i in range(1, NUM_STAGES))
    hidden = trial.suggest_categorical("hidden", list(HIDDEN))
    return Genome(stem, tuple(stages), downs, hidden, True)


# ----------------------------------------------------------------------------- building


def _conv_bn(cin: int, cout: int, k: int, *, stride=1, groups=1, dilation=1, bn=True, relu=True) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, dilation, groups, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _op_layers(op: str, cin: int, cout: int, bn: bool) -> nn.Sequential:
    kind, k, expand = OPS[op]
    if kind == "conv":
        return _conv_bn(cin, cout, k, bn=bn)
    if kind in ("sep", "dil"):
        dil = 2 if kind == "dil" else 1
        return nn.Sequential(
            _conv_bn(cin, cin, k, groups=cin, dilation=dil, bn=bn), _conv_bn(cin, cout, 1, bn=bn)
        )
    mid = cin * expand
    layers = [_conv_bn(cin, mid, 1, bn=bn)] if expand > 1 else []
    layers += [_conv_bn(mid, mid, k, groups=mid, bn=bn), _conv_bn(mid, cout, 1, bn=bn, relu=False)]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """One block: ``body(x)``, plus ``x`` (or a 1x1 projection of it) when residual."""

    def __init__(self, op: str, cin: int, cout: int, residual: bool, bn: bool) -> None:
        super().__init__()
        self.body = _op_layers(op, cin, cout, bn)
        self.residual = residual
        self.proj = _conv_bn(cin, cout, 1, bn=bn, relu=False) if residual and cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if not self.residual:
            return out
        return out + (self.proj(x) if self.proj is not None else x)


class Net(nn.Module):
    def __init__(self, g: Genome, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stem = _conv_bn(input_shape[0], g.stem, 3, bn=g.bn)
        layers: list[nn.Module] = []
        cin = g.stem
        for i, stage in enumerate(g.stages):
            if i:
                down = g.downsample[i - 1]
                if down == "convs2":
                    layers.append(_conv_bn(cin, stage.width, 3, stride=2, bn=g.bn))
                    cin = stage.width
                else:
                    pool = nn.MaxPool2d if down == "maxpool" else nn.AvgPool2d
                    layers.append(pool(3, 2, 1))
            for b in stage.blocks:
                layers.append(ResBlock(b.op, cin, stage.width, b.residual, g.bn))
                cin = stage.width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        if g.hidden:
            head += [nn.Linear(cin, g.hidden), nn.ReLU()]
            cin = g.hidden
        head.append(nn.Linear(cin, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.stem(x)))
        return self.head(torch.flatten(x, 1))


def build(g: Genome, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """The module for ``g``; PyTorch's default init (scoring supplies its own parameters)."""
    return Net(g, tuple(input_shape), num_classes)


# ----------------------------------------------------------------------------- analytic counts
# Each helper returns (params, macs_per_pixel_of_its_output) for conv+BN units, so the per-op
# bookkeeping mirrors `_conv_bn` / `_op_layers` exactly and the tests compare with the module.


def _unit(cin: int, cout: int, k: int, groups: int, bn: bool) -> tuple[int, int]:
    weights = cout * (cin // groups) * k * k
    return weights + (2 * cout if bn else cout), weights


def _op_cost(op: str, cin: int, cout: int, bn: bool) -> tuple[int, int]:
    kind, k, expand = OPS[op]
    if kind == "conv":
        return _unit(cin, cout, k, 1, bn)
    if kind in ("sep", "dil"):
        units = [_unit(cin, cin, k, cin, bn), _unit(cin, cout, 1, 1, bn)]
    else:
        mid = cin * expand
        units = [_unit(cin, mid, 1, 1, bn)] if expand > 1 else []
        units += [_unit(mid, mid, k, mid, bn), _unit(mid, cout, 1, 1, bn)]
    return sum(u[0] for u in units), sum(u[1] for u in units)


def _walk(g: Genome, input_shape, num_classes) -> tuple[int, int]:
    """Total (params, MACs); MACs count convs and linears (BatchNorm folds away)."""
    c, h, w = input_shape
    p, m = _unit(c, g.stem, 3, 1, g.bn)
    params, macs = p, m * h * w
    cin = g.stem
    for i, stage in enumerate(g.stages):
        if i:
            h, w = (h + 1) // 2, (w + 1) // 2  # k3 s2 p1, conv or pool alike
            if g.downsample[i - 1] == "convs2":
                p, m = _unit(cin, stage.width, 3, 1, g.bn)
                params, macs, cin = params + p, macs + m * h * w, stage.width
        for b in stage.blocks:
            p, m = _op_cost(b.op, cin, stage.width, g.bn)
            if b.residual and cin != stage.width:
                pp, pm = _unit(cin, stage.width, 1, 1, g.bn)
                p, m = p + pp, m + pm
            params, macs, cin = params + p, macs + m * h * w, stage.width
    for fin, fout in ([(cin, g.hidden), (g.hidden, num_classes)] if g.hidden else [(cin, num_classes)]):
        params, macs = params + fin * fout + fout, macs + fin * fout
    return params, macs


def count_params(g: Genome, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> int:
    """Exactly ``sum(p.numel() for p in build(g, ...).parameters())``, without building."""
    return _walk(g, input_shape, num_classes)[0]


def count_macs(g: Genome, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> int:
    """Multiply-accumulates of one image through convs and linears (BatchNorm folded)."""
    return _walk(g, input_shape, num_classes)[1]


# ----------------------------------------------------------------------------- held-out splits


def generate_split(name: str, input_shape=(1, 28, 28), num_classes: int = 10) -> list[Genome]:
    """The GHN-Q test splits, from fixed seeds: ``id``, ``deep``, ``wide``, ``bn_free``."""
    if name not in SPLIT_SIZES:
        raise QnasError(f"unknown split {name!r} (choose from {', '.join(SPLIT_SIZES)})")
    rng = random.Random(SPLIT_SEEDS[name])
    kwargs: dict[str, Any] = {
        "id": {},
        # OOD splits keep their natural sizes: deep and wide nets cannot be small.
        "deep": {"depths": DEEP_DEPTHS, "log_uniform": False},
        "wide": {"widths": WIDE_STAGE_WIDTHS, "log_uniform": False},
        "bn_free": {"bn": False},
    }[name]
    out: list[Genome] = []
    seen: set[Genome] = set()
    while len(out) < SPLIT_SIZES[name]:
        g = _sample_bounded(rng, MAX_PARAMS, input_shape, num_classes, **kwargs)
        if g not in seen:
            seen.add(g)
            out.append(g)
    return out


def split_path(name: str) -> Path:
    return _SPLIT_DIR / f"{name}.json"


def load_split(name: str) -> list[Genome]:
    """The committed split (architecture strings in a JSON list)."""
    path = split_path(name)
    if name not in SPLIT_SIZES or not path.exists():
        raise QnasError(f"unknown split {name!r} (choose from {', '.join(SPLIT_SIZES)})")
    data = json.loads(path.read_text())
    return [from_string(s) for s in data["architectures"]]


def write_split(name: str) -> Path:
    genomes = generate_split(name)
    payload = {
        "space": NAME,
        "split": name,
        "seed": SPLIT_SEEDS[name],
        "generator": f"search_spaces.convnets250k.generate_split({name!r})",
        "architectures": [to_string(g) for g in genomes],
    }
    path = split_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def check_splits() -> dict[str, bool]:
    """Whether each committed split equals what its generator produces now."""
    result = {}
    for name in SPLIT_SIZES:
        try:
            result[name] = load_split(name) == generate_split(name)
        except QnasError:
            result[name] = False
    return result

