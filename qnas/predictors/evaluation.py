"""GHN-Q's Table 1 for a predictor: accuracy of predicted parameters on held-out architectures.

    table = evaluate_predictor(load_predictor("fashion-mnist"), ds, n=20)
    # `qnas eval-predictor` prints it as a table

For every architecture of the chosen splits (``id``, ``deep``, ``wide``, ``bn_free`` of the search
space, and ``user``: the hand-written networks of ``qnas.user_split``; the first ``n`` of each, in
committed order), the GHN predicts the parameters for each bit setting and
``qnas.score.evaluate`` measures top-1/top-5 on a fixed subset of the *test* set. The ``random``
column evaluates the same architectures with PyTorch's default initialization (seeded), the floor
any predictor must beat. Cells aggregate over architectures as mean, standard error and max; the
``user`` split is also summarized per family (``families``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from qnas.errors import QnasError
from qnas.graph import batch_graphs, to_graph
from qnas.predictors import Predictor

__all__ = [
    "RANDOM_COLUMN",
    "SPLITS",
    "SPLIT_TITLES",
    "TEST_SUBSET_SEED",
    "check_record",
    "evaluate_predictor",
    "format_cell",
    "record_eval_table",
    "record_losses",
    "split_networks",
    "test_subset",
]

SPLITS: tuple[str, ...] = ("id", "deep", "wide", "bn_free", "user")
SPLIT_TITLES = {"id": "ID", "deep": "OOD-Deep", "wide": "OOD-Wide", "bn_free": "OOD-BN-Free", "user": "User nets"}
USER_SPLIT = "user"  # hand-written networks (qnas.user_split), not search-space genomes
RANDOM_COLUMN = "random"
TEST_SUBSET_SEED = 0


def test_subset(ds: Any, n: int | None, seed: int = TEST_SUBSET_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test images (normalized) and labels, fixed by (n, seed); ``None``/0: the whole test set."""
    from qnas.data import normalize

    total = len(ds.test_labels)
    if not n:
        idx = torch.arange(total)
    elif not 0 < n <= total:
        raise QnasError(f"test subset size must be between 1 and {total}, got {n}")
    else:
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return normalize(ds.test_images[idx], ds.info), ds.test_labels[idx].clone()


def _summary(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "sem": sem, "max": max(values), "n": n}


def split_networks(space: Any, split: str, n: int | None, info: Any) -> list[tuple[str, str, Callable[[], Any]]]:
    """(architecture name, family, builder) of a split's first ``n`` networks (nothing is built yet)."""
    from qnas import user_split

    if split == USER_SPLIT:
        return [(user_split.PREFIX + name, user_split.family(name),
                 lambda name=name: user_split.build(name, info.input_shape, info.num_classes))
                for name in user_split.names(info.input_shape)[: n or None]]
    return [(space.to_string(g), "", lambda g=g: space.build(g, info.input_shape, info.num_classes))
            for g in space.load_split(split)[: n or None]]


