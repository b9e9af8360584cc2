"""Exporting a model: architecture, weights, quantization parameters, ONNX (float, int8 QDQ, low-bit QCDQ).

    export_model(module, "out/m", arch=..., info=..., settings={"w8a8": (spec, calib), "w4a4": (...)}, ...)
    module = qnas.load("out/m")                        # nn.Module with the exported weights (eval mode)
    qmodel, calib, spec = load_quantized("out/m", "w4a4")
    logits = qmodel(x, spec, calib)                    # the fake-quant model the ONNX files were checked against

Files in a model directory: ``arch.json`` (genome, string, space, dataset), ``model.safetensors``
(the module's state dict: weights and the BatchNorm statistics every quantized setting folds with),
``quant.json`` (scale and zero point of every quantized tensor per setting), ``model.onnx`` (float, BN
folded), ``model_int8_qdq.onnx`` (QuantizeLinear/DequantizeLinear), ``model_w4a4_qcdq.onnx`` for a
sub-8-bit setting (QuantizeLinear -> Clip to the low-bit range -> DequantizeLinear, the Brevitas QCDQ
convention) and ``README.md`` (model card).

**ONNX graphs are written with the ``onnx`` helper API from the traced module**, not with
``torch.onnx.export``: in torch 2.13 the default (dynamo) exporter needs ``onnxscript``, which is not
installed here, and the TorchScript-based one warns that it will be removed. Writing the graph from
the same trace and the same compiled program the quantization engine runs puts every QuantizeLinear
exactly where ``qnas.quant`` quantizes (after fused BatchNorm/ReLU, at adds and average pools, not
after max pooling), names tensors after the traced nodes (the keys of ``quant.json``), and covers the
layers the engine supports; anything else is a one-line error naming the node.

Quantization convention (the engine's, docs/quantization.md): activations asymmetric affine on unsigned
integers, ``real = (q - zero_point) * scale`` with ``q`` in ``0 .. 2**bits - 1``, per tensor; weights per
tensor or per output channel (``-channel`` settings, the search's default: DequantizeLinear with ``axis=0``
and 1-D scales), symmetric int8 (zero point 0) at 8 bits and asymmetric below, stored as initializers already
quantized (bit-exact with the engine; UINT4 for 2-4 bits) after folding BatchNorm with the frozen
statistics; biases and the logits stay float, as in the engine.

**Checking.** Every ONNX file is run in onnxruntime on real test images and compared with the PyTorch
fake-quant model (frozen calibration, same scales), with onnxruntime's QDQ fusion switched off so the
graph runs as written: top-1 agreement must reach 99% and the mean logit difference stay within 5% of
the mean |logit| (float: 1e-3), else :class:`VerificationError`. The remaining differences come from
values within float rounding of a rounding boundary (onnxruntime divides by the scale, PyTorch
multiplies by its inverse). With its default optimizations onnxruntime fuses the QDQ pattern into
integer kernels and re-quantizes the float biases to int32 at scale ``s_x * s_w``; that agreement is
reported too (``fused_*``) but not enforced: at 2-4 bits those scales are coarse and the biases move.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from qnas.callable_module import make_callable
from qnas.defaults import SETTINGS
from qnas.errors import QnasError
from qnas.finetune import Layout, bn_stats, layout
from qnas.ops import cannot_export, lookup
from qnas.quant import (
    FIRST_LAST_BITS,
    Calibration,
    QuantModel,
    QuantSpec,
    calibrate,
    describe_first_last,
    f32,
    first_last_rule,
    fold_bn,
    parse_first_last_bits,
    prepare,
    qparams,
    weight_levels,
    weight_qparams,
)

__all__ = [
    "DEFAULT_TEST_SIZE",
    "OPSET",
    "ExportHooks",
    "ExportResult",
    "VerificationError",
    "WeightStorage",
    "export_model",
    "export_trial",
    "int_weight",
    "load",
    "load_quantized",
    "load_weights",
    "measure_latency",
    "quant_params",
    "to_onnx",
    "verify_onnx",
]

OPSET = 17  # float and int8 files: readable by older runtimes and converters
OPSET_4BIT = 21  # sub-8-bit files: the ONNX INT4/UINT4 weight types
FORMAT = "qnas-export"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
# Agreement needed between onnxruntime and PyTorch. Float: summation order only. Quantized: a value that
# lands within float rounding of a rounding boundary may take the neighbouring level (onnxruntime divides
# by the scale, PyTorch multiplies by its inverse), which moves a few logits by a fraction of a level.
FLOAT_ATOL = 1e-3
MIN_TOP1_AGREEMENT = 0.99
QUANT_MEAN_DIFF = 0.05  # mean |logit difference| allowed, relative to the mean |logit|


class VerificationError(QnasError):
    """An exported ONNX file disagrees with the PyTorch model beyond tolerance (the CLI exits 1)."""


def onnx_name(setting: str) -> str:
    """File name of the quantized ONNX graph for a setting (``w8a8`` -> int8 QDQ, lower -> QCDQ)."""
    spec = QuantSpec.parse(setting)
    if spec.w_bits == 8 and spec.a_bits == 8:
        return "model_int8_qdq.onnx"
    return f"model_{spec.name.split('-')[0]}_qcdq.onnx"


# ---------------------------------------------------------------------------------------------------
# Quantization parameters


def _w_scale(w: torch.Tensor, bits: int, granularity: str,
             symmetric: bool) -> tuple[float | list[float], int | list[int]]:
    """The engine's min/max weight scale and zero point: scalars per tensor, lists per output channel."""
    scale, zp = weight_qparams(w, bits, granularity, symmetric)
    if isinstance(scale, torch.Tensor):
        return scale.flatten().tolist(), [int(z) for z in zp.flatten().tolist()]
    return scale, zp


