"""qnas.graph: tracing modules into GHN graphs, virtual edges, levels, caching and batching."""

from __future__ import annotations

import random

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qnas.errors import QnasError
from qnas.graph import OPS, WEIGHT_OPS, GraphCache, batch_graphs, to_graph
from search_spaces import convnets250k

# ----------------------------------------------------------------------------- user CNNs (plain PyTorch)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18's layout (7x7 stem, max-pool, 4 stages of 2 basic blocks, fc); width scalable."""

    def __init__(self, in_ch: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], width
        for i, c in enumerate([width, 2 * width, 4 * width, 8 * width]):
            for j in range(2):
                layers.append(BasicBlock(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x))
        return self.fc(x.view(x.size(0), -1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's layout (inverted residuals, linear bottlenecks, 1280-wide head, dropout+fc)."""

    CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, in_ch: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class AllOps(nn.Module):
    """Every op of the vocabulary: conv (+bias), depthwise, grouped, dilated, bn, pools (module and
    functional), add, concat, global pooling, hidden linear and classifier."""

    def __init__(self, in_ch: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, 8, 3, padding=1, bias=True)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False)
        self.dil = nn.Conv2d(8, 16, 5, padding=4, dilation=2, groups=8, bias=False)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(3, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(64, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.bn(self.dw(x)))
        a, b = self.grouped(y), self.dil(y)
        s = self.pool(a + b)  # add, max pool
        t = F.max_pool2d(torch.cat([a, b], 1), 3, 2, 1)  # concat, functional max pool
        u = torch.cat([self.gap(s).flatten(1), self.avg(t).mean((2, 3))], 1)  # 16 + 32 features
        u = torch.cat([u, u[:, :16]], 1)  # 64
        return self.fc(F.relu(self.hidden(u)))


def _assert_maps_all_params(graph, module: nn.Module) -> None:
    assert graph.param_shapes() == {k: tuple(v.shape) for k, v in module.named_parameters()}


# ----------------------------------------------------------------------------- tests


def test_all_ops_are_typed_and_mapped() -> None:
    m = AllOps()
    g = to_graph(m, (1, 16, 16))
    _assert_maps_all_params(g, m)
    by_label = {label: op for label, op in zip(g.labels, g.ops) if op != "bias"}
    assert by_label["stem"] == "conv" and by_label["dw"] == "group_conv" and by_label["grouped"] == "group_conv"
    assert by_label["dil"] == "dil_conv" and by_label["bn"] == "bn" and by_label["hidden"] == "linear"
    assert by_label["pool"] == "max_pool" and by_label["max_pool2d"] == "max_pool" and by_label["avg"] == "avg_pool"
    assert by_label["gap"] == "glob_avg" and by_label["mean"] == "glob_avg"
    assert by_label["add"] == "add" and by_label["cat"] == "concat"
    assert set(g.ops) == set(OPS)  # the module covers the whole vocabulary
    assert g.ops[0] == "input" and g.shapes[g.labels.index("pool")] == (1, 1, 3, 3)
    bn = g.labels.index("bn")
    assert g.param_names[bn] == ("bn.weight", "bn.bias") and g.shapes[bn] == (8,)
    assert g.groups[g.labels.index("dw")] == 8
    cls = {g.labels[v] for v in range(g.num_nodes) if g.is_classifier[v]}
    assert cls == {"fc"} and sum(g.is_classifier) == 2  # fc weight and bias, not the hidden layer
    # Every node is reachable from the input and reaches the output.
    nxg = g.to_networkx()
    last = g.num_nodes - 1
    assert all(v == 0 or 0 in nx.ancestors(nxg, v) for v in nxg)
    assert all(v == last or last in nx.descendants(nxg, v) for v in nxg)


def test_edges_follow_data_flow_and_bias_chain() -> None:
    g = to_graph(AllOps(), (1, 16, 16))
    idx = {(lab, op): v for v, (lab, op) in enumerate(zip(g.labels, g.ops))}
    edges = set(g.edges)
    stem_w, stem_b = idx[("stem", "conv")], idx[("stem", "bias")]
    assert (0, stem_w) in edges and (stem_w, stem_b) in edges and (stem_b, idx[("dw", "group_conv")]) in edges
    add = idx[("add", "add")]
    assert {(idx[("grouped", "group_conv")], add), (idx[("dil", "dil_conv")], add)} <= edges
    assert all(u < v for u, v in g.edges)  # topological numbering


def test_user_cnns_resnet18_and_mobilenetv2() -> None:
    r = ResNet18(3, 10, width=8)
    g = to_graph(r, (3, 32, 32))
    _assert_maps_all_params(g, r)
    assert g.ops.count("add") == 8 and g.ops.count("conv") == 20 and g.ops.count("bn") == 20
    assert g.shapes[g.labels.index("conv1")] == (8, 3, 7, 7)
    m = MobileNetV2(1, 10)
    g = to_graph(m, (1, 28, 28))
    _assert_maps_all_params(g, m)
    assert g.ops.count("group_conv") == 17 and g.ops.count("add") == 10 and g.ops.count("glob_avg") == 1
    assert [g.labels[v] for v in range(g.num_nodes) if g.is_classifier[v]] == ["classifier.1", "classifier.1"]


def test_convnets250k_graphs_map_every_parameter() -> None:
    rng = random.Random(3)
    genomes = [convnets250k.sample(rng, max_params=300_000) for _ in range(4)]
    genomes += [convnets250k.from_string("stem8-16:dil5+r,mb6k5+r-avgpool-32:sep3+r-convs2-64:conv1-fc64-nobn")]
    for genome in genomes:
        m = convnets250k.build(genome, (1, 28, 28), 10)
        g = to_graph(m, (1, 28, 28))
        _assert_maps_all_params(g, m)
        assert g.ops.count("add") == sum(b.residual for s in genome.stages for b in s.blocks)
        assert ("bn" in g.ops) == genome.bn
        n_weights = sum(op in WEIGHT_OPS for op in g.ops)
        assert g.ops.count("bias") == (g.ops.count("linear") if genome.bn else n_weights)


class ConcatFlatten(nn.Module):
    """Two branches concatenated (8 + 4 channels) into BN and a 1x1 conv, then a flatten into a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 4, 1)
        self.bn, self.mix = nn.BatchNorm2d(12), nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        y = self.mix(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(torch.flatten(F.max_pool2d(y, 2), 1))


class PooledConvHead(nn.Module):
    """SqueezeNet's head: the logits are a 1x1 conv's output, rectified and pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.head = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 10, 1)

    def forward(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.head(F.relu(self.features(x)))), 1).flatten(1)