def evaluate_predictor(
    predictor: Predictor,
    ds: Any,
    *,
    splits: Sequence[str] = SPLITS,
    n: int | None = None,
    settings: str | Sequence[str] = ("fp32", "w8a8", "w4a8", "w4a4", "w2a2"),
    bn_stats: str | None = None,
    images: int | None = 1000,
    floor: bool = True,
    seed: int = 0,
    head: str | None = None,
    fit_size: int | None = None,
    on_arch: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Table 1 of GHN-Q for ``predictor`` on dataset ``ds`` (a loaded ``qnas.data.Dataset``).

    Returns plain JSON: ``table[setting][column][metric]`` = {mean, sem, max, n} of accuracies as
    fractions (columns: the splits, then ``random`` pooled over all architectures when ``floor``),
    and ``architectures``: one record per architecture with its accuracies. ``on_arch(split, arch)``
    is called after each architecture (progress bars). ``head="fit"`` (the scoring default) solves every
    network's last layer on ``fit_size`` (default: as many as test images) labelled training images
    (``qnas.readout``), in both columns: the floor is then random features with a fitted head, the bar the
    GHN's features must clear.
    """
    from qnas.defaults import DEFAULT_BN_STATS, DEFAULT_HEAD, HEADS
    from qnas.predictors import check_compatible
    from qnas.quant import parse_specs, prepare
    from qnas.readout import head_label, make_readout
    from qnas.score import evaluate
    from search_spaces import get_space

    info, header = ds.info, predictor.header
    check_compatible(header, dataset=info.name, input_shape=info.input_shape, num_classes=info.num_classes)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise QnasError(f"unknown split(s) {', '.join(unknown) or '(none)'} (choose from {', '.join(SPLITS)})")
    head = head or DEFAULT_HEAD
    if head not in HEADS:
        raise QnasError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    specs = parse_specs(settings)
    names = [s.name for s in specs]
    bn_stats = bn_stats or DEFAULT_BN_STATS
    space = get_space(header.search_space)
    x, y = test_subset(ds, images)
    readout = make_readout(ds, head, fit_size, default=len(y))
    ghn = predictor.ghn.eval()
    conditioned = ghn.config.bit_conditioning
    records: list[dict[str, Any]] = []
    with torch.no_grad():
        for split in splits:
            for i, (arch, family, make) in enumerate(split_networks(space, split, n, info)):
                with torch.random.fork_rng(devices=[]):  # the random floor: default init, seeded per arch
                    torch.manual_seed(seed * 1_000_003 + i)
                    module = make()
                graph = to_graph(module, info.input_shape, ghn.config.s_max)
                # One GHN call for all settings (one dict shared by all when not bit-conditioned).
                batch = [graph] * len(specs) if conditioned else [graph]
                preds = ghn(batch_graphs(batch), specs if conditioned else "fp32")
                by_name = dict(zip(names, preds, strict=True)) if conditioned else dict.fromkeys(names, preds[0])
                qmodel = prepare(module)
                record = {"split": split, "arch": arch, **({"family": family} if family else {}),
                          "params": sum(p.numel() for p in module.parameters()),
                          "ghn": evaluate(qmodel, lambda spec, d=by_name: d[spec.name], x, y, specs,
                                          bn_stats=bn_stats, seed=seed, readout=readout)}
                if floor:
                    record[RANDOM_COLUMN] = evaluate(qmodel, None, x, y, specs, bn_stats=bn_stats, seed=seed,
                                                     readout=readout)
                records.append(record)
                if on_arch is not None:
                    on_arch(split, arch)

    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name in names:
        row: dict[str, dict[str, dict[str, float]]] = {}
        for split in splits:
            rs = [r for r in records if r["split"] == split]
            if rs:
                row[split] = {m: _summary([r["ghn"][name][m] for r in rs]) for m in ("top1", "top5")}
        if floor and records:
            row[RANDOM_COLUMN] = {m: _summary([r[RANDOM_COLUMN][name][m] for r in records]) for m in ("top1", "top5")}
        table[name] = row
    families = sorted({r["family"] for r in records if "family" in r})
    by_family = {f: {name: {m: _summary([r["ghn"][name][m] for r in records if r.get("family") == f])
                            for m in ("top1", "top5")} for name in names} for f in families}
    return {
        "predictor": {"name": header.name, "dataset": header.dataset, "train_steps": header.train_steps,
                      "bits_trained": list(header.bits_trained), "path": str(predictor.path or "")},
        "dataset": info.name,
        "test_images": len(y),
        "test_subset_seed": TEST_SUBSET_SEED,
        "bn_stats": bn_stats,
        "head": head_label(readout),
        "settings": names,
        "splits": list(splits),
        "table": table,
        "families": by_family,
        "architectures": records,
    }


def format_cell(cell: dict[str, float] | None) -> str:
    """``mean ± sem; max`` in percent, as in GHN-Q's Table 1."""
    if not cell:
        return "-"
    return f"{100 * cell['mean']:.1f} ± {100 * cell['sem']:.1f}; {100 * cell['max']:.1f}"


def record_eval_table(path: str | Any, result: dict[str, Any], command: str, *, force: bool = False) -> dict[str, Any]:
    """Write ``result`` (of :func:`evaluate_predictor`) into the checkpoint's header as its ``eval_table``.

    Rows are merged by setting into a table measured the same way (same splits, architectures per split,
    test images, BN statistics), so settings evaluated in separate runs add up; a row measured another way
    replaces the whole table, which is refused (QnasError) when the new one covers less (:func:`record_losses`)
    unless ``force``. Each row keeps the command that measured it. The checkpoint and its .json header are
    replaced atomically. Returns the new table.
    """
    from qnas.predictors import read_header, update_header

    how = {k: result[k] for k in ("dataset", "test_images", "test_subset_seed", "bn_stats", "splits")}
    how["head"] = result.get("head", "keep")  # tables from before the fitted head were measured with the GHN's
    how["archs_per_split"] = {c: next(iter(result["table"].values()))[c]["top1"]["n"]
                              for c in result["splits"]}
    old = dict(read_header(path).eval_table or {})
    if not force:
        _refuse_losses(path, record_losses(old, how, list(result["table"])))
    same = _same_measurement(old, how)
    rows = dict(old.get("rows", {})) if same else {}
    for setting, row in result["table"].items():
        rows[setting] = {"command": command, **row}
    table = {**how, "rows": rows}
    update_header(path, eval_table=table)
    return table


def _same_measurement(old: Mapping[str, Any], how: Mapping[str, Any]) -> bool:
    # Tables recorded before the head was a choice were measured with the GHN's own ("keep").
    return all(old.get(k, "keep" if k == "head" else None) == v for k, v in how.items())


def record_losses(old: Mapping[str, Any], how: Mapping[str, Any], settings: Sequence[str]) -> list[str]:
    """What replacing the recorded eval table ``old`` (a header's ``eval_table``) by a table measured as ``how``
    (its fields: ``test_images``, ``splits``, ``archs_per_split``, ...) with rows ``settings`` would lose, one
    phrase each; empty when nothing is lost: no table yet, a table measured the same way (rows merge), or a
    new one covering every split and setting with at least as many architectures and test images. Fields
    missing from ``how`` are not known yet and count as the same."""
    rows = old.get("rows")
    if not isinstance(rows, dict) or not rows or _same_measurement(old, how):
        return []
    lost: list[str] = []
    old_splits = old.get("splits") if isinstance(old.get("splits"), list) else []
    gone = [str(x) for x in old_splits if x not in how.get("splits", old_splits)]
    if gone:
        lost.append(f"splits {','.join(gone)} missing")
    old_archs, new_archs = old.get("archs_per_split"), how.get("archs_per_split")
    if isinstance(old_archs, dict) and isinstance(new_archs, dict):
        fewer = [f"{x} {new_archs[x]} < {n}" for x, n in old_archs.items()
                 if x in new_archs and isinstance(n, int) and new_archs[x] < n]
        if fewer:
            lost.append(f"fewer architectures per split ({', '.join(fewer)})")
    old_images, new_images = old.get("test_images"), how.get("test_images")
    if isinstance(old_images, int) and isinstance(new_images, int) and new_images < old_images:
        lost.append(f"fewer test images ({new_images} < {old_images})")
    missing = [str(x) for x in rows if x not in settings]
    if missing:
        lost.append(f"settings {','.join(missing)} missing")
    return lost


def _refuse_losses(path: Any, lost: Sequence[str]) -> None:
    if lost:
        raise QnasError(f"{str(path)!r}: --record would replace its evaluation table with one that covers less "
                        f"({'; '.join(lost)}); pass --force to replace it anyway")


def check_record(path: str | Any, ds: Any, space: Any, *, splits: Sequence[str], n: int | None,
                 settings: Sequence[str], images: int | None, bn_stats: str | None) -> None:
    """Before evaluating: the QnasError :func:`record_eval_table` would raise for the table these arguments
    of :func:`evaluate_predictor` measure (so a refused --record wastes no evaluation). The head is not known
    until then: a table differing in it only is checked when recorded."""
    from qnas.defaults import DEFAULT_BN_STATS
    from qnas.predictors import read_header

    old = dict(read_header(path).eval_table or {})
    how = {"dataset": ds.info.name, "test_images": images or len(ds.test_labels), "test_subset_seed": TEST_SUBSET_SEED,
           "bn_stats": bn_stats or DEFAULT_BN_STATS, "splits": list(splits),
           "archs_per_split": {x: len(split_networks(space, x, n, ds.info)) for x in splits}}
    _refuse_losses(path, record_losses(old, how, list(settings)))
