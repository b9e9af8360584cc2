"""Bad input to every command: one line on stderr, exit code 2, nothing created or changed in the working directory.

Run in-process (``qnas.cli.main``), in a fresh directory holding a few prepared files: a study, a regular file,
an existing predictor export, predictors with broken headers and a run directory with a corrupt checkpoint.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import optuna
import pytest
import torch

from qnas.cli import main
from qnas.search import SearchConfig, create_or_continue
from search_spaces import convnets250k as S

SHIPPED_HEADER = Path(__file__).resolve().parents[1] / "qnas" / "predictors" / "fashion-mnist.json"
OVERSIZED = "stem16-99999:conv3-maxpool-64:conv3-convs2-128:conv1-fc128"  # 72.3M parameters
WIDE_STEM = "stem99999-64:sep3-maxpool-64:conv3-convs2-128:conv1-fc128"  # under 1e7 params, 6.4e9 MACs
TINY = "stem8-8:conv3-maxpool-16:conv3-maxpool-16:conv3-fc0"


def _fake_predictor(path: Path, header: str) -> None:
    torch.save({"format": "qnas-ghn", "header": header, "state_dict": {}}, path)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared working directory, built once and copied for each case."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "studies").mkdir()
    study = create_or_continue(SearchConfig(study="demo", storage=f"sqlite:///{root / 'studies' / 'demo.db'}",
                                            max_params=50_000, predictor="random"))
    g = S.from_string(TINY)
    study.add_trial(optuna.trial.create_trial(
        values=[0.5, float(S.count_params(g))], constraints={"params": float(S.count_params(g) - 50_000)},
        user_attrs={"arch": TINY, "genome": S.to_json(g), "params": S.count_params(g), "macs": S.count_macs(g),
                    **{f"top1_{s}": 0.5 for s in ("fp32", "w4a4")}}))
    del study
    (root / "afile").write_text("not a directory\n")
    (root / "existing.pt").write_bytes(b"someone else's predictor")
    (root / "existing.json").write_text("{}\n")
    _fake_predictor(root / "list-header.pt", "[]")
    header = json.loads(SHIPPED_HEADER.read_text())
    _fake_predictor(root / "string-version.pt", json.dumps({**header, "format_version": "9"}))
    # A generic pickle (protocol 4, a set): torch's safe load refuses it, and warns about the protocol first.
    (root / "pickle.pt").write_bytes(pickle.dumps({"weights": {1, 2}}, protocol=4))
    (root / "run").mkdir()
    (root / "run" / "last.pt").write_bytes(b"\x80\x04 truncated checkpoint")
    (root / "outdir").mkdir()
    (root / "exits.py").write_text("import sys\n\n\ndef make():\n    sys.exit(0)\n")
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


SEARCH = ["search", "--trials", "1", "--val-size", "8", "--predictor", "random", "--quiet"]
TRAIN = ["train-predictor", "--out", "newrun", "--steps", "1", "--quiet"]
FT = ["finetune", "--study", "demo", "--quiet"]
EXPORT = ["export", "--study", "demo", "--trial", "0", "--out", "exported"]


def _genome_json(**changes: object) -> str:
    """TINY's genome as JSON text with top-level fields replaced (``residual=``: the first block's)."""
    d = S.to_json(S.from_string(TINY))
    if "residual" in changes:
        d["stages"][0]["blocks"][0]["residual"] = changes.pop("residual")
    return json.dumps({**d, **changes}).replace("Infinity", "1e400")  # 1e400: what a user types for a huge number


NOT_A_PREDICTOR = "not a qnas predictor checkpoint (it holds objects a safe load refuses"

CASES: list[tuple[str, list[str], str]] = [
    # (id, argv, a piece of the message)
    ("no-command", [], "qnas"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("search-bits-3", [*SEARCH, "--bits", "3"], "--bits"),
    ("search-bits-w9a9", [*SEARCH, "--bits", "w9a9"], "--bits"),
    ("search-max-params-negative", [*SEARCH, "--max-params", "-1"], "--max-params"),
    ("search-max-params-text", [*SEARCH, "--max-params", "abc"], "--max-params"),
    ("search-max-params-zero", [*SEARCH, "--max-params", "0"], "--max-params"),
    ("search-max-params-inf", [*SEARCH, "--max-params", "inf"], "--max-params"),
    ("search-trials-zero", [*SEARCH, "--trials", "0"], "--trials"),
    ("search-trials-text", [*SEARCH, "--trials", "x"], "--trials"),
    ("search-total-trials-zero", [*SEARCH, "--total-trials", "0"], "--total-trials"),
    ("search-timeout-negative", [*SEARCH, "--timeout", "-5"], "--timeout"),
    ("search-timeout-nan", [*SEARCH, "--timeout", "nan"], "--timeout"),
    ("search-sampler", [*SEARCH, "--sampler", "cmaes"], "--sampler"),
    ("search-population-1", [*SEARCH, "--population", "1"], "--population"),
    ("search-population-0", [*SEARCH, "--population", "0"], "--population"),
    ("search-seed-negative", [*SEARCH, "--seed", "-1"], "--seed"),
    ("search-seed-huge", [*SEARCH, "--seed", "1099511627776"], "--seed"),
    ("search-seed-text", [*SEARCH, "--seed", "x"], "--seed"),
    ("search-study-escape", [*SEARCH, "--study", "../escape"], "--study"),
    ("search-study-absolute", [*SEARCH, "--study", "/tmp/qnas-absolute-study"], "--study"),
    ("search-study-empty", [*SEARCH, "--study", ""], "--study"),
    ("search-study-slash", [*SEARCH, "--study", "a/b"], "--study"),
    ("search-study-hidden", [*SEARCH, "--study", ".hidden"], "--study"),
    ("search-storage-not-url", [*SEARCH, "--storage", "not-a-url"], "--storage"),
    ("search-space", [*SEARCH, "--space", "nope"], "unknown search space"),
    ("search-dataset", [*SEARCH, "--dataset", "nope"], "nope"),
    ("search-predictor", [*SEARCH, "--predictor", "nope"], "unknown predictor"),
    ("search-predictor-list-header", [*SEARCH, "--predictor", "list-header.pt"], "bad predictor header"),
    ("search-bn-stats", [*SEARCH, "--bn-stats", "x"], "--bn-stats"),
    ("search-act-ranges", [*SEARCH, "--act-ranges", "x"], "--act-ranges"),
    ("search-val-size-zero", [*SEARCH, "--val-size", "0"], "--val-size"),
    ("search-unknown-flag", [*SEARCH, "--frobnicate"], "--frobnicate (see `qnas search --help`)"),
    ("score-garbage-arch", ["score", "--arch", "garbage"], "cannot parse"),
    ("score-bad-json-arch", ["score", "--arch", "{bad json"], "genome JSON"),
    ("score-oversized-arch", ["score", "--arch", OVERSIZED, "--val-size", "64"], "parameters, over the bound"),
    ("score-wide-stem", ["score", "--arch", WIDE_STEM, "--val-size", "64"], "MACs per image, over the bound"),
    ("score-bits", ["score", "--arch", TINY, "--bits", "w9a9"], "w9a9"),
    ("score-first-last-bits", ["score", "--arch", TINY, "--first-last-bits", "4"], "first/last-layer bits"),
    ("search-first-last-bits", ["search", "--first-last-bits", "16", "--trials", "1", "--predictor", "random"],
     "first/last-layer bits"),
    ("search-ranker-missing", ["search", "--ranker", "nowhere.json", "--trials", "1"], "cannot read ranker"),
    ("search-ranker-empty", ["search", "--ranker", "", "--trials", "1"], "an empty ranker path"),
    ("score-arch-json-missing", ["score", "--arch", "nowhere/arch.json"], "cannot read --arch"),
    ("data-check-dir-is-a-file", ["data", "check", "--data-dir", "afile"], "is a file, not a directory"),
    ("score-val-size-zero", ["score", "--arch", TINY, "--val-size", "0"], "--val-size"),
    ("score-calib-over-val", ["score", "--arch", TINY, "--val-size", "64", "--calib-size", "128"], "--calib-size"),
    ("score-seed-negative", ["score", "--arch", TINY, "--seed", "-1"], "--seed"),
    ("score-space", ["score", "--arch", TINY, "--space", "nope"], "unknown search space"),
    ("score-dataset", ["score", "--arch", TINY, "--dataset", "nope"], "nope"),
    ("score-max-params-zero", ["score", "--arch", TINY, "--max-params", "0"], "--max-params"),
    ("space-sample-n-zero", ["space", "sample", "--n", "0"], "--n"),
    ("space-sample-seed-negative", ["space", "sample", "--seed", "-1"], "--seed"),
    ("space-sample-bound-too-small", ["space", "sample", "--max-params", "10"], "could not sample"),
    ("space-input-shape", ["space", "sample", "--input-shape", "1,2"], "--input-shape"),
    ("space-info-garbage", ["space", "info", "stem-x"], "cannot parse"),
    ("space-num-classes", ["space", "info", TINY, "--num-classes", "0"], "--num-classes"),
    ("report-missing-study", ["report", "--study", "nope"], "no study 'nope'"),
    ("report-study-escape", ["report", "--study", "../demo"], "--study"),
    ("report-out-not-html", ["report", "--study", "demo", "--out", "x.txt"], ".html"),
    ("report-csv-is-dir", ["report", "--study", "demo", "--out", "r.html", "--csv", "outdir"], "is a directory"),
    ("report-out-under-file", ["report", "--study", "demo", "--out", "afile/r.html"], "not a directory"),
    ("show-missing-study", ["show", "--study", "nope"], "no study 'nope'"),
    ("show-top-zero", ["show", "--study", "demo", "--top", "0"], "--top"),
    ("show-study-slash", ["show", "--study", "a/b"], "--study"),
    ("show-missing-storage-file", ["show", "--study", "demo", "--storage", "sqlite:///other.db"], "does not exist"),
    ("studies-not-url", ["studies", "--storage", "not-a-url"], "--storage"),
    ("studies-missing-file", ["studies", "--storage", "sqlite:///missing.db"], "missing.db"),
    ("finetune-missing-study", ["finetune", "--study", "nope", "--quiet"], "no study 'nope'"),
    ("finetune-missing-study-with-progress", ["finetune", "--study", "nope"], "no study 'nope'"),
    ("finetune-study-empty", ["finetune", "--study", "", "--quiet"], "--study"),
    ("finetune-trials-text", [*FT, "--trials", "x"], "--trials"),
    ("finetune-top-k-zero", [*FT, "--top-k", "0"], "--top-k"),
    ("finetune-trials-and-top-k", [*FT, "--trials", "0", "--top-k", "2"], "not allowed"),
    ("finetune-epochs-zero", [*FT, "--epochs", "0"], "--epochs"),
    ("finetune-lr-negative", [*FT, "--lr", "-1"], "--lr"),
    ("finetune-seed-negative", [*FT, "--seed", "-1"], "--seed"),
    ("export-missing-study", ["export", "--study", "nope", "--trial", "0", "--out", "exported"], "no study 'nope'"),
    ("export-study-escape", ["export", "--study", "../x", "--trial", "0", "--out", "exported"], "--study"),
    ("export-no-out", ["export", "--study", "demo", "--trial", "0"], "--out"),
    ("export-trial-and-pareto", [*EXPORT, "--pareto"], "not allowed"),
    ("export-verify-size-zero", [*EXPORT, "--verify-size", "0"], "--verify-size"),
    ("train-out-is-file", ["train-predictor", "--out", "afile", "--steps", "1", "--quiet"], "is a file"),
    ("train-lr-negative", [*TRAIN, "--lr", "-1"], "--lr"),
    ("train-lr-zero", [*TRAIN, "--lr", "0"], "--lr"),
    ("train-steps-zero", [*TRAIN, "--steps", "0"], "--steps"),
    ("train-regime", [*TRAIN, "--regime", "x"], "--regime"),
    ("train-float-with-bits", [*TRAIN, "--bits", "w4a4"], "float regime"),
    ("train-bad-bits", [*TRAIN, "--regime", "qat", "--bits", "w9a9"], "w9a9"),
    ("train-bn-free", [*TRAIN, "--bn-free", "2"], "--bn-free"),
    ("train-seed-negative", [*TRAIN, "--seed", "-1"], "--seed"),
    ("train-checkpoint-every", [*TRAIN, "--checkpoint-every", "-1"], "--checkpoint-every"),
    ("train-export-only-without-export", [*TRAIN, "--export-only"], "--export"),
    ("train-export-exists", [*TRAIN, "--export", "existing.pt"], "existing.pt"),
    ("train-export-not-pt", [*TRAIN, "--export", "model.bin"], ".pt"),
    ("train-corrupt-checkpoint", ["train-predictor", "--out", "run", "--steps", "1", "--quiet"], "last.pt"),
    ("eval-list-header", ["eval-predictor", "--predictor", "list-header.pt"], "bad predictor header"),
    ("eval-string-format-version", ["eval-predictor", "--predictor", "string-version.pt"], "format_version"),
    ("eval-not-a-checkpoint", ["eval-predictor", "--predictor", "existing.pt"], "existing.pt"),
    ("eval-splits", ["eval-predictor", "--splits", "nope"], "--splits"),
    ("eval-n-negative", ["eval-predictor", "--n", "-1"], "--n"),
    ("eval-seed-negative", ["eval-predictor", "--seed", "-1"], "--seed"),
    ("eval-record-random", ["eval-predictor", "--predictor", "random", "--record"], "--record"),
    # genome JSON is read strictly: no coercion of floats, bools and strings
    ("space-info-json-stem-1e400", ["space", "info", _genome_json(stem=float("inf"))], "stem must be an integer"),
    ("space-info-json-bn-string", ["space", "info", _genome_json(bn="no")], "bn must be true or false"),
    ("score-json-stem-fraction", ["score", "--arch", _genome_json(stem=24.5)], "stem must be an integer"),
    ("score-json-stem-bool", ["score", "--arch", _genome_json(stem=True)], "stem must be an integer"),
    ("score-json-hidden-string", ["score", "--arch", _genome_json(hidden="64")], "hidden must be an integer"),
    ("score-json-residual-string", ["score", "--arch", _genome_json(residual="yes")],
     "stages[0].blocks[0].residual must be true or false"),
    ("score-json-stages-object", ["score", "--arch", _genome_json(stages={"width": 8})], "stages must be a list"),
    # devices and output paths are checked before any work
    ("train-device-bogus", [*TRAIN, "--device", "bogus"], "--device 'bogus'"),
    ("train-device-meta", [*TRAIN, "--device", "meta"], "--device 'meta'"),
    ("train-device-cuda-99", [*TRAIN, "--device", "cuda:99"], "--device 'cuda:99'"),
    ("train-out-in-proc", ["train-predictor", "--out", "/proc/qnas-run", "--steps", "1", "--quiet"],
     "cannot write to '/proc/qnas-run'"),
    ("train-out-under-file", ["train-predictor", "--out", "afile/run", "--steps", "1", "--quiet"], "not a directory"),
    ("train-export-in-proc", [*TRAIN, "--export", "/proc/qnas-x.pt"], "cannot write to '/proc'"),
    ("train-export-under-file", [*TRAIN, "--export", "afile/x.pt"], "not a directory"),
    ("finetune-weight-decay-nan", [*FT, "--weight-decay", "nan"], "--weight-decay"),
    ("finetune-weight-decay-negative", [*FT, "--weight-decay", "-1"], "--weight-decay"),
    ("finetune-weight-decay-inf", [*FT, "--weight-decay", "inf"], "--weight-decay"),
    # a generic pickle as a predictor: refused in one short line, without torch's weights_only=False advice
    ("eval-pickle-predictor", ["eval-predictor", "--predictor", "pickle.pt"], NOT_A_PREDICTOR),
    ("score-init-pickle", ["score", "--arch", TINY, "--init", "ghn:pickle.pt", "--val-size", "8"], NOT_A_PREDICTOR),
    ("search-predictor-pickle", [*SEARCH[:-3], "--predictor", "pickle.pt", "--quiet"], NOT_A_PREDICTOR),
    ("train-start-from-pickle", [*TRAIN, "--start-from", "pickle.pt"], NOT_A_PREDICTOR),
    # found by an audit in session 25: each was a traceback, a second line, a silent fallback or a file left behind
    ("space-sample-max-params-below-one", ["space", "sample", "--n", "1", "--max-params", "0.5"], "--max-params"),
    ("search-storage-in-memory", [*SEARCH, "--storage", "sqlite://"], "in-memory database"),
    ("search-storage-memory-path", [*SEARCH, "--storage", "sqlite:///:memory:"], "in-memory database"),
    ("show-sqlite-option-without-uri", ["show", "--study", "demo", "--storage", "sqlite:///studies/demo.db?mode=ro"],
     "uri=true"),
    ("show-storage-path-with-newline", ["show", "--study", "demo", "--storage", "sqlite:///a\nb.db"], "a\\nb.db"),
    ("score-init-trained-not-a-number", ["score", "--arch", TINY, "--init", "trained:x", "--val-size", "8",
                                         "--settings", "fp32"], "trained:EPOCHS"),
    ("score-random-bad-first-last-bits", ["score", "--arch", TINY, "--init", "random", "--settings", "fp32",
                                          "--first-last-bits", "x", "--val-size", "8"], "first/last-layer bits"),
    ("score-module-calls-sys-exit", ["score", "--module", "exits.py:make", "--val-size", "8"],
     "called sys.exit(0)"),
    ("report-csv-unwritable-writes-no-html", ["report", "--study", "demo", "--out", "r1.html", "--csv",
                                              "/proc/qnas-x.csv"], "cannot write /proc/qnas-x.csv"),
    ("export-bits-fp32", [*EXPORT, "--bits", "fp32"], "the float model.onnx is always written"),
    ("search-predictor-empty", [*SEARCH[:-3], "--predictor", "", "--quiet"], "expected a predictor name"),
    ("finetune-predictor-empty", [*FT, "--predictor", " "], "expected a predictor name"),
    # an extra argument points to the help that lists the subcommand's arguments, not `qnas --help`
    ("space-info-extra-argument", ["space", "info", TINY, "b"],
     "unrecognized arguments: b (see `qnas space info --help`)"),
]


def test_the_table_is_large_and_unique():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(argv, needle, template, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    shutil.copytree(template, cwd)
    monkeypatch.chdir(cwd)
    before = _snapshot(cwd)
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("qnas: error:"), err
    assert "Traceback" not in err and needle in err, err
    assert "weights_only" not in err and len(err) < 400, err  # no library advice, no wall of text
    assert _snapshot(cwd) == before
    assert not Path("/tmp/qnas-absolute-study.db").exists()
