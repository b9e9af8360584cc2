"""The Python API (qnas.score, qnas.predict_params, qnas.search, ...) and `qnas score --module`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import qnas
from qnas.api import load_factory
from qnas.cli import main
from qnas.coverage import UnseenLayerWarning, unseen_layers
from qnas.defaults import SETTINGS
from qnas.graph import to_graph
from qnas.scorer import make_scorer
from search_spaces import convnets250k as S

ARCH = "stem8-8:conv3-maxpool-16:conv3+r-maxpool-16:sep3-fc0"


class TinyResNet(nn.Module):
    """A hand-written residual net for 1x28x28 images, 10 classes."""

    def __init__(self, kernel: int = 3, classes: int = 10, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(8), act())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.body(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_import_qnas_does_not_import_torch() -> None:
    code = ("import sys, qnas; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(qnas.score) and callable(qnas.search) and callable(qnas.export); "
            "assert callable(qnas.finetune) and qnas.score.evaluate and qnas.export.load_quantized")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_score_of_an_architecture_is_what_the_search_scores() -> None:
    """``w4a4`` in qnas.score means the search's w4a4 (per-channel, 8-bit first/last layers): same numbers."""
    result = qnas.score(ARCH, predictor="random", ranker="none", val_size=32)
    scorer = make_scorer(space=S, predictor="random", ranker="none", val_size=32)
    flat = scorer.score(S.parse(ARCH))
    assert list(result.accuracy) == list(SETTINGS)
    assert result.settings["w4a4"] == "w4a4-channel-fl8-minmax"  # the activation-range rule spelled out
    assert all(result.top1(s) == flat[f"top1_{s}"] for s in SETTINGS)
    assert result.params == S.count_params(S.parse(ARCH)) and result.predicted == {}
    assert result.arch == ARCH and result.protocol == scorer.protocol


def test_score_of_an_architecture_has_the_rankers_prediction() -> None:
    result = qnas.score(ARCH, bits="w4a4", val_size=32)  # the shipped predictor and its ranker
    assert list(result.accuracy) == ["w4a4"] and set(result.predicted) == {"w4a4"}
    assert 0.0 < result.predicted["w4a4"] < 1.0 and "ranker" in result.predictor
    # how far that prediction is off on average, as the shipped ranker's fit measured it (points)
    assert set(result.predicted_error) == {"w4a4"} and 0.0 < result.predicted_error["w4a4"] < 10.0


def test_cli_score_of_an_architecture_is_qnas_score_with_the_prediction(capsys: pytest.CaptureFixture[str]) -> None:
    """`qnas score --arch` scores as qnas.score and the search do (the same numbers) and prints the ranker's
    prediction beside them; --ranker none leaves it out; a setting naming its own weight scales is scored so."""
    argv = ["score", "--arch", ARCH, "--bits", "w4a4,w2a2", "--val-size", "32", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    result = qnas.score(ARCH, bits="w4a4,w2a2", val_size=32)
    assert record["accuracy"] == result.accuracy and record["predicted"] == result.predicted
    assert set(record["predicted"]) == {"w4a4", "w2a2"} and record["protocol"] == result.protocol
    assert record["predicted_error"] == result.predicted_error and set(result.predicted_error) == {"w4a4", "w2a2"}
    assert main(argv[:-1]) == 0  # the table says how far pred. is off
    assert f"off by {result.predicted_error['w4a4']:.2f} (w4a4)" in " ".join(capsys.readouterr().out.split())
    assert main([*argv[:-1], "--ranker", "none"]) == 0
    out = capsys.readouterr().out
    assert "pred." not in out and "w2a2" in out
    assert main(["score", "--arch", ARCH, "--bits", "w4a4-tensor", "--val-size", "32", "--json", "--ranker", "none",
                 "--init", "ghn:random"]) == 0
    tensor = json.loads(capsys.readouterr().out)
    assert tensor["settings"] == {"w4a4-tensor": "w4a4-fl8-minmax"} and tensor["predicted"] == {}
    api = qnas.score(ARCH, bits="w4a4-tensor", predictor="random", ranker="none", val_size=32)
    assert tensor["accuracy"] == api.accuracy


def test_score_of_any_module() -> None:
    torch.manual_seed(0)
    net = TinyResNet()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenLayerWarning)  # a net of seen layers: no such warning
        warnings.simplefilter("ignore", qnas.ChanceScoreWarning)  # an untrained GHN scores at chance
        result = qnas.score(net, bits=["fp32", 4], predictor="random", val_size=32)
    assert list(result.accuracy) == ["fp32", "w4a4"] and result.predicted == {}
    assert result.arch == "TinyResNet" and result.params == sum(p.numel() for p in net.parameters())
    assert result.macs > 0 and all(0.0 <= a["top1"] <= 1.0 for a in result.accuracy.values())
    with pytest.raises(qnas.QnasError, match="not scored"):
        result.top1("w2a2")


