"""`python -m core calibrate --checkpoint CKPT --data PATH --out NEW.pt [--method platt]`.

Fits the calibration map and operating points on the validation split of the data the
checkpoint was trained on (opened with its split), exactly as training does for every best.pt,
and writes a copy of the checkpoint with them in its card. For checkpoints saved before
HistoLens calibrated them ("not calibrated" in the pickers) and imported weights.
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from core.calibration import METHODS

    p = sub.add_parser("calibrate", help="fit a checkpoint's calibration on its validation split")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--data", required=True, help="the dataset it was trained on")
    p.add_argument("--method", default="platt", choices=METHODS, help="calibration map")
    p.add_argument("--out", required=True, help="the calibrated copy (.pt)")
    p.add_argument("--device", default=None, help="cuda | mps | cpu (default: best available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from core.commands.evaluate import open_data, tqdm_progress
    from core.evaluate import calibrate_checkpoint
    from core.files import check_output

    out = Path(args.out)
    check_output(out, args.checkpoint)
    ds = open_data(args.data, [args.checkpoint])
    fitted = calibrate_checkpoint(
        args.checkpoint,
        ds,
        out,
        method=args.method,
        progress=tqdm_progress("calibrate"),
        device=args.device,
    )
    c = fitted.calibration
    print(
        f"{c.method} map a={c.a:.4g} b={c.b:.4g}; threshold {fitted.threshold:.3f} (max balanced accuracy)"
    )
    print(f"validation ECE {fitted.ece_raw:.4f} raw -> {fitted.ece:.4f} calibrated")
    if fitted.calibration_note:
        print(f"note: {fitted.calibration_note}")
    print(f"written to {out}")
    return 0
