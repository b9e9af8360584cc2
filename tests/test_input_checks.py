"""Input checks that need more setup than the table in test_bad_inputs.py: genome JSON types, finetune records
and weights of the wrong shape, settings of a finished finetune run, devices and output directories, running out
of memory, generic pickles as predictors, and `eval-predictor --record` never shrinking a recorded table."""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_finetune import TINY, make_study, small_fashion  # noqa: F401 - fixtures

from qnas.cli import main
from qnas.errors import QnasError
from qnas.finetune import FAQConfig, read_record
from search_spaces import convnets250k as S

SHIPPED = Path(__file__).resolve().parents[1] / "qnas" / "predictors" / "fashion-mnist.pt"


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qnas: error:") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------
# 1. genome JSON


def _genome(**changes: object) -> dict:
    return {**S.to_json(S.from_string(TINY[0])), **changes}


@pytest.mark.parametrize(("changes", "field"), [
    ({"stem": math.inf}, "stem"),
    ({"stem": 24.5}, "stem"),
    ({"stem": True}, "stem"),
    ({"stem": "16"}, "stem"),
    ({"hidden": False}, "hidden"),
    ({"bn": "no"}, "bn"),
    ({"bn": 0}, "bn"),
    ({"downsample": ["maxpool", 3]}, "downsample[1]"),
])
def test_genome_json_types_are_checked_not_coerced(changes, field):
    with pytest.raises(QnasError, match=rf"bad genome JSON: {re.escape(field)} must be"):
        S.from_json(_genome(**changes))


def test_genome_json_block_fields_are_checked():
    d = _genome()
    d["stages"][1]["blocks"][0]["residual"] = "yes"
    with pytest.raises(QnasError, match=r"stages\[1\]\.blocks\[0\]\.residual must be true or false"):
        S.from_json(d)
    d["stages"][1]["blocks"][0] = {"op": "conv3"}
    with pytest.raises(QnasError, match=r"missing field stages\[1\]\.blocks\[0\]\.residual"):
        S.from_json(d)
    d["stages"][1] = {"width": 8.0, "blocks": 1}
    with pytest.raises(QnasError, match=r"stages\[1\]\.blocks must be a list"):
        S.from_json(d)
    with pytest.raises(QnasError, match="the genome must be an object"):
        S.from_json([1, 2])  # type: ignore[arg-type]


def test_genome_json_round_trips_and_accepts_whole_floats():
    g = S.from_string(TINY[1])
    assert S.from_json(S.to_json(g)) == g
    assert S.from_json(_genome(stem=8.0)) == S.from_string(TINY[0])


def test_cli_genome_json_infinity_is_one_line(capsys):
    text = json.dumps(_genome()).replace('"stem": 8', '"stem": 1e400')
    assert main(["space", "info", text]) == 2
    assert "stem must be an integer" in _one_line(capsys)


# ---------------------------------------------------------------------------------------------------
# 2. and 3. finetune records and weights that do not fit


def _run(weights: str = "0-w4a4.safetensors", **changes: object) -> dict:
    """A run as finetune_trial records it (values made up)."""
    return {"setting": "w4a4", "spec": "w4a4-channel-fl8", "init": "random", "source": "random init (seed 0)",
            "config": FAQConfig().to_dict(), "before": {"fp32": 0.5, "w4a4": 0.4},
            "after": {"fp32": 0.6, "w4a4": 0.55}, "history": [], "ranges": {"x": [0.0, 1.0]},
            "bn_reestimated": False, "reestimation": {}, "resumed_from_epoch": 0, "seconds": 1.0,
            "test_images": 100, "weights": weights, "finished": "2024-01-01T00:00:00", **changes}


@pytest.mark.parametrize("record", [
    [1, 2], {"runs": 5}, {"runs": {"w4a4": 5}}, {"runs": {"w4a4": {"setting": "w4a4"}}},
    {"runs": {"w4a4": _run(weights="../../elsewhere.safetensors")}},
    {"runs": {"w4a4": _run(before={"fp32": "high"})}},
    {"runs": {"w4a4": _run(ranges={"x": 3})}},
    {"runs": {"w8a8": _run()}},
])
def test_finetune_records_of_the_wrong_shape_are_refused(tmp_path, record):
    path = tmp_path / "1.json"
    path.write_text(json.dumps(record))
    with pytest.raises(QnasError, match="1.json.* is not a qnas finetune record") as info:
        read_record(path)
    assert "\n" not in str(info.value)


