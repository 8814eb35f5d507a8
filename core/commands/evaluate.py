"""`python -m core evaluate --checkpoint CKPT --data PATH [--split test] [--json]`.

Prints the metrics of one checkpoint on one split (patch level; for datasets with patients also
a patient-level summary). Predictions come from, and go to, the cache of core.evaluate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.data.registry import MAX_SEED
from core.evaluate import REPORTED_METRICS, SPLITS
from core.train_config import PRECISIONS

MAX_BOOTSTRAP = 100_000  # a 95% CI is stable long before; 10⁸ resamples ran for minutes


def add_evaluation_arguments(p) -> None:
    """Options shared by `evaluate` and `compare`."""
    p.add_argument("--data", required=True, help="dataset folder (pcam, hcd or idc layout)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="call tumour when P >= this (default: the checkpoint card's, 0.5 for older ones)",
    )
    p.add_argument("--tta", action="store_true", help="average over the 8 D4 transforms")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="auto: bf16 on CUDA, fp32 elsewhere"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the AUC 95%% CI")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    add_evaluation_arguments(p)
    p.add_argument(
        "--predictions",
        default=None,
        metavar="CSV",
        help="also write each patch's P(tumour) and call (the columns of Compare's CSV)",
    )
    p.set_defaults(func=run)


def tqdm_progress(desc: str):
    """A progress(done, total) callback drawing a tqdm bar on a terminal (silent otherwise)."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="patch", disable=None, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def open_inputs(args, checkpoints, problem=None):
    """The dataset, opened with the split the checkpoints were trained on (split mismatches are
    printed as warnings); an out-of-range option is an InputError (``problem``: the command's
    own option check, default this module's ``option_problem``)."""
    from core.errors import InputError

    problem = (problem or option_problem)(args)
    if problem:
        raise InputError(problem)
    return open_data(args.data, checkpoints)


def open_data(data, checkpoints):
    """``data`` opened with the split the checkpoints were trained on (split mismatches are
    printed as warnings)."""
    from core.evaluate import open_dataset_for

    ds, warnings = open_dataset_for(data, checkpoints)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return ds


def option_problem(args) -> str | None:
    """One line when a numeric option is out of range (argparse checks only the type)."""
    if args.batch_size < 1:
        return f"--batch-size {args.batch_size}: use 1 or more"
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        return f"--bootstrap {args.bootstrap}: use 0 (no confidence interval) to {MAX_BOOTSTRAP:,}"
    if not 0 <= args.seed <= MAX_SEED:
        return f"--seed {args.seed}: use a whole number from 0 to {MAX_SEED}"
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        return f"--threshold {args.threshold}: use a probability from 0 to 1"
    return None


def prediction_options(args) -> dict:
    """How `evaluate` and `compare` predict (the prediction cache's key holds each of these)."""
    return {
        "tta": args.tta,
        "batch_size": args.batch_size,
        "device": args.device,
        "precision": args.precision,
    }


def run(args) -> int:
    from core.evaluate import evaluate_checkpoint
    from core.files import check_output

    ds = open_inputs(args, [args.checkpoint])
    if args.predictions:
        check_output(Path(args.predictions), args.checkpoint)
    result = evaluate_checkpoint(
        args.checkpoint,
        ds,
        split=args.split,
        threshold=args.threshold,
        n_boot=args.bootstrap,
        seed=args.seed,
        progress=tqdm_progress("evaluate"),
        **prediction_options(args),
    )
    if args.predictions:
        write_predictions(args, ds, result["threshold"])
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def write_predictions(args, ds, threshold: float) -> None:
    """The per-patch CSV of ``--predictions``: Compare's export for this one checkpoint (the
    predictions come from the cache the evaluation just filled)."""
    from core.catalogue import model_names
    from core.compare import predictions_table
    from core.evaluate import predict_split
    from core.files import write_atomic

    preds = predict_split(args.checkpoint, ds, split=args.split, **prediction_options(args))
    name = model_names([args.checkpoint])[0]
    table = predictions_table({name: preds}, {name: threshold})
    write_atomic(Path(args.predictions), lambda fh: fh.write(table.to_csv(index=False).encode()))


def format_result(result: dict) -> str:
    from core.display import interval_text

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else value

    keys = ("n", *REPORTED_METRICS)
    lines = [
        f"{result['checkpoint']} on {result['data']} [{result['split']}, {result['manifest_id']}]"
    ]
    how = result["computed_with"]
    lines.append(f"  {'computed with':18} {how['precision']} on {how['device']}")
    lines += [f"  {k:18} {fmt(result[k])}" for k in keys]
    if result.get("auc_ci"):
        lines.append(f"  {'auc 95% CI':18} {interval_text(result['auc_ci'], digits=4)}")
    if result.get("conformal"):
        from core.conformal import DEFAULT_ALPHA
        from core.display import coverage_text

        row = result["conformal"][f"{DEFAULT_ALPHA:g}"]
        lines.append(f"  {f'conformal α={DEFAULT_ALPHA:g}':18} {coverage_text(row)}")
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    lines.append(f"  confusion (rows true normal/tumour): [[{tn} {fp}] [{fn} {tp}]]")
    if result.get("patients"):
        lines.append(
            "  patients: " + ", ".join(f"{k}={fmt(v)}" for k, v in result["patients"].items())
        )
    return "\n".join(lines)
