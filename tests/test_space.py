"""The convnets250k search space: exact analytic counts, round-trips, coverage, splits, CLI."""

from __future__ import annotations

import json
import math
import random

import optuna
import pytest
import torch
from torch import nn

import search_spaces
from qnas.cli import main
from qnas.errors import QnasError
from search_spaces import convnets250k as S


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _macs_by_hooks(module: nn.Module, input_shape) -> int:
    """MACs of convs and linears measured on the built module, for checking count_macs."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += out.shape[1] * (mod.in_channels // mod.groups) * k * out.shape[2] * out.shape[3]
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def test_exact_param_count_for_300_random_genomes():
    rng = random.Random(123)
    for _ in range(300):
        g = S.sample(rng)
        assert S.count_params(g) == _numel(S.build(g)), S.to_string(g)


@pytest.mark.parametrize("split", ["id", "deep", "wide", "bn_free"])
def test_exact_param_count_for_every_split_architecture(split):
    for g in S.load_split(split):
        assert S.count_params(g) == _numel(S.build(g)), S.to_string(g)
        assert S.count_params(g) <= S.MAX_PARAMS


@pytest.mark.parametrize("input_shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_count_macs_matches_forward_hooks(input_shape, classes):
    rng = random.Random(7)
    for _ in range(25):
        g = S.sample(rng, input_shape=input_shape, num_classes=classes)
        m = S.build(g, input_shape, classes)
        assert S.count_params(g, input_shape, classes) == _numel(m)
        assert S.count_macs(g, input_shape, classes) == _macs_by_hooks(m, input_shape)
        assert m(torch.zeros(2, *input_shape)).shape == (2, classes)


def test_every_op_and_downsampling_occurs_and_all_within_bound():
    rng = random.Random(0)
    genomes = [S.sample(rng) for _ in range(400)]
    ops = {b.op for g in genomes for s in g.stages for b in s.blocks}
    downs = {d for g in genomes for d in g.downsample}
    assert ops == set(S.OPS)
    assert downs == set(S.DOWNSAMPLE)
    assert {b.residual for g in genomes for s in g.stages for b in s.blocks} == {False, True}
    assert {g.hidden for g in genomes} == set(S.HIDDEN)
    sizes = [S.count_params(g) for g in genomes]
    assert max(sizes) <= S.MAX_PARAMS
    # Spread over orders of magnitude: every half-decade from 1e4 to 1e7 is well populated.
    buckets = [sum(1 for n in sizes if lo <= math.log10(n) < lo + 0.5) for lo in (4.0, 4.5, 5.0, 5.5, 6.0, 6.5)]
    assert min(buckets) >= 30, buckets


def test_max_params_bound_is_respected():
    rng = random.Random(1)
    for bound in (20_000, 300_000):
        assert all(S.count_params(S.sample(rng, max_params=bound)) <= bound for _ in range(100))


def test_sampling_is_deterministic_by_seed():
    a = [S.sample(random.Random(5)) for _ in range(3)]
    b = [S.sample(random.Random(5)) for _ in range(3)]
    assert a == b
    assert S.sample(random.Random(5)) != S.sample(random.Random(6))


def test_string_and_json_round_trip_and_hashable():
    rng = random.Random(3)
    for _ in range(200):
        g = S.sample(rng)
        s = S.to_string(g)
        assert S.from_string(s) == g
        assert S.from_json(json.loads(json.dumps(S.to_json(g)))) == g
        assert S.parse(json.dumps(S.to_json(g))) == g
        assert " " not in s and "[" not in s
        assert hash(S.from_string(s)) == hash(g)
    nobn = S.load_split("bn_free")[0]
    assert S.to_string(nobn).endswith("-nobn") and S.from_string(S.to_string(nobn)) == nobn


def test_bn_free_nets_have_no_batchnorm_and_conv_biases():
    g = S.load_split("bn_free")[0]
    m = S.build(g)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert all(c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d))


def test_residual_identity_and_projection():
    g = S.from_string("stem16-16:conv3+r-maxpool-32:sep3+r-convs2-32:mb6k3+r-fc0")
    m = S.build(g)
    blocks = [b for b in m.modules() if isinstance(b, S.ResBlock)]
    assert blocks[0].proj is None and blocks[1].proj is not None and blocks[2].proj is None
    dil = S.build(S.from_string("stem8-8:dil5-maxpool-8:dil3-avgpool-8:conv1-fc0"))
    convs = [c for c in dil.modules() if isinstance(c, nn.Conv2d) and c.dilation == (2, 2)]
    assert len(convs) == 2 and all(c.groups == c.in_channels for c in convs)


@pytest.mark.parametrize(
    "bad",
    ["", "stem16", "stem16-32:conv3", "stem16-32:conv9-fc0", "stem16-32:conv3-maxpool-fc0",
     "stemX-32:conv3-fc0", "stem16-32:conv3-foo-32:conv3-fc0", "{not json"],
)
def test_malformed_architectures_raise(bad):
    with pytest.raises(QnasError):
        S.parse(bad)


def test_optuna_suggest_is_fixed_length_and_builds():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = None
    for _ in range(10):
        trial = study.ask()
        g = S.suggest(trial)
        assert S.count_params(g) == _numel(S.build(g))
        if names is None:
            names = set(trial.params)
        assert set(trial.params) == names  # every parameter on every trial
        study.tell(trial, 0.0)
    assert len(names) == 1 + 3 * (2 + 2 * S.MAX_DEPTH) + 2 + 1


def test_committed_splits_match_generator():
    assert S.check_splits() == {"id": True, "deep": True, "wide": True, "bn_free": True}
    assert {k: len(S.load_split(k)) for k in S.SPLIT_SIZES} == S.SPLIT_SIZES
    assert max(len(s.blocks) for g in S.load_split("deep") for s in g.stages) > S.MAX_DEPTH
    widest_id = max(s.width for g in S.load_split("id") for s in g.stages)
    assert min(g.stages[-1].width for g in S.load_split("wide")) > widest_id


def test_registry():
    assert search_spaces.get_space("convnets250k") is S
    assert "convnets250k" in search_spaces.available_spaces()
    with pytest.raises(QnasError):
        search_spaces.get_space("nope")


def test_cli_sample_json(capsys):
    assert main(["space", "sample", "--n", "20", "--seed", "0", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 20
    for r in records:
        g = S.from_string(r["arch"])
        assert S.from_json(r["genome"]) == g
        assert r["params"] == _numel(S.build(g)) <= 10_000_000
        assert r["macs"] == S.count_macs(g)


def test_cli_sample_table_and_info(capsys):
    assert main(["space", "sample", "--n", "3", "--max-params", "1e5"]) == 0
    assert "architectures" in capsys.readouterr().out
    arch = "stem16-32:conv3,sep5+r-maxpool-64:mb6k3+r,dil3-convs2-128:conv1-fc128"
    assert main(["space", "info", arch, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == S.count_params(S.from_string(arch))


def test_cli_splits_check(capsys):
    assert main(["space", "splits", "--check"]) == 0
    assert "matches generator" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["space", "sample", "--n", "-3"],
        ["space", "sample", "--n", "abc"],
        ["space", "sample", "--max-params", "-1"],
        ["space", "sample", "--max-params", "abc"],
        ["space", "sample", "--space", "nope"],
        ["space", "info", "stem16-bad"],
        ["space", "sample", "--input-shape", "1,28"],
    ],
)
def test_cli_bad_input_one_line_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("qnas: error:")


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "qnas" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["space", "sample", "--help"])
    assert "--max-params" in capsys.readouterr().out
