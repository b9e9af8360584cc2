"""The family generator for predictor training: reproducible keys, every family buildable, traced and
quantizable, sizes within the bound, bad keys as one-line errors."""

from __future__ import annotations

import random

import pytest
import torch

from qnas import families
from qnas.errors import QnasError
from qnas.graph import to_graph
from qnas.quant import prepare

SHAPE = (1, 28, 28)


@pytest.mark.parametrize("family", families.FAMILIES)
def test_every_family_builds_traces_and_quantizes(family: str) -> None:
    rng = random.Random(1)
    key = families.sample_key(rng, 2_000_000, SHAPE, 10, families=(family,))
    assert families.family_of(key) == family
    module = families.build(key, SHAPE, 10)
    assert 10_000 <= sum(p.numel() for p in module.parameters()) <= 2_000_000
    to_graph(module, SHAPE)  # the GHN can read it
    qmodel = prepare(module)  # the quantized executor can run it
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(qmodel(x), module.train()(x), atol=1e-4)  # both on batch statistics


def test_keys_are_reproducible_and_round_trip() -> None:
    a = [families.sample_key(random.Random(7), 10**7, SHAPE, 10) for _ in range(2)]
    assert a[0] == a[1]
    family, config = families.parse_key(a[0])
    assert families.make_key(family, config) == a[0]
    torch.manual_seed(0)
    m1 = families.build(a[0], SHAPE, 10)
    torch.manual_seed(0)
    m2 = families.build(a[0], SHAPE, 10)
    assert [p.shape for p in m1.parameters()] == [p.shape for p in m2.parameters()]


def test_draws_cover_the_size_range_and_every_family() -> None:
    rng = random.Random(0)
    keys = [families.sample_key(rng, 10**7, SHAPE, 10) for _ in range(40)]
    sizes = [sum(p.numel() for p in families.build(k, SHAPE, 10).parameters()) for k in keys]
    assert min(sizes) < 10**5 and max(sizes) > 10**6
    assert {families.family_of(k) for k in keys} == set(families.FAMILIES)


@pytest.mark.parametrize("key", ["densenet", "densenet:", "nosuch:a=1", "vgg:convs=1", "vgg:convs=1,width",
                                 "vgg:act=gelu,bn=1,convs=1,hidden=0,width=8",
                                 "vgg:act=relu,bn=1,convs=1,hidden=0,width=8,extra=1",
                                 "vgg:act=relu,bn=1,convs=1,flatten=0,hidden=0,k=3,mlp=1,width=x",
                                 "vgg:act=relu,bn=1,convs=1,flatten=0,hidden=0,k=4,mlp=1,width=8",
                                 "vgg:act=relu,bn=7,convs=1,flatten=0,hidden=0,k=3,mlp=1,width=8",
                                 "vgg:act=relu,bn=1,convs=1,flatten=0,hidden=0,k=3,mlp=1,width=08",
                                 "vgg:bn=1,act=relu,convs=1,flatten=0,hidden=0,k=3,mlp=1,width=8",
                                 "plain:act=relu,bn=1,depth=0,k=3,width=8"])
def test_bad_keys_are_one_line_errors(key: str) -> None:
    with pytest.raises(QnasError):
        families.build(key, SHAPE, 10)
    assert families.family_of("stem16-16:conv3-fc0") is None


def test_a_predictor_trained_on_the_families_has_seen_every_layer_they_draw() -> None:
    from qnas.coverage import unseen_layers
    from qnas.predictors import PredictorHeader

    rng = random.Random(3)
    graphs = [to_graph(families.build(families.sample_key(rng, 10**6, SHAPE, 10, families=(f,)), SHAPE, 10), SHAPE)
              for f in families.FAMILIES for _ in range(2)]
    assert all(unseen_layers(g, "convnets250k", families.FAMILIES) == [] for g in graphs)
    dense = [g for g in graphs if "concat" in g.ops]
    assert dense and all(any("concat" in p for p in unseen_layers(g, "convnets250k")) for g in dense)
    header = PredictorHeader(name="p", dataset="fashion-mnist", input_shape=(1, 28, 28), num_classes=10,
                             families=("densenet", "vgg"))
    assert PredictorHeader.from_json(header.to_json()).families == ("densenet", "vgg")
    assert PredictorHeader.from_json('{"name": "p", "dataset": null, "input_shape": [1, 28, 28], '
                                     '"num_classes": 10}').families == ()


@pytest.mark.parametrize("key", ["wide:act=relu,bn=1,depth=2,flatten=1,hidden=128,k=5,mlp=2,width=32",
                                 "vgg:act=silu,bn=0,convs=1,flatten=1,hidden=0,k=3,mlp=1,width=8",
                                 "densenet:act=relu,blocks=2,bn=1,bottleneck=1,growth=8,k=3,layers=3,preact=1,stem=16",
                                 "densenet:act=silu,blocks=2,bn=0,bottleneck=0,growth=8,k=7,layers=2,preact=1,stem=8",
                                 "squeezenet:act=relu,bn=1,convhead=1,fires=3,k=3,squeeze=8,stem=16"])
def test_heads_and_preactivation_variants(key: str) -> None:
    module = families.build(key, SHAPE, 10).train()
    to_graph(module, SHAPE)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(prepare(module)(x), module(x), atol=1e-4)
