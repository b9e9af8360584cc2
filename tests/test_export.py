"""Export: files, PyTorch round trip, ONNX (float, int8 QDQ, 4/2-bit QCDQ) matching PyTorch, CLI behaviour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from test_finetune import TINY, fashion, make_study, small_fashion  # noqa: F401 - fixtures
from torch import nn

import qnas
from qnas import data
from qnas.cli import main
from qnas.errors import QnasError
from qnas.export import _check, export_model, load_quantized, to_onnx, verify_onnx
from qnas.finetune import FAQConfig, bn_stats, faq_calibration, finetune, layout
from qnas.quant import Calibration, QuantSpec
from search_spaces import convnets250k as S

SETTINGS = ("w8a8", "w4a4", "w2a2")


@pytest.fixture(scope="module")
def exported(fashion, tmp_path_factory):  # noqa: F811
    """A tiny convnets250k net, FAQ-finetuned briefly, exported with int8, 4-bit and 2-bit graphs."""
    genome = S.from_string(TINY[0])
    torch.manual_seed(0)
    module = S.build(genome)
    result = finetune(module, fashion, FAQConfig(setting="w4a4", epochs=1, train_size=512, lr=0.5, batch_size=32),
                      eval_data=(data.normalize(fashion.test_images[:200], fashion.info), fashion.test_labels[:200]),
                      val_data=data.val_subset(fashion, 200))
    qmodel, lay = layout(module)
    calib = data.normalize(fashion.train_images[:256], fashion.info)
    settings = {}
    for name in SETTINGS:
        spec = QuantSpec.parse(f"{name}-fl8")
        cal = (Calibration(bn=bn_stats(module), ranges=result.ranges, num_images=0) if name == "w4a4"
               else faq_calibration(qmodel, lay, calib, spec, stats=bn_stats(module)))
        settings[name] = (spec, cal, "test")
    out = tmp_path_factory.mktemp("export") / "model"
    images = data.normalize(fashion.test_images[:300], fashion.info)
    arch = {"space": "convnets250k", "genome": S.to_json(genome), "arch": S.to_string(genome),
            "dataset": "fashion-mnist", "input_shape": [1, 28, 28], "num_classes": 10, "params": S.count_params(genome)}
    res = export_model(module, out, arch=arch, input_shape=(1, 28, 28), settings=settings, onnx_settings=SETTINGS,
                       verify_images=images, metrics={"fp32": 0.5})
    return module, settings, out, res, images


def test_export_writes_every_file_and_onnx_matches_pytorch(exported):
    _, _, out, res, _ = exported
    names = {"arch.json", "model.safetensors", "quant.json", "model.onnx", "model_int8_qdq.onnx",
             "model_w4a4_qcdq.onnx", "model_w2a2_qcdq.onnx", "README.md"}
    assert names == {p.name for p in out.iterdir()}
    for file, r in res.verification.items():
        assert r["images"] == 300
        assert r["top1_agreement"] >= 0.99, (file, r)
    fp = res.verification["model.onnx"]  # float: summation order only
    assert fp["max_abs_diff"] < 1e-4 * max(1.0, fp["mean_abs_logit"])
    card = (out / "README.md").read_text()
    assert "qnas.load(" in card and "model_w2a2_qcdq.onnx" in card and "| fp32 | 50.00% |" in card
    # The card states measured latency per file, and the first/last-layer rule.
    assert set(res.latency_ms) == {f for f in names if f.endswith(".onnx")} and min(res.latency_ms.values()) > 0
    int8 = "model_int8_qdq.onnx"
    assert f"| {int8} | {res.files[int8]:,} | {res.latency_ms[int8]:.3f} |" in card
    assert "first/last layers: first and last weight layers" in card
    grids = next(line for line in card.splitlines() if line.startswith("- weight grids:"))  # from quant.json
    assert "8-bit symmetric (zero point 0) per" in grids and "stored as INT8" in grids
    assert "4-bit asymmetric per" in grids and "stored as UINT4" in grids and "2-bit weights in 4-bit" in grids
    assert not list(out.parent.glob(".qnas-partial-*"))  # the partial directory was renamed into place


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _clip_max(path: Path) -> set[int]:
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {int(inits[n.input[2]]) for n in model.graph.node if n.op_type == "Clip" and n.input[2] in inits
            and inits[n.input[2]].dtype.name == "uint8"}


def _weight_inits(path: Path) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in onnx.load(str(path)).graph.initializer if i.name.endswith(".weight_quantized")}


def test_onnx_graph_conventions(exported):
    _, _, out, res, _ = exported
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(_ops(out / "model.onnx"))
    int8 = _ops(out / "model_int8_qdq.onnx")
    assert "QuantizeLinear" in int8 and "DequantizeLinear" in int8 and "Clip" not in int8
    # int8: symmetric signed weights, zero point 0 (what onnxruntime's integer kernels run fast).
    model = onnx.load(str(out / "model_int8_qdq.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    for name, w in _weight_inits(out / "model_int8_qdq.onnx").items():
        assert w.data_type == onnx.TensorProto.INT8
        zp = onnx.numpy_helper.to_array(inits[name.replace("_quantized", "_zero_point")])
        assert zp.dtype.name == "int8" and not zp.any()
        assert onnx.numpy_helper.to_array(w).min() >= -127
    # Sub-8-bit: weights stored as UINT4 (2-bit ones too: 4-bit containers), first/last layers INT8.
    quant = json.loads((out / "quant.json").read_text())
    for setting in ("w4a4", "w2a2"):
        f = out / f"model_{setting}_qcdq.onnx"
        types = {n: w.data_type for n, w in _weight_inits(f).items()}
        for module, q in quant["settings"][setting]["weights"].items():
            want = onnx.TensorProto.INT8 if q["bits"] == 8 else onnx.TensorProto.UINT4
            assert types[q["onnx_initializer"]] == want, (setting, module)
        assert types["stem.0.weight_quantized"] == onnx.TensorProto.INT8  # first layer: 8 bits
        assert onnx.load(str(f)).opset_import[0].version == 21
    # 4-bit weights take half the bytes of 8-bit ones (two to a byte).
    for name, w in _weight_inits(out / "model_w4a4_qcdq.onnx").items():
        n = math.prod(w.dims)
        assert len(w.raw_data) == (n if w.data_type == onnx.TensorProto.INT8 else (n + 1) // 2), name
    # QCDQ: Q -> Clip to the low-bit range -> DQ; first/last layers and their activations stay 8-bit.
    assert _clip_max(out / "model_w4a4_qcdq.onnx") == {15}
    assert _clip_max(out / "model_w2a2_qcdq.onnx") == {3}
    model = onnx.load(str(out / "model_w4a4_qcdq.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type == "Clip" and n.input[0] in producers and producers[n.input[0]].op_type == "QuantizeLinear":
            assert any(m.op_type == "DequantizeLinear" and m.input[0] == n.output[0] for m in model.graph.node)
    quant = json.loads((out / "quant.json").read_text())
    w4 = quant["settings"]["w4a4"]
    assert w4["spec"] == "w4a4-fl8" and w4["weights"]["stem.0"]["bits"] == 8 and w4["activations"]["x"]["bits"] == 8
    assert {v["bits"] for v in w4["weights"].values()} == {4, 8}
    assert "first and last weight layers" in w4["first_last"]
    for entry in w4["weights"].values():
        assert entry["symmetric"] == (entry["bits"] == 8)
        assert entry["storage"] == ("int8" if entry["bits"] == 8 else "uint4")
        assert entry["scale"] > 0 and entry["levels"][0] <= entry["zero_point"] <= entry["levels"][1]
    for entry in w4["activations"].values():
        assert entry["scale"] > 0 and 0 <= entry["zero_point"] < 2 ** entry["bits"]


def test_pytorch_round_trip_is_identical(exported):
    module, settings, out, _, images = exported
    loaded = qnas.load(out)
    assert not loaded.training
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), module(images))
    qref, _ = layout(module)
    for name in SETTINGS:
        qmodel, cal, spec = load_quantized(out, name)
        ref_spec, ref_cal, _ = settings[name]
        assert spec == ref_spec
        with torch.no_grad():
            assert torch.equal(qmodel(images, spec, cal), qref(images, ref_spec, ref_cal))


def test_mismatch_is_detected(exported):
    module, settings, _, _, images = exported
    _, lay = layout(module)
    spec, cal, _ = settings["w4a4"]
    wrong = Calibration(bn=cal.bn, ranges={k: (lo * 2, hi * 2) for k, (lo, hi) in cal.ranges.items()}, num_images=0)
    model = to_onnx(module, lay, wrong, spec, (1, 28, 28))
    qmodel, _ = layout(module)
    r = verify_onnx(model, qmodel, cal, spec, images[:200])
    assert _check("m.onnx", spec, r) is not None
    assert _check("m.onnx", spec, verify_onnx(to_onnx(module, lay, cal, spec, (1, 28, 28)), qmodel, cal, spec,
                                              images[:200])) is None


class UserNet(nn.Module):
    """A hand-written CNN with functional ops, a concatenation, a standalone BN and a view."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 6, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(torch.cat([F.relu(self.a(x)), self.b(x)], 1))
        y = F.max_pool2d(F.relu(y), 2)
        y = F.avg_pool2d(F.relu(self.dw(y)) + y, 3, 2, 1)
        y = y.mean((2, 3), keepdim=True)
        return self.fc(y.view(y.size(0), -1))