def test_read_record_accepts_what_finetune_writes(tmp_path):
    path = tmp_path / "0.json"
    record = {"study": "ft", "trial": 0, "runs": {"w4a4": _run()}}
    path.write_text(json.dumps(record))
    assert read_record(path) == record
    assert read_record(tmp_path / "missing.json") == {}


def _ft_args(url: str, root: Path, data: Path, *extra: str) -> list[str]:
    return ["finetune", "--study", "ft", "--storage", url, "--trials", "0", "--bits", "4", "--epochs", "1",
            "--train-size", "64", "--test-size", "50", "--init", "random", "--data-dir", str(data),
            "--out-root", str(root), "--quiet", "--json", *extra]


def _export_args(url: str, root: Path, data: Path, out: Path) -> list[str]:
    return ["export", "--study", "ft", "--storage", url, "--trial", "0", "--out", str(out), "--data-dir", str(data),
            "--out-root", str(root), "--verify-size", "50", "--test-size", "50", "--predictor", "random",
            "--no-timing", "--quiet"]


@pytest.mark.parametrize("record", [[1, 2], {"runs": 5}, {"runs": {"w4a4": 5}}])
def test_cli_finetune_and_export_refuse_a_record_of_the_wrong_shape(small_fashion, tmp_path, capsys, record):  # noqa: F811
    url, _ = make_study(tmp_path)
    root = tmp_path / "studies"
    (root / "ft" / "finetune").mkdir(parents=True)
    (root / "ft" / "finetune" / "0.json").write_text(json.dumps(record))
    assert main(_ft_args(url, root, small_fashion)) == 2
    assert "0.json" in _one_line(capsys)
    assert main(_export_args(url, root, small_fashion, tmp_path / "ex")) == 2
    assert "is not a qnas finetune record" in _one_line(capsys)
    assert not (tmp_path / "ex").exists()


def _weights_torch_save(path: Path) -> None:
    torch.save({"stem.0.weight": torch.zeros(8, 1, 3, 3)}, path)


def _weights_wrong_keys(path: Path) -> None:
    save_file({"not.a.layer": torch.zeros(3)}, str(path))


def _weights_wrong_shapes(path: Path) -> None:
    module = S.build(S.from_string(TINY[0]))
    save_file({k: torch.zeros(*v.shape, 2) for k, v in module.state_dict().items()}, str(path))


@pytest.mark.parametrize("write", [lambda p: p.write_text("these are not weights\n"), _weights_torch_save,
                                   _weights_wrong_keys, _weights_wrong_shapes],
                         ids=["text", "torch-save", "wrong-keys", "wrong-shapes"])
def test_cli_export_refuses_finetuned_weights_that_do_not_fit(small_fashion, tmp_path, capsys, write):  # noqa: F811
    url, _ = make_study(tmp_path)
    folder = tmp_path / "studies" / "ft" / "finetune"
    folder.mkdir(parents=True)
    (folder / "0.json").write_text(json.dumps({"study": "ft", "trial": 0, "runs": {"w4a4": _run()}}))
    write(folder / "0-w4a4.safetensors")
    assert main(_export_args(url, tmp_path / "studies", small_fashion, tmp_path / "ex")) == 2
    err = _one_line(capsys)
    assert "0-w4a4.safetensors" in err and "--restart" in err and len(err) < 400, err
    assert not (tmp_path / "ex").exists()


def test_qnas_load_refuses_a_damaged_weights_file(tmp_path):
    import qnas.export

    g = S.from_string(TINY[0])
    (tmp_path / "arch.json").write_text(json.dumps({"space": "convnets250k", "genome": S.to_json(g),
                                                    "input_shape": [1, 28, 28], "num_classes": 10}))
    (tmp_path / "model.safetensors").write_text("text")
    with pytest.raises(QnasError, match="model.safetensors.* is not a readable safetensors file"):
        qnas.export.load(tmp_path)


# ---------------------------------------------------------------------------------------------------
# 8. and 9. finetune settings


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_faq_config_refuses_a_weight_decay_that_is_not_finite_and_non_negative(value):
    with pytest.raises(QnasError, match="weight_decay"):
        FAQConfig(weight_decay=value)


