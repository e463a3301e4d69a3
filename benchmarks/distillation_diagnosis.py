"""Why does distillation help or hurt the student? Validation-only diagnosis of the crd recipe.

Trains the x2 student from the same trained ``lr`` checkpoint with several distillation recipes,
each for the same number of steps, and prints, on the VALIDATION pairs only (never the test pairs),
the student's validation Dice at step 0 (= lr's) and along the way, and the two loss terms'
magnitudes and gradient norms at the first and last checkpoint. The recipes:

- ``old``: what crd-bench's crd used before (Adam 1e-3 as the unsupervised methods, no decay,
  half of the pairs augmented), flow + attention MSE;
- ``authors``: the authors' released student recipe (crd/recipes.py: Adam 1e-4 halved at 60, 80
  and 100 % of the steps, every pair augmented, clipping 1.0), flow + attention MSE = ``crd``;
- ``flow-only`` / ``attn-only``: ``authors`` with one term weighted 0 (``crd-flow``, ``crd-attn``);
- ``kd-hr``: ``authors`` distilled from the full-resolution ``hr`` instead of the FST.

Usage (after the default DAG has trained hr, lr and fst)::

    python benchmarks/distillation_diagnosis.py --data data/synth --models results/synth/seed0/models \\
        --iterations 200 --every 25 --out diagnosis/

Runs two recipes at a time, one thread each (2 cores). Writes each student and its history under
``--out`` and prints one table.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crd.recipes import DISTILLATION  # noqa: E402
from crd.tidy import load_history  # noqa: E402
from crd.train import TrainSettings, history_path, train  # noqa: E402

STUDENT = {"kind": "lowres", "width": 1.0, "factor": 2}
OLD = {"lr": 1e-3, "lr_decay_at": [], "augment_probability": 0.5, "grad_clip": 1.0, "flow_weight": 1.0,
       "attention_weight": 1.0}  # fmt: skip
RECIPES = {
    "old": (OLD, "fst"),
    "authors": (DISTILLATION, "fst"),
    "flow-only": ({**DISTILLATION, "attention_weight": 0.0}, "fst"),
    "attn-only": ({**DISTILLATION, "flow_weight": 0.0}, "fst"),
    "kd-hr": (DISTILLATION, "hr"),
}


def _run(name: str, args: argparse.Namespace) -> Path:
    recipe, teacher = RECIPES[name]
    settings = TrainSettings.from_dict({**recipe, "iterations": args.iterations, "checkpoint_every": args.every,
                                        "val_pairs": args.val_pairs, "seed": args.seed})  # fmt: skip
    return train(args.data, args.out / f"{name}.pt", method=name, model_config=STUDENT, objective="distill",
                 settings=settings, init=args.models / "lr.pt", teacher=args.models / f"{teacher}.pt",
                 threads=1, progress=False, log_file=args.out / f"{name}.log")  # fmt: skip


def _row(name: str, history: pd.DataFrame) -> dict[str, object]:
    at = history.set_index(["iteration", "metric"])["value"]
    its = sorted(history["iteration"].unique())
    first, last = its[1], its[-1]
    dice = history[history.metric == "val_dice"].set_index("iteration")["value"]
    return {
        "recipe": name,
        "val Dice @0": round(at[0, "val_dice"], 4),
        f"@{first}": round(at[first, "val_dice"], 4),
        "best": f"{dice.max():.4f} @{int(dice.idxmax())}",
        f"@{last}": round(at[last, "val_dice"], 4),
        f"flow MSE @{first}/@{last}": f"{at[first, 'flow_mse']:.3g} / {at[last, 'flow_mse']:.3g}",
        f"attn MSE @{first}/@{last}": f"{at[first, 'attention_mse']:.3g} / {at[last, 'attention_mse']:.3g}",
        f"|g flow| @{first}": f"{at[first, 'grad_norm_flow']:.3g}",
        f"|g attn| @{first}": f"{at[first, 'grad_norm_attention']:.3g}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="dataset folder (canonical layout)")
    p.add_argument("--models", type=Path, required=True, help="folder holding the trained hr.pt, lr.pt and fst.pt")
    p.add_argument("--out", type=Path, required=True, help="folder for the students and their histories")
    p.add_argument("--iterations", type=int, default=200, help="steps per recipe (default 200)")
    p.add_argument("--every", type=int, default=25, help="validate every this many steps (default 25)")
    p.add_argument("--val-pairs", type=int, default=4, help="validation pairs scored (default 4; synth has 12)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="recipes to run")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=2) as pool:
        outs = dict(zip(args.recipes, pool.map(_run, args.recipes, [args] * len(args.recipes)), strict=True))
    rows = [_row(name, load_history(history_path(out))) for name, out in outs.items()]
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
