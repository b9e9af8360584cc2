"""Network families users bring, beyond the search space: a generator of GHN training architectures.

    key = sample_key(random.Random(0), max_params=10**7, input_shape=(1, 28, 28), num_classes=10)
    key             # 'densenet:act=relu,bn=1,blocks=3,growth=12,k=3,layers=4,stem=24'
    module = build(key, (1, 28, 28), 10)   # the same network, every time, from its key

The search space (``convnets250k``) is what qnas searches; these families are what the predictor must
also score sensibly when users hand it their own networks (issue 18): concatenation (DenseNet), deep
plain and residual nets (>= 20 layers), wide shallow nets, 7x7 kernels, VGG stacks, SqueezeNet fire
modules, MobileNet inverted bottlenecks, each with and without BatchNorm. A GHN trained on a mix of
space and family draws sees their graphs; the space itself is unchanged.

**Key grammar.** ``<family>:<name>=<value>,...`` with the names sorted; values are integers or short
words. ``build`` accepts exactly the names its family declares, so a key is a complete, reproducible
description (the predictor-training cache and logs use it as the architecture's identity).

**Families** (``FAMILIES``): ``plain``, ``resnet``, ``densenet``, ``wide``, ``vgg``, ``squeezenet``,
``mobilenet``. Each declares how to draw its hyperparameters and how to build the module; a draw over
``max_params`` is redrawn, and a width multiplier drawn log-uniformly spreads the sizes over the whole
range up to the bound. Add a family by adding one ``Family`` to ``_REGISTRY``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qnas.errors import QnasError

__all__ = ["ACTIVATIONS", "FAMILIES", "Family", "build", "family_of", "make_key", "parse_key", "sample_key"]

# Activations a family may use; the quantized executor must know each (qnas.quant).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": lambda: nn.ReLU(inplace=True),
                                                   "relu6": lambda: nn.ReLU6(inplace=True),
                                                   "hardswish": nn.Hardswish, "silu": nn.SiLU}
MAX_DRAWS = 200  # redraws before giving up on a bound no draw of a family fits under
_MAY_BE_ZERO = {"bn", "hidden", "flatten", "convhead", "bottleneck", "preact"}  # flags and optional widths
_MAX = {"bn": 1, "flatten": 1, "convhead": 1, "bottleneck": 1, "preact": 1, "mlp": 2, "k": 7, "depth": 64,
        "blocks": 16, "layers": 16, "fires": 16, "convs": 4, "expand": 8}


# ----------------------------------------------------------------------------- building blocks


def _conv(cin: int, cout: int, k: int, stride: int, bn: bool, act: str | None, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(ACTIVATIONS[act]())
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """Global average pooling (or, with ``flat`` = C*H*W, the whole map flattened, as LeNet and the first
    VGGs), ``mlp`` optional hidden layers (``hidden`` wide, then half as wide: LeNet's 120-84), the classifier."""

    def __init__(self, cin: int, hidden: int, num_classes: int, act: str, flat: int = 0, mlp: int = 1) -> None:
        super().__init__()
        self.pool = nn.Identity() if flat else nn.AdaptiveAvgPool2d(1)
        width = flat or cin
        layers: list[nn.Module] = []
        for i in range(mlp if hidden else 0):
            out = max(hidden >> i, 8)
            layers += [nn.Linear(width, out), ACTIVATIONS[act]()]
            width = out
        self.hidden = nn.Sequential(*layers) if layers else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.hidden(self.pool(x).flatten(1)))


