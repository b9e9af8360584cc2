"""qnas.ghn and qnas.predictors: shapes, tiling, normalization, batching, gradients, bit
conditioning, checkpoints (round trip, malicious pickles, mismatches) and the registry."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_graph import AllOps, ConcatFlatten, Diamond, MobileNetV2, ResNet18
from torch import nn

from qnas.errors import QnasError
from qnas.ghn import GHN, GHNConfig, _tile, parse_bits, predict, predict_many
from qnas.graph import batch_graphs, to_graph
from qnas.predictors import (
    PredictorHeader,
    available_predictors,
    load_predictor,
    random_predictor,
    read_header,
    save_predictor,
)
from qnas.quant import QuantSpec
from search_spaces import convnets250k


def _ghn(seed: int = 0, **kwargs) -> GHN:
    torch.manual_seed(seed)
    return GHN(GHNConfig(**kwargs))


def _check_shapes(module: nn.Module, params: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in module.named_parameters()}
    assert {k: tuple(v.shape) for k, v in params.items()} == expected
    assert all(torch.isfinite(v).all() for v in params.values())


@pytest.mark.parametrize(
    "make, shape",
    [(lambda: AllOps(1, 10), (1, 16, 16)), (lambda: ResNet18(3, 10, width=8), (3, 32, 32)),
     (lambda: MobileNetV2(3, 100), (3, 32, 32))],
)
def test_predicted_shapes_equal_the_modules(make, shape) -> None:
    module, ghn = make(), _ghn()
    with torch.no_grad():
        params = predict(ghn, module, "w8a8", input_shape=shape)
    _check_shapes(module, params)
    out = torch.func.functional_call(module.eval(), params, torch.randn(2, *shape))
    assert out.shape == (2, module(torch.randn(2, *shape)).shape[1]) and torch.isfinite(out).all()


def test_tile_repeats_channels_modulo_the_block() -> None:
    block = torch.arange(3 * 2, dtype=torch.float32).view(3, 2, 1, 1)
    tiled = _tile(block, (7, 5, 1, 1))
    for c in range(7):
        for j in range(5):
            assert tiled[c, j, 0, 0] == block[c % 3, j % 2, 0, 0]
    assert _tile(torch.arange(4.0), (2,)).tolist() == [0.0, 1.0]


def test_tile_follows_input_segments() -> None:
    block = torch.arange(3 * 4, dtype=torch.float32).view(3, 4, 1, 1)
    cols = _tile(block, (5, 8, 1, 1), ((2, 1), (6, 1)))[:, :, 0, 0]  # concat of 2 and 6 channels
    assert torch.equal(cols, block[torch.arange(5) % 3][:, [0, 1, 0, 1, 2, 3, 0, 1], 0, 0])
    flat = _tile(block[:, :2, 0, 0], (3, 6), ((2, 3),))  # 2 channels flattened over 3 positions each
    assert torch.equal(flat, block[:, [0, 0, 0, 1, 1, 1], 0, 0])
    assert _tile(torch.arange(4.0), (5,), ((2, 1), (3, 1))).tolist() == [0.0, 1.0, 0.0, 1.0, 2.0]


def test_consumers_of_a_concatenation_read_each_branch_like_a_plain_consumer() -> None:
    with torch.no_grad():
        p = predict(_ghn(), ConcatFlatten(), "fp32", input_shape=(1, 8, 8))
    mix, gamma, fc = p["mix.weight"], p["bn.weight"], p["fc.weight"]
    assert torch.equal(mix[:, 8:], mix[:, :4]) and torch.equal(gamma[8:], gamma[:4])
    assert torch.equal(fc[:, 16:32], fc[:, 16:17].expand(-1, 16)) and not torch.equal(fc[:, 0], fc[:, 16])


def test_wide_tensors_are_tiled_by_period_max_channels() -> None:
    ghn = _ghn(max_channels=16)
    m = nn.Sequential(nn.Conv2d(1, 40, 3), nn.BatchNorm2d(40), nn.Conv2d(40, 20, 1), nn.Flatten(),
                      nn.Linear(20 * 36, 10))
    with torch.no_grad():
        p = predict(ghn, m, "fp32", input_shape=(1, 8, 8))
    w, gamma = p["0.weight"], p["1.weight"]
    assert torch.equal(w[0], w[16]) and torch.equal(w[7], w[39]) and not torch.equal(w[0], w[1])
    assert torch.equal(gamma[:16], gamma[16:32]) and torch.equal(p["2.weight"][:, :16], p["2.weight"][:, 16:32])


def test_normalization_rules() -> None:
    torch.manual_seed(0)
    raw, norm = GHN(GHNConfig(normalize=False)), GHN(GHNConfig(normalize=True))
    norm.load_state_dict(raw.state_dict())
    m = AllOps(1, 10)
    with torch.no_grad():
        p_raw = predict(raw, m, "w4a4", input_shape=(1, 16, 16))
        p = predict(norm, m, "w4a4", input_shape=(1, 16, 16))
    for name, t in m.named_parameters():
        if name == "bn.weight":
            torch.testing.assert_close(p[name], 2 * torch.sigmoid(0.5 * p_raw[name]))
            assert ((p[name] > 0) & (p[name] < 2)).all()
        elif t.dim() == 1:  # conv/linear biases and BN's beta
            torch.testing.assert_close(p[name], torch.tanh(0.2 * p_raw[name]))
            assert (p[name].abs() < 1).all()
        else:
            fan_in = math.prod(t.shape[1:])
            # One input channel per group (depthwise, and `dil` with groups=8 on 8 channels): beta 1.
            beta = 1.0 if name in ("dw.weight", "dil.weight") else 2.0
            torch.testing.assert_close(p[name], p_raw[name] * math.sqrt(beta / fan_in))
    # The 1-input-channel stem is not depthwise: it keeps beta=2.
    torch.testing.assert_close(p["stem.weight"], p_raw["stem.weight"] * math.sqrt(2 / 9))


def test_standardize_touches_only_bn_free_nets() -> None:
    torch.manual_seed(0)
    plain, std = GHN(GHNConfig()), GHN(GHNConfig(standardize=True))
    missing = std.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["ws_gain.bias", "ws_gain.weight"]
    with_bn = convnets250k.from_string("stem8-16:sep3+r,dil3-maxpool-32:mb3k5+r-convs2-64:conv1-fc32")
    bn_free = convnets250k.from_string("stem8-16:sep3+r,dil3-maxpool-32:mb3k5+r-convs2-64:conv1-fc32-nobn")
    graphs = [to_graph(convnets250k.build(g), (1, 28, 28)) for g in (with_bn, bn_free)]
    with torch.no_grad():
        (a_bn, a_free), (b_bn, b_free) = plain(batch_graphs(graphs)), std(batch_graphs(graphs))
    for k in a_bn:  # nets with BatchNorm: bit-exact
        assert torch.equal(a_bn[k], b_bn[k]), k
    module = convnets250k.build(bn_free)
    classifier = [n for n, _ in module.named_parameters()][-2]
    checked = 0
    for name, t in module.named_parameters():
        if t.dim() == 1:
            assert torch.equal(a_free[name], b_free[name]), name  # biases are not standardized
            continue
        if name == classifier:
            assert torch.equal(a_free[name], b_free[name])
            continue
        # Scaled WS with the zero-initialized gain (1): zero mean, RMS sqrt(beta / fan_in) per channel.
        rows = b_free[name].flatten(1)
        fan_in = rows.shape[1]
        layer = module.get_submodule(name.rsplit(".", 1)[0])
        beta = 1.0 if getattr(layer, "groups", 1) > 1 else 2.0  # depthwise: GHN-2's beta 1
        if fan_in > 1:
            torch.testing.assert_close(rows.mean(1), torch.zeros(len(rows)), atol=1e-5, rtol=0)
            torch.testing.assert_close(rows.square().mean(1).sqrt(), torch.full((len(rows),), math.sqrt(beta / fan_in)),
                                       rtol=1e-3, atol=1e-6)
        assert not torch.equal(a_free[name], b_free[name])
        checked += 1
    assert checked >= 8


def test_batching_gives_the_same_predictions_as_one_by_one() -> None:
    ghn = _ghn()
    nets = [AllOps(1, 10), Diamond(), ResNet18(1, 10, width=4),
            convnets250k.build(convnets250k.from_string("stem8-16:sep3+r-maxpool-32:mb3k5+r-convs2-64:conv1-fc0"))]
    shapes = [(1, 16, 16), (1, 4, 4), (1, 32, 32), (1, 28, 28)]
    graphs = [to_graph(n, s) for n, s in zip(nets, shapes)]
    bits = ["fp32", "w4a4", (2, 2), "w8a8"]
    with torch.no_grad():
        together = ghn(batch_graphs(graphs), bits)
        alone = [predict(ghn, g, b) for g, b in zip(graphs, bits)]
    for a, b in zip(together, alone):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _reference_sweeps(ghn: GHN, graph, h: torch.Tensor) -> torch.Tensor:
    """GHN-2's node-by-node gated GNN (forward then backward), written without any batching."""
    ve = graph.virtual_edges.tolist()
    for forward in (True, False):
        new: dict[int, torch.Tensor] = {}
        order = range(graph.num_nodes) if forward else reversed(range(graph.num_nodes))
        for v in order:
            m = torch.zeros(h.shape[1])
            for s, t, d in ve:
                u = s if forward else t
                if (t if forward else s) != v:
                    continue
                m = m + ghn.msg_virtual(new[u]) / d + (ghn.msg(new[u]) if d == 1 else 0)
            new[v] = ghn.gru(m[None], h[v][None])[0]
        h = torch.stack([new[v] for v in range(graph.num_nodes)])
    return h


