"""Deployable exports: onnxruntime latency, file size and top-1 of every exported kind, beside PyTorch.

    OMP_NUM_THREADS=1 python benchmarks/deploy.py [--study NAME --storage URL --trial N] [--test-size 2000]

Without ``--study`` it runs what a new user runs, in a temporary directory: ``qnas search --bits 4
--max-params 1e7 --trials 8`` on a fresh study, then ``qnas export`` of the front's most accurate trial
(the predictor's parameters, post-training quantization). With ``--study`` it exports that study's
``--trial`` (default: the most accurate of its front). For ``model.onnx`` (float), ``model_int8_qdq.onnx``
and ``model_<target>_qcdq.onnx`` it reports onnxruntime latency per image at batch 1 and 64 (CPU, one
thread, default optimizations, medians of interleaved runs), file bytes and top-1 on the first
``--test-size`` test images, beside the PyTorch model each file was checked against (float module;
fake-quant model with the exported scales). Last line:
``int8_latency_ratio=<int8/float at batch 1> w4_size_ratio=<4-bit file bytes / int8 bytes>
int8_top1_drop=<float top-1 - int8 top-1, points>``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, new_file, non_negative_int, positive_int, run, write_new  # noqa: E402

from qnas.cli import main as qnas_main  # noqa: E402
from qnas.data import load_dataset, normalize  # noqa: E402
from qnas.export import load, load_quantized, measure_latency, onnx_name  # noqa: E402


def _ort_top1(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    hits = sum(int((sess.run(["logits"], {"input": x[i:i + 250]})[0].argmax(1) == y[i:i + 250]).sum())
               for i in range(0, len(x), 250))
    return 100.0 * hits / len(y)


def _torch_model(out: Path, setting: str | None):
    """A callable for the PyTorch reference of a file: the float module, or the fake-quant model."""
    if setting is None:
        module = load(out)
        return lambda xb: module(xb)
    qmodel, cal, spec = load_quantized(out, setting)
    cache: dict = {}
    return lambda xb: qmodel(xb, spec, cal, cache=cache)


def _torch_stats(fn, x: torch.Tensor, y: torch.Tensor, rounds: int) -> tuple[float, float, float]:
    """Top-1 (%) and median ms per image at batch 1 and 64."""
    with torch.inference_mode():
        hits = sum(int((fn(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(250), y.split(250), strict=True))
        times = {}
        for bs, runs in ((1, 10), (64, 2)):
            xb = x[:bs]
            fn(xb)
            t = []
            for _ in range(rounds * runs):
                t0 = time.perf_counter()
                fn(xb)
                t.append(time.perf_counter() - t0)
            times[bs] = 1000.0 * float(np.median(t)) / bs
    return 100.0 * hits / len(y), times[1], times[64]


def main() -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=None, help="existing study (default: make a fresh demo study)")
    ap.add_argument("--storage", default=None, help="its Optuna storage URL")
    ap.add_argument("--trial", type=non_negative_int, default=None,
                    help="trial to export (default: the front's most accurate)")
    ap.add_argument("--bits", default="4", help="target of the fresh study (default 4)")
    ap.add_argument("--trials", type=positive_int, default=8, help="trials of the fresh study (default 8)")
    ap.add_argument("--test-size", type=positive_int, default=2000, help="test images for top-1 (default 2000)")
    ap.add_argument("--rounds", type=positive_int, default=30, help="interleaved timing rounds (default 30)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", type=new_file, default=None, help="also write the results here (a new file)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="qnas-deploy-") as tmp:
        work = Path(tmp)
        study, storage = args.study, args.storage
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        t0 = time.perf_counter()
        if study is None:
            study, storage = "demo", f"sqlite:///{work / 'demo.db'}"
            code = qnas_main(["search", "--bits", args.bits, "--max-params", "1e7", "--trials", str(args.trials),
                              "--study", study, "--storage", storage, "--quiet", *data])
            if code:
                return code
        t_search = time.perf_counter() - t0
        trial = args.trial
        if trial is None:
            import optuna

            from qnas.finetune import choose_trials
            from qnas.search import load_study

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            trial = choose_trials(load_study(study, storage), None, 1)[0].number
        out = work / "export"
        t0 = time.perf_counter()
        code = qnas_main(["export", "--study", study, *(["--storage", storage] if storage else []), "--trial",
                          str(trial), "--out", str(out), "--quiet", "--json", *data])
        t_export = time.perf_counter() - t0
        if code:
            return code
        arch = json.loads((out / "arch.json").read_text())
        target = arch["target"]
        kinds = [("model.onnx", None), (onnx_name("w8a8"), "w8a8")]
        if onnx_name(target) != onnx_name("w8a8"):
            kinds.append((onnx_name(target), target))
        ds = load_dataset(arch["dataset"], args.data_dir)
        n = min(args.test_size, len(ds.test_labels))
        x, y = normalize(ds.test_images[:n], ds.info), ds.test_labels[:n]
        shape = tuple(arch["input_shape"])
        files = {f: out / f for f, _ in kinds}
        lat1 = measure_latency(files, batch_size=1, rounds=args.rounds, runs=10, input_shape=shape)
        lat64 = measure_latency(files, batch_size=64, rounds=max(3, args.rounds // 5), runs=2, input_shape=shape)
        rows = []
        for f, setting in kinds:
            top1 = _ort_top1(out / f, x.numpy(), y.numpy())
            t_top1, t1, t64 = _torch_stats(_torch_model(out, setting), x, y, max(3, args.rounds // 5))
            rows.append({"file": f, "setting": setting or "fp32", "bytes": files[f].stat().st_size,
                         "ort_ms_b1": lat1[f], "ort_ms_b64": lat64[f], "ort_top1": top1,
                         "torch_top1": t_top1, "torch_ms_b1": t1, "torch_ms_b64": t64})

    print(f"study {study}, trial {trial}: {arch['arch']} ({arch.get('params') or 0:,} parameters); search "
          f"{t_search:.0f} s, export {t_export:.0f} s; top-1 on {n:,} test images; onnxruntime CPU 1 thread, "
          "PyTorch 1 thread (fake quantization for the quantized rows); ms per image")
    head = (f"{'file':24s} {'bytes':>9s} {'ORT b1':>8s} {'ORT b64':>8s} {'ORT top1':>9s} {'torch top1':>11s} "
            f"{'torch b1':>9s} {'torch b64':>10s}")
    print(head)
    for r in rows:
        print(f"{r['file']:24s} {r['bytes']:9,d} {r['ort_ms_b1']:8.3f} {r['ort_ms_b64']:8.3f} {r['ort_top1']:8.2f}% "
              f"{r['torch_top1']:10.2f}% {r['torch_ms_b1']:9.3f} {r['torch_ms_b64']:10.3f}")
    by = {r["file"]: r for r in rows}
    fp, i8 = by["model.onnx"], by[onnx_name("w8a8")]
    low = by.get(onnx_name(target))
    if args.json:
        write_new(args.json, json.dumps({"study": study, "trial": trial, "arch": arch["arch"], "rows": rows,
                                               "export_seconds": t_export}, indent=1) + "\n")
    w4 = f"{low['bytes'] / i8['bytes']:.3f}" if low and low is not i8 else "nan"
    print(f"int8_latency_ratio={i8['ort_ms_b1'] / fp['ort_ms_b1']:.3f} w4_size_ratio={w4} "
          f"int8_top1_drop={fp['ort_top1'] - i8['ort_top1']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
