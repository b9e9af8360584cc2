"""The op table: what each traced operation means to the GHN graph, the quantized executor and ONNX export.

A ``torch.fx`` trace of a CNN calls three kinds of targets, and :func:`find` looks each up in one table:

- ``call_module`` nodes by the module's type (``MODULES``; the first class of its MRO the table names,
  so a subclass of ``nn.Conv2d`` is a conv);
- ``call_function`` nodes by the function (``FUNCTIONS``: ``operator.add``, ``F.max_pool2d``, ...);
- ``call_method`` nodes by the tensor method's name (``METHODS``: ``"view"``, ``"add_"``, ...).

Each target maps to one :class:`Op` with three fields, one per consumer:

``kind``: what the quantized executor (:mod:`qnas.quant`) does with it.
    ``conv`` / ``linear``: a weight layer (BatchNorm folded in, weights and output quantized).
    ``bn``: BatchNorm, folded into the conv it follows when it is that conv's only reader.
    ``relu``: an activation, ``act`` ``"relu"`` or ``"relu6"``; fused into the conv, linear, BatchNorm
    or add before it when it is that op's only reader, so the quantizer's clamp is the activation.
    ``add``: a residual add; its output is quantized and it fuses a following ReLU.
    ``requant``: a parameter-free op whose output leaves its input's grid, so it is quantized
    (average pooling, mean).
    ``pass``: applied as traced; its output stays on its input's grid and is not requantized (max
    pooling, reshapes, concatenation, size queries).
    ``identity``: the identity at inference (dropout).
    ``None``: only the GHN graph reads it; the executor (and so export) rejects it.
``ghn``: the node the GHN graph (:func:`qnas.graph.to_graph`) draws for it: an op name of
    ``qnas.graph.OPS``, ``TRANSPARENT`` (no node: its inputs are wired to its readers), ``SCALAR`` (a
    size or attribute: it carries no graph node), or a rule ``(node, module) -> GhnNode | None`` where
    the node depends on the call (conv flavour, pooling window, global or not; None: transparent).
    ``add`` and ``concat`` nodes are drawn only where two different branches meet.
``onnx``: the ONNX emitter (:func:`qnas.export.to_onnx`), ``(emitter, node) -> tensor name``
    (``""`` for a number), written against :class:`OnnxEmitter`; the exporter then adds the step's
    fused activation and its output quantization, exactly where the executor quantizes.

Anything not in the table is transparent to the GHN graph (parameter-free; a layer with parameters
other than Conv2d, Linear and BatchNorm is an error there) and an error for the executor and export
(:func:`lookup`, one message naming the layer, function or method).

``run`` (optional): what the executor calls instead of the traced target, for ops that may be traced
    in place (``nn.Hardswish(inplace=True)``) and would overwrite a value other steps still read.

Adding a parameter-free op, such as an activation, is one entry in this file: ``nn.Hardswish`` is
``Op("requant", onnx=<emitter writing HardSwish>, run=F.hardswish)`` (its output leaves the grid, so it
is requantized, over its calibrated range, negative part included; the GHN graph sees through it).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import fx, nn

from qnas.errors import QnasError

__all__ = [
    "FUNCTIONS",
    "KINDS",
    "METHODS",
    "MODULES",
    "SCALAR",
    "TRANSPARENT",
    "GhnNode",
    "OnnxEmitter",
    "Op",
    "cannot_export",
    "find",
    "lookup",
]

KINDS = ("conv", "linear", "bn", "relu", "add", "requant", "pass", "identity")
TRANSPARENT = "transparent"  # the GHN graph draws no node and wires the op's inputs to its readers
SCALAR = "scalar"  # the op yields a number (a size), which carries no GHN graph node


@dataclass(frozen=True)
class GhnNode:
    """A node of the GHN graph: an op of ``qnas.graph.OPS``, its shape (a parameter's, a pooling window
    as ``(1, 1, kh, kw)``, or ``()``) and conv groups."""

    op: str
    shape: tuple[int, ...] = ()
    groups: int = 1


class OnnxEmitter(Protocol):
    """What an ONNX emitter may use; :func:`qnas.export.to_onnx` implements it over the graph it writes."""

    opset: int
    batch: int  # batch size of the traced shapes
    shapes: Mapping[str, tuple[int, ...]]  # fx node name -> its tensor's shape on ``batch`` inputs

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Append a node; returns its (unique) output name."""
        ...

    def const(self, name: str, value: Any, dtype: str = "float32") -> str:
        """Add an initializer; returns its (unique) name."""
        ...

    def value(self, arg: Any) -> str:
        """The ONNX tensor holding a traced value; QnasError for anything that is not a tensor."""
        ...

    def module(self, node: fx.Node) -> nn.Module:
        """The module a ``call_module`` node calls."""
        ...

    def weight_inputs(self, node: fx.Node) -> list[str]:
        """A conv/linear's inputs: its input, its weight (BatchNorm folded, quantized) and its bias if any."""
        ...

    def bn_inputs(self, node: fx.Node) -> list[str]:
        """A standalone BatchNorm's inputs: its input, scale, bias and calibrated mean and variance."""
        ...


