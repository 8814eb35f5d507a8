"""`python -m core export --checkpoint CKPT --format torchscript --out FILE`.

Writes the model as TorchScript (logits N×2 for normalised N×3×S×S input; the model card is
inside as ``histolens_card.json``) after checking its P(tumour) against the checkpoint's.
"""

from __future__ import annotations

import sys

FORMATS = ("torchscript",)


def register(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as TorchScript")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--format", default="torchscript", choices=FORMATS)
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=run)


def run(args) -> int:
    from core.checkpoints import CheckpointError
    from core.interop import export_torchscript

    try:
        delta = export_torchscript(args.checkpoint, args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: TorchScript, max |ΔP| against the checkpoint {delta:.1e}")
    return 0
