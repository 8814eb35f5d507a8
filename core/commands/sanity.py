"""`python -m core sanity --checkpoint CKPT --data PATH [--split test] [--methods …] [--n 16]
[--seeds 0 1 2] [--mode cascading|independent|both] [--target tumour] [--road]
[--shuffled CKPT] [--json]`.

Can I trust these maps? Runs core.sanity's randomisation test on ``--n`` patches of the split
(half tumour where both classes exist, seeded), prints each method's similarity curve, verdict
and the rule, the localisation scores, Kendall's τ between score rankings and the notes. With
``--shuffled`` (a checkpoint of the same recipe trained with ``--shuffle-labels``; found among
the runs when not given) it adds the data randomisation test. Results are cached on disk.
"""

from __future__ import annotations

import json

from core.data.registry import MAX_SEED
from core.evaluate import SPLITS

MODE_CHOICES = ("cascading", "independent", "both")


def register(sub) -> None:
    # defaults are core.sanity's, resolved in run: importing it here would load torch for
    # every command (`python -m core data summary` stays light)
    p = sub.add_parser("sanity", help="can I trust these maps? randomisation sanity checks")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--data", required=True, help="dataset folder (pcam, hcd or idc layout)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="CAM methods (default: every method but ScoreCAM and AblationCAM, which run one "
        "forward pass per channel at every depth)",
    )
    p.add_argument("--n", type=int, default=None, help="patches in the sample (default 16)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="randomisation seeds (0 1 2)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the patch sample")
    p.add_argument("--mode", default="cascading", choices=MODE_CHOICES)
    p.add_argument(
        "--target", default="tumour", help="class every map explains: tumour, normal or pred"
    )
    p.add_argument("--road", action="store_true", help="add ROAD to the score agreement (slow)")
    p.add_argument("--shuffled", default=None, help="shuffled-label checkpoint of the same recipe")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from core.checkpoints import load_checkpoint
    from core.commands.evaluate import open_data, tqdm_progress
    from core.errors import InputError

    if not 0 <= args.sample_seed <= MAX_SEED:
        raise InputError(f"--sample-seed {args.sample_seed}: use 0 to {MAX_SEED}")
    ds = open_data(args.data, [args.checkpoint])
    loaded = load_checkpoint(args.checkpoint)
    result = _check(args, ds, loaded, tqdm_progress("sanity"))
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0


def _check(args, ds, loaded, progress) -> dict:
    from core import sanity
    from core.errors import InputError

    methods = args.methods or sanity.DEFAULT_METHODS
    n = sanity.DEFAULT_PATCHES if args.n is None else args.n
    seeds = args.seeds or sanity.DEFAULT_SEEDS
    split = None if args.split == "all" else args.split
    indices = sanity.pick_indices(ds, split, n, args.sample_seed)
    if not len(indices):
        raise InputError(f"{ds.root}: split {args.split!r} has no labelled patches to check")
    sample = sanity.dataset_sample(ds, indices)
    modes = sanity.MODES if args.mode == "both" else (args.mode,)
    report = sanity.sanity_check(
        loaded,
        sample,
        methods,
        modes,
        seeds,
        args.target,
        road=args.road,
        label=loaded.path.name,
        progress=progress,
    )
    result = report_json(report, sample.description)
    shuffled = _shuffled_checkpoint(args, loaded)
    if shuffled is None:
        result["data_randomisation"] = None
        result["notes"].append(
            "Data randomisation test not run: train the same recipe with --shuffle-labels, "
            "then pass its best.pt as --shuffled."
        )
    else:
        table = sanity.data_randomisation(loaded, shuffled, sample, methods, args.target)
        result["data_randomisation"] = {
            "checkpoint": str(shuffled.path),
            "rows": _records(table[table["metric"] == "abs_spearman"]),
        }
    return result


def _shuffled_checkpoint(args, loaded):
    from core.checkpoints import load_checkpoint
    from core.sanity import shuffled_label_checkpoint, shuffled_label_run

    if args.shuffled:
        return load_checkpoint(args.shuffled)
    path = shuffled_label_checkpoint(shuffled_label_run(loaded.card))
    return None if path is None else load_checkpoint(path)


def report_json(report, description: str) -> dict:
    from core.sanity import PASS_MAX_ABS_RHO, VERDICT_RULE

    return {
        "model": report.model,
        "sample": description,
        "rule": VERDICT_RULE,
        "threshold_abs_rho": PASS_MAX_ABS_RHO,
        "verdicts": _records(report.verdicts),
        "curves": _records(report.curves),
        "scores": _records(report.scores),
        "agreement": _records(report.agreement),
        "scores_disagree": report.disagreement,
        "notes": list(report.notes),
    }


def _records(table) -> list[dict]:
    """Rows as JSON-able dicts (NaN -> null)."""
    return json.loads(table.to_json(orient="records"))


def format_text(result: dict) -> str:
    import pandas as pd

    from core.sanity import KENDALL_WARN_BELOW, UNIFORM_CENTRE_SHARE

    curves = pd.DataFrame(result["curves"])
    rho = curves[curves["metric"] == "abs_spearman"]
    lines = [f"{result['model']} on {result['sample']}"]
    for mode, group in rho.groupby("mode", sort=False):
        if mode == "—":
            continue
        stages = group.drop_duplicates("depth").set_index("depth")["stage"]
        table = group.pivot_table(index="method", columns="depth", values="mean", sort=False)
        table[0] = rho[rho["depth"] == 0].set_index("method")["mean"]
        table = table[sorted(table.columns)]
        lines += [
            f"\nmean |Spearman ρ| to the trained map, {mode} randomisation "
            f"(depth: {', '.join(f'{d} {s}' for d, s in stages.items())}; 0: trained again)",
            table.to_string(float_format="{:.2f}".format),
        ]
    verdicts = pd.DataFrame(result["verdicts"])[
        ["method", "end_abs_rho", "low", "high", "seed_min", "seed_max", "verdict", "note"]
    ]
    lines += [
        f"\nverdict: {result['rule']}",
        verdicts.to_string(index=False, float_format="{:.2f}".format),
    ]
    if result["scores"] and len(result["scores"][0]) > 1:  # more than the method names
        scores = pd.DataFrame(result["scores"]).to_string(index=False, float_format="{:.3f}".format)
        lines += [f"\nscores (centre ninth of a uniform map: {UNIFORM_CENTRE_SHARE:.3f})", scores]
    if result["agreement"]:
        lines += [
            "\nKendall's τ between the scores' rankings of the methods"
            + (
                f" — they disagree (τ < {KENDALL_WARN_BELOW}): no method is best here"
                if result["scores_disagree"]
                else ""
            ),
            pd.DataFrame(result["agreement"]).to_string(index=False, float_format="{:.2f}".format),
        ]
    data = result.get("data_randomisation")
    if data:
        lines += [
            f"\ndata randomisation ({data['checkpoint']}): |ρ| to the shuffled-label model's maps",
            pd.DataFrame(data["rows"])[["method", "mean", "low", "high", "verdict"]].to_string(
                index=False, float_format="{:.2f}".format
            ),
        ]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