def test_level_parallel_sweeps_match_node_by_node_reference_including_gradients() -> None:
    ghn = _ghn()
    graph = to_graph(AllOps(1, 10), (1, 16, 16))
    batch = batch_graphs([graph])
    h0 = torch.randn(graph.num_nodes, ghn.config.hidden)
    fast = ghn._sweep(ghn._sweep(h0, batch.forward_steps), batch.backward_steps)
    slow = _reference_sweeps(ghn, graph, h0)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(fast)
    params = [ghn.gru.weight_hh, ghn.msg[0].weight, ghn.msg_virtual[2].bias]
    g_fast = torch.autograd.grad((fast * weights).sum(), params)
    g_slow = torch.autograd.grad((slow * weights).sum(), params)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gradients_reach_every_ghn_parameter() -> None:
    ghn = _ghn()
    m = AllOps(1, 10)  # conv biases, BN, depthwise, classifier weight and bias: every head is used
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    params = predict(ghn, m, "w4a8", input_shape=(1, 16, 16))
    loss = F.cross_entropy(torch.func.functional_call(m, params, x), y)
    loss.backward()
    missing = [n for n, p in ghn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_bit_conditioning_changes_predictions_and_can_be_disabled() -> None:
    m = Diamond()
    ghn = _ghn()
    with torch.no_grad():
        a = predict(ghn, m, "fp32", input_shape=(1, 4, 4))
        b = predict(ghn, m, "w2a2", input_shape=(1, 4, 4))
        c = predict(ghn, m, "w2a8", input_shape=(1, 4, 4))
    assert not torch.allclose(a["a.weight"], b["a.weight"]) and not torch.allclose(b["a.weight"], c["a.weight"])
    plain = _ghn(bit_conditioning=False)
    assert not any("bits" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        pa = predict(plain, m, "fp32", input_shape=(1, 4, 4))
        pb = predict(plain, m, "w2a2", input_shape=(1, 4, 4))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_bits_parsing_and_input_errors() -> None:
    assert parse_bits("fp32") == (32, 32) and parse_bits("W4A8") == (4, 8) and parse_bits((2, 2)) == (2, 2)
    assert parse_bits("w2a2-noise") == (2, 2) and parse_bits(QuantSpec(4, None)) == (4, 32)
    assert parse_bits(QuantSpec()) == (32, 32)
    for bad in ("w4", "w1a8", (4, 9), 3):
        with pytest.raises(QnasError):
            parse_bits(bad)
    ghn = _ghn()
    with pytest.raises(QnasError, match="input_shape"):
        predict(ghn, Diamond(), "fp32")
    with pytest.raises(QnasError, match="s_max"):
        predict(ghn, to_graph(Diamond(), (1, 4, 4), s_max=3), "fp32")
    with pytest.raises(QnasError, match="2 bit settings for 1 graphs"):
        ghn(batch_graphs([to_graph(Diamond(), (1, 4, 4))]), ["fp32", "w8a8"])


def test_ghn_stays_small() -> None:
    assert 500_000 < GHN().num_parameters < 2_000_000  # a checkpoint of a few MB


# ----------------------------------------------------------------------------- checkpoints and registry


def _header(ghn: GHN, **kwargs) -> PredictorHeader:
    base = dict(name="test", dataset="fashion-mnist", input_shape=(1, 28, 28), num_classes=10,
                mean=(0.286,), std=(0.353,), ghn_config=ghn.config.to_dict(), bits_trained=("fp32", "w4a4"),
                train_steps=12, eval_table={"fp32": {"id": 0.5}})
    return PredictorHeader(**{**base, **kwargs})


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    ghn = _ghn(seed=4, hidden=16, max_channels=16, decoder_hidden=8, decoder_mid=16)
    path = save_predictor(tmp_path / "ghn.pt", ghn, _header(ghn))
    assert path.with_suffix(".json").exists() and read_header(path) == _header(ghn)
    pred = load_predictor(path, dataset="fashion-mnist", input_shape=(1, 28, 28), num_classes=10)
    assert pred.header == _header(ghn) and pred.path == path
    m = convnets250k.build(convnets250k.from_string("stem8-16:conv3-maxpool-16:sep5+r-convs2-32:dil3-fc32"))
    with torch.no_grad():
        a = predict(ghn, m, "w4a4", input_shape=(1, 28, 28))
        b = pred.predict(m, "w4a4")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the header can be rewritten (an evaluation table recorded later); the weights stay as they were
    from qnas.predictors import update_header

    update_header(path, eval_table={"fp32": {"id": 0.7}})
    again = load_predictor(path)
    assert again.header.eval_table == {"fp32": {"id": 0.7}} == read_header(path).eval_table
    assert all(torch.equal(ghn.state_dict()[k], v) for k, v in again.ghn.state_dict().items())


def test_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    ghn = _ghn(hidden=8, max_channels=8, decoder_hidden=4, decoder_mid=8)
    path = save_predictor(tmp_path / "fm.pt", ghn, _header(ghn))
    with pytest.raises(QnasError, match="trained on fashion-mnist, not cifar10"):
        load_predictor(path, dataset="cifar10")
    with pytest.raises(QnasError, match=r"expects inputs of shape \(1, 28, 28\), not \(3, 32, 32\)"):
        load_predictor(path, input_shape=(3, 32, 32))
    with pytest.raises(QnasError, match="predicts 10 classes, not 100"):
        load_predictor(path, num_classes=100)
    # Weights that do not fit the header's GHN config.
    other = _ghn(hidden=12, max_channels=8, decoder_hidden=4, decoder_mid=8)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"] = other.state_dict()
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(QnasError, match="do not match its config"):
        load_predictor(tmp_path / "bad.pt")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # Sanity: unpickling this payload unrestricted really would run the command.
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    for name, payload in [("zip.pt", {"format": "qnas-ghn", "header": "{}", "state_dict": _Exploit(marker)}),
                          ("top.pt", _Exploit(marker))]:
        torch.save(payload, tmp_path / name)
        with pytest.raises(QnasError, match="not a qnas predictor checkpoint"):
            load_predictor(tmp_path / name)
    with open(tmp_path / "legacy.pt", "wb") as f:  # a raw (non-zip) pickle stream
        pickle.dump(_Exploit(marker), f, protocol=2)
    with pytest.raises(QnasError, match="not a qnas predictor checkpoint"):
        load_predictor(tmp_path / "legacy.pt")
    assert not marker.exists()


def test_registry_names_and_random_predictor() -> None:
    assert "random" in available_predictors()
    with pytest.raises(QnasError, match="unknown predictor 'no-such-ghn'"):
        load_predictor("no-such-ghn")
    a, b = load_predictor("random", seed=1), random_predictor(seed=1)
    c = load_predictor("random", seed=2, dataset="cifar10", input_shape=(3, 32, 32))
    assert all(torch.equal(x, y) for x, y in zip(a.ghn.state_dict().values(), b.ghn.state_dict().values()))
    assert not torch.equal(a.ghn.dec_out.weight, c.ghn.dec_out.weight)
    assert c.header.input_shape == (3, 32, 32) and c.header.dataset == "cifar10"
    state = torch.get_rng_state()
    random_predictor(seed=5)
    assert torch.equal(state, torch.get_rng_state())  # no hidden global RNG use


def test_shipped_predictor_loads_and_its_header_matches_the_package() -> None:
    from qnas.data import dataset_info
    from qnas.predictors import default_predictor

    name = default_predictor("fashion-mnist")
    pred = load_predictor(name, dataset="fashion-mnist")
    h, info = pred.header, dataset_info("fashion-mnist")
    assert pred.path is not None and pred.path.stat().st_size < 10_000_000  # a few MB, inside the package
    assert (h.name, h.dataset, h.search_space) == ("fashion-mnist", "fashion-mnist", "convnets250k")
    assert h.input_shape == tuple(info.input_shape) and h.num_classes == info.num_classes
    assert h.mean == tuple(info.mean) and h.std == tuple(info.std)
    assert pred.ghn.config.bit_conditioning and h.train_steps > 0
    assert {QuantSpec.parse(b).w_bits for b in h.bits_trained} == {None, 8, 4, 2}
    module = convnets250k.build(convnets250k.from_string("stem8-16:conv3-maxpool-16:sep3+r-convs2-32:dil3-fc32"))
    with torch.no_grad():
        _check_shapes(module, pred.predict(module, "w4a4"))
    # Its recorded Table 1: far above random init on every split (BN-free included) at FP32 and W4A4,
    # well above it at W2A2.
    rows = h.eval_table["rows"]
    assert set(h.eval_table["splits"]) == {"id", "deep", "wide", "bn_free"}
    for setting, margin in (("fp32", 0.4), ("w4a4-channel", 0.4), ("w2a2-channel", 0.15)):
        floor = rows[setting]["random"]["top1"]["mean"]
        for split in h.eval_table["splits"]:
            assert rows[setting][split]["top1"]["mean"] > floor + margin, (setting, split)


@pytest.mark.slow
def test_random_ghn_predicts_all_800_split_architectures() -> None:
    pred = random_predictor(seed=0)
    for split in ("id", "deep", "wide", "bn_free"):
        genomes = convnets250k.load_split(split)
        for i in range(0, len(genomes), 8):
            modules = [convnets250k.build(g) for g in genomes[i : i + 8]]
            with torch.no_grad():
                outs = predict_many(pred.ghn, modules, "w4a4", input_shape=(1, 28, 28))
            for module, params in zip(modules, outs):
                _check_shapes(module, params)


# ----------------------------------------------------------------------------- eval-predictor and --init ghn


def _fashion_available() -> bool:
    from qnas.data import load_dataset

    try:
        load_dataset("fashion-mnist")
    except QnasError:
        return False
    return True


def test_eval_predictor_json_matches_a_direct_evaluation(capsys: pytest.CaptureFixture[str]) -> None:
    if not _fashion_available() and not os.environ.get("CI"):
        pytest.skip("fashion-mnist not installed (make setup installs it)")
    from qnas.cli import main
    from qnas.data import load_dataset
    from qnas.predictors.evaluation import test_subset
    from qnas.readout import Readout
    from qnas.score import evaluate

    rc = main(["eval-predictor", "--predictor", "random", "--splits", "id,bn_free", "--n", "1", "--images", "64",
               "--bits", "fp32,w4a4", "--granularity", "tensor", "--bn-stats", "batch", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"] == ["fp32", "w4a4"] and out["test_images"] == 64 and out["bn_stats"] == "batch"
    assert out["head"] == "fit64"  # the scoring default: the head fitted on as many training images as test ones
    assert [r["arch"] for r in out["architectures"]] == [
        convnets250k.to_string(convnets250k.load_split(s)[0]) for s in ("id", "bn_free")]
    cell = out["table"]["w4a4"]["id"]["top1"]
    assert cell["n"] == 1 and cell["sem"] == 0 and cell["mean"] == cell["max"]
    assert out["table"]["fp32"]["random"]["top5"]["n"] == 2
    # The id cell is the random GHN's parameters evaluated on the same 64 test images. eval-predictor makes
    # one GHN call for both settings; a batch of two graphs rounds differently from one on some CPUs
    # (AVX-512: ~1e-7), enough to move a 4-bit rounding, so the direct evaluation makes the same call.
    ds = load_dataset("fashion-mnist")
    x, y = test_subset(ds, 64)
    module = convnets250k.build(convnets250k.load_split("id")[0])
    ghn = random_predictor(seed=0).ghn.eval()
    graph = to_graph(module, (1, 28, 28), ghn.config.s_max)
    with torch.no_grad():
        params = ghn(batch_graphs([graph, graph]), [QuantSpec.parse("fp32"), QuantSpec.parse("w4a4")])[1]
    alone = predict(ghn, module, "w4a4", input_shape=(1, 28, 28))
    assert all(torch.allclose(alone[k], params[k], atol=1e-5) for k in params)  # the same parameters
    direct = evaluate(module, params, x, y, ["w4a4"], bn_stats="batch", readout=Readout.from_dataset(ds, 64))
    assert direct["w4a4"]["top1"] == cell["mean"]


def test_eval_predictor_table_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    from qnas.cli import main

    assert main(["eval-predictor", "--predictor", "no-such", "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown predictor 'no-such'" in err
    assert main(["eval-predictor", "--predictor", "random", "--bits", "w9a9"]) == 2
    assert "bits must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["eval-predictor", "--splits", "id,tiny"])
    assert info.value.code == 2 and "expected splits from" in capsys.readouterr().err
    if not _fashion_available() and not os.environ.get("CI"):
        pytest.skip("fashion-mnist not installed (make setup installs it)")
    rc = main(["eval-predictor", "--predictor", "random", "--splits", "bn_free", "--n", "1", "--images", "32",
               "--bits", "w8a8", "--no-floor"])
    out = capsys.readouterr().out
    assert rc == 0 and "OOD-BN-Free (n=1)" in out and "±" in out and "random init" not in out
    assert "w8a8-channel" in out  # per-channel weight scales by default, as `qnas search` scores


def test_eval_predictor_record_merges_rows_by_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not _fashion_available() and not os.environ.get("CI"):
        pytest.skip("fashion-mnist not installed (make setup installs it)")
    from qnas.cli import main

    ghn = _ghn(seed=1, hidden=8, max_channels=8, decoder_hidden=4, decoder_mid=8)
    path = save_predictor(tmp_path / "p.pt", ghn, _header(ghn))
    base = ["eval-predictor", "--predictor", str(path), "--splits", "bn_free", "--n", "1", "--images", "32",
            "--no-floor", "--record"]
    assert main([*base, "--bits", "fp32,w4a4"]) == 0
    assert main([*base, "--bits", "w2a2"]) == 0  # measured the same way: added to the table
    table = read_header(path).eval_table
    assert set(table["rows"]) == {"fp32", "w4a4-channel", "w2a2-channel"}
    assert table["test_images"] == 32 and table["archs_per_split"] == {"bn_free": 1}
    assert "--bits w2a2-channel" in table["rows"]["w2a2-channel"]["command"]
    assert 0 <= table["rows"]["w4a4-channel"]["bn_free"]["top1"]["mean"] <= 1
    # Measured otherwise: a new table, but one without the recorded settings only with --force.
    assert main([*base, "--bits", "w8a8", "--images", "64"]) == 2
    assert main([*base, "--bits", "w8a8", "--images", "64", "--force"]) == 0
    assert list(read_header(path).eval_table["rows"]) == ["w8a8-channel"]
    capsys.readouterr()
    assert main(["eval-predictor", "--predictor", "random", "--record", "--n", "1"]) == 2
    assert "--record" in capsys.readouterr().err


def test_ghn_init_gives_per_setting_parameters_for_score() -> None:
    from qnas.data import dataset_info
    from qnas.predictors import ghn_init
    from qnas.score import evaluate

    module = convnets250k.build(convnets250k.from_string("stem8-16:conv3-maxpool-16:sep3+r-convs2-32:conv1-fc0"))
    params = ghn_init(module, "random", dataset=dataset_info("fashion-mnist"))
    a, b = params(QuantSpec.parse("w4a4")), params(QuantSpec.parse("fp32"))
    assert params(QuantSpec.parse("w4a4")) is a and not torch.equal(a["stem.0.weight"], b["stem.0.weight"])
    _check_shapes(module, a)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    acc = evaluate(module, params, x, y, ["fp32", "w4a4"], bn_stats="batch")
    assert set(acc) == {"fp32", "w4a4"}
    with pytest.raises(QnasError, match="unknown predictor"):
        ghn_init(module, "nope", dataset="fashion-mnist")
