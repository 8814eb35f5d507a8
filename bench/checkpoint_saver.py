"""An improving epoch's checkpoints: best.pt serialised apart from last.pt (two torch.save calls)
against last.pt serialised once and best.pt hard-linked to it (timm's CheckpointSaver), in the
same run.

    python bench/checkpoint_saver.py [--rounds 5] [--archs idc_cnn,hcd_cnn,resnet50]

Each architecture gets AdamW state from one step (last.pt carries it, as in training). Rounds
alternate the two strategies; the table gives median milliseconds, the ratio link / twice, and
the files' sizes (a linked best.pt carries last.pt's optimizer state until the run's final
calibration rewrites it with weights only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.checkpoints import ModelCard, save_checkpoint  # noqa: E402
from core.files import link_atomic  # noqa: E402
from core.models import build_model  # noqa: E402


def twice(folder: Path, model, card, extra) -> None:
    save_checkpoint(folder / "best.pt", model, card)
    save_checkpoint(folder / "last.pt", model, card, **extra)


def once_and_link(folder: Path, model, card, extra) -> None:
    save_checkpoint(folder / "last.pt", model, card, **extra)
    link_atomic(folder / "last.pt", folder / "best.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--archs", default="idc_cnn,hcd_cnn,resnet50")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; medians of {args.rounds} alternating rounds")
    print(f"{'arch':<10} {'twice ms':>9} {'link ms':>8} {'link/twice':>10} {'best MB':>14}")
    for arch in args.archs.split(","):
        model, _ = build_model(arch)
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.rand(2, 3, 64, 64)).sum().backward()
        optimizer.step()
        card = ModelCard.for_model(arch)
        extra = {"optimizer": optimizer.state_dict(), "loop": {"epoch": 1}}
        times = {"twice": [], "link": []}
        with tempfile.TemporaryDirectory() as tmp:
            folders = {k: Path(tmp) / k for k in times}
            for folder in folders.values():
                folder.mkdir()
            for _ in range(args.rounds):
                for name, fn in (("twice", twice), ("link", once_and_link)):
                    start = time.perf_counter()
                    fn(folders[name], model, card, extra)
                    times[name].append(time.perf_counter() - start)
            sizes = [(folders[k] / "best.pt").stat().st_size / 1e6 for k in ("twice", "link")]
        t, lk = (statistics.median(times[k]) * 1e3 for k in ("twice", "link"))
        print(f"{arch:<10} {t:>9.1f} {lk:>8.1f} {lk / t:>10.2f} {sizes[0]:>6.1f} -> {sizes[1]:.1f}")


if __name__ == "__main__":
    main()