def test_concatenated_and_flattened_inputs_record_their_channel_segments() -> None:
    g = to_graph(ConcatFlatten(), (1, 8, 8))
    layout = {g.labels[v]: g.in_layouts[v] for v in range(g.num_nodes) if g.ops[v] in WEIGHT_OPS | {"bn"}}
    assert layout == {"a": None, "b": None, "bn": ((8, 1), (4, 1)), "mix": ((8, 1), (4, 1)), "fc": ((6, 16),)}
    for genome in [convnets250k.sample(random.Random(s), max_params=300_000) for s in range(3)]:
        assert not any(to_graph(convnets250k.build(genome, (1, 28, 28), 10), (1, 28, 28)).in_layouts)


def test_a_pooled_conv_head_is_the_classifier() -> None:
    g = to_graph(PooledConvHead(), (1, 8, 8))
    assert [g.labels[v] for v in range(g.num_nodes) if g.is_classifier[v]] == ["head", "head"]


def _chain_graph(n_convs: int, s_max: int):
    m = nn.Sequential(*[nn.Conv2d(1, 1, 1, bias=False) for _ in range(n_convs)])
    return to_graph(m, (1, 4, 4), s_max)


def test_virtual_edge_distances_on_a_chain() -> None:
    g = _chain_graph(4, s_max=3)  # input -> 0 -> 1 -> 2 -> 3 : nodes 0..4
    rows = {tuple(r) for r in g.virtual_edges.tolist()}
    expected = {(u, v, v - u) for u in range(5) for v in range(u + 1, 5) if v - u <= 3}
    assert rows == expected
    assert {(u, v) for u, v, d in rows if d == 1} == set(g.edges)
    assert len(_chain_graph(4, s_max=1).virtual_edges) == 4  # s_max=1: real edges only