GhnRule = Callable[[fx.Node, nn.Module | None], GhnNode | None]
OnnxRule = Callable[[OnnxEmitter, fx.Node], str]


@dataclass(frozen=True)
class Op:
    """One traced target's meaning to the executor (``kind``, ``act``), the GHN graph (``ghn``) and ONNX
    export (``onnx``); the module docstring has the grammar."""

    kind: str | None
    act: str = ""  # "relu" or "relu6" for kind "relu"
    ghn: str | GhnRule = TRANSPARENT
    onnx: OnnxRule | None = None
    run: Callable[[torch.Tensor], torch.Tensor] | None = None  # executor's out-of-place version of the call


    def ghn_node(self, node: fx.Node, module: nn.Module | None = None) -> GhnNode | None:
        """The GHN graph node of one call (None: transparent; ``SCALAR`` ops are the caller's to check)."""
        if callable(self.ghn):
            return self.ghn(node, module)
        return None if self.ghn in (TRANSPARENT, SCALAR) else GhnNode(self.ghn)


# ----------------------------------------------------------------------------- argument helpers


def _arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, tuple | list) else (int(v), int(v))


def _ints(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _kwargs(node: fx.Node) -> dict[str, Any]:
    """A function call's arguments by name (fx's schema normalization)."""
    normalized = node.normalized_arguments(None, normalize_to_only_use_kwargs=True)
    return dict(normalized.kwargs) if normalized is not None else {}


# ----------------------------------------------------------------------------- GHN graph rules


def _is_global(output_size: Any) -> bool:
    return output_size is not None and _pair(output_size) == (1, 1)


def _ghn_conv(node: fx.Node, m: nn.Module | None) -> GhnNode:
    assert isinstance(m, nn.Conv2d)
    op = "dil_conv" if _pair(m.dilation) != (1, 1) else ("group_conv" if m.groups > 1 else "conv")
    return GhnNode(op, tuple(m.weight.shape), m.groups)


def _ghn_linear(node: fx.Node, m: nn.Module | None) -> GhnNode:
    assert isinstance(m, nn.Linear)
    return GhnNode("linear", tuple(m.weight.shape))


def _ghn_bn(node: fx.Node, m: nn.Module | None) -> GhnNode | None:
    assert isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
    return GhnNode("bn", tuple(m.weight.shape)) if m.affine else None  # no parameters: transparent


def _ghn_window(op: str) -> GhnRule:
    """A pooling layer or function with a fixed window: ``(1, 1, kh, kw)``."""
    def rule(node: fx.Node, m: nn.Module | None) -> GhnNode:
        kernel = m.kernel_size if m is not None else _arg(node, 1, "kernel_size")
        return GhnNode(op, (1, 1, *_pair(kernel)))

    return rule


def _ghn_adaptive_avg(node: fx.Node, m: nn.Module | None) -> GhnNode:
    size = m.output_size if m is not None else _arg(node, 1, "output_size")
    return GhnNode("glob_avg") if _is_global(size) else GhnNode("avg_pool")


def _ghn_mean(node: fx.Node, m: nn.Module | None) -> GhnNode | None:
    """A mean over dims (2, 3) of an NCHW tensor is global average pooling; other means are transparent."""
    dims = _arg(node, 1, "dim")
    if dims is None:
        return None
    dims = dims if isinstance(dims, tuple | list) else (dims,)
    spatial = all(isinstance(d, int) for d in dims) and sorted(d % 4 for d in dims) == [2, 3]
    return GhnNode("glob_avg") if spatial else None


# ----------------------------------------------------------------------------- ONNX emitters


def cannot_export(node: fx.Node, what: str) -> QnasError:
    """The one-line error for a traced node ONNX export cannot write."""
    return QnasError(f"cannot export node {node.name!r} to ONNX: {what}")


def _same(e: OnnxEmitter, n: fx.Node) -> str:
    """Its input unchanged (a standalone activation is added by the exporter as the step's fused one)."""
    return e.value(n.args[0])


def _number(e: OnnxEmitter, n: fx.Node) -> str:
    return ""  # a size or attribute, read only by reshapes, which use the traced shapes


def _reshape(e: OnnxEmitter, n: fx.Node) -> str:
    x = e.value(n.args[0])
    shape = list(e.shapes[n.name])
    if shape and shape[0] == e.batch and e.shapes.get(n.args[0].name, (0,))[0] == e.batch:
        shape[0] = 0  # keep the batch dimension of the input
    return e.op("Reshape", [x, e.const(f"{n.name}_shape", shape, "int64")], n.name)


def _pool_attrs(kernel: Any, stride: Any, padding: Any) -> dict[str, Any]:
    k = _ints(kernel)
    s = _ints(stride if stride not in (None, [], ()) else kernel)
    p = _ints(padding)
    return {"kernel_shape": k, "strides": s, "pads": [p[0], p[1], p[0], p[1]]}


def _global_pool(e: OnnxEmitter, n: fx.Node, x: str, output_size: Any, op: str) -> str:
    size = _ints(output_size) if not isinstance(output_size, int) else [output_size, output_size]
    if size == [1, 1]:
        return e.op(op, [x], n.name)
    if size == list(e.shapes[n.args[0].name][2:]):
        return e.op("Identity", [x], n.name)
    raise cannot_export(n, f"adaptive pooling to {tuple(size)} (only global pooling is supported)")


def _mean(e: OnnxEmitter, n: fx.Node, x: str, dims: Any, keepdim: bool) -> str:
    rank = len(e.shapes[n.args[0].name])
    if dims is None:
        raise cannot_export(n, "a mean over all dimensions")
    axes = [int(d) % rank for d in ((dims,) if isinstance(dims, int) else dims)]
    if e.opset >= 18:  # axes became an input in opset 18
        return e.op("ReduceMean", [x, e.const(f"{n.name}_axes", axes, "int64")], n.name, keepdims=int(keepdim))
    return e.op("ReduceMean", [x], n.name, axes=axes, keepdims=int(keepdim))


def _onnx_conv(e: OnnxEmitter, n: fx.Node) -> str:
    m = e.module(n)
    assert isinstance(m, nn.Conv2d)
    inputs = e.weight_inputs(n)
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise cannot_export(n, "convolution padding must be explicit zeros")
    p = _ints(m.padding)
    return e.op("Conv", inputs, n.name, kernel_shape=_ints(m.kernel_size), strides=_ints(m.stride),
                pads=[p[0], p[1], p[0], p[1]], dilations=_ints(m.dilation), group=m.groups)


def _onnx_linear(e: OnnxEmitter, n: fx.Node) -> str:
    inputs = e.weight_inputs(n)
    if len(e.shapes[n.args[0].name]) == 2:
        return e.op("Gemm", inputs, n.name, transB=1)
    # Linear on more than 2 dims: MatMul with the transposed weight, then the bias.
    wt = e.op("Transpose", [inputs[1]], f"{n.name}_wT", perm=[1, 0])
    y = e.op("MatMul", [inputs[0], wt], f"{n.name}_matmul")
    return e.op("Add", [y, inputs[2]], n.name) if len(inputs) > 2 else y


def _onnx_bn(e: OnnxEmitter, n: fx.Node) -> str:
    m = e.module(n)
    assert isinstance(m, nn.BatchNorm2d)
    return e.op("BatchNormalization", e.bn_inputs(n), n.name, epsilon=m.eps)


def _onnx_max_pool_module(e: OnnxEmitter, n: fx.Node) -> str:
    m, x = e.module(n), e.value(n.args[0])
    assert isinstance(m, nn.MaxPool2d)
    if m.return_indices:
        raise cannot_export(n, "max pooling with indices")
    return e.op("MaxPool", [x], n.name, dilations=_ints(m.dilation), ceil_mode=int(m.ceil_mode),
                **_pool_attrs(m.kernel_size, m.stride, m.padding))


def _onnx_avg_pool_module(e: OnnxEmitter, n: fx.Node) -> str:
    m, x = e.module(n), e.value(n.args[0])
    assert isinstance(m, nn.AvgPool2d)
    if m.divisor_override is not None:
        raise cannot_export(n, "average pooling with divisor_override")
    return e.op("AveragePool", [x], n.name, ceil_mode=int(m.ceil_mode), count_include_pad=int(m.count_include_pad),
                **_pool_attrs(m.kernel_size, m.stride, m.padding))


def _onnx_adaptive_module(op: str) -> OnnxRule:
    def emit(e: OnnxEmitter, n: fx.Node) -> str:
        m = e.module(n)
        assert isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
        return _global_pool(e, n, e.value(n.args[0]), m.output_size, op)

    return emit


def _onnx_add_method(e: OnnxEmitter, n: fx.Node) -> str:
    return e.op("Add", [e.value(n.args[0]), e.value(n.args[1])], n.name)


def _onnx_mean_method(e: OnnxEmitter, n: fx.Node) -> str:
    dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    return _mean(e, n, e.value(n.args[0]), dims, bool(n.kwargs.get("keepdim", False)))


def _onnx_add_function(e: OnnxEmitter, n: fx.Node) -> str:
    if not (isinstance(n.args[1], fx.Node) and isinstance(n.args[0], fx.Node)):
        raise cannot_export(n, "adding a constant")
    return e.op("Add", [e.value(n.args[0]), e.value(n.args[1])], n.name)


def _onnx_cat(e: OnnxEmitter, n: fx.Node) -> str:
    kw = _kwargs(n)
    tensors = kw.get("tensors", n.args[0] if n.args else None)
    return e.op("Concat", [e.value(t) for t in tensors], n.name, axis=int(kw.get("dim", 0)))


def _onnx_max_pool_function(e: OnnxEmitter, n: fx.Node) -> str:
    kw = _kwargs(n)
    if kw.get("return_indices"):
        raise cannot_export(n, "max pooling with indices")
    return e.op("MaxPool", [e.value(n.args[0])], n.name, dilations=_ints(kw.get("dilation", 1)),
                ceil_mode=int(kw.get("ceil_mode", False)),
                **_pool_attrs(kw["kernel_size"], kw.get("stride"), kw.get("padding", 0)))


def _onnx_avg_pool_function(e: OnnxEmitter, n: fx.Node) -> str:
    kw = _kwargs(n)
    if kw.get("divisor_override") is not None:
        raise cannot_export(n, "average pooling with divisor_override")
    return e.op("AveragePool", [e.value(n.args[0])], n.name, ceil_mode=int(kw.get("ceil_mode", False)),
                count_include_pad=int(kw.get("count_include_pad", True)),
                **_pool_attrs(kw["kernel_size"], kw.get("stride"), kw.get("padding", 0)))


def _onnx_adaptive_function(op: str) -> OnnxRule:
    def emit(e: OnnxEmitter, n: fx.Node) -> str:
        kw = _kwargs(n)
        return _global_pool(e, n, e.value(n.args[0]), kw["output_size"], op)

    return emit


def _onnx_hardswish(e: OnnxEmitter, n: fx.Node) -> str:
    return e.op("HardSwish", [e.value(n.args[0])], n.name)


def _onnx_silu(e: OnnxEmitter, n: fx.Node) -> str:
    x = e.value(n.args[0])  # x * sigmoid(x): ONNX before opset 24 has no SiLU/Swish operator
    return e.op("Mul", [x, e.op("Sigmoid", [x], f"{n.name}_sigmoid")], n.name)


def _onnx_mean_function(e: OnnxEmitter, n: fx.Node) -> str:
    kw = _kwargs(n)
    return _mean(e, n, e.value(n.args[0]), kw.get("dim"), bool(kw.get("keepdim", False)))


# ----------------------------------------------------------------------------- the table

_RESHAPE = Op("pass", onnx=_reshape)
_ADD_FUNCTION = Op("add", ghn="add", onnx=_onnx_add_function)
_ADD_METHOD = Op("add", ghn="add", onnx=_onnx_add_method)
_RELU = Op("relu", "relu", onnx=_same)
_RELU6 = Op("relu", "relu6", onnx=_same)
_CAT = Op("pass", ghn="concat", onnx=_onnx_cat)
_SIZE = Op("pass", ghn=SCALAR, onnx=_number)
_GRAPH_SIZE = Op(None, ghn=SCALAR)  # sizes the GHN graph skips but the executor does not run
_MEAN_FUNCTION = Op("requant", ghn=_ghn_mean, onnx=_onnx_mean_function)
_HARDSWISH = Op("requant", onnx=_onnx_hardswish, run=F.hardswish)
_SILU = Op("requant", onnx=_onnx_silu, run=F.silu)

MODULES: Mapping[type[nn.Module], Op] = {
    nn.Conv2d: Op("conv", ghn=_ghn_conv, onnx=_onnx_conv),
    nn.Linear: Op("linear", ghn=_ghn_linear, onnx=_onnx_linear),
    nn.BatchNorm2d: Op("bn", ghn=_ghn_bn, onnx=_onnx_bn),
    nn.BatchNorm1d: Op(None, ghn=_ghn_bn),
    nn.ReLU: _RELU,
    nn.ReLU6: _RELU6,
    nn.Hardswish: _HARDSWISH,
    nn.SiLU: _SILU,
    nn.AvgPool2d: Op("requant", ghn=_ghn_window("avg_pool"), onnx=_onnx_avg_pool_module),
    nn.AdaptiveAvgPool2d: Op("requant", ghn=_ghn_adaptive_avg, onnx=_onnx_adaptive_module("GlobalAveragePool")),
    nn.MaxPool2d: Op("pass", ghn=_ghn_window("max_pool"), onnx=_onnx_max_pool_module),
    nn.AdaptiveMaxPool2d: Op("pass", ghn="max_pool", onnx=_onnx_adaptive_module("GlobalMaxPool")),
    nn.Flatten: _RESHAPE,
    nn.Identity: Op("pass", onnx=_same),
    nn.Dropout: Op("identity", onnx=_same),
}

FUNCTIONS: Mapping[Any, Op] = {
    operator.add: _ADD_FUNCTION,
    operator.iadd: _ADD_FUNCTION,
    torch.add: _ADD_FUNCTION,
    F.relu: _RELU,
    torch.relu: _RELU,
    torch.relu_: _RELU,
    F.relu6: _RELU6,
    F.hardswish: _HARDSWISH,
    F.silu: _SILU,
    F.avg_pool2d: Op("requant", ghn=_ghn_window("avg_pool"), onnx=_onnx_avg_pool_function),
    F.adaptive_avg_pool2d: Op("requant", ghn=_ghn_adaptive_avg, onnx=_onnx_adaptive_function("GlobalAveragePool")),
    torch.mean: _MEAN_FUNCTION,
    F.max_pool2d: Op("pass", ghn=_ghn_window("max_pool"), onnx=_onnx_max_pool_function),
    F.adaptive_max_pool2d: Op("pass", ghn="max_pool", onnx=_onnx_adaptive_function("GlobalMaxPool")),
    torch.flatten: _RESHAPE,
    torch.reshape: _RESHAPE,
    torch.squeeze: _RESHAPE,
    torch.unsqueeze: _RESHAPE,
    torch.cat: _CAT,
    torch.concat: _CAT,
    operator.getitem: Op("pass", onnx=_number),
    getattr: _SIZE,
    F.dropout: Op("identity", onnx=_same),
    len: _GRAPH_SIZE,
}

METHODS: Mapping[str, Op] = {
    "add": _ADD_METHOD,
    "add_": _ADD_METHOD,
    "relu": _RELU,
    "relu_": _RELU,
    "mean": Op("requant", ghn=_ghn_mean, onnx=_onnx_mean_method),
    "flatten": _RESHAPE,
    "view": _RESHAPE,
    "reshape": _RESHAPE,
    "squeeze": _RESHAPE,
    "unsqueeze": _RESHAPE,
    "contiguous": Op("pass", onnx=_same),
    "size": _SIZE,
    "dim": _SIZE,
    "numel": _GRAPH_SIZE,
    "__len__": _GRAPH_SIZE,
}


def find(node: fx.Node, modules: Mapping[str, nn.Module]) -> Op | None:
    """The table's entry for a call node (``modules``: the traced module's ``named_modules()``), or None."""
    if node.op == "call_module":
        for cls in type(modules[str(node.target)]).__mro__:
            if cls in MODULES:
                return MODULES[cls]
        return None
    if node.op == "call_function":
        return FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return METHODS.get(str(node.target))
    return None


def _names(items: Any) -> str:
    return ", ".join(dict.fromkeys(getattr(t, "__name__", str(t)) for t, op in items if op.kind is not None))


def lookup(node: fx.Node, modules: Mapping[str, nn.Module]) -> Op:
    """:func:`find` for an op the executor runs; anything else is a QnasError naming it."""
    op = find(node, modules)
    if op is not None and op.kind is not None:
        return op
    if node.op == "call_module":
        m = modules[str(node.target)]
        raise QnasError(f"cannot quantize layer {node.target!r} ({type(m).__name__}): supported layers are "
                        f"{_names(MODULES.items())}")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        raise QnasError(f"cannot quantize operation {name!r} at node {node.name!r}: supported are "
                        f"{_names(FUNCTIONS.items())}")
    if node.op == "call_method":
        raise QnasError(f"cannot quantize tensor method {node.target!r} at node {node.name!r}: supported are "
                        f"{', '.join(k for k, op in METHODS.items() if op.kind is not None)}")
    raise QnasError(f"cannot quantize node {node.name!r}: the op table holds calls, not {node.op!r} nodes")
