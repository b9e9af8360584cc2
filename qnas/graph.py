"""Turn an ``nn.Module`` into the computational graph a graph hypernetwork reads (GHN-2 style).

``to_graph(module, input_shape)`` traces the module with ``torch.fx`` and keeps one node per
predicted parameter tensor and one per parameter-free op the GHN distinguishes:

    input -> conv.weight -> [conv.bias] -> bn (gamma and beta) -> ... -> add -> ... -> glob_avg
          -> linear.weight -> linear.bias (classifier)

Activations, flatten, dropout and other parameter-free ops the vocabulary does not name are
dropped and their inputs wired to their outputs; which op gets which node is the op table's
``ghn`` field (:mod:`qnas.ops`). A BatchNorm node stands for both its weight and
its bias, as in GHN-2. Edges follow the data flow; *virtual edges* join every pair of nodes whose
shortest directed path is at most ``s_max`` long and carry that distance (GHN-2 section 3).

``batch_graphs(graphs)`` merges many graphs into one :class:`GraphBatch` whose nodes are grouped
by topological level (longest path from the input for the forward sweep, to the output for the
backward sweep), so the GHN updates all nodes of a level of all graphs in one step.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import networkx as nx
import torch
from torch import fx, nn

from qnas import ops
from qnas.errors import QnasError

__all__ = [
    "DEFAULT_S_MAX",
    "OPS",
    "OP_INDEX",
    "WEIGHT_OPS",
    "ArchGraph",
    "GraphBatch",
    "GraphCache",
    "Layout",
    "LevelStep",
    "batch_graphs",
    "to_graph",
]

# The fixed op vocabulary; a GHN embeds these by index, so only ever append to it.
OPS: tuple[str, ...] = (
    "input",
    "conv",  # dense, dilation 1
    "group_conv",  # groups > 1 (depthwise included), dilation 1
    "dil_conv",  # dilation > 1, grouped or not
    "linear",
    "bn",  # one node for weight and bias
    "bias",  # bias of a conv or linear layer
    "max_pool",
    "avg_pool",
    "add",
    "concat",
    "glob_avg",
)
OP_INDEX: dict[str, int] = {name: i for i, name in enumerate(OPS)}
WEIGHT_OPS = frozenset({"conv", "group_conv", "dil_conv", "linear"})
POOL_OPS = frozenset({"max_pool", "avg_pool", "glob_avg"})
DEFAULT_S_MAX = 10  # GHN-Q's choice; GHN-2 used 50 on much deeper DARTS-like graphs
Layout = tuple[tuple[int, int], ...]  # input-channel segments (channels, repeat); see ArchGraph.in_layouts


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors; graphs compare by identity
class ArchGraph:
    """A module's computational graph; node 0 is the input and node order is topological.

    Per node ``v``: ``ops[v]`` (a name in :data:`OPS`), ``shapes[v]`` (the parameter shape, the
    pooling window as ``(1, 1, kh, kw)``, or ``()``), ``groups[v]`` (conv groups, else 1),
    ``param_names[v]`` (names in ``module.named_parameters()``: ``(weight,)``, ``(bias,)``, BN's
    ``(weight, bias)``, or ``()``), ``is_classifier[v]`` (the layer producing the output logits),
    ``labels[v]`` (the fx node it came from, for messages), ``fwd_level[v]``/``bwd_level[v]``
    (longest path from a source / to a sink). ``edges`` are the real edges; ``virtual_edges`` is a
    long tensor of rows ``(src, dst, distance)`` for every pair at distance 1..s_max (real edges
    included, with distance 1).
    """

    ops: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[int, ...]
    param_names: tuple[tuple[str, ...], ...]
    is_classifier: tuple[bool, ...]
    labels: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    virtual_edges: torch.Tensor
    fwd_level: tuple[int, ...]
    bwd_level: tuple[int, ...]
    s_max: int
    input_shape: tuple[int, ...]
    # Per node: the input-channel layout of a weight whose input is a concatenation or a flatten, as
    # segments (channels, repeat) in input order (channel j of a segment repeated ``repeat`` times in a
    # row); None for a plain input. The GHN tiles such a weight per segment (see qnas.ghn).
    in_layouts: tuple[Layout | None, ...]

    @property
    def num_nodes(self) -> int:
        return len(self.ops)

    def to_networkx(self) -> nx.DiGraph:
        """The real edges as a DiGraph with node attributes ``op``, ``shape`` and ``params``."""
        g = nx.DiGraph()
        for v, op in enumerate(self.ops):
            g.add_node(v, op=op, shape=self.shapes[v], params=self.param_names[v])
        g.add_edges_from(self.edges)
        return g

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every predicted parameter name with its shape (BN's bias has its weight's shape)."""
        return {name: self.shapes[v] for v in range(self.num_nodes) for name in self.param_names[v]}


