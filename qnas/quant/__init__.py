"""Fake quantization, BatchNorm folding and a quantized executor for any traceable CNN.

    spec = QuantSpec.parse("w4a8")
    qmodel = prepare(module)                  # trace once per architecture; same parameter names
    logits = qmodel(x, spec)                  # BatchNorm on batch statistics (GHN-Q), differentiable
    logits = torch.func.functional_call(qmodel, params, (x, spec))   # external parameters (a GHN's)
    logits = qmodel(x, spec, params=params)   # the same, without functional_call's per-call cost
    calib = calibrate(qmodel, images, params=params)
    logits = qmodel(x, spec, calib)           # frozen BN statistics and activation ranges (int8-like)
    qmodel.program                            # the compiled steps: where it quantizes (finetune, export)

The private modules read top to bottom: ``_spec`` (settings, the first/last-layer rule), ``_fake``
(the quantizer, weight and activation quantization parameters, BatchNorm folding), ``_program``
(compiling a traced module, through the op table :mod:`qnas.ops`, into a program of :class:`Step`),
``_model`` (:class:`QuantModel`, the executor, and calibration). Each one's docstring details its part.
"""

from qnas.quant._fake import (
    f32,
    fake_quantize,
    fold_bn,
    percentile,
    qparams,
    quantize_activation,
    quantize_weight,
    weight_levels,
    weight_qparams,
)
from qnas.quant._model import (
    Calibration,
    QuantModel,
    calibrate,
    calibrate_with_logits,
    channels_last_unsafe,
    prepare,
)
from qnas.quant._program import STEP_KINDS, Ref, Step
from qnas.quant._spec import (
    DEFAULT_SETTINGS,
    FIRST_LAST_BITS,
    FLOAT_BITS,
    LOW_BIT_ACT_PERCENTILE,
    LOW_BITS,
    MAX_BITS,
    MIN_BITS,
    MODES,
    SETTINGS,
    SYMMETRIC_WEIGHT_BITS,
    QuantSpec,
    describe_first_last,
    engine_setting,
    first_last_rule,
    layer_bits,
    parse_first_last_bits,
    parse_specs,
    setting_names,
    with_granularity,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "FIRST_LAST_BITS",
    "FLOAT_BITS",
    "LOW_BITS",
    "LOW_BIT_ACT_PERCENTILE",
    "MAX_BITS",
    "MIN_BITS",
    "MODES",
    "SETTINGS",
    "STEP_KINDS",
    "SYMMETRIC_WEIGHT_BITS",
    "Calibration",
    "QuantModel",
    "QuantSpec",
    "Ref",
    "Step",
    "calibrate",
    "calibrate_with_logits",
    "channels_last_unsafe",
    "describe_first_last",
    "engine_setting",
    "f32",
    "fake_quantize",
    "first_last_rule",
    "fold_bn",
    "layer_bits",
    "parse_first_last_bits",
    "parse_specs",
    "percentile",
    "prepare",
    "qparams",
    "quantize_activation",
    "quantize_weight",
    "setting_names",
    "weight_levels",
    "weight_qparams",
    "with_granularity",
]