def test_cli_finetune_done_with_other_settings_is_not_reused(small_fashion, tmp_path, capsys):  # noqa: F811
    url, _ = make_study(tmp_path)
    root = tmp_path / "studies"
    assert main(_ft_args(url, root, small_fashion)) == 0
    first = json.loads(capsys.readouterr().out)[0]
    record = (root / "ft" / "finetune" / "0.json").read_bytes()
    for extra, differ in ((["--train-size", "128"], "train_size 64 -> 128"), (["--epochs", "2"], "epochs 1 -> 2"),
                          (["--init", "ghn", "--predictor", "random"], "init 'random' -> 'ghn'"),
                          (["--weight-decay", "0"], "weight_decay")):
        assert main(_ft_args(url, root, small_fashion, *extra)) == 2
        err = _one_line(capsys)
        assert "trial 0 was finetuned at w4a4 with other settings" in err and differ in err, err
        assert err.rstrip().endswith("--restart to redo"), err
    assert (root / "ft" / "finetune" / "0.json").read_bytes() == record
    # The same settings: the recorded result, not trained again.
    assert main(_ft_args(url, root, small_fashion)) == 0
    again = json.loads(capsys.readouterr().out)[0]
    assert again["skipped"] is True and again["after"] == first["after"]
    # --restart redoes it with the new settings.
    assert main(_ft_args(url, root, small_fashion, "--train-size", "128", "--restart")) == 0
    redone = json.loads(capsys.readouterr().out)[0]
    assert "skipped" not in redone
    assert json.loads((root / "ft" / "finetune" / "0.json").read_text())["runs"]["w4a4"]["config"]["train_size"] == 128


def test_cli_finetune_refuses_a_pickle_as_predictor(small_fashion, tmp_path, capsys):  # noqa: F811
    url, _ = make_study(tmp_path)
    bad = tmp_path / "p.pt"
    bad.write_bytes(pickle.dumps({"weights": {1, 2}}, protocol=4))
    assert main(_ft_args(url, tmp_path / "studies", small_fashion, "--init", "ghn", "--predictor", str(bad))) == 2
    assert "not a qnas predictor checkpoint" in _one_line(capsys)


# ---------------------------------------------------------------------------------------------------
# 4. and 5. devices and directories of train-predictor


