"""Compiling a traced CNN into the program the quantized executor runs: a tuple of :class:`Step`.

Each call in the trace is looked up in the op table (:mod:`qnas.ops`), which says what the executor does
with it; a BatchNorm and a ReLU that are the only readers of a conv (or a ReLU of an add) are fused
into that step, so the quantizer sits after them.

**Where quantization happens** (what an integer model materializes). Weights of every conv and linear,
after BatchNorm is folded into them (GHN-Q eq. 1); biases stay float (they are int32 in integer
kernels). Activations at the network input and at the output of every conv/linear (after its ReLU when
one follows), residual add, average pooling and standalone ReLU. Max pooling and concatenation are
not requantized: their outputs already lie on their inputs' grids. The final logits stay float.

The program is public (:attr:`qnas.quant.QuantModel.program`): finetuning and export read it, so they
quantize exactly where the executor does.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import fx, nn

from qnas import ops
from qnas.errors import QnasError

__all__ = ["STEP_KINDS", "Ref", "Step", "compile_program"]

STEP_KINDS = ("input", "conv", "linear", "bn", "relu", "call", "output")


@dataclass(frozen=True)
class Ref:
    """A value computed by an earlier step, inside a call or output step's ``args``/``kwargs``."""

    name: str  # the producing step's name


@dataclass(frozen=True)
class Step:
    """One step of a :class:`~qnas.quant.QuantModel`'s program; steps run in order, each storing its value
    under its ``name``.

    ``name``: the fx node name; keys the step's value, its activation range (``Calibration.ranges``)
    and cached weights. Nodes fused into the step (its BatchNorm, its ReLU) have no step of their own.
    ``kind``: ``input`` (the network input), ``conv`` / ``linear`` (a weight layer, BatchNorm folded
    in when ``bn`` is set), ``bn`` (a standalone BatchNorm), ``relu`` (a standalone activation),
    ``call`` (any parameter-free op: ``fn`` applied to ``args``/``kwargs``) or ``output``.
    ``inputs``: names of the values an input/conv/linear/bn/relu step reads.
    ``module``: the conv, linear or standalone BatchNorm layer (None for other kinds).
    ``bn`` / ``bn_name``: the BatchNorm folded into a conv, and the qualified name of that or a
    standalone BatchNorm (keys ``Calibration.bn``; ``""`` when none).
    ``pnames``: the ``named_parameters()`` names of weight, bias, BatchNorm weight and BatchNorm bias
    (``""`` where none).
    ``fn``, ``args``, ``kwargs``: a call step's callable and its arguments, with :class:`Ref` for
    values of earlier steps (an output step's ``args`` is the returned structure).
    ``act``: ``""``, ``"relu"`` or ``"relu6"``: the activation applied to the step's output before
    quantization (fused from a following ReLU, or a standalone ReLU's own).
    ``quant``: the output activation is quantized; the step is then a quantization point.
    ``w8``: first or last weight layer; ``a8``: network input or the last weight layer's input (the
    first/last-layer rule, :func:`qnas.quant.first_last_rule`, keeps both at 8 bits).
    ``free``: values no longer needed after this step (dropped to save memory).
    ``int_out``: a conv/linear read only by convs/linears, which can absorb its output scale (cached
    inference keeps its output in integer units).
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    module: nn.Module | None = None
    bn: nn.BatchNorm2d | None = None
    bn_name: str = ""
    pnames: tuple[str, str, str, str] = ("", "", "", "")
    fn: Callable[..., Any] | None = None
    args: Any = ()
    kwargs: Any = field(default_factory=dict)
    act: str = ""
    quant: bool = False
    w8: bool = False
    a8: bool = False
    free: tuple[str, ...] = ()
    int_out: bool = False


def _call_method(name: str, obj: Any, *args: Any, **kwargs: Any) -> Any:
    return getattr(obj, name)(*args, **kwargs)


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, str]:
    """(op-table kind, activation) of a call node; other nodes keep their fx op."""
    if node.op in ("call_module", "call_function", "call_method"):
        op = ops.lookup(node, modules)
        assert op.kind is not None  # lookup rejects ops only the GHN graph reads
        return op.kind, op.act
    return node.op, ""


def _call_fn(n: fx.Node, kind: str, modules: dict[str, nn.Module]) -> Callable[..., Any]:
    if kind == "identity":
        return _identity
    if (run := ops.lookup(n, modules).run) is not None:  # out of place, whatever the traced call says
        return lambda *a, _run=run, **k: _run(a[0] if a else k["input"])
    if n.op == "call_module":
        return modules[str(n.target)]
    if n.op == "call_method":
        name = "add" if n.target == "add_" else str(n.target)  # out of place, as iadd below
        return lambda *a, _name=name, **k: _call_method(_name, *a, **k)
    if n.target is operator.iadd:
        return operator.add  # never mutate a value other steps may still read
    return n.target  # type: ignore[return-value]


def compile_program(module: nn.Module, graph: fx.Graph | None = None) -> tuple[Step, ...]:
    """The program of ``module`` (traced with a bare fx Tracer unless ``graph`` is given); QnasError
    naming the first layer or operation the executor cannot quantize faithfully."""
    if graph is None:
        try:  # a bare Tracer: building a GraphModule (code generation) would double the cost
            graph = fx.Tracer().trace(module)
        except Exception as exc:  # tracing fails with many exception types (control flow on values, ...)
            msg = " ".join(str(exc).split())
            raise QnasError(f"cannot trace {type(module).__name__} with torch.fx: {msg}") from None
    modules = dict(module.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise QnasError(f"the model must take exactly one input tensor, {type(module).__name__} takes "
                        f"{len(placeholders)}")
    kinds = {n: _kind(n, modules) for n in nodes}
    alias: dict[fx.Node, str] = {}  # node fused into an earlier step -> that step's name

    def only_user(n: fx.Node, kind: str) -> fx.Node | None:
        users = list(n.users)
        return users[0] if len(users) == 1 and kinds[users[0]][0] == kind else None

    def ref(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: Ref(alias.get(n, n.name)))

    def fuse_relu(tail: fx.Node, step: str) -> tuple[fx.Node, str]:
        """A ReLU that is ``tail``'s only reader joins ``step``: (the new tail, its activation)."""
        r = only_user(tail, "relu")
        if r is None:
            return tail, ""
        alias[r] = step
        return r, kinds[r][1]

    # Values that reach the output only through shape ops are the logits: they stay float.
    to_output: set[fx.Node] = set()
    for n in reversed(nodes):
        users = list(n.users)
        if users and all(u.op == "output" or (u in to_output and kinds[u][0] in ("pass", "identity"))
                         for u in users):
            to_output.add(n)

    steps: list[Step] = []
    for n in nodes:
        if n in alias:
            continue
        kind, act = kinds[n]
        if n.op == "get_attr":
            raise QnasError(f"the model reads tensor attribute {n.target!r} directly; only layers are supported")
        if kind == "placeholder":
            steps.append(Step(n.name, "input", quant=True))
        elif kind in ("conv", "linear", "bn"):
            target = str(n.target)
            bn, bn_name = None, target if kind == "bn" else ""
            pnames = (f"{target}.weight", f"{target}.bias", "", "")
            tail = n
            if kind == "conv" and (b := only_user(n, "bn")) is not None:
                bn, bn_name = modules[str(b.target)], str(b.target)
                pnames = (*pnames[:2], f"{b.target}.weight", f"{b.target}.bias")
                alias[b] = n.name
                tail = b
            tail, fused = fuse_relu(tail, n.name)
            steps.append(Step(n.name, kind, inputs=(alias.get(n.args[0], n.args[0].name),),
                              module=modules[target], bn=bn, bn_name=bn_name, pnames=pnames,
                              act=fused, quant=tail not in to_output))
        elif kind == "relu":
            steps.append(Step(n.name, "relu", inputs=(alias.get(n.args[0], n.args[0].name),), act=act,
                              quant=n not in to_output))
        elif kind in ("add", "requant", "pass", "identity"):
            args, kwargs = ref(n.args), ref(n.kwargs)
            tail, fused = fuse_relu(n, n.name) if kind == "add" else (n, "")
            steps.append(Step(n.name, "call", fn=_call_fn(n, kind, modules), args=args, kwargs=kwargs, act=fused,
                              quant=kind in ("add", "requant") and tail not in to_output))
        elif kind == "output":
            steps.append(Step(n.name, "output", args=ref(n.args[0])))
        else:
            steps.append(Step(n.name, kind))

    w8, a8 = _first_last(steps)
    frees = _frees(steps)
    readers: dict[str, list[Step]] = {}
    for s in steps:
        for name in _reads(s):
            readers.setdefault(name, []).append(s)

    def int_out(s: Step) -> bool:
        return (s.kind in ("conv", "linear") and s.quant and bool(readers.get(s.name))
                and all(r.kind in ("conv", "linear") for r in readers[s.name]))

    return tuple(replace(s, w8=s.name in w8, a8=s.name in a8, free=frees.get(i, ()), int_out=int_out(s))
                 for i, s in enumerate(steps))


