"""`python -m core import --weights FILE --arch NAME [--input-size N] [--mean R G B --std R G B]
[--classes normal,tumour] [--dataset PATH] --out CKPT.pt`.

Turns a notebook's ``state_dict`` (or a TorchScript archive) into a carded HistoLens checkpoint
(core.interop). ``--classes`` names the head's outputs in order; a 1-logit head's sigmoid is
P(second class named). Bad input: one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("import", help="carded checkpoint from a notebook state_dict or TorchScript")
    p.add_argument("--weights", required=True, help="state_dict (.pt/.pth) or TorchScript file")
    p.add_argument("--arch", required=True, help="registered architecture, e.g. resnet50")
    p.add_argument("--input-size", type=int, default=None, help="side in px (default: registry)")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    p.add_argument("--classes", default="normal,tumour", help="the head's outputs, in order")
    p.add_argument("--dataset", default=None, help="dataset the model was trained on (optional)")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt); must not exist")
    p.set_defaults(func=run)


def run(args) -> int:
    from core.interop import import_weights, parse_classes

    path, card = import_weights(
        args.weights,
        args.arch,
        args.out,
        input_size=args.input_size,
        mean=args.mean,
        std=args.std,
        classes=parse_classes(args.classes),
        dataset=args.dataset,
    )
    print(
        f"{path}: {card.arch} ({card.train_config['head']} head), input {card.input_size} px, "
        f"mean {list(card.mean)}, std {list(card.std)}"
    )
    return 0