class GraphCache:
    """A bounded LRU cache of graphs keyed by architecture string (plus input shape and s_max).

    Tracing and all-pairs shortest paths cost milliseconds per graph; a search re-scores the same
    architecture at several bit-widths, and GHN training revisits architectures every epoch.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, ArchGraph] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get_or_build(self, key: tuple, build: Callable[[], ArchGraph]) -> ArchGraph:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        graph = build()
        self._items[key] = graph
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return graph


def to_graph(
    module: nn.Module,
    input_shape: Sequence[int],
    s_max: int = DEFAULT_S_MAX,
    *,
    cache: GraphCache | None = None,
    key: str | None = None,
) -> ArchGraph:
    """The :class:`ArchGraph` of ``module`` for inputs of shape ``input_shape`` (C, H, W).

    With ``cache`` and ``key`` (an architecture string), a graph built before for the same key,
    input shape and ``s_max`` is returned without tracing. Raises QnasError for modules fx cannot
    trace, parametric layers other than Conv2d/Linear/BatchNorm, shared or unused parameters.
    """
    if s_max < 1:
        raise QnasError(f"s_max must be at least 1, got {s_max}")
    input_shape = tuple(int(d) for d in input_shape)
    if cache is None or key is None:
        return _build(module, input_shape, s_max)
    return cache.get_or_build((key, input_shape, s_max), lambda: _build(module, input_shape, s_max))


# ----------------------------------------------------------------------------- tracing


@dataclass
class _Builder:
    """Mutable node/edge lists while walking the fx graph; frozen into an ArchGraph at the end."""

    ops: list[str] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    params: list[tuple[str, ...]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)
    in_layouts: list[Layout | None] = field(default_factory=list)

    def add(self, op: str, preds: set[int], label: str, shape=(), groups=1, params=(),
            in_layout: Layout | None = None) -> int:
        v = len(self.ops)
        self.in_layouts.append(in_layout)
        self.ops.append(op)
        self.shapes.append(tuple(int(s) for s in shape))
        self.groups.append(int(groups))
        self.params.append(tuple(params))
        self.labels.append(label)
        self.edges.extend((u, v) for u in sorted(preds))
        return v


def _trace(module: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for dynamic code
        raise QnasError(f"torch.fx cannot trace {type(module).__name__}: {exc}".splitlines()[0]) from None


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
    return out


def _build(module: nn.Module, input_shape: tuple[int, ...], s_max: int) -> ArchGraph:
    gm = _trace(module)
    modules = dict(gm.named_modules())
    b = _Builder()
    frontier: dict[fx.Node, set[int]] = {}  # fx node -> graph nodes whose values it carries
    layouts: dict[fx.Node, Layout | None] = {}  # fx node -> its channel segments (None: unknown)
    module_of: dict[int, str] = {}  # graph node -> module path, for finding the classifier
    used: set[str] = set()
    outputs: set[int] = set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise QnasError(f"{type(module).__name__}.forward must take exactly one input tensor")

    for node in gm.graph.nodes:
        preds: set[int] = set()
        n_tensors = 0
        for a in _node_args(node):
            carried = frontier.get(a, set())
            preds |= carried
            n_tensors += bool(carried)
        layouts[node] = _layout_of(node, layouts, modules, input_shape)
        if node.op == "placeholder":
            frontier[node] = {b.add("input", set(), node.name)}
        elif node.op == "get_attr":
            attr = str(node.target)
            if any(name == attr or name.startswith(attr + ".") for name, _ in gm.named_parameters()):
                raise QnasError(
                    f"parameter {attr!r} is used outside a Conv2d/Linear/BatchNorm layer; "
                    "only those layers' parameters can be predicted"
                )
            frontier[node] = preds  # buffers and constants carry no graph node
        elif node.op == "call_module":
            target = str(node.target)
            mod = modules[target]
            if target in used and any(True for _ in mod.parameters()):
                raise QnasError(f"layer {target!r} is called more than once; shared parameters are not supported")
            used.add(target)
            frontier[node] = _module_nodes(b, node, mod, preds, module_of, ops.find(node, modules),
                                           _input_layout(node, layouts, mod))
        elif node.op in ("call_function", "call_method"):
            op = ops.find(node, modules)
            if op is not None and op.ghn == ops.SCALAR:  # `x.view(x.size(0), -1)` must not wire x twice
                frontier[node] = set()
                continue
            ghn = op.ghn_node(node) if op is not None else None
            # An add/concat needs two different branches (not x + x, nor x + x.shape[0]).
            if ghn is not None and ghn.op in ("add", "concat") and (n_tensors < 2 or len(preds) < 2):
                ghn = None
            frontier[node] = {b.add(ghn.op, preds, node.name, ghn.shape)} if ghn else preds
        elif node.op == "output":
            outputs = preds

    for u, v in b.edges:  # the stem must match the data; catches a checkpoint/dataset mismatch early
        if u == 0 and b.ops[v] in ("conv", "group_conv", "dil_conv"):
            cin = b.shapes[v][1] * b.groups[v]
            if cin != input_shape[0]:
                raise QnasError(
                    f"layer {b.labels[v]!r} expects {cin} input channels, but inputs have shape {input_shape}"
                )
    named = dict(module.named_parameters())
    mapped = {p for names in b.params for p in names}
    unused = [n for n in named if n not in mapped]
    if unused:
        raise QnasError(f"parameters never used in forward: {', '.join(unused[:5])}")
    return _freeze(b, _classifier_nodes(b, outputs, module_of), s_max, input_shape)


def _module_nodes(b: _Builder, node: fx.Node, mod: nn.Module, preds: set[int], module_of: dict[int, str],
                  op: ops.Op | None, in_layout: Layout | None) -> set[int]:
    """Add the nodes for one call of a leaf module (``op``: its op-table entry); returns the node(s)
    carrying its output."""
    target = str(node.target)
    ghn = op.ghn_node(node, mod) if op is not None else None
    if ghn is not None and ghn.op in WEIGHT_OPS:
        v = b.add(ghn.op, preds, target, ghn.shape, ghn.groups, (f"{target}.weight",), in_layout)
    elif ghn is not None and ghn.op == "bn":
        v = b.add("bn", preds, target, ghn.shape, 1, (f"{target}.weight", f"{target}.bias"), in_layout)
        module_of[v] = target
        return {v}
    elif any(True for _ in mod.parameters()):
        raise QnasError(
            f"unsupported layer {target!r} ({type(mod).__name__}): only Conv2d, Linear and BatchNorm "
            "layers can have their parameters predicted"
        )
    else:
        return {b.add(ghn.op, preds, target, ghn.shape)} if ghn else preds
    module_of[v] = target
    bias = getattr(mod, "bias", None)
    if bias is not None:
        v = b.add("bias", {v}, target, bias.shape, 1, (f"{target}.bias",))
        module_of[v] = target
    return {v}


def _layout_of(node: fx.Node, layouts: dict[fx.Node, Layout | None], modules: dict[str, nn.Module],
               input_shape: tuple[int, ...]) -> Layout | None:
    """The channel segments of ``node``'s output: a weight layer starts one segment, a concatenation
    along channels joins its inputs' segments, everything else keeps its first input's."""
    if node.op == "placeholder":
        return ((input_shape[0], 1),)
    if node.op == "call_module":
        mod = modules[str(node.target)]
        if isinstance(mod, nn.Conv2d):
            return ((mod.out_channels, 1),)
        if isinstance(mod, nn.Linear):
            return ((mod.out_features, 1),)
    table = ops.find(node, modules)
    if table is not None and table.ghn == "concat":  # what a concatenation is: the op table's entry
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        parts = [layouts.get(t) for t in tensors] if isinstance(tensors, (list, tuple)) else [None]
        if dim in (1, -3) and parts and all(p is not None for p in parts):
            return tuple(seg for p in parts for seg in p)
        return None
    args = [a for a in _node_args(node) if a in layouts]
    return layouts[args[0]] if args else None


def _input_layout(node: fx.Node, layouts: dict[fx.Node, Layout | None], mod: nn.Module) -> Layout | None:
    """The layout of a dense conv, linear or BatchNorm layer's input where it is not one plain segment:
    a concatenation, or a flatten (each channel's positions in a row: its repeat scaled to the width)."""
    if isinstance(mod, nn.Conv2d):
        width = mod.in_channels if mod.groups == 1 else None
    else:
        width = getattr(mod, "in_features", getattr(mod, "num_features", None))
    layout = layouts.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    if width is None or layout is None:
        return None
    total = sum(c * r for c, r in layout)
    if total == 0 or width % total:
        return None
    layout = tuple((c, r * (width // total)) for c, r in layout)
    return None if len(layout) == 1 and layout[0][1] == 1 else layout


def _classifier_nodes(b: _Builder, outputs: set[int], module_of: dict[int, str]) -> set[int]:
    """The weight (and bias) of the conv/linear layer(s) whose output is the module's output, through
    pooling after it (SqueezeNet's 1x1-conv classifier is pooled to the logits)."""
    preds: dict[int, list[int]] = {}
    for u, v in b.edges:
        preds.setdefault(v, []).append(u)
    ends, seen = set(outputs), set()
    while pooled := {v for v in ends if b.ops[v] in POOL_OPS and v not in seen}:
        seen |= pooled
        ends = (ends - pooled) | {u for v in pooled for u in preds.get(v, ())}
    layers = {module_of[v] for v in ends if b.ops[v] in WEIGHT_OPS | {"bias"}}
    return {v for v, m in module_of.items() if m in layers and b.ops[v] in WEIGHT_OPS | {"bias"}}


def _freeze(b: _Builder, classifier: set[int], s_max: int, input_shape: tuple[int, ...]) -> ArchGraph:
    n = len(b.ops)
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for u, v in b.edges:
        preds[v].append(u)
        succs[u].append(v)
    # Node order is fx order, which is topological, so one pass each way gives longest paths.
    fwd = [0] * n
    for v in range(n):
        fwd[v] = 1 + max((fwd[u] for u in preds[v]), default=-1)
    bwd = [0] * n
    for v in reversed(range(n)):
        bwd[v] = 1 + max((bwd[w] for w in succs[v]), default=-1)

    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(b.edges)
    rows = [
        (u, v, d)
        for u, dists in nx.all_pairs_shortest_path_length(g, cutoff=s_max)
        for v, d in dists.items()
        if d >= 1
    ]
    virtual = torch.tensor(sorted(rows), dtype=torch.long).reshape(-1, 3)
    return ArchGraph(
        ops=tuple(b.ops),
        shapes=tuple(b.shapes),
        groups=tuple(b.groups),
        param_names=tuple(b.params),
        is_classifier=tuple(v in classifier for v in range(n)),
        labels=tuple(b.labels),
        edges=tuple(b.edges),
        virtual_edges=virtual,
        fwd_level=tuple(fwd),
        bwd_level=tuple(bwd),
        s_max=s_max,
        input_shape=input_shape,
        in_layouts=tuple(b.in_layouts),
    )


# ----------------------------------------------------------------------------- batching


@dataclass(frozen=True, eq=False)
class LevelStep:
    """One step of a sweep: update ``nodes`` from messages along edges ``src -> nodes[dst]``.

    ``coef[e]`` is ``(1 if the edge is real else 0, 1 / distance)``: the weights of the two
    message MLPs (real-edge and virtual-edge) on edge ``e``.
    """

    nodes: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    coef: torch.Tensor


@dataclass(frozen=True, eq=False)
class GraphBatch:
    """Many graphs as one disjoint union; nodes of graph ``g`` are ``offsets[g]:offsets[g+1]``."""

    graphs: tuple[ArchGraph, ...]
    offsets: tuple[int, ...]
    op_index: torch.Tensor  # (N,) index into OPS
    shapes: torch.Tensor  # (N, 4): shapes padded to 4-D, (C)->(C,1,1,1); -1 where a node has none
    node_graph: torch.Tensor  # (N,) graph of each node
    forward_steps: tuple[LevelStep, ...]
    backward_steps: tuple[LevelStep, ...]

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1]

    def to(self, device: torch.device | str) -> GraphBatch:
        """The same batch with its index tensors on ``device`` (for a GHN on a GPU)."""
        def move(steps: tuple[LevelStep, ...]) -> tuple[LevelStep, ...]:
            return tuple(LevelStep(*(t.to(device) for t in (getattr(s, f.name) for f in fields(s)))) for s in steps)

        return replace(
            self,
            op_index=self.op_index.to(device),
            shapes=self.shapes.to(device),
            node_graph=self.node_graph.to(device),
            forward_steps=move(self.forward_steps),
            backward_steps=move(self.backward_steps),
        )


def _shape4(shape: tuple[int, ...]) -> list[int]:
    if not shape:
        return [-1, -1, -1, -1]
    return (list(shape) + [1, 1, 1])[:4]


def _steps(levels: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, dist: torch.Tensor) -> tuple[LevelStep, ...]:
    """Group nodes by level and incoming edges by their destination's level (vectorized)."""
    order = torch.argsort(levels, stable=True)
    counts = torch.bincount(levels).tolist()
    starts = torch.cumsum(torch.tensor([0] + counts[:-1]), 0)
    pos = torch.empty_like(levels)
    pos[order] = torch.arange(len(levels)) - starts[levels[order]]
    edge_level = levels[dst]
    e_order = torch.argsort(edge_level, stable=True)
    e_counts = torch.bincount(edge_level, minlength=len(counts)).tolist()
    src, dst, dist = src[e_order], pos[dst[e_order]], dist[e_order].to(torch.float32)
    coef = torch.stack([(dist == 1).to(torch.float32), 1.0 / dist], 1)
    return tuple(
        LevelStep(*parts)
        for parts in zip(order.split(counts), src.split(e_counts), dst.split(e_counts), coef.split(e_counts))
    )


def batch_graphs(graphs: Sequence[ArchGraph]) -> GraphBatch:
    """Merge graphs into one :class:`GraphBatch` (node indices offset, levels aligned by depth)."""
    if not graphs:
        raise QnasError("batch_graphs needs at least one graph")
    offsets = [0]
    for g in graphs:
        offsets.append(offsets[-1] + g.num_nodes)
    op_index = torch.tensor([OP_INDEX[op] for g in graphs for op in g.ops], dtype=torch.long)
    shapes = torch.tensor([_shape4(s) for g in graphs for s in g.shapes], dtype=torch.long)
    node_graph = torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor([g.num_nodes for g in graphs]))
    ve = torch.cat([g.virtual_edges + torch.tensor([off, off, 0]) for g, off in zip(graphs, offsets)])
    fwd = torch.tensor([lv for g in graphs for lv in g.fwd_level], dtype=torch.long)
    bwd = torch.tensor([lv for g in graphs for lv in g.bwd_level], dtype=torch.long)
    src, dst, dist = ve[:, 0], ve[:, 1], ve[:, 2]
    return GraphBatch(
        graphs=tuple(graphs),
        offsets=tuple(offsets),
        op_index=op_index,
        shapes=shapes,
        node_graph=node_graph,
        forward_steps=_steps(fwd, src, dst, dist),
        backward_steps=_steps(bwd, dst, src, dist),  # the backward sweep reads from successors
    )