def _first_last(steps: list[Step]) -> tuple[set[str], set[str]]:
    """Names of the first/last weight layers, and of the input and the step quantizing the last layer's
    input, for QuantSpec.first_last_8bit."""
    weighted = [s for s in steps if s.kind in ("conv", "linear")]
    if not weighted:
        return set(), set()
    w8, a8 = {weighted[0].name, weighted[-1].name}, {steps[0].name}
    # Walk back from the last weight layer through shape-only ops to the step that quantizes its input.
    names = {s.name: s for s in steps}
    name = weighted[-1].inputs[0]
    while name in names:
        s = names[name]
        if s.quant or s.kind == "input":
            a8.add(s.name)
            break
        refs = [a for a in fx.node.map_aggregate(s.args, lambda a: a) if isinstance(a, Ref)] if s.args else []
        if not refs:
            break
        name = refs[0].name
    return w8, a8


def _reads(step: Step) -> list[str]:
    names = list(step.inputs)
    fx.node.map_aggregate((step.args, step.kwargs), lambda a: names.append(a.name) if isinstance(a, Ref) else a)
    return names


def _frees(steps: list[Step]) -> dict[int, tuple[str, ...]]:
    """Step index -> the values last read there."""
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for name in _reads(s):
            last_use[name] = i
    frees: dict[int, list[str]] = {}
    for name, i in last_use.items():
        frees.setdefault(i, []).append(name)
    return {i: tuple(names) for i, names in frees.items()}
