"""FAQ finetuning: a tiny net gets better at W4A4, the recipe's pieces hold, runs resume, the CLI records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from qnas import data
from qnas.cli import main
from qnas.finetune import (
    Capture,
    FAQConfig,
    Hooks,
    _clip_plan,
    _clipped,
    _fold_scale,
    accuracy,
    bn_stats,
    faq_calibration,
    finetune,
    layout,
)
from qnas.quant import Calibration, QuantSpec
from qnas.search import SearchConfig, create_or_continue
from search_spaces import convnets250k as S

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TINY = ("stem8-8:conv3-maxpool-8:sep3+r-avgpool-16:mb3k3+r-fc0", "stem8-8:dil3-convs2-8:conv1+r-maxpool-16:conv3-fc32")
BIG = "stem32-64:conv3,conv3-maxpool-128:conv3,conv3-maxpool-384:conv3,conv3-fc256"  # over a 50k bound


def _idx(array: np.ndarray) -> bytes:
    return bytes((0, 0, 8, array.ndim)) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


@pytest.fixture(scope="session")
def small_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the first 3,000 training and 1,000 test images of the real Fashion-MNIST."""
    if not FASHION_DIR.is_dir():
        pytest.skip(f"real Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    full = data.load_dataset("fashion-mnist", data_dir=FASHION_DIR)
    train_x = torch.cat([full.train_images, full.val_images])[:3000]
    train_y = torch.cat([full.train_labels, full.val_labels])[:3000]
    out = tmp_path_factory.mktemp("fashion-small")
    test_x, test_y = full.test_images[:1000, 0], full.test_labels[:1000]
    files = (("train-images-idx3-ubyte", train_x[:, 0]), ("train-labels-idx1-ubyte", train_y),
             ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y))
    for stem, t in files:
        (out / stem).write_bytes(_idx(t.to(torch.uint8).numpy()))
    return out


@pytest.fixture(scope="session")
def fashion(small_fashion: Path) -> data.Dataset:
    return data.load_dataset("fashion-mnist", data_dir=small_fashion)


