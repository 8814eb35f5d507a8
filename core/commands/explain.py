"""`python -m core explain --checkpoint CKPT --image PATH [--method gradcam]
[--target tumour|normal|pred] [--alpha 0.5] [--colormap jet] [--tta] --out OUT.png`.

Writes the CAM overlay as a PNG (at the model's input size) and prints the patch's calibrated
P(tumour) and its call at the card's threshold (or --threshold), as every page states them. The image goes
through the same checks as an upload in the app (type by content, size caps, mode conversion).
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.config import TARGETS


def register(sub) -> None:
    p = sub.add_parser("explain", help="CAM overlay of one patch image")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    p.add_argument("--image", required=True, help="patch image (PNG, JPEG or TIFF)")
    p.add_argument("--method", default="gradcam", help="CAM method (see core.explain.CAM_METHODS)")
    p.add_argument("--target", default="pred", choices=list(TARGETS), help="class the map explains")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1]")
    p.add_argument("--colormap", default="jet")
    p.add_argument("--tta", action="store_true", help="average the map over the 8 D4 transforms")
    p.add_argument("--target-layer", default=None, help="dotted path overriding the card's layer")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="call tumour when P >= this (default: the checkpoint card's, 0.5 for older ones)",
    )
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=run)


def run(args) -> int:
    from PIL import Image

    from core.calls import describe_call, threshold_of
    from core.checkpoints import load_checkpoint
    from core.config import CLASS_NAMES
    from core.data.base import read_regular_bytes
    from core.errors import InputError
    from core.explain import compute_cams, overlay
    from core.files import check_output
    from core.uploads import MAX_UPLOAD_BYTES, load_upload

    image_path, out = Path(args.image), Path(args.out)
    check_output(out, args.checkpoint, image_path)
    loaded = load_checkpoint(args.checkpoint)
    if not image_path.exists():
        raise InputError(f"{image_path}: no such file; give a patch image (PNG, TIFF, JPEG).")
    # non-blocking open, size checked before reading: a FIFO or a 3 GB file never hangs
    data = read_regular_bytes(image_path, MAX_UPLOAD_BYTES)
    patch = load_upload(image_path.name, data, size=loaded.card.input_size)
    result = compute_cams(
        loaded,
        patch.image,
        args.method,
        args.target,
        tta=args.tta,
        target_layer=args.target_layer,
        threshold=args.threshold,
    )
    picture = overlay(patch.image, result.cams[0], args.alpha, args.colormap)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(out, format="PNG")
    if patch.notice:
        print(f"note: {patch.notice}", file=sys.stderr)
    threshold = threshold_of(loaded.card, args.threshold)
    print(f"{describe_call(float(result.probs[0]), threshold.value, 4)} at {threshold.describe()}")
    print(f"{args.method} map of class {CLASS_NAMES[int(result.classes[0])]!r} written to {out}")
    return 0