def test_user_cnn_exports_to_matching_onnx(fashion):  # noqa: F811
    torch.manual_seed(0)
    module = UserNet().eval()
    qmodel, lay = layout(module)
    images = data.normalize(fashion.test_images[:300], fashion.info)
    for name in ("fp32", "w8a8", "w4a4"):
        spec = QuantSpec.parse(name)
        cal = faq_calibration(qmodel, lay, images[:128], spec if not spec.is_float else QuantSpec(8, 8))
        r = verify_onnx(to_onnx(module, lay, cal, spec, (1, 28, 28)), qmodel, cal, spec, images)
        assert _check(name, spec, r) is None, (name, r)


def test_per_channel_weights_export_bit_exact_and_match_onnx(fashion):  # noqa: F811
    """`-channel` settings (the search's default): per-axis DequantizeLinear whose weights are exactly the
    engine's per-channel fake-quantized folded weights, and onnxruntime agrees with PyTorch."""
    from qnas.export import _folded, quant_params
    from qnas.quant import quantize_weight

    torch.manual_seed(0)
    module = UserNet().eval()
    qmodel, lay = layout(module)
    images = data.normalize(fashion.test_images[:300], fashion.info)
    for name in ("w8a8-channel", "w4a4-channel", "w2a2-channel"):
        spec = QuantSpec.parse(name)
        cal = faq_calibration(qmodel, lay, images[:128], spec)
        model = to_onnx(module, lay, cal, spec, (1, 28, 28))
        r = verify_onnx(model, qmodel, cal, spec, images)
        assert _check(name, spec, r) is None, (name, r)
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        params = quant_params(module, lay, cal, spec)
        for layer in lay.weights:
            q = params["weights"][layer.module]
            w, _ = _folded(module, lay, cal, layer)
            assert q["granularity"] == "channel" and len(q["scale"]) == w.shape[0] == len(q["zero_point"])
            levels = torch.from_numpy(inits[f"{layer.module}.weight_quantized"].astype("float32"))
            shape = (-1, *([1] * (w.dim() - 1)))
            deq = (levels - torch.tensor(q["zero_point"], dtype=torch.float32).reshape(shape)) * torch.tensor(
                q["scale"], dtype=torch.float32).reshape(shape)
            symmetric = spec.weight_symmetric(spec.w_bits)
            assert q["symmetric"] == symmetric == (spec.w_bits == 8)
            assert torch.equal(deq, quantize_weight(w, spec.w_bits, granularity="channel", symmetric=symmetric))
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith(".weight_dq")]
        assert dq and all(a.name == "axis" and a.i == 0 for n in dq for a in n.attribute)


