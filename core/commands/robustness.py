"""`python -m core robustness --checkpoints A.pt B.pt --data PATH [--split test]
[--shift hed|macenko|reinhard] [--strengths …] [--n N] [--json]`.

Each checkpoint on the split, unshifted and at each stain-shift strength (core.robustness): AUC
with its 95% CI, balanced accuracy at the card's threshold, ECE, the share of calls that flip,
the paired AUC difference between models, and one line on who degrades least. Predictions are
read from and written to the prediction cache (the shift and its strength are in the key).
"""

from __future__ import annotations

import json

from core.commands.evaluate import MAX_BOOTSTRAP
from core.data.registry import MAX_SEED
from core.evaluate import SPLITS
from core.robustness import SHIFTS, strength_label
from core.train_config import PRECISIONS


def register(sub) -> None:
    p = sub.add_parser(
        "robustness", help="compare checkpoints under graded stain shifts (another hospital)"
    )
    p.add_argument("--checkpoints", nargs="+", required=True, help="one or more checkpoints")
    p.add_argument("--data", required=True, help="dataset folder (pcam, hcd or idc layout)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument(
        "--shift",
        default="hed",
        choices=list(SHIFTS),
        help="; ".join(f"{name}: {family.label}" for name, family in SHIFTS.items()),
    )
    p.add_argument(
        "--strengths",
        nargs="+",
        type=float,
        default=None,
        help="shift strengths (default: "
        + "; ".join(f"{n} {' '.join(f'{s:g}' for s in f.strengths)}" for n, f in SHIFTS.items())
        + ")",
    )
    p.add_argument("--n", type=int, default=None, help="a seeded sample of N patches of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-patch shifts and bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the AUC 95%% CI")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 elsewhere"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    sweep = sweep_for(args)
    print(json.dumps(sweep.to_json(), indent=2) if args.json else format_sweep(sweep, args))
    return 0


def sweep_for(args):
    from core.commands.evaluate import open_inputs, tqdm_progress
    from core.robustness import robustness_sweep

    ds = open_inputs(args, args.checkpoints, problem=option_problem)
    return robustness_sweep(
        args.checkpoints,
        ds,
        split=args.split,
        family=args.shift,
        strengths=args.strengths,
        n=args.n,
        seed=args.seed,
        n_boot=args.bootstrap,
        progress=tqdm_progress("robustness"),
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )


def option_problem(args) -> str | None:
    """One line when a numeric option is out of range (argparse checks only the type)."""
    if args.n is not None and args.n < 1:
        return f"--n {args.n}: use 1 or more patches"
    if args.batch_size is not None and args.batch_size < 1:
        return f"--batch-size {args.batch_size}: use 1 or more"
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        return f"--bootstrap {args.bootstrap}: use 0 (no confidence interval) to {MAX_BOOTSTRAP:,}"
    if not 0 <= args.seed <= MAX_SEED:
        return f"--seed {args.seed}: use a whole number from 0 to {MAX_SEED}"
    return None


def format_sweep(sweep, args) -> str:
    import pandas as pd

    from core.metrics import format_ci

    table = sweep.table.copy()
    table.insert(1, "shift", [strength_label(s) for s in table.pop("strength")])
    cis = zip(table.pop("auc_low"), table.pop("auc_high"), strict=True)
    table.insert(4, "auc_ci95", [format_ci(None if pd.isna(lo) else (lo, hi)) for lo, hi in cis])
    lines = [
        f"{args.data} [{sweep.split}, {sweep.n} patches, CI unit: {sweep.ci_unit}] "
        f"shift {sweep.family}: {SHIFTS[sweep.family].label}; calls at each card's threshold",
        table.to_string(index=False, float_format="{:.3f}".format),
    ]
    lines += [f"note: {note}" for note in sweep.notes]
    for row in sweep.paired.itertuples():
        lines.append(
            f"{strength_label(row.strength)}: AUC {row.model_a} − {row.model_b} = {row.auc_diff:+.3f} "
            f"(95% CI {row.low:+.3f} to {row.high:+.3f}, p={row.p_value:.3g}, {row.test})"
        )
    lines.append(sweep.summary)
    return "\n".join(lines)
