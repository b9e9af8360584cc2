"""Accuracy of a CNN at several quantization settings on a fixed validation subset.

    x, y = data.val_subset(ds, 1000, seed=0)
    acc = evaluate(module, params, x, y, ["fp32", "w8a8", "w4a4"])
    acc["w4a4"]["top1"]

``params`` is a dict keyed like ``module.named_parameters()`` (missing keys fall back to the module's
own tensors), ``None`` for the module's own parameters, or a callable ``spec -> dict`` when the
parameters depend on the setting (a bit-conditioned GHN). ``init_params`` produces them by name
(``random``, ``trained:EPOCHS``, ``ghn``; ``qnas.inits``).

Two BatchNorm modes (see ``qnas.quant``):

* ``batch``: BN statistics and activation ranges of every test batch (GHN-Q's protocol, batch 64; a
  conv with BN runs twice per quantized setting; results move by ~1 point with the batch size).
* ``calibrated`` (default): statistics and ranges measured once per setting on ``calib_size`` images
  in the network quantized at that setting, then frozen: a deployable int8 network (BN folded once,
  fixed ranges), batch-independent, one conv per layer, close to ``batch`` at every setting and with the
  same ranking of nets, unlike statistics of the *float* network (classic PTQ); figures in docs/scoring.md.
  The default calibration is the first batch of the evaluation images (64, GHN-Q's batch size): its
  logits from the calibration pass are its scores, so calibration costs one extra float conv per BN
  layer on one batch per setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qnas.callable_module import make_callable
from qnas.defaults import BN_MODES, DEFAULT_BN_STATS, DEFAULT_CALIB_SIZE
from qnas.errors import QnasError
from qnas.quant import DEFAULT_SETTINGS, QuantModel, QuantSpec, calibrate_with_logits, parse_specs, prepare
from qnas.readout import Readout, fit_head

__all__ = ["BN_MODES", "DEFAULT_BN_STATS", "DEFAULT_CALIB_SIZE", "Params", "evaluate"]


Params = Mapping[str, torch.Tensor] | Callable[[QuantSpec], Mapping[str, torch.Tensor]] | None


def evaluate(
    module: nn.Module,
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    specs: str | Iterable[str | QuantSpec] = DEFAULT_SETTINGS,
    *,
    bn_stats: str = DEFAULT_BN_STATS,
    batch_size: int = 64,
    calib_images: torch.Tensor | None = None,
    calib_size: int = DEFAULT_CALIB_SIZE,
    channels_last: bool = True,
    seed: int = 0,
    readout: Readout | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1 and top-5 accuracy (fractions) and mean cross-entropy of ``module`` on normalized ``images``
    for each setting: ``{setting: {"top1", "top5", "loss"}}``.

    ``module`` may be a :class:`QuantModel` from ``prepare`` (reuse it to skip tracing). In
    ``calibrated`` mode the statistics come from ``calib_images`` (all of them), by default the first
    ``calib_size`` of ``images`` (a held-out subset, so this uses no more test information than batch
    statistics do). ``seed`` drives the noise of ``-noise`` settings. Runs under ``torch.inference_mode``.
    ``readout``: replace the last layer's parameters by a head solved per setting on its labelled images
    (``qnas.readout``; the other parameters stay as given).
    """
    if bn_stats not in BN_MODES:
        raise QnasError(f"bn_stats must be one of {', '.join(BN_MODES)}, got {bn_stats!r}")
    if batch_size <= 0 or calib_size <= 0:
        raise QnasError("batch size and calibration size must be positive")
    if images.dim() < 2 or len(images) != len(labels) or len(images) == 0:
        raise QnasError(f"need a non-empty batch of images with one label each, got {tuple(images.shape)} "
                        f"images and {tuple(labels.shape)} labels")
    model = module if isinstance(module, QuantModel) else prepare(module)
    spec_list = parse_specs(specs if not isinstance(specs, QuantSpec) else [specs])
    memory_format = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    # The default calibration set is exactly the first evaluation batch: score it from the calibration pass.
    reuse = calib_images is None and calib_size == batch_size and n >= batch_size
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        x = images.contiguous(memory_format=memory_format)
        batches = list(zip(x.split(batch_size), labels.split(batch_size), strict=True))
        cx = x[:calib_size] if calib_images is None else calib_images
        for spec in spec_list:
            p = params(spec) if callable(params) else params
            calibration, done = None, []
            if bn_stats == "calibrated":
                calibration, calib_logits = calibrate_with_logits(model, cx, spec, p, batch_size, channels_last,
                                                                  generator)
            if readout is not None:
                p = fit_head(model, p, spec, calibration, readout, generator=generator, channels_last=channels_last)
                if calibration is not None:  # ranges after the head (a pooled conv head's) were the GHN head's
                    calibration, calib_logits = calibrate_with_logits(model, cx, spec, p, batch_size,
                                                                      channels_last, generator)
            if calibration is not None and reuse:
                done = calib_logits
            cache: dict[Any, Any] = {}
            top1 = top5 = 0
            loss = 0.0
            for i, (xb, yb) in enumerate(batches):
                if i < len(done):
                    logits = done[i]
                else:
                    logits = model(xb, params=p, spec=spec, calibration=calibration, cache=cache,
                                   generator=generator, channels_last=channels_last)
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = top == yb[:, None]
                top1 += int(hit[:, 0].sum())
                top5 += int(hit.any(1).sum())
                loss += float(F.cross_entropy(logits.double(), yb, reduction="sum"))
            results[spec.name] = {"top1": top1 / n, "top5": top5 / n, "loss": loss / n}
    return results


def __getattr__(name: str) -> Any:
    # init_params moved to qnas.inits (it trains, and training evaluates: no score <-> train import cycle).
    if name == "init_params":
        import importlib

        return importlib.import_module("qnas.inits").init_params
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# `qnas.score(...)` calls the API function qnas.api.score; the module's own names stay reachable.
make_callable(__name__)
