"""The op table (qnas.ops) that the GHN graph, the quantized executor and ONNX export share."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from qnas import ops
from qnas.errors import QnasError
from qnas.graph import OPS
from qnas.quant import STEP_KINDS, Step, prepare

ENTRIES = [*ops.MODULES.items(), *ops.FUNCTIONS.items(), *ops.METHODS.items()]


@pytest.mark.parametrize("target, op", ENTRIES, ids=[getattr(t, "__name__", str(t)) for t, _ in ENTRIES])
def test_every_entry_follows_the_grammar(target: object, op: ops.Op) -> None:
    assert op.kind is None or op.kind in ops.KINDS
    assert (op.act in ("relu", "relu6")) == (op.kind == "relu")
    assert op.kind is None or op.onnx is not None  # whatever the executor runs, export can write
    assert callable(op.ghn) or op.ghn in (ops.TRANSPARENT, ops.SCALAR, *OPS)


class Net(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = act
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.act(self.conv(x))) if isinstance(self.act, nn.Identity) else self.act(self.conv(x))
        return self.fc(x.mean((2, 3)))


def _nodes(module: nn.Module) -> tuple[list[fx.Node], dict[str, nn.Module]]:
    return list(fx.symbolic_trace(module).graph.nodes), dict(module.named_modules())


def test_lookup_finds_subclasses_and_names_what_it_cannot_run() -> None:
    class MyConv(nn.Conv2d):
        pass

    class Leaves(fx.Tracer):  # fx traces into user subclasses by default; a custom tracer may not
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, MyConv) or super().is_leaf_module(m, name)

    module = nn.Sequential(MyConv(1, 2, 3), nn.GELU())
    nodes, modules = list(Leaves().trace(module).nodes), dict(module.named_modules())
    assert ops.lookup(nodes[1], modules).kind == "conv"
    assert ops.find(nodes[2], modules) is None
    with pytest.raises(QnasError, match=r"cannot quantize layer '1' \(GELU\): supported layers are Conv2d"):
        ops.lookup(nodes[2], modules)
    nodes, modules = _nodes(Net(nn.Identity()))
    tanh = next(n for n in nodes if n.target is torch.tanh)
    with pytest.raises(QnasError, match="cannot quantize operation 'tanh' at node 'tanh'"):
        ops.lookup(tanh, modules)


def test_graph_only_entries_are_rejected_by_the_executor() -> None:
    nodes, modules = _nodes(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)))
    assert ops.find(nodes[2], modules).ghn_node(nodes[2], modules["1"]) == ops.GhnNode("bn", (4,))
    with pytest.raises(QnasError, match="cannot quantize layer '1' \\(BatchNorm1d\\)"):
        ops.lookup(nodes[2], modules)


def test_ghn_rules_read_the_call() -> None:
    class Pools(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(x, 3) + F.adaptive_avg_pool2d(x, 1) + x.mean(1, keepdim=True) + x.mean((2, 3))

    nodes, modules = _nodes(Pools())
    got = {n.name: ops.find(n, modules).ghn_node(n) for n in nodes if n.op == "call_function" or n.op == "call_method"}
    assert got["max_pool2d"] == ops.GhnNode("max_pool", (1, 1, 3, 3))
    assert got["adaptive_avg_pool2d"] == ops.GhnNode("glob_avg")
    assert got["mean"] is None and got["mean_1"] == ops.GhnNode("glob_avg")  # only a spatial mean pools


def test_program_is_public_and_read_only() -> None:
    qm = prepare(Net(nn.ReLU6()))
    program = qm.program
    assert isinstance(program, tuple) and all(isinstance(s, Step) for s in program)
    assert [s.kind for s in program] == ["input", "conv", "call", "linear", "output"]
    assert all(s.kind in STEP_KINDS for s in program)
    assert program[1].act == "relu6" and program[1].quant and program[1].w8  # the ReLU6 fused into the conv
    with pytest.raises(dataclasses.FrozenInstanceError):
        program[1].quant = False  # type: ignore[misc]


def test_executor_shapes_match_the_module() -> None:
    m = Net(nn.ReLU())
    x = torch.randn(3, 1, 6, 6)
    shapes = prepare(m).shapes(x)
    assert shapes == {"x": (3, 1, 6, 6), "conv": (3, 4, 4, 4), "mean": (3, 4), "fc": (3, 2)}
