"""Why ground truth v2 trains the way it does: two choices of ``benchmarks/ground_truth.py``, measured.

    OMP_NUM_THREADS=1 python benchmarks/ground_truth_recipe.py        # ~15 CPU-minutes

1. **Init of nets without BatchNorm.** Two ``bn_free`` nets of the v2 table trained at budget k10e1
   from PyTorch's default init and from it followed by ``qnas.train.unit_variance_init`` (what the
   trainer now does for nets without BN): validation top-1 (500 images) after training.
2. **FAQ learning rate from a trained start.** Two ``id`` nets trained at k10e1, then FAQ-finetuned for
   one epoch over the same 10,000 images at W4A4 and W2A2 with learning rates 0.05 (``qnas finetune``'s
   default, made for GHN-predicted starts), 0.01 and 0.002: test top-1 (2,000 images) before (FAQ's
   calibrated start) and after.

Last line: ``bnfree_default=<mean top-1> bnfree_unit_variance=<mean> faq_best_lr_w4a4=<lr> faq_best_lr_w2a2=<lr>``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchcli import ArgumentParser, run  # noqa: E402
from ground_truth import BUDGETS, DATASET, SPACE, balanced  # noqa: E402

from qnas import data  # noqa: E402
from qnas.finetune import FAQConfig, finetune  # noqa: E402
from qnas.train import reset_parameters, train, unit_variance_init  # noqa: E402
from search_spaces import get_space  # noqa: E402

BN_FREE = ("stem16-16:sep5,mb1k3-avgpool-16:dil3+r,sep3+r-convs2-256:sep3-fc0-nobn",
           "stem16-8:mb1k5-avgpool-16:mb6k5-avgpool-32:mb1k3,mb3k5+r,mb1k3,dil3-fc64-nobn")
WITH_BN = ("stem8-48:dil5-maxpool-16:mb1k3+r-avgpool-32:mb3k3+r-fc128",
           "stem16-24:dil3+r-convs2-16:sep5,mb6k5-maxpool-32:sep3,mb3k3,mb3k5+r-fc128")
LRS = (0.05, 0.01, 0.002)


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    torch.set_num_threads(1)
    space = get_space(SPACE)
    full = data.load_dataset(DATASET)
    info = full.info
    budget = BUDGETS["k10e1"]
    x, y = balanced(full.train_images, full.train_labels, budget.images, info.num_classes)
    ds = dataclasses.replace(full, train_images=x, train_labels=y)
    tx, ty = balanced(full.test_images, full.test_labels, 2000, info.num_classes)
    test = (data.normalize(tx, info), ty)
    calib = data.normalize(x[:256], info)

    print("1. nets without BatchNorm, budget k10e1: validation top-1 (500 images)")
    init_scores: dict[str, list[float]] = {"default": [], "unit_variance": []}
    for arch in BN_FREE:
        for init in init_scores:
            module = space.build(space.from_string(arch), info.input_shape, info.num_classes)
            reset_parameters(module, 0)
            if init == "unit_variance":
                unit_variance_init(module, calib)
            r = train(module, ds, budget.epochs, seed=0, batch_size=budget.batch_size, lr=budget.lr, reset=False,
                      val_size=500, val_every=0, test=False)
            loss = r.history[-1].train_loss if r.history else float("nan")
            init_scores[init].append(r.val["fp32"]["top1"])
            print(f"  {init:14s} top-1 {r.val['fp32']['top1']:.3f} train loss {loss:.3f}  {arch}", flush=True)

    print("2. FAQ from a net trained at k10e1, one epoch over its 10,000 images: test top-1 (2,000 images)")
    faq: dict[tuple[str, float], list[float]] = {}
    for arch in WITH_BN:
        module = space.build(space.from_string(arch), info.input_shape, info.num_classes)
        train(module, ds, budget.epochs, seed=0, batch_size=budget.batch_size, lr=budget.lr, val_size=500,
              val_every=0, test=False)
        trained = {k: v.clone() for k, v in module.state_dict().items()}
        for setting in ("w4a4", "w2a2"):
            for lr in LRS:
                module.load_state_dict(trained)
                res = finetune(module, ds, FAQConfig(setting=setting, epochs=1, train_size=None, lr=lr, seed=0),
                               eval_data=test)
                faq.setdefault((setting, lr), []).append(res.after[setting])
                print(f"  {setting} lr {lr:<6g} before {res.before[setting]:.3f} after {res.after[setting]:.3f}  "
                      f"{arch}", flush=True)
    best = {s: max(LRS, key=lambda lr, s=s: np.mean(faq[(s, lr)])) for s in ("w4a4", "w2a2")}
    print(f"bnfree_default={np.mean(init_scores['default']):.3f} "
          f"bnfree_unit_variance={np.mean(init_scores['unit_variance']):.3f} "
          f"faq_best_lr_w4a4={best['w4a4']:g} faq_best_lr_w2a2={best['w2a2']:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