class Diamond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(1, 1, 1, bias=False) for _ in range(3))
        self.d = nn.Conv2d(1, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(self.a(x) + self.c(self.b(x)))


def test_virtual_edges_take_the_shortest_path_and_levels_the_longest() -> None:
    g = to_graph(Diamond(), (1, 4, 4), s_max=10)
    v = {lab: i for i, lab in enumerate(g.labels)}  # input, a, b, c, add, d
    dist = {(s, t): d for s, t, d in g.virtual_edges.tolist()}
    assert dist[(0, v["add"])] == 2  # via a, not via b -> c
    assert dist[(0, v["d"])] == 3 and dist[(v["b"], v["d"])] == 3
    assert (v["a"], v["c"]) not in dist and (v["d"], 0) not in dist  # no path, directed
    assert g.fwd_level[v["add"]] == 3 and g.fwd_level[v["a"]] == 1  # longest path from the input
    assert g.bwd_level[v["a"]] == 2 and g.bwd_level[v["b"]] == 3 and g.bwd_level[v["d"]] == 0


def test_transparent_ops_self_adds_and_size_queries() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.sigmoid(self.conv(x))
            x = x + x + 1.0  # one branch: no add node
            x = x.mean(dim=(-1, -2))  # global pooling written as a mean
            return self.fc(x.view(x.size(0), -1))

    g = to_graph(Net(), (1, 8, 8))
    assert g.ops == ("input", "conv", "bias", "glob_avg", "linear", "bias")
    assert g.edges == ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5))


@pytest.mark.parametrize(
    "layer, name",
    [(nn.LayerNorm([4, 6, 6]), "LayerNorm"), (nn.PReLU(), "PReLU"), (nn.GroupNorm(2, 4), "GroupNorm")],
)
def test_unsupported_layer_is_named(layer: nn.Module, name: str) -> None:
    m = nn.Sequential(nn.Conv2d(1, 4, 3), layer, nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(QnasError, match=rf"unsupported layer '1' \({name}\)"):
        to_graph(m, (1, 8, 8))


def test_bad_modules_give_one_line_errors() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 1, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.w)

    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.spare = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    cases = [
        (Functional(), 1, "parameter 'w' is used outside"),
        (Dynamic(), 1, "torch.fx cannot trace Dynamic"),
        (Shared(), 2, "layer 'conv' is called more than once"),
        (Unused(), 1, "never used in forward: spare.weight"),
        (nn.Sequential(nn.Conv2d(3, 2, 3)), 1, "expects 3 input channels"),
    ]
    for module, channels, message in cases:
        with pytest.raises(QnasError, match=message) as info:
            to_graph(module, (channels, 8, 8))
        assert "\n" not in str(info.value)


def test_cache_returns_the_same_graph_for_the_same_key() -> None:
    cache = GraphCache(maxsize=2)
    a = to_graph(_chain_net(2), (1, 4, 4), cache=cache, key="two")
    # Same key: the cached graph, even though this module differs (the key is the contract).
    assert to_graph(_chain_net(3), (1, 4, 4), cache=cache, key="two") is a
    assert to_graph(_chain_net(3), (1, 4, 4), cache=cache, key="three").num_nodes == 4
    assert to_graph(_chain_net(2), (1, 4, 4), 5, cache=cache, key="two") is not a  # other s_max
    assert len(cache) == 2  # LRU bound
    assert to_graph(_chain_net(2), (1, 4, 4), cache=cache, key="two") is not a  # "two" was evicted


def _chain_net(n: int) -> nn.Module:
    return nn.Sequential(*[nn.Conv2d(1, 1, 1, bias=False) for _ in range(n)])


def test_batch_graphs_offsets_and_levels() -> None:
    graphs = [to_graph(Diamond(), (1, 4, 4)), to_graph(AllOps(), (1, 16, 16)), _chain_graph(3, 10)]
    batch = batch_graphs(graphs)
    assert batch.offsets == (0, 6, 6 + graphs[1].num_nodes, 6 + graphs[1].num_nodes + 4)
    assert batch.node_graph.tolist() == sum(([i] * g.num_nodes for i, g in enumerate(graphs)), [])
    for steps, levels in ((batch.forward_steps, "fwd_level"), (batch.backward_steps, "bwd_level")):
        flat = torch.cat([s.nodes for s in steps]).tolist()
        assert sorted(flat) == list(range(batch.num_nodes))  # every node updated exactly once
        all_levels = [lv for g in graphs for lv in getattr(g, levels)]
        for k, step in enumerate(steps):
            assert {all_levels[v] for v in step.nodes.tolist()} == {k}
            # Messages come only from earlier levels, i.e. from nodes already updated.
            assert all(all_levels[u] < k for u in step.src.tolist())
        assert sum(len(s.src) for s in steps) == sum(len(g.virtual_edges) for g in graphs)
    first = batch.forward_steps[1]
    assert set(first.coef[:, 0].tolist()) <= {0.0, 1.0}
    with pytest.raises(QnasError):
        batch_graphs([])