def make_study(tmp_path: Path, archs=TINY, infeasible: str | None = BIG,
               first_last_bits: int | None = 8, **config: str) -> tuple[str, optuna.Study]:
    """A study as `qnas search` leaves it, with chosen architectures and fake scores (no scoring); ``config``:
    other SearchConfig fields (e.g. ``protocol``, ``target``)."""
    url = f"sqlite:///{tmp_path / 'ft.db'}"
    cfg = SearchConfig(study="ft", storage=url, max_params=50_000, predictor="random", first_last_bits=first_last_bits)
    study = create_or_continue(dataclasses.replace(cfg, **config))
    for i, text in enumerate([*archs, *([infeasible] if infeasible else [])]):
        g = S.from_string(text)
        params = S.count_params(g)
        attrs = {"arch": S.to_string(g), "genome": S.to_json(g), "params": params, "macs": S.count_macs(g)}
        if params > 50_000:
            attrs["infeasible"] = True
        acc = 0.0 if params > 50_000 else 0.5 + 0.1 * i
        study.add_trial(optuna.trial.create_trial(values=[acc, float(params)], user_attrs=attrs,
                                                  constraints={"params": float(params - 50_000)}))
    return url, study


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def _eval(ds: data.Dataset, n: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    return data.normalize(ds.test_images[:n], ds.info), ds.test_labels[:n]


@pytest.mark.parametrize(("freeze_bn_at", "gain"), [(0.0, 0.08), (0.5, 0.12)])
def test_finetuning_improves_w4a4_accuracy_of_a_tiny_net(fashion, freeze_bn_at, gain):
    module = _tiny()
    cfg = FAQConfig(setting="w4a4", epochs=2, train_size=1536, lr=0.5, batch_size=32, freeze_bn_at=freeze_bn_at)
    val = data.val_subset(fashion, 200)
    result = finetune(module, fashion, cfg, eval_data=_eval(fashion), val_data=val)
    assert result.before["w4a4"] < 0.15  # random init
    # 96 steps. Measured on the full training split: 9.8% -> 24.4% frozen; 8.6% -> 27.4% with a batch phase.
    assert result.after["w4a4"] > result.before["w4a4"] + gain, result
    assert len(result.history) == 2 and result.history[-1]["lr"] == pytest.approx(1e-6)
    assert result.history[1]["loss"] < result.history[0]["loss"]
    # The module, its BN buffers and the returned ranges are the deployed model.
    qmodel, _ = layout(module)
    deployed = Calibration(bn=bn_stats(module), ranges=result.ranges, num_images=0)
    assert accuracy(qmodel, deployed, cfg.spec, *_eval(fashion)) == pytest.approx(result.after["w4a4"])


def test_calibration_uses_percentiles_and_clip_is_baked(fashion):
    module = _tiny()
    qmodel, lay = layout(module)
    images = data.normalize(fashion.train_images[:128], fashion.info)
    spec = QuantSpec(4, 4, first_last_8bit=True)
    cal = faq_calibration(qmodel, lay, images, spec, batch_size=128)  # one batch
    assert set(cal.ranges) == set(qmodel.quant_points) and set(cal.bn) == {"b1", "b2"}
    # The float activations with the frozen statistics, at each quantization point:
    capture = Capture(torch.fx.GraphModule(qmodel, lay.graph), cal.bn, {p.tail: p.name for p in lay.points})
    with torch.no_grad():
        capture.run(images)
    for p in lay.points:
        y = capture.seen[p.name].reshape(-1).double()
        q = 0.9999 if lay.a_bits(spec, p) == 8 else 0.999
        lo, hi = cal.ranges[p.name]
        assert float(y.min()) <= lo <= hi <= float(y.max())
        assert hi == pytest.approx(float(torch.quantile(y, q)), rel=0.02, abs=1e-4), p.name
    # another percentile for the low-bit points only (benchmarks/activation_ranges.py)
    tight = faq_calibration(qmodel, lay, images, spec, batch_size=128, stats=cal.bn, low_bit_percentile=90.0)
    for p in lay.points:
        y = capture.seen[p.name].reshape(-1).double()
        q = 0.9999 if lay.a_bits(spec, p) == 8 else 0.90
        assert tight.ranges[p.name][1] == pytest.approx(float(torch.quantile(y, q)), rel=0.02, abs=1e-4), p.name
    relu_points = [p.name for p in lay.points if p.act == "relu"]
    assert relu_points and all(cal.ranges[n][0] >= 0 for n in relu_points)
    assert [p.name for p in lay.points if p.first_last] == ["x", "pool"]  # input, and the input of fc
    # FAQ: first and last layer at 8 bits, so only the middle conv is clipped at 4.12 std.
    plan = _clip_plan(module, lay, QuantSpec(4, 4, first_last_8bit=True), None)
    assert [(layer.module, k) for layer, k in plan] == [("c2", 4.12)]
    layer = plan[0][0]
    with torch.no_grad():
        module.c2.weight[0, 0, 0, 0] = 50.0  # an outlier
    module.b2.running_var.copy_(cal.bn["b2"][1])
    w = module.c2.weight.detach()
    folded = w * _fold_scale(module, layer, w)
    clipped = _clipped(module, layer, w, 4.12) * _fold_scale(module, layer, w)
    bound = 4.12 * float(folded.std())
    assert float(folded.abs().max()) > bound
    assert float(clipped.abs().max()) <= bound * (1 + 1e-5)
    assert torch.equal(clipped[folded.abs() < bound], folded[folded.abs() < bound])
    # per channel (for per-channel weight scales): each output channel within k std of its own weights
    per = (_clipped(module, layer, w, 4.12, per_channel=True) * _fold_scale(module, layer, w)).flatten(1)
    bounds = 4.12 * folded.flatten(1).std(1, keepdim=True)
    assert bool((per.abs() <= bounds * (1 + 1e-5)).all()) and float(per[0].abs().max()) < float(folded[0].abs().max())
    keep = folded.flatten(1).abs() < bounds
    assert torch.equal(per[keep], folded.flatten(1)[keep])


def test_interrupted_run_resumes_from_its_last_epoch(fashion, tmp_path):
    # 4 steps per epoch, BN frozen after step 4: the resumed run must freeze exactly where the first would.
    cfg = FAQConfig(setting="w4a4", epochs=2, train_size=256, lr=0.05, reestimate_bn=False, freeze_bn_at=0.5)
    ev = _eval(fashion, 200)
    reference = _tiny()
    finetune(reference, fashion, cfg, eval_data=ev)

    class Stop(KeyboardInterrupt):
        pass

    def stop(epoch: int, record: dict) -> None:
        if epoch == 1:
            raise Stop

    ckpt = tmp_path / "run.ckpt.pt"
    with pytest.raises(Stop):
        finetune(_tiny(), fashion, cfg, eval_data=ev, checkpoint=ckpt, identity="a", hooks=Hooks(on_epoch=stop))
    assert ckpt.exists()
    resumed = _tiny(seed=1)  # other initial weights: everything must come from the checkpoint
    result = finetune(resumed, fashion, cfg, eval_data=ev, checkpoint=ckpt, identity="a")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # A checkpoint of another run is refused, not silently resumed.
    from qnas.errors import QnasError

    with pytest.raises(QnasError, match="other settings"):
        finetune(_tiny(), fashion, cfg, eval_data=ev, checkpoint=ckpt, identity="b")


def test_cli_finetune_records_results_and_skips_done_trials(small_fashion, tmp_path, capsys):
    url, _ = make_study(tmp_path)
    root = tmp_path / "studies"
    args = ["finetune", "--study", "ft", "--storage", url, "--trials", "0", "--bits", "4", "--epochs", "1",
            "--train-size", "128", "--test-size", "100", "--init", "random", "--data-dir", str(small_fashion),
            "--out-root", str(root), "--quiet", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in out] == [0] and set(out[0]["after"]) == {"fp32", "w4a4"}
    record = json.loads((root / "ft" / "finetune" / "0.json").read_text())
    run = record["runs"]["w4a4"]
    # the study's per-channel protocol
    assert run["spec"] == "w4a4-channel-fl8" and run["test_images"] == 100 and len(run["history"]) == 1
    assert (root / "ft" / "finetune" / run["weights"]).exists()
    assert not list((root / "ft" / "finetune").glob("*.ckpt.pt"))  # removed once finished
    attrs = optuna.load_study(study_name="ft", storage=url).user_attrs["finetune_0_w4a4"]
    assert attrs["top1_w4a4_after"] == run["after"]["w4a4"] and attrs["init"] == "random"
    assert main(args) == 0  # already done: not trained again
    assert json.loads(capsys.readouterr().out)[0]["skipped"] is True
    # A scratch run elsewhere becomes the study's summary (the report's), and says which one it replaced.
    scratch = args[:args.index("--out-root") + 1] + [str(tmp_path / "scratch")] + args[args.index("--out-root") + 2:]
    assert main([a for a in scratch if a != "--json"]) == 0
    err = capsys.readouterr().err
    first = str((root / "ft" / "finetune" / "0.json").resolve())
    assert f"report now shows this run for trial 0 at w4a4 (it showed {first})" in err
    attrs = optuna.load_study(study_name="ft", storage=url).user_attrs["finetune_0_w4a4"]
    assert attrs["file"] == str((tmp_path / "scratch" / "ft" / "finetune" / "0.json").resolve())


def test_finetune_follows_the_studys_first_last_rule_unless_told(small_fashion, tmp_path, capsys):
    """A study searched with every layer at the setting (--first-last-bits same) is finetuned so by default;
    --first-last-bits 8 overrides it."""
    url, _ = make_study(tmp_path, first_last_bits=None)
    args = ["finetune", "--study", "ft", "--storage", url, "--trials", "0", "--bits", "4", "--epochs", "1",
            "--train-size", "64", "--test-size", "50", "--init", "random", "--data-dir", str(small_fashion),
            "--quiet"]
    for extra, spec in (([], "w4a4-channel"), (["--first-last-bits", "8"], "w4a4-channel-fl8")):
        root = tmp_path / f"studies{len(extra)}"
        assert main([*args, "--out-root", str(root), *extra]) == 0
        assert json.loads((root / "ft" / "finetune" / "0.json").read_text())["runs"]["w4a4"]["spec"] == spec
    capsys.readouterr()


@pytest.mark.parametrize(("extra", "message"), [
    (["--trials", "99"], "has no trial 99"),
    (["--trials", "2"], "infeasible"),
    (["--study", "nope"], "no study 'nope'"),
    (["--trials", "0", "--init", "ghn", "--predictor", "missing.pt"], "unknown predictor"),
])
def test_cli_finetune_bad_input_is_one_line(small_fashion, tmp_path, capsys, extra, message):
    url, _ = make_study(tmp_path)
    args = ["finetune", "--study", "ft", "--storage", url, "--data-dir", str(small_fashion), "--init", "random",
            "--out-root", str(tmp_path / "studies"), "--quiet"]
    if "--study" in extra:
        args = args[:1] + args[3:]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
