"""`python -m core train`: train one model into a run directory (layout in core/run_folder.py).

    python -m core train --data PATH [--model NAME] [--epochs N] [--batch-size B] [--lr LR]
        [--img-size S] [--device D] [--seed S] [--split-seed S] [--pretrained] --out RUN_DIR
    python -m core train --resume RUN_DIR

The flags are the TrainConfig field names (``batch_size`` -> ``--batch-size``), which is how
core.jobs.start_run builds the command line. The same command runs under
``torchrun --nproc_per_node N -m core train ...`` (DistributedDataParallel, rank 0 writes).
Exit codes: 0 finished, 1 failed (status.json has the traceback), 2 bad arguments or a run
folder owned by another live process (then nothing is written), 130 cancelled.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from core.train_config import (
    CALIBRATIONS,
    DEFAULTS,
    DEVICES,
    PRECISIONS,
    SCHEDULERS,
    STAIN_NORMS,
    TrainConfig,
)

_NO_DEFAULT = argparse.SUPPRESS  # unset flags keep the TrainConfig default


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model into a run directory (config, metrics, status, last.pt, best.pt)",
        argument_default=_NO_DEFAULT,
    )
    p.add_argument("--data", help="dataset folder (PCam h5, HCD tif+csv or IDC png tree)")
    p.add_argument(
        "--out",
        type=Path,
        help="run directory to create and fill (a folder holding a trained run needs --resume)",
    )
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from last.pt")
    p.add_argument("--model", help="registered model (default: recommended for the patch size)")
    p.add_argument(
        "--epochs", type=int, help=f"maximum epochs (default {DEFAULTS['epochs']}; early stopping)"
    )
    p.add_argument(
        "--batch-size", type=int, dest="batch_size", help=f"default {DEFAULTS['batch_size']}"
    )
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {DEFAULTS['lr']:g})")
    p.add_argument(
        "--weight-decay",
        type=float,
        dest="weight_decay",
        help=f"default {DEFAULTS['weight_decay']:g}",
    )
    p.add_argument(
        "--img-size", type=int, dest="img_size", help="model input side (default: patch size)"
    )
    p.add_argument("--device", help=f"{', '.join(DEVICES)} or cuda:N (auto: cuda > mps > cpu)")
    p.add_argument(
        "--seed", type=int, help="seed for the weights, batch order and augmentation (default 0)"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        dest="split_seed",
        help="seed of the patient (IDC) or patch (HCD) split (default 0: every run on a dataset "
        "shares its test patients, so runs compare; PCam ships its own split)",
    )
    p.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        help="ImageNet weights from the local torch cache only",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="D4 + light stain jitter (default on)",
    )
    p.add_argument(
        "--class-weighting",
        dest="class_weighting",
        action=argparse.BooleanOptionalAction,
        help="weight the loss by inverse class frequency (default on)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        dest="label_smoothing",
        help=f"cross-entropy label smoothing (default {DEFAULTS['label_smoothing']})",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        dest="warmup_epochs",
        help=f"cosine: linear lr warm-up epochs from lr/10 (default {DEFAULTS['warmup_epochs']})",
    )
    p.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        help=f"map fitted on validation after training (default {DEFAULTS['calibration']})",
    )
    p.add_argument(
        "--scheduler", choices=SCHEDULERS, help=f"lr schedule (default {DEFAULTS['scheduler']})"
    )
    p.add_argument(
        "--patience",
        type=int,
        help=f"early stopping patience in epochs (default {DEFAULTS['patience']})",
    )
    p.add_argument(
        "--limit-batches",
        type=int,
        dest="limit_batches",
        help="cap train/valid batches per epoch (quick runs)",
    )
    p.add_argument("--workers", type=int, help="DataLoader workers (default 0 on CPU, 4 on CUDA)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32, bf16 (autocast) or auto: bf16 on CUDA, fp32 elsewhere (default auto)",
    )
    p.add_argument(
        "--log-every",
        type=int,
        dest="log_every",
        help=f"steps between metrics lines (default {DEFAULTS['log_every']})",
    )
    p.add_argument(
        "--stain-norm",
        dest="stain_norm",
        choices=STAIN_NORMS,
        help="normalise every patch's stain to a target fitted on the training patches, stored "
        "in the model card and applied by every consumer (default none)",
    )
    p.add_argument(
        "--best-fp16",
        dest="best_fp16",
        action=argparse.BooleanOptionalAction,
        help="store best.pt weights as float16 (smaller file to ship)",
    )
    p.add_argument(
        "--shuffle-labels",
        dest="shuffle_labels",
        action=argparse.BooleanOptionalAction,
        help="permute the training labels (the data randomisation test of the sanity check)",
    )
    p.set_defaults(func=run)


_NOT_CONFIG = ("command", "func", "out", "resume")


def config_from_args(args, saved: dict | None = None) -> TrainConfig:
    """TrainConfig from parsed flags; flags override ``saved`` (the config of a resumed run)."""
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    return TrainConfig.from_dict({**(saved or {}), **overrides})


def _config_and_dir(args):
    from core import run_folder
    from core.errors import InputError

    if "resume" in args:
        saved = run_folder.read_config(args.resume)
        config_file = args.resume / run_folder.CONFIG_FILE
        if not saved:
            what = "is not a run config (damaged?)" if config_file.exists() else "not found"
            raise InputError(
                f"{config_file} {what}; --resume needs a run directory written by "
                "`python -m core train`"
            )
        if not (args.resume / "last.pt").is_file() and (args.resume / "best.pt").is_file():
            raise InputError(
                f"{args.resume}: has best.pt but no last.pt, so --resume would start over and "
                "replace best.pt; move best.pt aside first, or train into a new --out"
            )
        try:
            return config_from_args(args, saved), args.resume, True
        except TypeError as exc:  # a hand-edited config.json: e.g. "epochs": "3"
            raise InputError(
                f"{config_file}: {exc}; fix the value or train into a new --out"
            ) from exc
    if "data" not in args or "out" not in args:
        raise InputError("--data PATH and --out RUN_DIR are required (or --resume RUN_DIR)")
    trained = [name for name in ("last.pt", "best.pt") if (args.out / name).is_file()]
    if trained:
        raise InputError(
            f"{args.out}: already holds a trained run ({', '.join(trained)}); continue it with "
            f"--resume {args.out}, or give a new --out"
        )
    return config_from_args(args), args.out, False


def _stop_on_sigterm() -> list[bool]:
    """SIGTERM (cancel_run) sets a flag the loop checks between batches, so the run ends cleanly
    with status "cancelled" and its last.pt intact."""
    flag = [False]

    def handler(signum, frame):
        flag[0] = True

    signal.signal(signal.SIGTERM, handler)
    return flag


def run(args) -> int:
    cfg, run_dir, resume = _config_and_dir(args)
    stop = _stop_on_sigterm()

    from core.run_lock import RunInUse
    from core.train import TrainingCancelled, failure_line, fit

    try:
        status = fit(
            cfg,
            run_dir,
            resume=resume,
            should_stop=lambda: stop[0],
            show_progress=sys.stderr.isatty(),
        )
    except (TrainingCancelled, KeyboardInterrupt):
        print(f"cancelled: {run_dir}", file=sys.stderr)
        return 130
    except RunInUse:  # another live process owns the folder, nothing was written: exit 2
        raise
    except Exception as exc:  # the traceback is in status.json; the terminal gets one line
        print(f"error: {failure_line(exc, run_dir)}", file=sys.stderr)
        return 1
    if status and int(os.environ.get("RANK", "0")) == 0:
        best = status.get("best", {})
        print(
            f"finished: {run_dir} ({status.get('epochs_run')} epochs, best validation score {best.get('score', float('nan')):.4f} at epoch {best.get('epoch', -1) + 1})"
        )
    return 0