@dataclass(frozen=True)
class WeightStorage:
    """How a weight's integers are stored in ONNX: the smallest integer type that holds its levels."""

    bits: int
    symmetric: bool

    @property
    def container_bits(self) -> int:
        # Not UINT2/INT2 (opset 25) for 2 bits: onnxruntime fails to load those graphs with its default
        # optimizations (docs/quantization.md), so 2- and 3-bit weights take 4-bit containers.
        return 4 if self.bits <= 4 else 8

    @property
    def type_name(self) -> str:
        return f"{'int' if self.symmetric else 'uint'}{self.container_bits}"

    @property
    def opset(self) -> int:
        return OPSET_4BIT if self.container_bits == 4 else OPSET

    def array(self, levels: np.ndarray) -> np.ndarray:
        """``levels`` (integers) in this storage's dtype; ONNX packs 4-bit types two to a byte."""
        if self.container_bits == 8:
            return levels.astype(np.int8 if self.symmetric else np.uint8)
        import ml_dtypes

        return levels.astype(getattr(ml_dtypes, self.type_name))


def _folded(module: nn.Module, lay: Layout, calibration: Calibration,
            layer: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias a layer runs with: BN folded with the frozen statistics (as the engine does)."""
    m = module.get_submodule(layer.module)
    w, b = m.weight.detach(), (m.bias.detach() if m.bias is not None else None)
    if not layer.bn:
        return w, b
    bn = module.get_submodule(layer.bn)
    mean, var = calibration.bn[layer.bn]
    return fold_bn(w, b, bn.weight.detach() if bn.weight is not None else None,
                   bn.bias.detach() if bn.bias is not None else None, mean, var, bn.eps)


def int_weight(w: torch.Tensor, scale: Any, zp: Any, bits: int, symmetric: bool) -> np.ndarray:
    """Integer levels the engine's fake quantizer picks (multiply by the float32 inverse, round half even),
    as int64 in :func:`qnas.quant.weight_levels`' range; ``scale``/``zp`` scalars or per-output-channel lists."""
    lo, hi = weight_levels(bits, symmetric)
    if isinstance(scale, list):
        shape = (-1, *([1] * (w.dim() - 1)))
        s = torch.tensor(scale, dtype=torch.float32).reshape(shape)
        z = torch.tensor(zp, dtype=torch.float32).reshape(shape)
        r = w.mul(torch.ones_like(s).div_(s)).round_()
        r = torch.maximum(torch.minimum(r, hi - z), lo - z)
        return (r + z).to(torch.int64).numpy()
    r = w.mul(f32(1.0 / scale)).round_().clamp_(lo - zp, hi - zp)
    return (r + zp).to(torch.int64).numpy()


def quant_params(module: nn.Module, lay: Layout, calibration: Calibration, spec: QuantSpec) -> dict[str, Any]:
    """Bits, scale and zero point of every quantized weight (after BN folding) and activation at ``spec``."""
    if spec.mode != "sim":
        raise QnasError(f"export supports rounding (SimQuant) settings, not {spec.name}")
    weights: dict[str, Any] = {}
    for layer in lay.weights:
        bits = lay.w_bits(spec, layer)
        if bits is None:
            continue
        w, _ = _folded(module, lay, calibration, layer)
        symmetric = spec.weight_symmetric(bits)
        scale, zp = _w_scale(w, bits, spec.granularity, symmetric)
        storage = WeightStorage(bits, symmetric)
        weights[layer.module] = {"bits": bits, "symmetric": symmetric, "levels": list(weight_levels(bits, symmetric)),
                                 "granularity": spec.granularity, "scale": scale, "zero_point": zp,
                                 "storage": storage.type_name, "bn_folded": layer.bn or None,
                                 "onnx_initializer": f"{layer.module}.weight_quantized"}
    acts: dict[str, Any] = {}
    for p in lay.points:
        bits = lay.a_bits(spec, p)
        if bits is None:
            continue
        lo, hi = calibration.ranges[p.name]
        scale, zp = qparams(lo, hi, bits)
        acts[p.name] = {"bits": bits, "scale": scale, "zero_point": zp, "range": [lo, hi], "after": p.tail,
                        "onnx_tensor": f"{p.name}_q"}
    return {"spec": spec.name, "first_last_8bit": spec.first_last_8bit, "first_last": describe_first_last(spec),
            "weights": weights, "activations": acts}


# ---------------------------------------------------------------------------------------------------
# ONNX graph


class _Graph:
    """Accumulates ONNX nodes and initializers with unique names."""

    def __init__(self, opset: int = OPSET) -> None:
        self.opset = opset
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._names: set[str] = set()

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        from onnx import numpy_helper

        name = self.unique(name)
        array = value if isinstance(value, np.ndarray) and dtype is None else np.asarray(value, dtype=dtype)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.unique(name)
        # No node names (optional in ONNX; the output names identify nodes): bytes a 4-bit file would carry.
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def qdq(self, x: str, scale: float, zp: int, bits: int, name: str) -> str:
        """QuantizeLinear -> (Clip to 0..2**bits-1 below 8 bits) -> DequantizeLinear, on uint8: onnxruntime
        rejects uint4 activations where its QDQ fusion passes them to MaxPool (docs/quantization.md)."""
        s = self.const(f"{name}_scale", scale)
        z = self.const(f"{name}_zero_point", zp, np.uint8)
        q = self.op("QuantizeLinear", [x, s, z], f"{name}_q")
        if bits < 8:
            q = self.op("Clip", [q, self.const(f"{name}_qmin", 0, np.uint8),
                                 self.const(f"{name}_qmax", (1 << bits) - 1, np.uint8)], f"{name}_clip")
        return self.op("DequantizeLinear", [q, s, z], f"{name}_dq")


class _Emitter:
    """The op table's ONNX emitters write through this (:class:`qnas.ops.OnnxEmitter`): the graph being
    written, the traced shapes, and the layers' folded (and quantized) weights."""

    def __init__(self, g: _Graph, module: nn.Module, lay: Layout, calibration: Calibration, spec: QuantSpec | None,
                 params: Mapping[str, Any] | None, shapes: Mapping[str, tuple[int, ...]], batch: int) -> None:
        self.g, self.net, self.lay, self.calibration = g, module, lay, calibration
        self.spec, self.params, self.shapes, self.batch = spec, params, shapes, batch
        self.modules = dict(module.named_modules())
        self.layers = {layer.step: layer for layer in lay.weights}
        self.names: dict[str, str] = {}  # fx node name -> ONNX tensor name ("" for a number)

    @property
    def opset(self) -> int:
        return self.g.opset

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        return self.g.op(op_type, inputs, name, **attrs)

    def const(self, name: str, value: Any, dtype: Any = "float32") -> str:
        return self.g.const(name, value, dtype)

    def value(self, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or not self.names.get(arg.name):
            raise QnasError(f"cannot export to ONNX: {arg!r} is not a tensor computed by the graph")
        return self.names[arg.name]

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[str(node.target)]

    def weight_inputs(self, node: fx.Node) -> list[str]:
        g, layer = self.g, self.layers[node.name]
        w, b = _folded(self.net, self.lay, self.calibration, layer)
        bits = self.lay.w_bits(self.spec, layer) if self.spec is not None else None
        if bits is None:
            wname = g.const(f"{layer.module}.weight", w.numpy())
        else:
            q = self.params["weights"][layer.module]  # type: ignore[index]
            storage = WeightStorage(bits, q["symmetric"])
            levels = int_weight(w, q["scale"], q["zero_point"], bits, q["symmetric"])
            wq = g.const(f"{layer.module}.weight_quantized", storage.array(levels), None)
            zp = storage.array(np.asarray(q["zero_point"], dtype=np.int64))
            # per channel: 1-D scale and zero point along the output-channel axis 0 (ONNX per-axis)
            wname = g.op("DequantizeLinear", [wq, g.const(f"{layer.module}.weight_scale", q["scale"]),
                                              g.const(f"{layer.module}.weight_zero_point", zp, None)],
                         f"{layer.module}.weight_dq", **({"axis": 0} if isinstance(q["scale"], list) else {}))
        inputs = [self.value(node.args[0]), wname]
        if b is not None:
            inputs.append(g.const(f"{layer.module}.bias", b.numpy()))
        return inputs

    def bn_inputs(self, node: fx.Node) -> list[str]:
        g, m = self.g, self.module(node)
        assert isinstance(m, nn.BatchNorm2d)
        mean, var = self.calibration.bn[str(node.target)]
        gamma = m.weight.detach() if m.weight is not None else torch.ones_like(mean)
        beta = m.bias.detach() if m.bias is not None else torch.zeros_like(mean)
        return [self.value(node.args[0]), g.const(f"{node.target}.weight", gamma.numpy()),
                g.const(f"{node.target}.bias", beta.numpy()), g.const(f"{node.target}.running_mean", mean.numpy()),
                g.const(f"{node.target}.running_var", var.numpy())]


def to_onnx(
    module: nn.Module,
    lay: Layout,
    calibration: Calibration,
    spec: QuantSpec | None,
    input_shape: tuple[int, ...],
    *,
    doc: str = "",
) -> Any:
    """The network as an ONNX model (float when ``spec`` is None or FP32, else QDQ/QCDQ at ``spec``),
    with BatchNorm folded using ``calibration``'s statistics. Input ``input`` (N, C, H, W), output ``logits``.
    Each traced op is written by its emitter in the op table (:mod:`qnas.ops`)."""
    import onnx
    from onnx import TensorProto, helper

    spec = spec if spec is not None and not spec.is_float else None
    params = quant_params(module, lay, calibration, spec) if spec is not None else None
    # Shapes from the engine's own executor on a small batch whose size no other dimension is likely to
    # share, so a reshape that keeps the batch is recognizable; a node fused into a step has its step's shape.
    batch = 3
    steps = prepare(module, lay.graph).shapes(torch.zeros(batch, *input_shape), calibration)
    shapes = {n.name: steps[lay.env[n.name]] for n in lay.graph.nodes if lay.env[n.name] in steps}

    storages = [WeightStorage(q["bits"], q["symmetric"]) for q in (params or {}).get("weights", {}).values()]
    g = _Graph(max([OPSET, *(st.opset for st in storages)]))
    e = _Emitter(g, module, lay, calibration, spec, params, shapes, batch)
    names = e.names
    out_name, out_shape = "", (0,)

    def finish(n: fx.Node, y: str) -> str:
        """The step's fused activation and its output quantization."""
        step = lay.steps[n.name]
        if step.act == "relu":
            y = g.op("Relu", [y], f"{n.name}_relu")
        elif step.act == "relu6":
            y = g.op("Clip", [y, g.const(f"{n.name}_lo", 0.0), g.const(f"{n.name}_hi", 6.0)], f"{n.name}_relu6")
        if params is not None and step.quant and n.name in params["activations"]:
            a = params["activations"][n.name]
            y = g.qdq(y, a["scale"], a["zero_point"], a["bits"], n.name)
        return y

    for n in lay.graph.nodes:
        if n.name not in lay.steps:  # fused into its step (BatchNorm, ReLU): same value
            names[n.name] = names[lay.env[n.name]]
            continue
        if n.op == "placeholder":
            names[n.name] = finish(n, "input")
            continue
        if n.op == "output":
            if not isinstance(n.args[0], fx.Node):
                raise cannot_export(n, "the model must return one tensor")
            out_name, out_shape = e.value(n.args[0]), shapes[n.args[0].name]
            continue
        emit = lookup(n, e.modules).onnx
        if emit is None:
            raise cannot_export(n, "the op table has no ONNX emitter for it")
        names[n.name] = finish(n, emit(e, n))
    if not out_name:
        raise QnasError("the traced model has no output")
    g.nodes.append(helper.make_node("Identity", [out_name], ["logits"]))
    c, h, w = input_shape
    graph = helper.make_graph(
        g.nodes, "qnas", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_shape[-1]])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)], producer_name="qnas",
                              doc_string=doc)
    # The oldest IR version the opset allows: readable by older onnxruntime releases too.
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", g.opset)], True)
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------------
# Checking ONNX against PyTorch


