"""The hand-written user split: >= 24 networks over the families users bring, each readable by the GHN,
runnable by the quantized executor, and reported per family by `qnas eval-predictor`."""

from __future__ import annotations

import json
import os

import pytest
import torch

from qnas import user_split
from qnas.errors import QnasError
from qnas.graph import to_graph
from qnas.quant import prepare

SHAPE = (1, 28, 28)


def test_the_split_covers_the_families_the_issue_names() -> None:
    names = user_split.names()
    assert len(names) >= 24 and len(set(names)) == len(names)
    families = {user_split.family(n) for n in names}
    assert {"densenet", "deep-plain", "resnet", "wide-shallow", "7x7", "vgg", "squeezenet", "mobilenet",
            "hardswish-silu"} <= families
    has_bn = {n: any(isinstance(m, torch.nn.BatchNorm2d) for m in user_split.build(n, SHAPE, 10).modules())
              for n in names}
    assert sum(not b for b in has_bn.values()) >= 4  # BN-free variants of several families
    kernels = {m.kernel_size[0] for n in names for m in user_split.build(n, SHAPE, 10).modules()
               if isinstance(m, torch.nn.Conv2d)}
    assert 7 in kernels


@pytest.mark.parametrize("name", user_split.names())
def test_every_network_is_read_by_the_ghn_and_run_quantized(name: str) -> None:
    module = user_split.build(user_split.PREFIX + name, SHAPE, 10).train()  # BatchNorm on batch statistics
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    to_graph(module, SHAPE)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():  # the executor's default is batch statistics too
        torch.testing.assert_close(prepare(module)(x), module(x), atol=1e-4, rtol=1e-3)


def test_other_input_shapes_leave_out_only_what_cannot_take_them() -> None:
    cifar = (3, 32, 32)
    assert user_split.names(cifar) == [n for n in user_split.names() if n != "lenet5"]
    assert user_split.names([1, 28, 28]) == user_split.names()  # type: ignore[arg-type]  # a list, as JSON gives
    with pytest.raises(QnasError, match="28x28"):
        user_split.build("lenet5", cifar, 10)
    module = user_split.build("densenet-bc", cifar, 10)
    assert module(torch.zeros(2, *cifar)).shape == (2, 10)


def test_unknown_names_are_one_line_errors() -> None:
    with pytest.raises(QnasError, match="unknown user-split network"):
        user_split.build("nope", SHAPE, 10)
    assert user_split.is_user_arch("user:resnet20") and not user_split.is_user_arch("stem16-16:conv3-fc0")


def test_eval_predictor_reports_the_user_split_per_family(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_ghn import _fashion_available

    if not _fashion_available() and not os.environ.get("CI"):
        pytest.skip("fashion-mnist not installed (make setup installs it)")
    from qnas.cli import main

    rc = main(["eval-predictor", "--predictor", "random", "--splits", "user", "--n", "3", "--images", "32",
               "--bits", "fp32", "--no-floor", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["arch"] for r in out["architectures"]] == ["user:" + n for n in user_split.names()[:3]]
    assert set(out["families"]) == {user_split.family(n) for n in user_split.names()[:3]}
    assert out["families"]["densenet"][out["settings"][0]]["top1"]["n"] == 3
    rc = main(["eval-predictor", "--predictor", "random", "--splits", "user", "--n", "2", "--images", "32",
               "--bits", "fp32", "--no-floor"])
    text = capsys.readouterr().out
    assert rc == 0 and "User nets (n=2)" in text and "user split by family" in text
