"""`python -m core compare --checkpoints A.pt B.pt --data PATH [--split test] [--json]`.

Prints one row of metrics per checkpoint and the paired tests between them (with `--json`, one
object keyed by checkpoint path). Predictions are read from the cache when present.
"""

from __future__ import annotations

import json

from core.commands.evaluate import (
    add_evaluation_arguments,
    open_inputs,
    prediction_options,
    tqdm_progress,
)
from core.evaluate import REPORTED_METRICS

TABLE_COLUMNS = ["n", "threshold", *REPORTED_METRICS]


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare checkpoints on the same dataset split")
    p.add_argument("--checkpoints", nargs="+", required=True, help="two or more checkpoints")
    add_evaluation_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from core.catalogue import card_conformal, card_thresholds, model_names
    from core.compare import evaluate_checkpoints, metrics_json
    from core.errors import InputError
    from core.evaluate import labelled

    if len(args.checkpoints) < 2:
        raise InputError("give at least two --checkpoints to compare")
    ds = open_inputs(args, args.checkpoints)
    preds = evaluate_checkpoints(
        args.checkpoints,
        ds,
        split=args.split,
        progress=tqdm_progress("compare"),
        **prediction_options(args),
    )
    if all(labelled(p).empty for p in preds.values()):  # as evaluate says it
        raise InputError(f"{ds.root}: split {args.split!r} has no labelled patches to compare")
    from_card = args.threshold is None
    thresholds = card_thresholds(args.checkpoints) if from_card else args.threshold
    by_name = metrics_json(
        preds,
        thresholds,
        n_boot=args.bootstrap,
        seed=args.seed,
        conformal=card_conformal(args.checkpoints),
    )
    for row in by_name.values():
        row["threshold_source"] = "card" if from_card else "cli"
    names = dict(zip(model_names(args.checkpoints), args.checkpoints, strict=True))
    if args.json:
        print(json.dumps({names[n]: row for n, row in by_name.items()}, indent=2))
    else:
        print(format_table(by_name, args))
    return 0


def format_table(by_name: dict, args) -> str:
    import pandas as pd

    from core.display import interval_text, p_text
    from core.metrics import format_ci

    table = pd.DataFrame({name: row for name, row in by_name.items()}).T[TABLE_COLUMNS]
    table = table.apply(pd.to_numeric).astype({"n": int})
    table["auc_ci95"] = [format_ci(row["auc_ci95"]) for row in by_name.values()]
    lines = [
        f"{args.data} [{args.split}] threshold "
        + ("from each card" if args.threshold is None else str(args.threshold)),
        table.to_string(float_format="{:.4f}".format),
        "AUC 95% CI:",
        *(f"  {name}: {interval_text(row['auc_ci'])}" for name, row in by_name.items()),
        *conformal_lines(by_name),
        "Paired tests, A vs B: b = patches A gets right and B wrong, c = the reverse; "
        "AUC diff = AUC A − AUC B:",
    ]
    seen = set()
    for name, row in by_name.items():
        for other, test in row["paired"].items():
            if (other, name) in seen:
                continue
            seen.add((name, other))
            parts = [
                f"{p_text(test['mcnemar_test'], test['mcnemar_p'])} "
                f"(b={test['a_right_b_wrong']}, c={test['a_wrong_b_right']})"
            ]
            if test.get("delong_p") is not None:
                parts.append(
                    f"{p_text(test['delong_test'], test['delong_p'])} "
                    f"(AUC diff {test['auc_diff']:+.4f}, z={test['delong_z']:+.3f})"
                )
            lines.append(f"  {name} vs {other}: " + "; ".join(parts))
            if test["unit_note"]:
                lines.append(f"    ({test['unit_note']})")
    return "\n".join(lines)


def conformal_lines(by_name: dict) -> list[str]:
    """Coverage of each card's conformal sets at the default error rate (none: no lines)."""
    from core.conformal import DEFAULT_ALPHA
    from core.display import coverage_text

    key = f"{DEFAULT_ALPHA:g}"
    rows = {n: row["conformal"][key] for n, row in by_name.items() if row.get("conformal")}
    if not rows:
        return []
    return [
        f"Conformal sets (α = {DEFAULT_ALPHA:g}):",
        *(f"  {name}: {coverage_text(row)}" for name, row in rows.items()),
    ]