def test_unseen_kernel_warns_or_raises() -> None:
    with pytest.warns(UnseenLayerWarning, match="7x7 kernel"), pytest.warns(qnas.ChanceScoreWarning):
        # The untrained GHN's own head scores at chance (a fitted head would read its random features).
        result = qnas.score(TinyResNet(kernel=7), bits="fp32", predictor="random", val_size=32, head="keep")
    assert any("7x7" in w for w in result.warnings)
    with pytest.raises(qnas.QnasError, match="never seen"):
        qnas.score(TinyResNet(kernel=7), bits="fp32", predictor="random", val_size=32, strict=True)


@pytest.mark.parametrize("act", [nn.GELU, nn.Sigmoid, nn.Mish])
def test_unsupported_activation_is_an_error(act: type[nn.Module]) -> None:
    with pytest.raises(qnas.QnasError, match="cannot quantize layer"):
        qnas.score(TinyResNet(act=act), bits="w4a4", predictor="random", val_size=32)


@pytest.mark.parametrize("act", [nn.SiLU, nn.Hardswish])
def test_swish_activations_are_scored(act: type[nn.Module]) -> None:
    result = qnas.score(TinyResNet(act=act), bits="w4a4", predictor="random", ranker="none", val_size=32)
    assert 0.0 <= result.top1("w4a4") <= 1.0


def test_wrong_output_or_input_is_an_error() -> None:
    with pytest.raises(qnas.QnasError, match=r"\(batch, 10\)"):
        qnas.score(TinyResNet(classes=100), bits="w4a4", predictor="random", val_size=32)
    with pytest.raises(qnas.QnasError, match="a setting is named twice"):
        qnas.score(TinyResNet(), bits="w4a4,w4a4", predictor="random", val_size=32)
    with pytest.raises(qnas.QnasError, match="nn.Module or an architecture"):
        qnas.score(42, predictor="random", val_size=32)  # type: ignore[arg-type]


def test_unseen_layers() -> None:
    rng = random.Random(0)
    for _ in range(20):  # every architecture of the space is in the predictor's vocabulary
        module = S.build(S.sample(rng, max_params=1_000_000), (1, 28, 28), 10)
        assert unseen_layers(to_graph(module, (1, 28, 28))) == []

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 8, (3, 1))
            self.b = nn.Conv2d(8, 8, 3, groups=2)
            self.c = nn.Conv2d(8, 8, 2)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            y = torch.cat([self.c(self.b(x)).mean((2, 3)), x.mean((2, 3))], 1)
            return self.fc(y)

    problems = unseen_layers(to_graph(Odd(), (1, 28, 28)))
    text = " | ".join(problems)
    assert "3x1 kernel" in text and "grouped convolution" in text and "2x2 kernel" in text and "'cat'" in text


def test_predict_params() -> None:
    net = TinyResNet()
    params = qnas.predict_params(net, bits="w4a4", predictor="random")
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in net.named_parameters()}
    built = qnas.build(ARCH)
    arch_params = qnas.predict_params(ARCH, predictor="random")
    assert set(arch_params) == {k for k, _ in built.named_parameters()}
    built.load_state_dict(arch_params, strict=False)


def test_search_finetune_export_wrappers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    summary = qnas.search("api", storage=url, trials=2, predictor="random", val_size=16, max_params=50_000)
    assert summary.scored + summary.cached == 2 and summary.pareto
    with pytest.raises(qnas.QnasError, match="trial=N or pareto"):
        qnas.export("api", tmp_path / "out", storage=url)
    with pytest.raises(qnas.QnasError, match="bad --bits"):
        qnas.finetune("api", storage=url, bits="w9a9")


MODULE_FILE = textwrap.dedent('''
    from torch import nn


    def net(kernel=3):
        return nn.Sequential(nn.Conv2d(1, 8, kernel, padding=kernel // 2), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


    def net7():
        return net(7)
''')