# ---------------------------------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def finetuned_study(small_fashion, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("study")
    url, _ = make_study(tmp)
    root = tmp / "studies"
    assert main(["finetune", "--study", "ft", "--storage", url, "--trials", "0", "--bits", "4", "--epochs", "1",
                 "--train-size", "512", "--lr", "0.5", "--batch-size", "32", "--test-size", "100", "--init", "random",
                 "--data-dir", str(small_fashion), "--out-root", str(root), "--quiet", "--json"]) == 0
    return url, root


def _export_args(url, root, small_fashion, out, *extra):  # noqa: F811
    return ["export", "--study", "ft", "--storage", url, "--out", str(out), "--data-dir", str(small_fashion),
            "--out-root", str(root), "--verify-size", "300", "--test-size", "300", "--predictor", "random", *extra]


def test_cli_export_trial_force_and_json(finetuned_study, small_fashion, tmp_path, capsys):  # noqa: F811
    url, root = finetuned_study
    out = tmp_path / "out"
    assert main(_export_args(url, root, small_fashion, out, "--trial", "0", "--bits", "2", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["trial"] == 0 and "model_w2a2_qcdq.onnx" in summary[0]["files"]
    assert set(summary[0]["metrics"]) == {"fp32", "w8a8", "w4a8", "w4a4", "w2a2"}
    quant = json.loads((out / "quant.json").read_text())
    assert quant["settings"]["w4a4"]["source"].startswith("FAQ-finetuned")  # the finetuned run's ranges
    assert "FAQ-finetuned at w4a4" in json.loads((out / "arch.json").read_text())["weights_source"]
    # Refuses to overwrite; --force replaces (and drops the 2-bit file of the previous export).
    assert main(_export_args(url, root, small_fashion, out, "--trial", "0")) == 2
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1
    assert main(_export_args(url, root, small_fashion, out, "--trial", "0", "--force")) == 0
    files = {p.name for p in out.iterdir()}
    assert "model_w4a4_qcdq.onnx" in files and "model_w2a2_qcdq.onnx" not in files


def test_cli_export_pareto_uses_the_predictor_for_trials_not_finetuned(small_fashion, tmp_path, capsys):  # noqa: F811
    url, study = make_study(tmp_path, archs=TINY[:1], infeasible=None)
    out = tmp_path / "front"
    assert main(_export_args(url, tmp_path / "studies", small_fashion, out, "--pareto", "--bits", "8")) == 0
    assert {p.name for p in (out / "trial-0").iterdir()} == {"arch.json", "model.safetensors", "quant.json",
                                                             "model.onnx", "model_int8_qdq.onnx", "README.md"}
    assert "not finetuned" in (out / "trial-0" / "README.md").read_text()
    # Post-training settings are calibrated as the search scored them: BN statistics re-estimated in
    # the quantized network travel with each setting, and load_quantized uses them.
    quant = json.loads((out / "trial-0" / "quant.json").read_text())
    assert set(quant["settings"]) == {"w8a8", "w4a8", "w4a4", "w2a2"}
    float_bn = bn_stats(qnas.export.load(out / "trial-0"))
    for name, entry in quant["settings"].items():
        assert entry["source"].startswith("post-training (calibrated quantized"), entry["source"]
        assert entry["batchnorm"].keys() == float_bn.keys()
        _, cal, _ = load_quantized(out / "trial-0", name)
        for k, (mean, var) in cal.bn.items():
            assert mean.tolist() == entry["batchnorm"][k]["mean"] and var.tolist() == entry["batchnorm"][k]["var"]
    assert quant["settings"]["w2a2"]["batchnorm"] != quant["settings"]["w8a8"]["batchnorm"]


def test_a_trial_not_finetuned_exports_the_head_its_study_scored(small_fashion, tmp_path, capsys):  # noqa: F811
    """A study scored with the fitted head (protocol ``.../fit<N>``) exports the GHN's parameters with the last
    layer solved on N training images; one scored with the GHN's head exports that head."""
    runs = {}
    for name, protocol in (("keep", None), ("fit", "calibrated/channel/a2p99.5/fl8/w8sym/fit200")):
        (tmp_path / name).mkdir()
        url, _ = make_study(tmp_path / name, archs=TINY[:1], infeasible=None, protocol=protocol)
        out = tmp_path / name / "out"
        assert main(_export_args(url, tmp_path / name / "studies", small_fashion, out, "--trial", "0", "--bits", "4",
                                 "--json")) == 0
        runs[name] = (json.loads(capsys.readouterr().out)[0], qnas.export.load(out),
                      json.loads((out / "arch.json").read_text())["weights_source"])
    (keep, keep_net, keep_source), (fit, fit_net, fit_source) = runs["keep"], runs["fit"]
    assert "last layer solved at w4a4 on 200 training images" in fit_source and "solved" not in keep_source
    ours, theirs = dict(fit_net.named_parameters()), dict(keep_net.named_parameters())
    last = [n for n in ours if n.endswith(".weight")][-1]
    changed = {n for n in ours if not torch.equal(ours[n], theirs[n])}
    assert last in changed and changed <= {last, last.removesuffix("weight") + "bias"}  # only the classifier
    assert fit["metrics"]["w4a4"] > keep["metrics"]["w4a4"] + 0.05  # a random GHN's own head is at chance
    # A study searched at FP32 scored its head on float features: solved there, exported with the int8 file.
    (tmp_path / "float").mkdir()
    url, _ = make_study(tmp_path / "float", archs=TINY[:1], infeasible=None, target="fp32",
                        protocol="calibrated/channel/a2p99.5/fl8/w8sym/fit200")
    out = tmp_path / "float" / "out"
    assert main(_export_args(url, tmp_path / "float" / "studies", small_fashion, out, "--trial", "0")) == 0
    assert "last layer solved at fp32 on 200" in json.loads((out / "arch.json").read_text())["weights_source"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--trial", "99"], "has no trial 99"),
    (["--trial", "2"], "infeasible"),
    (["--trial", "0", "--bits", "3bit"], "bad --bits"),
])
def test_cli_export_bad_input_is_one_line(small_fashion, tmp_path, capsys, extra, message):  # noqa: F811
    url, _ = make_study(tmp_path)
    assert main(_export_args(url, tmp_path / "studies", small_fashion, tmp_path / "o", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_export_unwritable_directory(small_fashion, tmp_path, capsys):  # noqa: F811
    url, _ = make_study(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(_export_args(url, tmp_path / "studies", small_fashion, blocker / "sub", "--trial", "0")) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and err.count("\n") == 1


def test_cli_export_mismatch_exits_1(finetuned_study, small_fashion, tmp_path, capsys, monkeypatch):  # noqa: F811
    import qnas.export as E

    url, root = finetuned_study
    real = E.int_weight
    monkeypatch.setattr(E, "int_weight", lambda w, scale, zp, bits, sym: (real(w, scale, zp, bits, sym) // 2))
    assert main(_export_args(url, root, small_fashion, tmp_path / "bad", "--trial", "0")) == 1
    err = capsys.readouterr().err
    assert "differs from" in err and err.count("\n") == 1


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(QnasError, match="arch.json"):
        qnas.load(tmp_path)


def test_interrupted_export_leaves_nothing_loadable(exported, tmp_path, monkeypatch):
    import qnas.export as E

    module, settings, out, _, images = exported
    arch = json.loads((out / "arch.json").read_text())

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "verify_onnx", interrupt)
    target = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        export_model(module, target, arch=arch, input_shape=(1, 28, 28), settings=settings, onnx_settings=SETTINGS,
                     verify_images=images[:50], latency_rounds=0)
    assert not target.exists() and not list(tmp_path.glob(".qnas-partial-*"))
    # Over an existing export (--force): the old one stays whole until the new one is complete.
    monkeypatch.undo()
    export_model(module, target, arch=arch, input_shape=(1, 28, 28), settings=settings, onnx_settings=("w8a8",),
                 verify_images=images[:50], latency_rounds=0)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(E, "verify_onnx", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_model(module, target, arch=arch, input_shape=(1, 28, 28), settings=settings, onnx_settings=SETTINGS,
                     verify_images=images[:50], force=True, latency_rounds=0)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    qnas.load(target)


def test_cli_export_first_last_rule(finetuned_study, small_fashion, tmp_path, capsys):  # noqa: F811
    url, root = finetuned_study
    # Finetuned with first/last at 8 bits: exporting it under another rule is refused (one line, exit 2).
    assert main(_export_args(url, root, small_fashion, tmp_path / "x", "--trial", "0", "--first-last-bits",
                             "same")) == 2
    err = capsys.readouterr().err
    assert "finetuned with first/last layers" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(_export_args(url, root, small_fashion, tmp_path / "y", "--trial", "0", "--first-last-bits", "4"))
    assert exc.value.code == 2 and "--first-last-bits" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


class SwishNet(nn.Module):
    """Hard-swish and SiLU as modules (one in place, as MobileNetV3 writes it) and as functions."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.hs = nn.Hardswish(inplace=True)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.silu = nn.SiLU()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.hs(self.bn(self.a(x)))
        y = F.silu(self.b(y)) + self.silu(y)
        y = F.hardswish(F.max_pool2d(y, 2))
        return self.fc(y.mean((2, 3)))


def test_hardswish_and_silu_run_quantized_and_export_to_matching_onnx(fashion):  # noqa: F811
    torch.manual_seed(0)
    module = SwishNet().eval()
    qmodel, lay = layout(module)
    images = data.normalize(fashion.test_images[:300], fashion.info)
    with torch.no_grad():  # the executor computes what the module computes, in-place module or not
        torch.testing.assert_close(qmodel(images[:16]), module.train()(images[:16]), atol=1e-4, rtol=1e-3)
    module.eval()
    for name in ("fp32", "w8a8-channel", "w4a4-channel"):
        spec = QuantSpec.parse(name)
        cal = faq_calibration(qmodel, lay, images[:128], spec if not spec.is_float else QuantSpec(8, 8))
        r = verify_onnx(to_onnx(module, lay, cal, spec, (1, 28, 28)), qmodel, cal, spec, images)
        assert _check(name, spec, r) is None, (name, r)


def test_weights_with_nan_are_refused_in_one_line(tmp_path: Path) -> None:
    """A diverged finetuning's weights: no quantizer or ONNX file can describe them (found by the session-25 audit)."""
    from safetensors.torch import save_file

    from qnas.export import load_weights

    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    module(torch.zeros(1, 1, 8, 8))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(QnasError, match=r"holds NaN or inf \(in 0.weight\); finetune again") as exc:
        load_weights(module, tmp_path / "w.safetensors", "finetune again")
    assert "\n" not in str(exc.value)
