"""The ``user`` split: hand-written networks of the families users bring, to evaluate the predictor on.

    names = user_split.names()                           # 'densenet-bc', 'plain20', ...
    module = user_split.build("resnet20", (1, 28, 28), 10)
    user_split.family("resnet20")                        # 'resnet'

Written by hand for this split, the way a user writes a model (classes with a ``forward``), and
independent of the training generator (``qnas.families``): what the predictor is judged on is not what
it was trained on. The split covers DenseNet-style concatenation, deep plain and residual nets,
wide shallow nets, 7x7 kernels, VGG, SqueezeNet fire modules, MobileNet V1/V2 blocks, hard-swish and
SiLU activations, LeNet and a dilated net, with and without BatchNorm. Their trained accuracies are measured by
``benchmarks/ground_truth.py`` (architectures ``user:<name>``) at the ground truth's budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qnas.errors import QnasError

__all__ = ["PREFIX", "UserNet", "build", "family", "is_user_arch", "names"]

PREFIX = "user:"  # how the ground truth names a user-split network among architecture strings


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, bn: bool = True, dilation: int = 1,
         groups: int = 1) -> list[nn.Module]:
    pad = dilation * (k // 2)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=not bn)]
    return [*layers, nn.BatchNorm2d(cout), nn.ReLU()] if bn else [*layers, nn.ReLU()]


# ----------------------------------------------------------------------------- DenseNet


class DenseNet(nn.Module):
    """Dense blocks (BN-ReLU-1x1-BN-ReLU-3x3 when ``bottleneck``), transitions halving channels."""

    def __init__(self, cin: int, classes: int, growth: int, layers: tuple[int, ...], stem_k: int = 3,
                 bottleneck: bool = True, bn: bool = True) -> None:
        super().__init__()
        ch = 2 * growth
        self.stem = nn.Conv2d(cin, ch, stem_k, padding=stem_k // 2, bias=False)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, n in enumerate(layers):
            block = nn.ModuleList()
            for _ in range(n):
                unit: list[nn.Module] = []
                if bottleneck:
                    unit += [nn.BatchNorm2d(ch) if bn else nn.Identity(), nn.ReLU(), nn.Conv2d(ch, 4 * growth, 1)]
                    mid = 4 * growth
                else:
                    mid = ch
                unit += [nn.BatchNorm2d(mid) if bn else nn.Identity(), nn.ReLU(), nn.Conv2d(mid, growth, 3, padding=1)]
                block.append(nn.Sequential(*unit))
                ch += growth
            self.blocks.append(block)
            if i < len(layers) - 1:
                self.transitions.append(nn.Sequential(nn.Conv2d(ch, ch // 2, 1), nn.AvgPool2d(2)))
                ch //= 2
        self.norm = nn.BatchNorm2d(ch) if bn else nn.Identity()
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            for unit in block:
                x = torch.cat([x, unit(x)], 1)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        x = F.relu(self.norm(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ----------------------------------------------------------------------------- plain and residual


class PlainNet(nn.Module):
    """``depth`` kxk conv layers in three stages (stride 2 between), global pooling, classifier."""

    def __init__(self, cin: int, classes: int, depth: int, width: int, k: int = 3, bn: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = cin
        per = depth // 3
        for i in range(depth):
            stage = min(i // per, 2)
            out = width * 2 ** stage
            layers += _cbr(ch, out, k, 2 if i in (per, 2 * per) else 1, bn)
            ch = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, bn: bool, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.act1, self.act2 = act(), act()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn),
                                          nn.BatchNorm2d(cout) if bn else nn.Identity())

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 6n+2 layers, widths w, 2w, 4w."""

    def __init__(self, cin: int, classes: int, n: int, width: int = 16, bn: bool = True, stem_k: int = 3,
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_cbr(cin, width, stem_k, 1, bn))
        blocks, ch = [], width
        for stage in range(3):
            for b in range(n):
                out = width * 2 ** stage
                blocks.append(BasicBlock(ch, out, 2 if stage and b == 0 else 1, bn, act))
                ch = out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# ----------------------------------------------------------------------------- wide, 7x7, VGG, LeNet