def test_check_device(monkeypatch):
    from qnas.train_predictor import check_device

    assert check_device("cpu") == torch.device("cpu")
    for bad in ("bogus", "meta", "cuda:x"):
        with pytest.raises(QnasError, match="--device"):
            check_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda:1") and check_device("cuda") == torch.device("cuda")
    with pytest.raises(QnasError, match="2 CUDA GPU"):
        check_device("cuda:5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(QnasError, match="no CUDA GPU"):
        check_device("cuda")


def test_check_writable_dir_leaves_nothing_behind(tmp_path):
    from qnas.train_predictor import check_run_dir, check_writable_dir

    check_run_dir(tmp_path / "a" / "b" / "c")
    check_writable_dir(tmp_path, "--export 'x.pt'")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(QnasError, match="is a file"):
        check_run_dir(tmp_path / "f")
    with pytest.raises(QnasError, match="not a directory"):
        check_run_dir(tmp_path / "f" / "run")
    if Path("/proc/self").exists():  # Linux: nothing can be created under /proc, not even by root
        with pytest.raises(QnasError, match="cannot write to '/proc/qnas-x'"):
            check_run_dir("/proc/qnas-x")


# ---------------------------------------------------------------------------------------------------
# 6. out of memory


@pytest.mark.parametrize("exc", [
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 799999968000 bytes. Error code "
                 "12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.15 GiB "
                           "of which 1.20 GiB is free. Of the allocated memory 70 GiB is allocated by PyTorch. If "
                           "reserved but unallocated memory is large try setting "
                           "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
], ids=["cpu", "cuda"])
def test_out_of_memory_is_one_line_exit_1(monkeypatch, capsys, exc):
    from qnas import data

    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(data, "load_dataset", fail)
    assert main(["score", "--arch", "stem8-8:conv3-fc0", "--settings", "fp32", "--val-size", "32"]) == 1
    err = _one_line(capsys)
    assert err.startswith("qnas: error: out of memory: ") and "allocate" in err and len(err) < 160, err
    assert "Of the allocated" not in err and "Error code" not in err


def test_other_runtime_errors_still_raise(monkeypatch):
    from qnas import data

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(data, "load_dataset", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["score", "--arch", "stem8-8:conv3-fc0", "--settings", "fp32", "--val-size", "32"])


# ---------------------------------------------------------------------------------------------------
# 7. generic pickles as predictors


def test_a_generic_pickle_is_refused_in_one_short_line_without_warnings(tmp_path):
    from qnas.predictors import load_predictor

    protocol4 = tmp_path / "p4.pt"
    protocol4.write_bytes(pickle.dumps({"weights": {1, 2}}, protocol=4))
    other = tmp_path / "obj.pt"
    torch.save({"when": __import__("datetime").date(2024, 1, 1)}, other)
    for path in (protocol4, other):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(QnasError) as info:
                load_predictor(path)
        assert not seen, [str(w.message) for w in seen]
        assert str(info.value) == (f"{str(path)!r}: not a qnas predictor checkpoint (it holds objects a safe load "
                                   "refuses; qnas never unpickles arbitrary code)")


# ---------------------------------------------------------------------------------------------------
# 10. eval-predictor --record


@pytest.fixture
def predictor_copy(tmp_path: Path) -> Path:
    """A copy of the shipped predictor (never the shipped files themselves) with its recorded table."""
    for suffix in (".pt", ".json"):
        shutil.copyfile(SHIPPED.with_suffix(suffix), tmp_path / f"copy{suffix}")
    return tmp_path / "copy.pt"


def test_record_losses():
    from qnas.predictors.evaluation import record_losses

    old = {"dataset": "d", "test_images": 1000, "test_subset_seed": 0, "bn_stats": "calibrated",
           "splits": ["id", "deep"], "archs_per_split": {"id": 20, "deep": 20}, "rows": {"fp32": {}, "w4a4": {}}}
    how = {k: v for k, v in old.items() if k != "rows"}
    assert record_losses(old, {**how, "head": "keep"}, ["fp32"]) == []  # measured the same way: rows merge
    assert record_losses({}, how, ["fp32"]) == []
    bigger = {**how, "head": "fit64", "test_images": 2000, "archs_per_split": {"id": 30, "deep": 20}}
    assert record_losses(old, bigger, ["fp32", "w4a4", "w2a2"]) == []
    smaller = {**how, "test_images": 32, "splits": ["id"], "archs_per_split": {"id": 1}}
    lost = record_losses(old, smaller, ["fp32"])
    assert lost == ["splits deep missing", "fewer architectures per split (id 1 < 20)", "fewer test images (32 < 1000)",
                    "settings w4a4 missing"]


def test_record_refuses_a_smaller_table_and_force_replaces_it_atomically(predictor_copy, capsys):
    from qnas.predictors import read_header

    before = {p: p.read_bytes() for p in (predictor_copy, predictor_copy.with_suffix(".json"))}
    old_table = read_header(predictor_copy).eval_table
    argv = ["eval-predictor", "--predictor", str(predictor_copy), "--n", "1", "--splits", "id", "--images", "32",
            "--settings", "fp32", "--no-floor", "--fit-size", "32", "--record", "--json"]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert "--force" in err and "fewer test images (32 < 1000)" in err and "fewer architectures" in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert main([*argv, "--force"]) == 0
    capsys.readouterr()
    table = read_header(predictor_copy).eval_table
    assert table["test_images"] == 32 and list(table["rows"]) == ["fp32"] and table != old_table
    assert sorted(p.name for p in predictor_copy.parent.iterdir()) == ["copy.json", "copy.pt"]  # no temp files


def test_record_write_is_atomic(predictor_copy, monkeypatch):
    from qnas.predictors import read_header, update_header

    before = predictor_copy.read_bytes()
    real = torch.save

    def half_written(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"half")  # type: ignore[arg-type]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError):
        update_header(predictor_copy, eval_table={})
    monkeypatch.setattr(torch, "save", real)
    assert predictor_copy.read_bytes() == before
    assert sorted(p.name for p in predictor_copy.parent.iterdir()) == ["copy.json", "copy.pt"]
    assert read_header(predictor_copy).eval_table
