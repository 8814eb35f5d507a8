"""`python -m core export --checkpoint CKPT --format torchscript --out FILE`.

Writes the model as TorchScript: logits N×2 for normalised N×3×S×S input, with the card's
calibration folded into the head, so softmax(out)[:, 1] is the calibrated P(tumour) that
``predict_proba`` returns (checked on CPU in fp32 before anything is written). The model card is
inside as ``histolens_card.json`` (threshold on calibrated P), the output contract and the folded
map as ``histolens_export.json`` (core/interop.py).
"""

from __future__ import annotations

FORMATS = ("torchscript",)


def register(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as TorchScript")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--format", default="torchscript", choices=FORMATS)
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from core.files import check_output
    from core.interop import export_torchscript

    check_output(args.out, args.checkpoint)
    delta = export_torchscript(args.checkpoint, args.out)
    print(
        f"{args.out}: TorchScript, softmax = calibrated P(tumour); max |ΔP| against the "
        f"checkpoint {delta:.1e} (cpu, fp32)"
    )
    return 0