def _session(model: Any, *, fuse_qdq: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # other jobs share the CPU; these graphs are small
    options.inter_op_num_threads = 1
    if not fuse_qdq:
        # Run the graph as written: QuantizeLinear/Clip/DequantizeLinear around float kernels. With QDQ
        # fusion onnxruntime swaps in its integer kernels and re-quantizes the float biases to int32 at
        # scale s_x * s_w, which at 2-4 bits (large scales) changes results: reported, not checked.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _compare(session: Any, reference: list[torch.Tensor], batches: list[torch.Tensor]) -> dict[str, float]:
    max_diff = sum_diff = sum_abs = 0.0
    agree = count = cells = 0
    for xb, ref in zip(batches, reference, strict=True):
        out = torch.from_numpy(session.run(["logits"], {"input": xb.contiguous().numpy()})[0])
        d = (out - ref).abs()
        max_diff = max(max_diff, float(d.max()))
        sum_diff += float(d.sum())
        sum_abs += float(ref.abs().sum())
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        count += len(xb)
        cells += ref.numel()
    return {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / max(cells, 1),
            "mean_abs_logit": sum_abs / max(cells, 1), "top1_agreement": agree / max(count, 1)}


def verify_onnx(model: Any, qmodel: QuantModel, calibration: Calibration, spec: QuantSpec | None,
                images: torch.Tensor, *, batch_size: int = 250) -> dict[str, float]:
    """Run ``model`` in onnxruntime and the PyTorch fake-quant model (frozen ``calibration``) on
    ``images``: max and mean |logit difference|, mean |logit| and the fraction of equal top-1 classes,
    for the graph as written and (``fused_*``) with onnxruntime's default QDQ fusion into integer kernels."""
    batches = list(images.split(batch_size))
    with torch.inference_mode():
        reference = [qmodel(xb, spec, calibration).float() for xb in batches]
    result: dict[str, float] = {"images": float(len(images))}
    result.update(_compare(_session(model, fuse_qdq=False), reference, batches))
    if spec is not None and not spec.is_float:
        fused = _compare(_session(model, fuse_qdq=True), reference, batches)
        result.update({f"fused_{k}": v for k, v in fused.items() if k != "mean_abs_logit"})
    return result


def _check(file: str, spec: QuantSpec | None, r: Mapping[str, float]) -> str | None:
    """Why ``r`` is out of tolerance, or None."""
    if spec is None or spec.is_float:
        if r["max_abs_diff"] > FLOAT_ATOL * max(1.0, r["mean_abs_logit"]) or r["top1_agreement"] < 1.0 - 1e-3:
            return (f"{file} differs from PyTorch: max |diff| {r['max_abs_diff']:.2e}, top-1 agreement "
                    f"{100 * r['top1_agreement']:.2f}%")
        return None
    too_far = r["mean_abs_diff"] > QUANT_MEAN_DIFF * max(r["mean_abs_logit"], 1e-6)
    if r["top1_agreement"] < MIN_TOP1_AGREEMENT or too_far:
        return (f"{file} differs from the PyTorch fake-quant model: top-1 agreement {100 * r['top1_agreement']:.2f}% "
                f"(need {100 * MIN_TOP1_AGREEMENT:.0f}%), mean |diff| {r['mean_abs_diff']:.3g}, "
                f"max |diff| {r['max_abs_diff']:.3g}")
    return None


# ---------------------------------------------------------------------------------------------------
# Writing and reading a model directory


_OWNED = ("arch.json", WEIGHTS_FILE, "quant.json", "model.onnx", "model_int8_qdq.onnx", "README.md")
PARTIAL_PREFIX = ".qnas-partial-"  # a sibling being written; renamed into place when complete


def _owned(path: Path) -> list[Path]:
    return [path / f for f in _OWNED if (path / f).exists()] + sorted(path.glob("model_*_qcdq.onnx"))


def prepare_dir(path: Path, force: bool) -> None:
    """Check that ``path`` can receive an export: refuse a non-empty directory without ``force`` (then
    our files there are replaced) and a place that cannot be written."""
    if path.exists() and not path.is_dir():
        raise QnasError(f"cannot write to {str(path)!r}: it is a file")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise QnasError(f"{str(path)!r} is not empty; pass --force to overwrite the exported files there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f"{PARTIAL_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise QnasError(f"cannot write to {str(path)!r}: {exc.strerror or exc}") from None


def _partial_dir(path: Path) -> Path:
    """A fresh sibling of ``path`` to write into (same file system, so moving it into place is a rename)."""
    tmp = path.parent / f"{PARTIAL_PREFIX}{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    """Publish a complete export: rename ``tmp`` to ``out``, or (``out`` holds other files, --force) replace
    our files there, ``arch.json`` removed first and moved last, so ``load`` never sees a mixed directory."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    stale = _owned(out)
    for f in sorted(stale, key=lambda f: f.name != "arch.json"):
        f.unlink()
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "arch.json"):
        os.replace(f, out / f.name)
    tmp.rmdir()


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, int]  # file name -> bytes
    verification: dict[str, dict[str, float]]  # ONNX file -> verify_onnx() figures
    metrics: dict[str, float] = field(default_factory=dict)  # setting -> top-1 on the test images
    latency_ms: dict[str, float] = field(default_factory=dict)  # ONNX file -> median ms per image, batch 1


@dataclass
class ExportHooks:
    """Progress callbacks: ``on_stage(name, total)`` when a stage starts (``total`` units for a bar, None
    for none), ``on_advance(units)`` as it proceeds."""

    on_stage: Callable[[str, int | None], None] | None = None
    on_advance: Callable[[int], None] | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        if self.on_stage is not None:
            self.on_stage(name, total)

    def advance(self, units: int = 1) -> None:
        if self.on_advance is not None:
            self.on_advance(units)


def measure_latency(models: Mapping[str, Any], *, batch_size: int = 1, rounds: int = 20, runs: int = 10,
                    input_shape: tuple[int, ...] = (1, 28, 28),
                    on_round: Callable[[], None] | None = None) -> dict[str, float]:
    """Median milliseconds per image of each ONNX model (path or ModelProto) in onnxruntime (CPU, one
    thread, default optimizations), timed interleaved (each round runs every model ``runs`` times), so
    a machine's varying load falls on all of them alike."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(m) if isinstance(m, str | Path) else m.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
                for k, m in models.items()}
    x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for sess in sessions.values():  # warm-up
        for _ in range(3):
            sess.run(["logits"], {"input": x})
    for _ in range(rounds):
        for k, sess in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(["logits"], {"input": x})
                times[k].append(time.perf_counter() - t0)
        if on_round is not None:
            on_round()
    return {k: 1000.0 * float(np.median(v)) / batch_size for k, v in times.items()}


def export_model(
    module: nn.Module,
    out_dir: str | Path,
    *,
    arch: Mapping[str, Any],
    input_shape: tuple[int, ...],
    settings: Mapping[str, tuple[QuantSpec, Calibration, str]],
    onnx_settings: tuple[str, ...],
    verify_images: torch.Tensor,
    metrics: Mapping[str, float] | None = None,
    card: Mapping[str, Any] | None = None,
    force: bool = False,
    latency_rounds: int = 20,
    hooks: ExportHooks | None = None,
) -> ExportResult:
    """Write a model directory for ``module`` (BN buffers = the statistics to fold with).

    ``settings``: name -> (spec, frozen calibration, where it comes from) for every quantized setting
    to describe in ``quant.json``; ``onnx_settings``: those also written as ONNX. Every ONNX file is
    checked on ``verify_images``; a mismatch raises :class:`VerificationError` (the files are kept in
    ``out_dir``). ``latency_rounds``: rounds of the batch-1 onnxruntime timing for the model card (0: none).
    Files are written into a hidden sibling directory renamed into place at the end: an interrupted
    export leaves no directory :func:`load` accepts.
    """
    from safetensors.torch import save

    hooks = hooks or ExportHooks()
    out = Path(out_dir)
    prepare_dir(out, force)
    tmp = _partial_dir(out)
    try:
        result, failures = _write_export(module, tmp, out, arch, input_shape, settings, onnx_settings, verify_images,
                                         metrics, card, latency_rounds, hooks, save)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if failures:
        raise VerificationError(failures[0] + f" (files kept in {str(out)!r})")
    return result


def _write_export(module: nn.Module, out: Path, final: Path, arch: Mapping[str, Any], input_shape: tuple[int, ...],
                  settings: Mapping[str, tuple[QuantSpec, Calibration, str]], onnx_settings: tuple[str, ...],
                  verify_images: torch.Tensor, metrics: Mapping[str, float] | None, card: Mapping[str, Any] | None,
                  latency_rounds: int, hooks: ExportHooks, save: Any) -> tuple[ExportResult, list[str]]:
    """The files of :func:`export_model` in ``out`` (to be moved to ``final``), ``arch.json`` last."""
    module.eval()
    qmodel, lay = layout(module)
    stats = bn_stats(module)
    float_cal = Calibration(bn=stats, ranges={}, num_images=0)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    # save() + write_bytes: the file gets the usual permissions (save_file creates it private).
    (out / WEIGHTS_FILE).write_bytes(save(state, metadata={"format": FORMAT, "arch": str(arch.get("arch", ""))}))
    quant = {"format": FORMAT, "version": FORMAT_VERSION,
             "scheme": "real = (q - zero_point) * scale. Weights (after folding BatchNorm with the exported running "
                       "statistics, or with the setting's own 'batchnorm' statistics where it has them) per tensor "
                       "or per output channel (axis 0; 'granularity', lists of scales and zero points): symmetric "
                       "signed where 'symmetric' (zero point 0, q in -(2**(bits-1)-1)..2**(bits-1)-1; int8 at 8 "
                       "bits), else asymmetric unsigned (q in 0..2**bits-1), stored as 'storage' (ONNX int8/uint8, "
                       "int4/uint4 below 8 bits). Activations per tensor, asymmetric uint8 (q in 0..2**bits-1). "
                       "Biases and logits float. 'first_last' says which layers stay at 8 bits",
             "settings": {}}
    for name, (spec, cal, source) in settings.items():
        entry = {**quant_params(module, lay, cal, spec), "source": source}
        if any(not (torch.equal(cal.bn[k][0], m) and torch.equal(cal.bn[k][1], v)) for k, (m, v) in stats.items()):
            # Re-estimated in the network quantized at this setting (the scorer's calibrated protocol).
            entry["batchnorm"] = {k: {"mean": m.tolist(), "var": v.tolist()} for k, (m, v) in cal.bn.items()}
        quant["settings"][name] = entry
    (out / "quant.json").write_text(json.dumps(quant, indent=1) + "\n")

    verification: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    plans: list[tuple[str, QuantSpec | None, Calibration]] = [("model.onnx", None, float_cal)]
    plans += [(onnx_name(s), settings[s][0], settings[s][1]) for s in onnx_settings]
    hooks.stage("writing and checking ONNX files", len(plans))
    models: dict[str, Any] = {}
    for file, spec, cal in plans:
        model = to_onnx(module, lay, cal, spec, input_shape, doc=f"qnas {arch.get('arch', '')} {spec or 'fp32'}")
        (out / file).write_bytes(model.SerializeToString())
        models[file] = model
        verification[file] = verify_onnx(model, qmodel, cal, spec, verify_images)
        why = _check(file, spec, verification[file])
        if why:
            failures.append(why)
        hooks.advance()
    latency: dict[str, float] = {}
    if latency_rounds > 0:
        hooks.stage("timing the ONNX files (onnxruntime, batch 1, one thread)", latency_rounds)
        latency = measure_latency(models, rounds=latency_rounds, input_shape=input_shape,
                                  on_round=hooks.advance)
    (out / "arch.json").write_text(json.dumps(dict(arch), indent=1) + "\n")
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    result = ExportResult(final, files, verification, dict(metrics or {}), latency)
    (out / "README.md").write_text(_model_card(arch, quant, result, card or {}))
    result.files["README.md"] = (out / "README.md").stat().st_size
    return result, failures


def _weight_grids(quant: Mapping[str, Any]) -> str:
    """The weight grids of the settings in ``quant.json``, one clause per kind, as ``quant.json`` records them."""
    grids = sorted({(w["bits"], w["symmetric"], w["granularity"], w["storage"])
                    for entry in quant["settings"].values() for w in entry["weights"].values()}, reverse=True)
    text = "; ".join(f"{bits}-bit {'symmetric (zero point 0)' if sym else 'asymmetric'} per "
                     f"{'output channel' if gran == 'channel' else 'tensor'}, stored as {storage.upper()}"
                     for bits, sym, gran, storage in grids)
    if any(bits == 2 for bits, *_ in grids):
        text += (" (2-bit weights in 4-bit containers: graphs with ONNX's INT2/UINT2 weights do not load in "
                 "onnxruntime 1.32 with its default optimizations)")
    return text or "none (float weights)"


def _model_card(arch: Mapping[str, Any], quant: Mapping[str, Any], result: ExportResult,
                card: Mapping[str, Any]) -> str:
    from qnas.search import size_bytes

    params = int(arch.get("params") or 0)
    where = f" (study `{arch['study']}`, trial {arch['trial']})" if "study" in arch else ""
    rule = next((e["first_last"] for e in quant["settings"].values() if "first_last" in e), "")
    lines = [f"# {arch.get('arch', 'qnas model')}", "",
             f"A {arch.get('space', '')} CNN for {arch.get('dataset', '')} found by qnas{where}.", "",
             f"- parameters: {params:,}", f"- MACs per image: {int(arch.get('macs') or 0):,}",
             f"- weights: {card.get('weights_source', arch.get('weights_source', ''))}",
             *([f"- first/last layers: {rule}"] if rule else []),
             f"- weight grids: {_weight_grids(quant)}", ""]
    if result.metrics:
        lines += ["## Accuracy", "", "| setting | top-1 | weight storage (bytes) | quantizer |", "|---|---|---|---|"]
        for s, acc in result.metrics.items():
            how = quant["settings"].get(s, {}).get("source", "float")
            size = size_bytes(params, s) if params else "-"
            lines.append(f"| {s} | {100 * acc:.2f}% | {size} | {how} |")
        lines += ["", f"Top-1 on {card.get('test_images', '?')} test images with frozen BatchNorm statistics and "
                  "activation ranges (the deployed model). Weight storage: every parameter at the weight "
                  "bit-width, BatchNorm folded.", ""]
    lines += ["## Files", "", "| file | bytes | ms per image | max abs logit diff | top-1 agreement | "
              "with ORT QDQ fusion |", "|---|---|---|---|---|---|"]
    for f, size in result.files.items():
        v = result.verification.get(f)
        fused = f"{100 * v['fused_top1_agreement']:.2f}%" if v and "fused_top1_agreement" in v else "-"
        ms = f"{result.latency_ms[f]:.3f}" if f in result.latency_ms else "-"
        lines.append(f"| {f} | {size:,} | {ms} | " + (f"{v['max_abs_diff']:.3g} | {100 * v['top1_agreement']:.2f}% | "
                                                        f"{fused} |" if v else "- | - | - |"))
    n = int(next(iter(result.verification.values()), {}).get("images", 0))
    lines += ["", f"Each ONNX file was run in onnxruntime on {n} real test images and compared with the PyTorch "
              "fake-quant model (same scales; QDQ fusion off, so the graph runs as written). The last column is "
              "onnxruntime's default: QDQ fused into its integer kernels, biases re-quantized to int32 (an "
              "approximation at 2-4 bits). `quant.json` lists every scale and zero point. Milliseconds per image: "
              "onnxruntime CPU, one thread, batch 1, default optimizations, median of interleaved runs on the "
              "exporting machine (other load on it moves them).", ""]
    mean, std = arch.get("mean", [0.0]), arch.get("std", [1.0])
    c, h, w = arch.get("input_shape", [1, 28, 28])
    first = next(iter(quant["settings"]), "w8a8")
    lines += ["## Loading", "", "```python", "import qnas", f"model = qnas.load({str(result.out_dir)!r})  "
              "# torch.nn.Module in eval mode", "", "from qnas.export import load_quantized",
              f"qmodel, calibration, spec = load_quantized({str(result.out_dir)!r}, {first!r})",
              "logits = qmodel(x, spec, calibration)   # the fake-quant model the ONNX files were checked against",
              "```", "", "```python", "import numpy as np, onnxruntime as ort",
              "sess = ort.InferenceSession('model_int8_qdq.onnx')",
              f"x = (images_uint8.astype(np.float32) / 255 - {mean}) / {std}  # N x {c} x {h} x {w}",
              "logits = sess.run(['logits'], {'input': x.astype(np.float32)})[0]", "```", ""]
    return "\n".join(lines)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise QnasError(f"{str(path.parent)!r} is not a qnas export: {path.name} is missing") from None
    except json.JSONDecodeError as exc:
        raise QnasError(f"{str(path)!r} is not valid JSON ({exc.msg})") from None


def load(path: str | Path) -> nn.Module:
    """The exported PyTorch module (built from ``arch.json``, weights from ``model.safetensors``), in eval mode."""
    from search_spaces import get_space

    path = Path(path)
    arch = _read_json(path / "arch.json")
    try:
        space = get_space(arch["space"])
        genome = space.from_json(arch["genome"])
        module = space.build(genome, tuple(arch["input_shape"]), int(arch["num_classes"]))
    except KeyError as exc:
        raise QnasError(f"{str(path / 'arch.json')!r} lacks {exc}") from None
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise QnasError(f"{str(path)!r} is not a qnas export: {WEIGHTS_FILE} is missing")
    load_weights(module, weights, "the export is damaged; export it again with --force",
                 "the architecture in arch.json")
    return module.eval()


def load_weights(module: nn.Module, path: Path, remedy: str, what: str = "the architecture") -> None:
    """Load the safetensors file ``path`` into ``module`` (every tensor, strictly); a one-line QnasError naming
    the file and ending in ``remedy`` when it is not safetensors or its tensors do not fit ``what``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:  # text, a torch.save file, a truncated or unreadable file
        raise QnasError(f"{str(path)!r} is not a readable safetensors file ({_first_line(exc)}); {remedy}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch's first line only names the module; the second says which tensors are wrong
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        why = why if len(why) <= 120 else why[:117] + "..."
        raise QnasError(f"{str(path)!r} does not fit {what} ({why}); {remedy}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:  # a diverged finetuning: no quantizer or ONNX file can describe NaN or inf
        raise QnasError(f"{str(path)!r} holds NaN or inf (in {bad[0]}{' and others' if len(bad) > 1 else ''}); "
                        f"{remedy}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_quantized(path: str | Path, setting: str | None = None) -> tuple[QuantModel, Calibration, QuantSpec]:
    """The exported fake-quant model at ``setting`` (default: the first in quant.json): call it as
    ``qmodel(x, spec, calibration)``; it gives the outputs the ONNX files were checked against."""
    path = Path(path)
    module = load(path)
    quant = _read_json(path / "quant.json")
    available = list(quant.get("settings", {}))
    name = setting or (available[0] if available else None)
    if name is None or name not in quant["settings"]:
        raise QnasError(f"{str(path)!r} has no quantization parameters for {setting!r} (has {', '.join(available)})")
    entry = quant["settings"][name]
    ranges = {k: (float(v["range"][0]), float(v["range"][1])) for k, v in entry["activations"].items()}
    spec = QuantSpec.parse(entry["spec"])
    bn = bn_stats(module)
    if "batchnorm" in entry:
        bn = {k: (torch.tensor(v["mean"], dtype=torch.float32), torch.tensor(v["var"], dtype=torch.float32))
              for k, v in entry["batchnorm"].items()}
    return prepare(module), Calibration(bn=bn, ranges=ranges, num_images=0), spec


# ---------------------------------------------------------------------------------------------------
# Exporting trials of a study


METRIC_SETTINGS = SETTINGS  # the model card reports every scored setting
DEFAULT_TEST_SIZE = 1000  # model-card accuracies: a quick estimate; --test-size 10000 for the full test set


# Modules export imports; they are the optional dependency group "export".
EXPORT_MODULES = ("safetensors", "onnx", "onnxruntime")


def require_dependencies() -> None:
    """QnasError naming the export dependencies that are not installed."""
    import importlib.util

    missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise QnasError(f"qnas export needs {', '.join(missing)}: pip install 'qnas[export]' (or pip install "
                        f"{' '.join(missing)})")


def _pick_run(record: Mapping[str, Any], target: str | None) -> dict[str, Any] | None:
    runs = record.get("runs", {})
    if not runs:
        return None
    if target in runs:
        return runs[target]
    return max(runs.values(), key=lambda r: r.get("finished", ""))


def export_trial(
    study: Any,
    trial: Any,
    out_dir: Path,
    *,
    dataset: Any,
    bits: str | None = None,
    predictor: Any = None,
    root: Path = Path("studies"),
    verify_size: int = 1000,
    test_size: int | None = DEFAULT_TEST_SIZE,
    force: bool = False,
    first_last_bits: int | str | None = "study",
    latency_rounds: int = 20,
    hooks: ExportHooks | None = None,
) -> ExportResult:
    """Export one trial: its FAQ-finetuned weights (``qnas finetune``) when there are some, else the
    predictor's parameters calibrated without training, with the last layer solved as the study scored it
    (where it scored with the fitted head: ``qnas.readout``, at the exported setting). ``bits`` (a target
    setting such as ``w4a4``) selects the sub-8-bit QCDQ file; default: the finetuned setting, else the study's
    target.
    ``test_size``: test images of the model card's accuracies (None: all). ``first_last_bits``: the
    first/last-layer rule (:func:`qnas.quant.first_last_rule`: 8 or None); ``"study"``: the finetuned run's,
    else the study's ``first_last_bits`` attribute, else ``FIRST_LAST_BITS``."""
    from qnas.data import normalize
    from qnas.finetune import (
        accuracy,
        initial_module,
        random_subset,
        read_record,
        record_path,
        set_bn_stats,
    )
    from qnas.readout import Readout, head_step, solve_head
    from qnas.study import StudyAttrs, TrialAttrs, study_target
    from search_spaces import get_space

    hooks = hooks or ExportHooks()
    info = dataset.info
    searched, attrs = StudyAttrs.from_attrs(study.user_attrs), TrialAttrs.of(trial)
    space_name = searched.space
    space = get_space(space_name)
    genome = space.from_json(attrs.genome)
    record = read_record(record_path(root, study.study_name, trial.number))
    run = _pick_run(record, bits)
    target = bits or (run["setting"] if run else study_target(study))
    spec = QuantSpec.parse(target)
    head_setting = spec.name  # where a solved last layer is solved: the setting scored (FP32 for an FP32 study)
    target = "w8a8" if spec.is_float else spec.name  # a study searched at FP32: its quantized file is the int8 one
    prepare_dir(Path(out_dir), force)  # fail early, before any computation

    if run is not None:
        module = space.build(genome, tuple(info.input_shape), info.num_classes)
        weights = record_path(root, study.study_name, trial.number).with_name(run["weights"])
        if not weights.exists():
            raise QnasError(f"finetuned weights {str(weights)!r} are missing; run `qnas finetune` again")
        load_weights(module, weights, f"re-run `qnas finetune` for trial {trial.number} with --restart",
                     f"trial {trial.number}'s architecture")
        trained = FIRST_LAST_BITS if run["config"].get("first_last_8bit", True) else None
        if first_last_bits != "study" and parse_first_last_bits(first_last_bits) != trained:
            raise QnasError(f"trial {trial.number} was finetuned with first/last layers at "
                            f"{trained or 'the setting'}'s bits; export it with that rule (or finetune again)")
        fl_bits = trained
        granularity = str(run["config"].get("granularity", "tensor"))  # records before the field: per tensor
        source = (f"FAQ-finetuned at {run['setting']} for {run['config']['epochs']} epochs from "
                  f"{run['source']}")
    else:
        if predictor is None:
            raise QnasError(f"trial {trial.number} was not finetuned and no predictor is available; run "
                            "`qnas finetune` first or pass --predictor")
        module, init_source = initial_module(space, genome, info, "ghn", predictor, target)
        fl_bits = searched.first_last_bits if first_last_bits == "study" else parse_first_last_bits(first_last_bits)
        granularity = searched.granularity
        source = f"{init_source}, not finetuned (post-training quantization)"
    module.eval()
    qmodel, lay = layout(module)
    idx = random_subset(len(dataset.train_labels), None, 0)[:320]
    calib_x = normalize(dataset.train_images[idx], info)
    names = list(dict.fromkeys([*METRIC_SETTINGS[1:], target]))
    fit_size = searched.fit_size if run is None else None  # a finetuned run trained its own last layer
    hooks.stage("calibrating", len(names) + (run is None) + (fit_size is not None))
    if run is None:
        set_bn_stats(module, calibrate(qmodel, calib_x).bn)  # float statistics
        hooks.advance()

    def spec_of(name: str) -> QuantSpec:
        return first_last_rule(replace(QuantSpec.parse(name), granularity=granularity), fl_bits)

    reusable: Calibration | None = None  # the head setting's, measured before the head was solved, where still valid
    if fit_size is not None:
        # The search scored the GHN's parameters with the last layer solved on labelled training images
        # (qnas.readout); export that head, solved at the exported setting, rather than the GHN's own.
        head_calibration = calibrate(qmodel, calib_x, spec=spec_of(head_setting))
        readout = Readout.from_dataset(dataset, fit_size, seed=0)
        step = head_step(qmodel)
        if step is None or not step.quant:  # float logits: no range or BN statistic depends on the solved head
            reusable = head_calibration
        if solve_head(module, qmodel, spec_of(head_setting), head_calibration, readout):
            source += f"; last layer solved at {head_setting} on {len(readout.labels):,} training images"
        hooks.advance()
    stats = bn_stats(module)

    settings: dict[str, tuple[QuantSpec, Calibration, str]] = {}
    for name in names:
        spec = spec_of(name)
        if run is not None and run["setting"] == name:
            ranges = {k: (float(v[0]), float(v[1])) for k, v in run["ranges"].items()}
            cal = Calibration(bn=stats, ranges=ranges, num_images=0)
            settings[name] = (spec, cal, "FAQ-finetuned (training ranges)")
        else:
            # Not trained at this setting: calibrate it as the search scored it (BN statistics and
            # activation ranges measured in the quantized network, the engine's range rule), which beats FAQ's
            # float-network percentiles at W2A2 (benchmarks/activation_ranges.py).
            cal = reusable if reusable is not None and name == head_setting else calibrate(qmodel, calib_x, spec=spec)
            settings[name] = (spec, cal, f"post-training (calibrated quantized, {spec.spelled_out().name})")
        hooks.advance()
    n_test = len(dataset.test_labels) if test_size is None else min(test_size, len(dataset.test_labels))
    test_x, test_y = normalize(dataset.test_images[:n_test], info), dataset.test_labels[:n_test]
    hooks.stage(f"top-1 on {n_test:,} test images", len(settings) + 1)
    metrics = {"fp32": accuracy(qmodel, Calibration(bn=stats, ranges={}, num_images=0), None, test_x, test_y)}
    hooks.advance()
    for name, (spec, cal, _) in settings.items():
        metrics[name] = accuracy(qmodel, cal, spec, test_x, test_y)
        hooks.advance()
    arch = {"format": FORMAT, "version": FORMAT_VERSION, "space": space_name, "genome": attrs.genome,
            "arch": space.to_string(genome) if attrs.arch is None else attrs.arch, "dataset": info.name,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes, "mean": list(info.mean),
            "std": list(info.std), "class_names": list(info.class_names), "study": study.study_name,
            "trial": trial.number, "params": attrs.params, "macs": attrs.macs,
            "weights_source": source, "target": target, "first_last_bits": fl_bits or "same"}
    onnx_settings = tuple(dict.fromkeys(["w8a8", target]))
    verify_x = normalize(dataset.test_images[:verify_size], info)
    return export_model(module, out_dir, arch=arch, input_shape=tuple(info.input_shape), settings=settings,
                        onnx_settings=onnx_settings, verify_images=verify_x, metrics=metrics,
                        card={"test_images": n_test, "weights_source": source}, force=True,
                        latency_rounds=latency_rounds, hooks=hooks)


# `qnas.export(...)` calls the API function qnas.api.export; the module's own names stay reachable.
make_callable(__name__)