def test_cli_score_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mynet.py"
    path.write_text(MODULE_FILE)
    argv = ["score", "--val-size", "16", "--bits", "fp32,w4a4", "--init", "ghn:random", "--json"]
    assert main([*argv, "--module", f"{path}:net"]) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert record["arch"] == f"{path}:net" and set(record["accuracy"]) == {"fp32", "w4a4"} and out.err == ""
    assert main([*argv, "--module", f"{path}:net7"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("qnas: warning: the predictor has never seen") and "7x7 kernel" in err
    for bad, message in ((f"{path}:nope", "no callable 'nope'"), (f"{tmp_path}/missing.py:net", "no file"),
                         (str(path), "FILE.py:FACTORY")):
        assert main([*argv, "--module", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("qnas: error:") and "\n" not in err and message in err


@pytest.mark.skipif(not (Path(__file__).parents[1] / "qnas/predictors/fashion-mnist.ranker.json").exists(),
                    reason="no shipped ranker")
def test_a_search_that_leaves_the_shipped_ranker_out_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.warns(qnas.QnasWarning, match="left out.*maximizes the raw GHN accuracy") as record:
        planned = qnas.make_search("keep", storage=url, val_size=16, head="keep")  # not the ranker's protocol
    assert record[0].filename == __file__  # pointed at the caller, not at qnas
    assert planned.config.objective == "top1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert qnas.make_search("fit", storage=url, val_size=16).config.objective == "pred_top1"


def test_the_api_checks_what_the_cli_checks(tmp_path: Path) -> None:
    """Bad values fail at the call, before a study is made or a GHN runs (the CLI's argparse checks them too)."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    for kwargs, message in (({"bn_stats": "bogus"}, "bn_stats must be one of"), ({"trials": -3}, "trials must be"),
                            ({"max_params": float("nan")}, "max_params must be"), ({"timeout": 0}, "timeout must")):
        with pytest.raises(qnas.QnasError, match=message):
            qnas.make_search("checks", storage=url, predictor="random", val_size=16, **kwargs)
    assert not (tmp_path / "s.db").exists()
    # a target outside the default settings is scored too (it was asked for, not just recorded)
    assert qnas.make_search("w84", bits="w8a4", storage=url, predictor="random", val_size=16).scorer.settings == (
        *SETTINGS, "w8a4")
    with pytest.raises(qnas.QnasError, match="one setting"):
        qnas.predict_params(ARCH, bits=["w4a4", "fp32"], predictor="random")
    with pytest.raises(qnas.QnasError, match="over the bounds"):
        qnas.score(TinyResNet(), bits="fp32", predictor="random", val_size=16, max_macs=10)
    with pytest.raises(qnas.QnasError, match="not of a module"):
        qnas.score(TinyResNet(), bits="fp32", val_size=16, ranker=str(tmp_path / "r.json"))
    assert list(qnas.score(ARCH, bits=" 4, 2", predictor="random", ranker="none", val_size=16).accuracy) == [
        "w4a4", "w2a2"]


# Found by an audit of the API in session 25: each was a TypeError from deep inside, or a value quietly read as
# another (2.5 trials as 3, max_params=0 as the default, top_k=-1 as every trial, lr=inf as NaN weights).
BAD_CALLS = [
    ("score-bits-float", lambda: qnas.score(TinyResNet(), bits=3.5), "bits must be a setting"),
    ("score-bits-none", lambda: qnas.score(TinyResNet(), bits=None), "bits must be a setting"),
    ("score-val-size-str", lambda: qnas.score(TinyResNet(), val_size="16"), "val_size must be an integer"),
    ("score-val-size-float", lambda: qnas.score(TinyResNet(), val_size=2.5), "val_size must be an integer"),
    ("score-seed-huge", lambda: qnas.score(TinyResNet(), seed=2**70), "seed must be in"),
    ("score-seed-float", lambda: qnas.score(TinyResNet(), seed=1.5), "seed must be an integer"),
    ("score-max-params-zero", lambda: qnas.score(TinyResNet(), max_params=0), "max_params must be a count"),
    ("score-max-params-str", lambda: qnas.score(TinyResNet(), max_params="1e6"), "max_params must be a count"),
    ("predict-a-function", lambda: qnas.predict_params(print, predictor="random"), "must be an nn.Module"),
    ("predict-unknown-setting", lambda: qnas.predict_params(ARCH, bits="w16a16", predictor="random"), "w16a16"),
    ("search-trials-fraction", lambda: qnas.make_search("c", trials=2.5), "trials must be an integer"),
    ("search-trials-bool", lambda: qnas.make_search("c", trials=True), "trials must be an integer"),
    ("search-population-fraction", lambda: qnas.make_search("c", population=2.5), "population"),
    ("search-timeout-str", lambda: qnas.make_search("c", timeout="x"), "timeout must be a number"),
    ("search-seed-fraction", lambda: qnas.make_search("c", seed=1.5), "seed must be an integer"),
    ("search-study-none", lambda: qnas.make_search(None), "bad study name"),
    ("finetune-top-k-negative", lambda: qnas.finetune("c", top_k=-1), "top_k must be at least 1"),
    ("finetune-trials-int", lambda: qnas.finetune("c", trials=5), "trials must be a list"),
    ("finetune-trials-str", lambda: qnas.finetune("c", trials=["0"]), "trial number must be an integer"),
    ("finetune-unknown-option", lambda: qnas.finetune("c", foo=1), "unknown finetune option"),
    ("export-trial-fraction", lambda: qnas.export("c", "out", trial=4.7), "trial must be an integer"),
    ("export-verify-size-zero", lambda: qnas.export("c", "out", trial=0, verify_size=0), "verify_size must be"),
    ("export-test-size-negative", lambda: qnas.export("c", "out", trial=0, test_size=-1), "test_size must be"),
    ("export-out-none", lambda: qnas.export("c", None, trial=0), "out must be a directory"),
    ("load-none", lambda: qnas.load(None), "path must be an export directory"),
    ("load-max-params-zero", lambda: qnas.load("x", max_params=0), "max_params must be a count"),
]


@pytest.mark.parametrize(("call", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_api_arguments_are_one_qnas_error_before_any_work(call, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(qnas.QnasError, match=message) as exc:
        call()
    assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []  # no study database, no export directory


@pytest.mark.parametrize(("field", "value"), [("lr", float("inf")), ("lr", "x"), ("epochs", "2"), ("epochs", 1.5),
                                               ("momentum", float("nan")), ("seed", -1), ("grad_clip", -1)])
def test_faq_config_refuses_bad_values(field: str, value: object) -> None:
    from qnas.finetune import FAQConfig

    with pytest.raises(qnas.QnasError, match=field):
        FAQConfig(**{field: value})


def test_faq_config_stores_plain_values_and_keeps_zero_as_off() -> None:
    import numpy as np

    from qnas.finetune import FAQConfig

    cfg = FAQConfig(epochs=np.int64(2), lr=np.float32(0.01), grad_clip=0, weight_clip=0)
    assert type(cfg.epochs) is int and type(cfg.lr) is float and cfg.grad_clip == 0 and cfg.weight_clip == 0
    json.dumps(cfg.to_dict())  # the checkpoint identity is JSON


def test_cli_score_takes_the_apis_settings_and_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--bits 4` is w4a4 as everywhere; --act-ranges reaches the scorer; a module is scored as qnas.score scores
    it (the same numbers, bounds checked); a default setting spelled out is scored once, as its short name."""
    base = ["score", "--arch", ARCH, "--val-size", "32", "--init", "ghn:random", "--ranker", "none", "--json"]
    assert main([*base, "--bits", "4", "--act-ranges", "minmax"]) == 0
    record = json.loads(capsys.readouterr().out)
    api = qnas.score(ARCH, bits="w4a4", predictor="random", ranker="none", val_size=32, act_ranges="minmax")
    assert record["accuracy"] == {"w4a4": api.accuracy["w4a4"]} and "minmax" in record["protocol"]
    assert main([*base, "--bits", "w4a4-channel"]) == 0
    spelled = json.loads(capsys.readouterr().out)["accuracy"]["w4a4-channel"]
    assert spelled == qnas.score(ARCH, bits="w4a4", predictor="random", ranker="none", val_size=32).accuracy["w4a4"]
    path = tmp_path / "mynet.py"
    path.write_text(MODULE_FILE)
    argv = ["score", "--module", f"{path}:net", "--val-size", "32", "--bits", "fp32,w4a4", "--init", "ghn:random",
            "--json"]
    assert main(argv) == 0
    module = json.loads(capsys.readouterr().out)
    torch.manual_seed(0)  # as the CLI seeds the factory with --seed
    net = load_factory(f"{path}:net")
    assert module["accuracy"] == qnas.score(net, bits="fp32,w4a4", predictor="random", val_size=32).accuracy
    assert main([*argv, "--max-macs", "10"]) == 2
    assert "over the bounds" in capsys.readouterr().err
