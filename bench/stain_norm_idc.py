"""Does stain normalisation help the default recipe under stain shift? (issue 23, item 3)

Takes pairs of finished training runs of one recipe, with and without ``--stain-norm``, one
pair per seed, and sweeps each pair over the validation patients with every shift family of
``python -m core robustness``. Prints, per family and strength, the mean (and spread over
seeds) of each recipe's AUC, balanced accuracy, ECE and flipped calls, the paired AUC difference
per seed with its 95 % CI (Obuchowski's clustered DeLong: patients are the unit), and each
recipe's largest AUC drop. Writes everything as JSON.

    python bench/stain_norm_idc.py --runs runs --data ../shared/data/real/idc \\
        [--seeds 0 1 2] [--with macenko] [--split valid] [--bootstrap 200] [--out FILE]

Run names: ``<runs>/idc-none-s<seed>`` and ``<runs>/idc-<with>-s<seed>``, each with a best.pt
(train them with ``python -m core train --data … --out runs/idc-none-s0 --seed 0`` and the same
with ``--stain-norm macenko``). The validation patients are the runs' own (split seed 0 unless
the runs say otherwise); no run saw them in training, though early stopping and calibration did.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import open_dataset  # noqa: E402
from core.robustness import SHIFTS, robustness_sweep  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--with", dest="norm", default="macenko", choices=["macenko", "reinhard"])
    p.add_argument("--split", default="valid")
    p.add_argument("--shifts", nargs="+", default=list(SHIFTS))
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--n", type=int, default=None, help="a seeded sample of the split (all)")
    p.add_argument("--out", type=Path, default=Path("bench/out/stain_norm_idc.json"))
    args = p.parse_args()

    recipes = {"none": "none", args.norm: args.norm}
    rows, paired, summaries = [], [], []
    for seed in args.seeds:
        paths = {r: args.runs / f"idc-{r}-s{seed}" / "best.pt" for r in recipes}
        missing = [str(path) for path in paths.values() if not path.is_file()]
        if missing:
            sys.exit(f"missing run checkpoint(s): {', '.join(missing)}")
        config = json.loads((paths["none"].parent / "config.json").read_text())
        ds = open_dataset(args.data, seed=config.get("split_seed", 0))
        for family in args.shifts:
            start = time.perf_counter()
            sweep = robustness_sweep(
                [paths["none"], paths[args.norm]],
                ds,
                args.split,
                family,
                n=args.n,
                n_boot=args.bootstrap,
            )
            recipe_of = {
                name: next(r for r, path in paths.items() if Path(p_) == path)
                for name, p_ in sweep.checkpoints.items()
            }
            table = sweep.table.assign(
                recipe=sweep.table["model"].map(recipe_of), seed=seed, family=family
            )
            rows.append(table)
            paired.append(
                sweep.paired.assign(
                    a=sweep.paired["model_a"].map(recipe_of),
                    b=sweep.paired["model_b"].map(recipe_of),
                    seed=seed,
                    family=family,
                )
            )
            summaries.append(
                {
                    "seed": seed,
                    "family": family,
                    "summary": sweep.summary,
                    "notes": sweep.notes,
                    "n": sweep.n,
                    "unit": sweep.ci_unit,
                }
            )
            print(
                f"seed {seed} {family}: {time.perf_counter() - start:.0f} s, n={sweep.n}, "
                f"unit {sweep.ci_unit}. {sweep.summary}",
                flush=True,
            )

    table = pd.concat(rows, ignore_index=True)
    report(table, pd.concat(paired, ignore_index=True), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "split": args.split,
                "seeds": args.seeds,
                "table": json.loads(table.to_json(orient="records")),
                "paired": json.loads(pd.concat(paired).to_json(orient="records")),
                "summaries": summaries,
            },
            indent=1,
        )
    )
    print(f"\nwritten: {args.out}")


def report(table: pd.DataFrame, paired: pd.DataFrame, args) -> None:
    table = table.assign(
        strength=table["strength"].astype(object).where(table["strength"].notna(), "unshifted")
    )
    for family, rows in table.groupby("family", sort=False):
        print(f"\n## {family} ({SHIFTS[family].label}); {args.split} split, seeds {args.seeds}")
        print("mean over seeds (sd) — AUC | balanced accuracy | ECE | flipped calls")
        stats = rows.groupby(["strength", "recipe"], sort=False)[
            ["auc", "balanced_accuracy", "ece", "flip_share"]
        ].agg(["mean", "std"])
        for (strength, recipe), r in stats.iterrows():
            print(
                f"  {str(strength):>9} {recipe:>8}: AUC {r['auc', 'mean']:.3f} "
                f"({r['auc', 'std']:.3f}) | BA {r['balanced_accuracy', 'mean']:.3f} "
                f"({r['balanced_accuracy', 'std']:.3f}) | ECE {r['ece', 'mean']:.3f} | "
                f"flips {r['flip_share', 'mean']:.1%}"
            )
        drops = []
        for (seed, recipe), r in rows.groupby(["seed", "recipe"]):
            base = r.loc[r["strength"] == "unshifted", "auc"].iloc[0]
            drops.append(
                {
                    "seed": seed,
                    "recipe": recipe,
                    "worst_drop": base - r.loc[r["strength"] != "unshifted", "auc"].min(),
                }
            )
        worst = pd.DataFrame(drops).groupby("recipe")["worst_drop"].agg(["mean", "std", "max"])
        print("largest AUC drop from unshifted, over the strengths (mean, sd, max over seeds):")
        for recipe, r in worst.iterrows():
            print(f"  {recipe:>8}: {r['mean']:.3f} ({r['std']:.3f}), max {r['max']:.3f}")
        pr = paired[paired["family"] == family]
        sig = pr[(pr["low"] > 0) | (pr["high"] < 0)]
        print(
            f"paired AUC differences ({pr['a'].iloc[0]} − {pr['b'].iloc[0]}), "
            f"{len(sig)} of {len(pr)} (seed × strength) exclude 0; mean {pr['auc_diff'].mean():+.3f},"
            f" range {pr['auc_diff'].min():+.3f} … {pr['auc_diff'].max():+.3f}"
        )


if __name__ == "__main__":
    main()