class _ConvHead(nn.Module):
    """SqueezeNet's classifier: a 1x1 convolution to the classes, ReLU, global average pooling."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x))).flatten(1)


def _flat(channels: int, shape: tuple[int, int, int], halvings: int) -> int:
    """C*H*W after ``halvings`` 2x2 max poolings (floor, as nn.MaxPool2d(2)) of an input of ``shape``."""
    return channels * (shape[1] >> halvings) * (shape[2] >> halvings)


class _Residual(nn.Module):
    """Two kxk convolutions (or 1x1-kxk-1x1 bottleneck) plus the identity or a 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int, k: int, bn: bool, act: str, bottleneck: bool) -> None:
        super().__init__()
        if bottleneck:
            mid = max(cout // 4, 4)
            self.body = nn.Sequential(_conv(cin, mid, 1, 1, bn, act), _conv(mid, mid, k, stride, bn, act),
                                      _conv(mid, cout, 1, 1, bn, None))
        else:
            self.body = nn.Sequential(_conv(cin, cout, k, stride, bn, act), _conv(cout, cout, k, 1, bn, None))
        self.skip = _conv(cin, cout, 1, stride, bn, None) if stride != 1 or cin != cout else nn.Identity()
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


class _DenseLayer(nn.Module):
    """``growth`` new channels concatenated to the input (DenseNet): conv-BN-act, or with ``preact``
    BN-act-conv as DenseNet itself; with ``bottleneck`` a 1x1 conv to 4 x growth first (DenseNet-BC)."""

    def __init__(self, cin: int, growth: int, k: int, bn: bool, act: str, preact: bool, bottleneck: bool) -> None:
        super().__init__()
        mid = 4 * growth if bottleneck else cin
        if preact:
            def unit(i: int, o: int, kk: int) -> list[nn.Module]:
                return [*([nn.BatchNorm2d(i)] if bn else []), ACTIVATIONS[act](), nn.Conv2d(i, o, kk, 1, kk // 2)]
            layers = (unit(cin, mid, 1) if bottleneck else []) + unit(mid, growth, k)
        else:
            layers = ([_conv(cin, mid, 1, 1, bn, act)] if bottleneck else []) + [_conv(mid, growth, k, 1, bn, act)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return torch.cat([x, self.conv(x)], 1)


class _Fire(nn.Module):
    """SqueezeNet fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin: int, squeeze: int, expand: int, bn: bool, act: str) -> None:
        super().__init__()
        self.squeeze = _conv(cin, squeeze, 1, 1, bn, act)
        self.e1 = _conv(squeeze, expand, 1, 1, bn, act)
        self.e3 = _conv(squeeze, expand, 3, 1, bn, act)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise kxk, 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int, bn: bool, act: str) -> None:
        super().__init__()
        mid = cin * expand
        layers = [_conv(cin, mid, 1, 1, bn, act)] if expand > 1 else []
        layers += [_conv(mid, mid, k, stride, bn, act, groups=mid), _conv(mid, cout, 1, 1, bn, None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return y + x if self.residual else y


# ----------------------------------------------------------------------------- the families


def _w(base: int, mult: float) -> int:
    return max(4, int(round(base * mult / 4)) * 4)


def _plain(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    layers, ch = [], shape[0]
    for i in range(c["depth"]):
        stage = min(3 * i // c["depth"], 2)
        out = c["width"] * 2 ** stage
        down = i > 0 and stage != min(3 * (i - 1) // c["depth"], 2)
        layers.append(_conv(ch, out, c["k"], 2 if down else 1, c["bn"], c["act"]))
        ch = out
    return nn.Sequential(*layers, _Head(ch, 0, classes, c["act"]))


def _resnet(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    cin, ch = shape[0], c["width"]
    layers: list[nn.Module] = [_conv(cin, ch, c["stem"], 1, c["bn"], c["act"])]
    for stage in range(3):
        for b in range(c["blocks"]):
            out = c["width"] * 2 ** stage * (4 if c["bottleneck"] else 1)
            layers.append(_Residual(ch, out, 2 if stage and b == 0 else 1, c["k"], c["bn"], c["act"],
                                    bool(c["bottleneck"])))
            ch = out
    return nn.Sequential(*layers, _Head(ch, 0, classes, c["act"]))


def _densenet(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    cin, ch = shape[0], c["stem"]
    layers: list[nn.Module] = [_conv(cin, ch, c["k"], 1, c["bn"], c["act"])]
    for block in range(c["blocks"]):
        for _ in range(c["layers"]):
            layers.append(_DenseLayer(ch, c["growth"], 3, c["bn"], c["act"], bool(c["preact"]),
                                      bool(c["bottleneck"])))
            ch += c["growth"]
        if block < c["blocks"] - 1:  # transition: halve channels and resolution
            layers += [_conv(ch, ch // 2, 1, 1, c["bn"], c["act"]), nn.AvgPool2d(2)]
            ch //= 2
    if c["preact"]:  # the last dense layer's output is not normalized yet
        layers += [*([nn.BatchNorm2d(ch)] if c["bn"] else []), ACTIVATIONS[c["act"]]()]
    return nn.Sequential(*layers, _Head(ch, 0, classes, c["act"]))


def _wide(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    layers, ch = [], shape[0]
    for _ in range(c["depth"]):
        layers += [_conv(ch, c["width"], c["k"], 1, c["bn"], c["act"]), nn.MaxPool2d(2)]
        ch = c["width"]
    flat = _flat(ch, shape, c["depth"]) if c["flatten"] else 0
    return nn.Sequential(*layers, _Head(ch, c["hidden"], classes, c["act"], flat, c["mlp"]))


def _vgg(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    layers, ch = [], shape[0]
    for stage in range(3):
        for _ in range(c["convs"]):
            layers.append(_conv(ch, c["width"] * 2 ** stage, c["k"], 1, c["bn"], c["act"]))
            ch = c["width"] * 2 ** stage
        layers.append(nn.MaxPool2d(2))
    flat = _flat(ch, shape, 3) if c["flatten"] else 0
    return nn.Sequential(*layers, _Head(ch, c["hidden"], classes, c["act"], flat, c["mlp"]))


def _squeezenet(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    cin = shape[0]
    ch = c["stem"]
    layers: list[nn.Module] = [_conv(cin, ch, c["k"], 1, c["bn"], c["act"])]
    for i in range(c["fires"]):
        squeeze = _w(c["squeeze"], 2 ** (i * 2 // c["fires"]))
        layers.append(_Fire(ch, squeeze, squeeze * 4, c["bn"], c["act"]))
        ch = squeeze * 8
        if i in (c["fires"] // 3, 2 * c["fires"] // 3):
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, _ConvHead(ch, classes) if c["convhead"] else _Head(ch, 0, classes, c["act"]))


def _mobilenet(c: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    cin, ch = shape[0], c["width"]
    layers: list[nn.Module] = [_conv(cin, ch, 3, 1, c["bn"], c["act"])]
    for stage in range(3):
        out = c["width"] * 2 ** stage
        for b in range(c["blocks"]):
            layers.append(_InvertedResidual(ch, out, 2 if stage and b == 0 else 1, c["expand"], c["k"], c["bn"],
                                            c["act"]))
            ch = out
    layers.append(_conv(ch, ch * 4, 1, 1, c["bn"], c["act"]))
    return nn.Sequential(*layers, _Head(ch * 4, 0, classes, c["act"]))


@dataclass(frozen=True)
class Family:
    """How to draw one family's hyperparameters (``draw(rng, width_multiplier)``) and build it
    (``build(config, input_shape, num_classes)``)."""

    draw: Callable[[random.Random, float], dict[str, Any]]
    build: Callable[[dict[str, Any], tuple[int, int, int], int], nn.Module]


_ACT_DRAW = ("relu", "relu", "relu6", "hardswish", "silu")  # ReLU as common as the others together


def _common(rng: random.Random, acts: tuple[str, ...] = _ACT_DRAW) -> dict[str, Any]:
    return {"bn": int(rng.random() < 0.75), "act": rng.choice(acts)}  # a quarter BN-free, as users' nets


_REGISTRY: dict[str, Family] = {
    "plain": Family(lambda r, m: {"depth": r.randint(8, 32), "width": _w(16, m), "k": r.choice((3, 3, 5, 7)),
                                  **_common(r)}, _plain),
    "resnet": Family(lambda r, m: {"blocks": r.randint(1, 8), "width": _w(16, m), "k": 3, "stem": r.choice((3, 7)),
                                   "bottleneck": int(r.random() < 0.3), **_common(r)}, _resnet),
    "densenet": Family(lambda r, m: {"blocks": r.randint(2, 3), "layers": r.randint(2, 8), "growth": _w(12, m),
                                     "stem": _w(24, m), "k": r.choice((3, 7)), "preact": int(r.random() < 0.5),
                                     "bottleneck": int(r.random() < 0.5), **_common(r)}, _densenet),
    "wide": Family(lambda r, m: {"depth": r.randint(1, 3), "width": _w(256, m), "k": r.choice((3, 5, 7)),
                                 "hidden": r.choice((0, 0, 128, 512)), "flatten": int(r.random() < 0.3),
                                 "mlp": r.choice((1, 2)), **_common(r)}, _wide),
    "vgg": Family(lambda r, m: {"convs": r.randint(1, 3), "width": _w(32, m), "k": r.choice((3, 3, 5)),
                                "hidden": r.choice((0, 128, 256)), "flatten": int(r.random() < 0.3),
                                "mlp": r.choice((1, 2)), **_common(r)}, _vgg),
    "squeezenet": Family(lambda r, m: {"fires": r.randint(3, 8), "squeeze": _w(16, m), "stem": _w(32, m),
                                       "k": r.choice((3, 7)), "convhead": int(r.random() < 0.5), **_common(r)},
                         _squeezenet),
    "mobilenet": Family(lambda r, m: {"blocks": r.randint(1, 4), "width": _w(16, m), "expand": r.choice((1, 3, 6)),
                                      "k": r.choice((3, 5, 7)), **_common(r)}, _mobilenet),
}
FAMILIES: tuple[str, ...] = tuple(_REGISTRY)


# ----------------------------------------------------------------------------- keys


def _family(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QnasError(f"unknown network family {name!r}; known: {', '.join(FAMILIES)}") from None


def make_key(family: str, config: dict[str, Any]) -> str:
    _family(family)
    return f"{family}:" + ",".join(f"{k}={config[k]}" for k in sorted(config))


def parse_key(key: str) -> tuple[str, dict[str, Any]]:
    """(family, config) of a key; a malformed key or an unknown name is one QnasError."""
    family, sep, rest = key.partition(":")
    if not sep or not rest:
        raise QnasError(f"bad family key {key!r}: expected '<family>:<name>=<value>,...'")
    fam = _family(family)
    config: dict[str, Any] = {}
    for item in rest.split(","):
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise QnasError(f"bad family key {key!r}: {item!r} is not name=value")
        config[name] = int(value) if value.isdigit() else value
    expected = set(fam.draw(random.Random(0), 1.0))
    if set(config) != expected:
        raise QnasError(f"bad family key {key!r}: {family} takes {', '.join(sorted(expected))}")
    if config["act"] not in ACTIVATIONS:
        raise QnasError(f"bad family key {key!r}: activation {config['act']!r} is not one of "
                        f"{', '.join(ACTIVATIONS)}")
    for name, value in config.items():
        low = 0 if name in _MAY_BE_ZERO else 1
        if name != "act" and not (isinstance(value, int) and low <= value <= _MAX.get(name, 4096)):
            raise QnasError(f"bad family key {key!r}: {name}={value} is not an integer in [{low}, "
                            f"{_MAX.get(name, 4096)}]")
    if config.get("k", 1) % 2 == 0:
        raise QnasError(f"bad family key {key!r}: kernels are odd (same-size padding)")
    if make_key(family, config) != key:  # one spelling per network: keys are identities (caches, logs)
        raise QnasError(f"bad family key {key!r}: write it as {make_key(family, config)!r}")
    return family, config


def family_of(key: str) -> str | None:
    """The family of a family key, None for anything else (e.g. a search-space architecture string)."""
    family = key.partition(":")[0]
    return family if ":" in key and family in _REGISTRY else None


def build(key: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The network a key describes (deterministic: no random state is read)."""
    family, config = parse_key(key)
    return _family(family).build(config, tuple(input_shape), num_classes)


def sample_key(rng: random.Random, max_params: int, input_shape: tuple[int, int, int], num_classes: int,
               families: tuple[str, ...] = FAMILIES, min_params: int = 10_000) -> str:
    """A random family network within [``min_params``, ``max_params``], drawn from ``rng`` only."""
    family = rng.choice(families)  # first, so a family whose draws often overshoot is not under-represented
    for _ in range(MAX_DRAWS):
        # log-uniform width multiplier: sizes spread over decades, as the search space's
        mult = math.exp(rng.uniform(math.log(0.25), math.log(8.0)))
        key = make_key(family, _family(family).draw(rng, mult))
        with torch.device("meta"):  # shapes only: no memory, no initialization, no random state
            n = sum(p.numel() for p in build(key, input_shape, num_classes).parameters())
        if min_params <= n <= max_params:
            return key
    raise QnasError(f"no draw of {family} fits in [{min_params:,}, {max_params:,}] parameters")
