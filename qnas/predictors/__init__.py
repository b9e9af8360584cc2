"""Parameter predictors by name: shipped GHN checkpoints, checkpoint files, or ``random``.

    load_predictor("fashion-mnist")             # qnas/predictors/fashion-mnist.pt, shipped
    load_predictor("runs/ghn-step5000.pt")      # any checkpoint file
    load_predictor("random", seed=0)            # an untrained GHN: tests and the random floor

A checkpoint is a ``.pt`` file holding only tensors, strings and numbers, read with
``torch.load(weights_only=True)`` so a crafted file cannot run code, with a JSON header stating its
contract (dataset, input shape, classes, normalization, search space, GHN config, bit-widths
trained, training steps, evaluation table). ``save_predictor`` writes the same header beside it as
``<name>.json`` so people and tools can read it without loading weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qnas import __version__
from qnas.errors import QnasError
from qnas.ghn import FP32, GHN, Bits, GHNConfig, parse_bits, predict, predict_many
from qnas.graph import ArchGraph, GraphCache, to_graph

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RANDOM",
    "Predictor",
    "PredictorHeader",
    "available_predictors",
    "check_compatible",
    "default_predictor",
    "ghn_init",
    "load_predictor",
    "random_predictor",
    "read_header",
    "resolve_predictor_name",
    "save_predictor",
    "update_header",
    "weights_digest",
]

FORMAT = "qnas-ghn"
FORMAT_VERSION = 1
RANDOM = "random"
_DIR = Path(__file__).parent


@dataclass(frozen=True)
class PredictorHeader:
    """The contract of a checkpoint; every field is plain JSON."""

    name: str
    dataset: str | None  # None: not tied to a dataset (an untrained GHN)
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    search_space: str = "convnets250k"
    ghn_config: dict[str, Any] = field(default_factory=dict)
    bits_trained: tuple[str, ...] = ()
    families: tuple[str, ...] = ()  # qnas.families drawn in training besides the space (what it has seen)
    train_steps: int = 0
    eval_table: dict[str, Any] = field(default_factory=dict)
    qnas_version: str = __version__
    format_version: int = FORMAT_VERSION
    notes: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PredictorHeader:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError(f"expected a JSON object, found {type(d).__name__}")
            known = {f.name for f in fields(cls)}
            d = {k: v for k, v in d.items() if k in known}  # newer optional fields are ignored
            for key in ("input_shape", "mean", "std", "bits_trained", "families"):
                if d.get(key) is not None:
                    if not isinstance(d[key], list):
                        raise TypeError(f"{key} must be a list, found {d[key]!r}")
                    d[key] = tuple(d[key])
            header = cls(**d)
            header.check_types()
            return header
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise QnasError(f"bad predictor header: {exc}") from None

    def check_types(self) -> None:
        """TypeError naming the first field whose JSON type is wrong (so later comparisons cannot crash)."""
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        checks = {
            "name": isinstance(self.name, str),
            "dataset": self.dataset is None or isinstance(self.dataset, str),
            "input_shape": all(is_int(v) and v > 0 for v in self.input_shape),
            "num_classes": is_int(self.num_classes) and self.num_classes > 0,
            "mean": self.mean is None or all(isinstance(v, (int, float)) for v in self.mean),
            "std": self.std is None or all(isinstance(v, (int, float)) for v in self.std),
            "search_space": isinstance(self.search_space, str),
            "ghn_config": isinstance(self.ghn_config, dict),
            "bits_trained": all(isinstance(v, str) for v in self.bits_trained),
            "families": all(isinstance(v, str) for v in self.families),
            "train_steps": is_int(self.train_steps),
            "eval_table": isinstance(self.eval_table, dict),
            "qnas_version": isinstance(self.qnas_version, str),
            "format_version": is_int(self.format_version),
            "notes": isinstance(self.notes, str),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise TypeError(f"field {bad[0]!r} has the wrong type ({getattr(self, bad[0])!r})")


@dataclass
class Predictor:
    """A GHN with its header; ``predict``/``predict_many`` use the header's input shape."""

    ghn: GHN
    header: PredictorHeader
    path: Path | None = None

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the GHN's weights (what rankers and feature tables are tied to), see :func:`weights_digest`."""
        return weights_digest(self.ghn.state_dict())

    def predict(self, target: nn.Module | ArchGraph, bits: str | Bits = "fp32", *, cache: GraphCache | None = None,
                key: str | None = None) -> dict[str, torch.Tensor]:
        return predict(self.ghn, target, bits, input_shape=self.header.input_shape, cache=cache, key=key)

    def predict_many(self, targets: Sequence[nn.Module | ArchGraph], bits="fp32", *, cache: GraphCache | None = None,
                     keys: Sequence[str | None] | None = None) -> list[dict[str, torch.Tensor]]:
        return predict_many(self.ghn, targets, bits, input_shape=self.header.input_shape, cache=cache, keys=keys)