class WideShallow(nn.Module):
    """One to three wide kxk convolutions, each followed by max pooling, and an optional hidden layer."""

    def __init__(self, cin: int, classes: int, widths: tuple[int, ...], k: int = 3, hidden: int = 0,
                 bn: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = cin
        for w in widths:
            layers += [*_cbr(ch, w, k, 1, bn), nn.MaxPool2d(2)]
            ch = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        head: list[nn.Module] = [nn.Linear(ch, hidden), nn.ReLU(), nn.Linear(hidden, classes)] if hidden else \
            [nn.Linear(ch, classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


class VGG(nn.Module):
    """VGG stacks of 3x3 convolutions (``cfg``: widths, 'M' for max pooling), a two-layer classifier."""

    def __init__(self, cin: int, classes: int, cfg: tuple[int | str, ...], hidden: int = 256, bn: bool = True,
                 k: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = cin
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += _cbr(ch, int(v), k, 1, bn)
                ch = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(ch, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class LeNet5(nn.Module):
    """LeNet-5 with max pooling and ReLU (5x5 kernels, 120-84 hidden layers)."""

    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class DilatedNet(nn.Module):
    """Context aggregation with growing dilation (Yu & Koltun 2016) at full resolution, then pooling."""

    def __init__(self, cin: int, classes: int, width: int, dilations: tuple[int, ...] = (1, 2, 4, 8, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = cin
        for d in dilations:
            layers += _cbr(ch, width, 3, 1, True, dilation=d)
            ch = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# ----------------------------------------------------------------------------- SqueezeNet, MobileNet


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int, bypass: bool) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())
        self.bypass = bypass and cin == 2 * expand

    def forward(self, x):
        s = self.squeeze(x)
        y = torch.cat([self.expand1(s), self.expand3(s)], 1)
        return y + x if self.bypass else y


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 shape (Iandola et al. 2016), scaled to 28x28 inputs; simple bypasses optional."""

    def __init__(self, cin: int, classes: int, base: int = 16, bypass: bool = False) -> None:
        super().__init__()
        b = base
        self.features = nn.Sequential(
            nn.Conv2d(cin, 4 * b, 3, padding=1), nn.ReLU(),
            Fire(4 * b, b, 4 * b, bypass), Fire(8 * b, b, 4 * b, bypass), nn.MaxPool2d(2),
            Fire(8 * b, 2 * b, 8 * b, bypass), Fire(16 * b, 2 * b, 8 * b, bypass), nn.MaxPool2d(2),
            Fire(16 * b, 3 * b, 12 * b, bypass), Fire(24 * b, 3 * b, 12 * b, bypass))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(24 * b, classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int,
                 act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid), act(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) settings (t, c, n, s), width-scaled for 28x28 inputs."""

    def __init__(self, cin: int, classes: int, settings: tuple[tuple[int, int, int, int], ...], stem: int = 16,
                 last: int = 320, k: int = 3, act: type[nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cin, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), act()]
        ch = stem
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(ch, c, s if i == 0 else 1, t, k, act))
                ch = c
        layers += [nn.Conv2d(ch, last, 1, bias=False), nn.BatchNorm2d(last), act()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class MobileNetV1(nn.Module):
    """Depthwise-separable stacks (Howard et al. 2017): 3x3 depthwise + 1x1 pointwise, BN-ReLU each."""

    def __init__(self, cin: int, classes: int, widths: tuple[tuple[int, int], ...], stem: int = 16) -> None:
        super().__init__()
        layers = _cbr(cin, stem, 3, 1)
        ch = stem
        for out, stride in widths:
            layers += _cbr(ch, ch, 3, stride, groups=ch) + _cbr(ch, out, 1)
            ch = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        return self.fc(torch.mean(self.features(x), dim=(2, 3)))


# ----------------------------------------------------------------------------- the split


@dataclass(frozen=True)
class UserNet:
    family: str
    factory: Callable[[int, int], nn.Module]  # (input channels, classes) -> module


_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 1))
_REGISTRY: dict[str, UserNet] = {
    "densenet-bc": UserNet("densenet", lambda c, k: DenseNet(c, k, 12, (6, 6, 6))),
    "densenet-7x7": UserNet("densenet", lambda c, k: DenseNet(c, k, 16, (4, 4), stem_k=7, bottleneck=False)),
    "densenet-nobn": UserNet("densenet", lambda c, k: DenseNet(c, k, 12, (4, 4, 4), bn=False)),
    "plain20": UserNet("deep-plain", lambda c, k: PlainNet(c, k, 20, 16)),
    "plain32-narrow": UserNet("deep-plain", lambda c, k: PlainNet(c, k, 32, 8)),
    "plain20-nobn": UserNet("deep-plain", lambda c, k: PlainNet(c, k, 20, 16, bn=False)),
    "resnet20": UserNet("resnet", lambda c, k: ResNet(c, k, 3)),
    "resnet44-narrow": UserNet("resnet", lambda c, k: ResNet(c, k, 7, width=8)),
    "resnet14-nobn": UserNet("resnet", lambda c, k: ResNet(c, k, 2, bn=False)),
    "wide1-512": UserNet("wide-shallow", lambda c, k: WideShallow(c, k, (512,))),
    "wide2-256-hidden": UserNet("wide-shallow", lambda c, k: WideShallow(c, k, (256, 256), hidden=512)),
    "wide1-1024-7x7": UserNet("wide-shallow", lambda c, k: WideShallow(c, k, (1024,), k=7)),
    "conv7x7": UserNet("7x7", lambda c, k: WideShallow(c, k, (32, 64, 128), k=7)),
    "resnet20-stem7": UserNet("7x7", lambda c, k: ResNet(c, k, 3, stem_k=7)),
    "vgg8-bn": UserNet("vgg", lambda c, k: VGG(c, k, (32, "M", 64, "M", 128, 128, "M", 256, 256))),
    "vgg8-nobn": UserNet("vgg", lambda c, k: VGG(c, k, (32, "M", 64, "M", 128, 128, "M", 256, 256), bn=False)),
    "vgg11-slim": UserNet("vgg", lambda c, k: VGG(c, k, (16, "M", 32, "M", 64, 64, "M", 128, 128, 128, 128),
                                                  hidden=128)),
    "squeezenet": UserNet("squeezenet", lambda c, k: SqueezeNet(c, k)),
    "squeezenet-bypass": UserNet("squeezenet", lambda c, k: SqueezeNet(c, k, base=24, bypass=True)),
    "mobilenetv2": UserNet("mobilenet", lambda c, k: MobileNetV2(c, k, _V2)),
    "mobilenetv2-k7": UserNet("mobilenet", lambda c, k: MobileNetV2(c, k, _V2, k=7)),
    "mobilenetv1": UserNet("mobilenet", lambda c, k: MobileNetV1(c, k, ((32, 1), (64, 2), (64, 1), (128, 2),
                                                                        (128, 1), (256, 1)))),
    "mobilenetv2-hardswish": UserNet("hardswish-silu", lambda c, k: MobileNetV2(c, k, _V2, k=5, act=nn.Hardswish)),
    "resnet20-silu": UserNet("hardswish-silu", lambda c, k: ResNet(c, k, 3, act=nn.SiLU)),
    "lenet5": UserNet("lenet", lambda c, k: LeNet5(c, k)),
    "dilated": UserNet("dilated", lambda c, k: DilatedNet(c, k, 32)),
}


def names(input_shape: tuple[int, int, int] | None = None) -> list[str]:
    """The split's networks (those that take ``input_shape``, when given: LeNet-5 is written for 28x28)."""
    return [n for n in _REGISTRY if input_shape is None or _takes(n, input_shape)]


def _takes(name: str, input_shape: tuple[int, int, int]) -> bool:
    return name != "lenet5" or tuple(input_shape[1:]) == (28, 28)


def _net(name: str) -> UserNet:
    name = name.removeprefix(PREFIX)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise QnasError(f"unknown user-split network {name!r}; known: {', '.join(_REGISTRY)}") from None


def family(name: str) -> str:
    return _net(name).family


def is_user_arch(arch: str) -> bool:
    return arch.startswith(PREFIX)


def build(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The network ``name`` (or ``user:<name>``), freshly initialized by PyTorch's default init."""
    if not _takes(name.removeprefix(PREFIX), input_shape):
        raise QnasError(f"{name} is written for 28x28 inputs, not {tuple(input_shape[1:])}")
    return _net(name).factory(input_shape[0], num_classes)
