"""Reading a checkpoint's model card: a full ``torch.load``, ``torch.load(mmap=True)`` and the
torch-free ``core.checkpoints.read_card`` (the archive's pickle alone), in the same run.

    python bench/card_read.py [--rounds 7] [--archs idc_cnn,hcd_cnn,resnet50]

For each architecture a randomly initialised model is saved as a real checkpoint (temp folder);
rounds alternate the reads (page cache warm for all) and the table gives medians and the
ratios to the full load. ``core.catalogue.read_card`` then caches the card per (path, size, mtime_ns),
so a page rerun reads no file at all; this measures the one read per file version that is left.
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

from core.checkpoints import ModelCard, read_card, save_checkpoint  # noqa: E402
from core.models import build_model  # noqa: E402


def timed(fn, path: Path) -> float:
    start = time.perf_counter()
    card = fn(path)["card"]
    assert card["arch"]
    return time.perf_counter() - start


def full(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def mmapped(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def card_only(path: Path) -> dict:
    return {"card": {"arch": read_card(path).arch}}


READS = {"full": full, "mmap": mmapped, "card": card_only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--archs", default="idc_cnn,hcd_cnn,resnet50")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; medians of {args.rounds} alternating rounds")
    print(
        f"{'arch':<12} {'file MB':>8} {'full ms':>9} {'mmap ms':>9} {'card ms':>9} "
        f"{'mmap/full':>10} {'card/full':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            model, _ = build_model(arch)
            path = save_checkpoint(Path(tmp) / f"{arch}.pt", model, ModelCard.for_model(arch))
            for read in READS.values():
                read(path)  # warm-up: first-call costs are not a read
            times = {name: [] for name in READS}
            for _ in range(args.rounds):
                for name, read in READS.items():
                    times[name].append(timed(read, path))
            f, m, c = (statistics.median(times[k]) * 1e3 for k in READS)
            size = path.stat().st_size / 1e6
            print(
                f"{arch:<12} {size:>8.1f} {f:>9.1f} {m:>9.1f} {c:>9.1f} {m / f:>10.2f} {c / f:>10.2f}"
            )


if __name__ == "__main__":
    main()