def available_predictors() -> list[str]:
    """Names of the shipped checkpoints, plus ``random``."""
    return sorted(p.stem for p in _DIR.glob("*.pt")) + [RANDOM]


def default_predictor(dataset: str) -> str | None:
    """The shipped checkpoint trained on ``dataset``, if any (read from the JSON headers only)."""
    for name in sorted(p.stem for p in _DIR.glob("*.pt")):
        sidecar = _DIR / f"{name}.json"
        if sidecar.exists() and PredictorHeader.from_json(sidecar.read_text()).dataset == dataset:
            return name
    return None


def resolve_predictor_name(predictor: str | None, dataset: str) -> str:
    """``predictor`` when given, else the shipped checkpoint for ``dataset`` (QnasError when there is none):
    the one rule every command and function uses for a default predictor."""
    if predictor:
        return predictor
    name = default_predictor(dataset)
    if name is None:
        raise QnasError(f"no shipped predictor for dataset {dataset!r}; pass --predictor PATH.pt (train one with "
                        "`qnas train-predictor`) or --predictor random")
    return name


def random_predictor(
    *,
    seed: int = 0,
    config: GHNConfig | None = None,
    dataset: str | None = None,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int | None = None,
) -> Predictor:
    """An untrained GHN, initialized from ``seed`` without touching the global RNG."""
    config = config or GHNConfig(num_classes=num_classes or 10)
    if num_classes is not None and num_classes != config.num_classes:
        raise QnasError(f"num_classes {num_classes} differs from the GHN config's {config.num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ghn = GHN(config)
    header = PredictorHeader(
        name=RANDOM, dataset=dataset, input_shape=tuple(int(d) for d in input_shape),
        num_classes=config.num_classes, ghn_config=config.to_dict(), notes=f"untrained, seed {seed}",
    )
    return Predictor(ghn.eval(), header)


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a GHN's weights (names, dtypes, shapes, values), not over the file: recording an eval
    table or renaming rewrites the header, and must not orphan the ranker fitted on these weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_predictor(path: str | Path, ghn: GHN, header: PredictorHeader) -> Path:
    """Write ``path`` (.pt: tensors + header string) and ``path`` with suffix .json (the header)."""
    path = Path(path)
    if path.suffix != ".pt":
        raise QnasError(f"predictor checkpoints end in .pt, got {path.name!r}")
    if header.ghn_config != ghn.config.to_dict():
        raise QnasError("header.ghn_config does not match the GHN being saved")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ghn.state_dict().items()}
    _write_checkpoint(path, header, state)
    return path


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` to a temporary file beside ``path``, then rename it over ``path``: an interrupted or failed
    write leaves the old file whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_checkpoint(path: Path, header: PredictorHeader, state: Mapping[str, torch.Tensor]) -> None:
    """The .pt (tensors and header) and its .json header, each replaced atomically."""
    _write_atomic(path, lambda tmp: torch.save({"format": FORMAT, "header": header.to_json(), "state_dict": state},
                                               tmp))
    _write_atomic(path.with_suffix(".json"), lambda tmp: tmp.write_text(header.to_json() + "\n"))


def update_header(name_or_path: str | Path, **changes: Any) -> PredictorHeader:
    """Rewrite a checkpoint's header (e.g. ``eval_table=`` after evaluating it), weights untouched."""
    from dataclasses import replace

    path = _resolve(name_or_path)
    header, state = _read(path)
    header = replace(header, **changes)
    _write_checkpoint(path, header, state)
    return header


def _resolve(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    shipped = _DIR / f"{text}.pt"
    if "/" not in text and shipped.exists():
        return shipped
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise QnasError(
        f"unknown predictor {text!r}: not a shipped name ({', '.join(available_predictors())}) nor a checkpoint file"
    )


def _read(path: Path) -> tuple[PredictorHeader, dict[str, torch.Tensor]]:
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it is about to refuse: noise before our one line
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            # weights_only: the unpickler admits tensors and plain containers only, so no code runs.
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for unsafe content, RuntimeError/EOFError for junk
        if "weights only load failed" in str(exc).lower():
            # torch's own advice (weights_only=False) would run the file's code: never repeat it
            raise QnasError(f"{str(path)!r}: not a qnas predictor checkpoint (it holds objects a safe load refuses; "
                            "qnas never unpickles arbitrary code)") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QnasError(f"refusing to load predictor {str(path)!r}: not a plain-tensor checkpoint ({reason})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("header"), str):
        raise QnasError(f"{str(path)!r} is not a qnas predictor checkpoint")
    header = PredictorHeader.from_json(blob["header"])
    if header.format_version > FORMAT_VERSION:
        raise QnasError(f"{str(path)!r} has format version {header.format_version}; this qnas reads up to "
                        f"{FORMAT_VERSION} (upgrade qnas)")
    state = blob.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QnasError(f"{str(path)!r} has no GHN weights")
    return header, state


def read_header(name_or_path: str | Path) -> PredictorHeader:
    """The header of a shipped or saved checkpoint (from its JSON sidecar when present)."""
    path = _resolve(name_or_path)
    sidecar = path.with_suffix(".json")
    if sidecar.exists():
        return PredictorHeader.from_json(sidecar.read_text())
    return _read(path)[0]


def check_compatible(
    header: PredictorHeader,
    *,
    dataset: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> None:
    """Raise QnasError when a predictor was made for other data than requested."""
    where = f"predictor {header.name!r}"
    if dataset is not None and header.dataset is not None and header.dataset != dataset:
        raise QnasError(f"{where} was trained on {header.dataset}, not {dataset}; choose a predictor for {dataset}")
    if input_shape is not None and tuple(input_shape) != tuple(header.input_shape):
        raise QnasError(f"{where} expects inputs of shape {tuple(header.input_shape)}, not {tuple(input_shape)}")
    if num_classes is not None and num_classes != header.num_classes:
        raise QnasError(f"{where} predicts {header.num_classes} classes, not {num_classes}")


def load_predictor(
    name_or_path: str | Path = RANDOM,
    *,
    dataset: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Predictor:
    """A predictor by shipped name, path, or ``random``; checked against the requested data.

    ``dataset``/``input_shape``/``num_classes``, when given, must match the checkpoint's header
    (QnasError otherwise). For ``random`` they describe the data it will be used on.
    """
    if str(name_or_path) == RANDOM:
        pred = random_predictor(seed=seed, dataset=dataset, input_shape=input_shape or (1, 28, 28),
                                num_classes=num_classes)
        pred.ghn.to(device)
        return pred
    path = _resolve(name_or_path)
    header, state = _read(path)
    check_compatible(header, dataset=dataset, input_shape=input_shape, num_classes=num_classes)
    try:
        ghn = GHN(GHNConfig.from_dict(header.ghn_config))
        ghn.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise QnasError(f"{str(path)!r}: GHN weights do not match its config ({str(exc).splitlines()[0]})") from None
    return Predictor(ghn.to(device).eval(), header, path)


# ----------------------------------------------------------------------------- `--init ghn` for qnas.score


@functools.lru_cache(maxsize=4)
def _cached_predictor(name: str, dataset: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> Predictor:
    # A search scores thousands of candidates with one predictor: load the checkpoint once.
    return load_predictor(name, dataset=dataset, input_shape=input_shape, num_classes=num_classes, seed=seed)


def ghn_init(
    module: nn.Module, arg: str, *, dataset: Any, seed: int = 0, cache: GraphCache | None = None,
    key: str | None = None, **_: Any,
) -> Callable[[Any], Mapping[str, torch.Tensor]]:
    """``--init ghn[:PREDICTOR]`` for ``qnas.score.init_params``: a ``spec -> parameters`` callable.

    ``dataset`` is a loaded ``qnas.data.Dataset``, a ``DatasetInfo`` or a dataset name; PREDICTOR
    defaults to the shipped checkpoint for that dataset. A bit-conditioned GHN predicts per
    setting (memoized); an unconditioned one returns the same dict for every setting, so
    ``evaluate`` calibrates once.
    """
    from qnas.data import dataset_info

    info = getattr(dataset, "info", dataset)
    if isinstance(info, str):
        info = dataset_info(info)
    if info is None:
        raise QnasError("--init ghn needs a dataset (its input shape and classes select the predictor)")
    name = arg or default_predictor(info.name)
    if name is None:
        raise QnasError(f"no shipped predictor for {info.name}; use --init ghn:PATH.pt or --init ghn:random")
    pred = _cached_predictor(name, info.name, tuple(info.input_shape), info.num_classes, seed)
    graph = to_graph(module, info.input_shape, pred.ghn.config.s_max, cache=cache, key=key)
    from qnas.coverage import check_graph

    # layers it never saw: warned, never a silent chance score
    check_graph(graph, pred.header.search_space, families=pred.header.families)
    memo: dict[Bits, Mapping[str, torch.Tensor]] = {}

    def params(spec: Any) -> Mapping[str, torch.Tensor]:
        bits = parse_bits(spec) if pred.ghn.config.bit_conditioning else FP32
        if bits not in memo:
            with torch.no_grad():
                memo[bits] = pred.predict(graph, bits)
        return memo[bits]

    return params
