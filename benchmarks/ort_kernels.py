"""Which convolutions does onnxruntime run faster in int8 than in float on this CPU?

    OMP_NUM_THREADS=1 python benchmarks/ort_kernels.py [--rounds 40]

Why small exports gain little from int8 (docs/quantization.md): each case is one convolution written
as qnas exports it, float (``model.onnx``) and QDQ with symmetric per-channel int8 weights and uint8
activations (``model_int8_qdq.onnx``, which onnxruntime fuses into QLinearConv), and, for comparison,
int8 activations. Timed by the exporter's own ``qnas.export.measure_latency`` (batch 1, one thread,
default optimizations, the three variants interleaved, medians); the int8 timing includes quantizing
the float input and dequantizing the output, as inside an exported graph around a float neighbour. Last line:
``depthwise_int8_ratio=<geometric mean of int8 u8 / float over the depthwise cases>
dense_int8_ratio=<the same over the dense cases>``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, positive_int, run  # noqa: E402

from qnas.export import measure_latency  # noqa: E402

# (label, channels out, kernel, spatial size, groups, channels in): the layers of the search space's nets.
CASES = [
    ("depthwise 32ch 5x5 @28", 32, 5, 28, 32, 32),
    ("depthwise 32ch 3x3 @28", 32, 3, 28, 32, 32),
    ("depthwise 144ch 5x5 @28", 144, 5, 28, 144, 144),
    ("depthwise 24ch 3x3 @28", 24, 3, 28, 24, 24),
    ("depthwise 16ch 3x3 @14", 16, 3, 14, 16, 16),
    ("stem 1->24 3x3 @28", 24, 3, 28, 1, 1),
    ("pointwise 8->32 @28", 32, 1, 28, 1, 8),
    ("pointwise 24->144 @28", 144, 1, 28, 1, 24),
    ("dense 32->64 3x3 @14", 64, 3, 14, 1, 32),
    ("dense 64->64 5x5 @7", 64, 5, 7, 1, 64),
]


def conv_model(cout: int, k: int, size: int, groups: int, cin: int, act: str | None, seed: int = 0) -> Any:
    """One convolution as an ONNX model: float (``act`` None) or QDQ with ``act`` = 'u8' / 's8' activations."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin // groups, k, k)) * 0.1).astype(np.float32)
    inits = [nh.from_array(np.zeros(cout, np.float32), "b")]
    nodes, x = [], "input"
    if act is not None:
        adt, zp = (np.int8, 0) if act == "s8" else (np.uint8, 128)
        inits += [nh.from_array(np.array(0.02, np.float32), "s"), nh.from_array(np.array(zp, adt), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        x = "xd"
        scale = (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
        inits += [nh.from_array(np.round(w / scale[:, None, None, None]).astype(np.int8), "wq"),
                  nh.from_array(scale, "ws"), nh.from_array(np.zeros(cout, np.int8), "wz")]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0))
    else:
        inits.append(nh.from_array(w, "w"))
    nodes.append(helper.make_node("Conv", [x, "w", "b"], ["y"], group=groups, pads=[k // 2] * 4))
    if act is not None:
        nodes += [helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["logits"])]
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["logits"]))
    graph = helper.make_graph(nodes, "conv",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, cout, size, size])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=positive_int, default=40, help="interleaved rounds of 10 inferences (default 40)")
    args = ap.parse_args(argv)
    print(f"{'case':26s} {'float us':>9s} {'int8 u8 us':>11s} {'int8 s8 us':>11s} {'u8/float':>9s}")
    ratios: dict[str, list[float]] = {"depthwise": [], "dense": []}
    for label, cout, k, size, groups, cin in CASES:
        ms = measure_latency({act: conv_model(cout, k, size, groups, cin, None if act == "float" else act)
                              for act in ("float", "u8", "s8")}, rounds=args.rounds, input_shape=(cin, size, size))
        f, u, s = (1000 * ms[act] for act in ("float", "u8", "s8"))
        ratios["depthwise" if groups > 1 else "dense"].append(u / f)
        print(f"{label:26s} {f:9.0f} {u:11.0f} {s:11.0f} {u / f:9.2f}")
    print(" ".join(f"{kind}_int8_ratio={float(np.exp(np.mean(np.log(r)))):.3f}" for kind, r in ratios.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
