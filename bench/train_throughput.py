"""Training throughput on IDC-format data: our loop vs the pure model step vs a seed-style
pipeline, in one run.

    /work/venv/bin/python bench/train_throughput.py [--data DIR] [--model idc_cnn]
        [--batch-size 64] [--steps 20] [--rounds 2] [--workers 0]

Data: ``--data`` (an IDC tree), else ``$HISTOLENS_REAL_IDC`` or ``<repo>/../shared/data/real/idc``
when present, else the synthetic demo's IDC set written to a temp folder.

Three pipelines train the same registered model (random init; speed does not depend on the
weights) with AdamW, the same batch size and the same number of optimizer steps, measured in
``--rounds`` alternating rounds so load from other processes hits all three alike:

1. pure: forward + backward + step on batches pre-loaded and pre-normalised in memory (no
   reading, decoding, augmentation or preprocessing): the ceiling for this model and machine.
2. ours: ``core.train.train_one_epoch`` over a ``core.loaders.make_loader`` loader: whole-batch
   ``read_batch`` from the PNG files, uint8 to the device, D4 + stain jitter and the card's
   normalisation there.
3. seed-style: a per-file Dataset (PIL decode, torchvision Resize, flips, rotation, ColorJitter,
   ToTensor, Normalize per image, every epoch) through a DataLoader with the same workers.

Prints images/s per pipeline (best round) and the ratios ours / pure and ours / seed-style.
Then the data paths alone (no model): ours = read_batch + augmentation + card preprocessing,
seed-style = the per-file DataLoader; this is what bounds training once the model step is fast
(a GPU), while on a 2-core CPU the model step dominates both pipelines.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def find_idc(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    real = Path(
        os.environ.get("HISTOLENS_REAL_IDC", REPO.parent / "shared" / "data" / "real" / "idc")
    )
    if real.is_dir():
        return real, "real IDC"
    from core.data.demo import write_demo

    return write_demo(Path(tempfile.mkdtemp()))["idc"], "synthetic demo IDC"


class SeedStyleFiles:
    """The seed's way: one file, one PIL decode and one chain of PIL/tensor transforms per item."""

    def __init__(self, paths, labels, size, mean, std):
        from torchvision import transforms as T

        self.paths, self.labels = list(paths), list(labels)
        self.transform = T.Compose(
            [
                T.Resize(size),
                T.RandomHorizontalFlip(),
                T.RandomVerticalFlip(),
                T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
                T.ColorJitter(brightness=0.05, contrast=0.05, saturation=0.05),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def timed_steps(model, optimizer, criterion, batches, steps: int) -> float:
    """images/s of forward + backward + step over ``steps`` batches drawn from ``batches``."""
    n, start = 0, time.perf_counter()
    for _, (x, y) in zip(range(steps), batches, strict=False):
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()
        n += len(y)
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--model", default="idc_cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch
    from torch import nn

    from core.augment import Augmentation
    from core.checkpoints import ModelCard
    from core.data import open_dataset
    from core.device import Dist
    from core.loaders import BatchReader, make_loader
    from core.models import build_model
    from core.train import Runtime, train_one_epoch

    data, kind = find_idc(args.data)
    ds = open_dataset(data)
    train_idx = ds.indices(split="train")
    size = ds.image_size
    card = ModelCard.for_model(args.model, input_size=max(size))
    model, _ = build_model(args.model)
    criterion = nn.CrossEntropyLoss()
    device = torch.device("cpu")
    rt = Runtime(device, card)
    need = args.steps * args.batch_size
    print(
        f"data: {data} ({kind}, {len(train_idx)} train patches, {size[0]}x{size[1]}); "
        f"model {args.model}; batch {args.batch_size}; {args.steps} steps/round; "
        f"{args.rounds} rounds; workers {args.workers}; torch threads {torch.get_num_threads()}"
    )

    rng = np.random.default_rng(0)
    pre_idx = rng.choice(train_idx, size=min(need, len(train_idx)), replace=False)
    images = rt.inputs(torch.from_numpy(ds.read_batch(pre_idx)))
    labels = torch.from_numpy(ds.meta["label"].to_numpy()[pre_idx])
    preloaded = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, len(labels), args.batch_size)
    ]

    ours_loader = make_loader(
        BatchReader(ds, train_idx), args.batch_size, shuffle=True, seed=0, dist_info=Dist(),
        workers=args.workers, pin_memory=False,
    )  # fmt: skip
    # as a seed finds its files: a glob of <patient>/<label>/*.png, label from the folder
    files = sorted(Path(data).glob("*/[01]/*.png"))
    seed_loader = torch.utils.data.DataLoader(
        SeedStyleFiles(files, [int(f.parent.name) for f in files], size, card.mean, card.std),
        batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
        persistent_workers=args.workers > 0,
    )  # fmt: skip

    def pure(optimizer):
        return timed_steps(model, optimizer, criterion, iter(preloaded * args.steps), args.steps)

    def ours(optimizer):
        start = time.perf_counter()
        out = train_one_epoch(
            model, ours_loader, optimizer, criterion, rt, epoch=0, generator=torch.Generator().manual_seed(0),
            augment=Augmentation(), limit=args.steps,
        )  # fmt: skip
        return out["n"] / (time.perf_counter() - start)

    def seed_style(optimizer):
        return timed_steps(model, optimizer, criterion, iter(seed_loader), args.steps)

    pipelines = {
        "pure model step": pure,
        "ours (loader + step)": ours,
        "seed-style (PIL + tv)": seed_style,
    }
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    timed_steps(model, optimizer, criterion, iter(preloaded), 2)  # warm-up: allocator, kernels
    best = dict.fromkeys(pipelines, 0.0)
    for r in range(args.rounds):
        for name, run in pipelines.items():
            rate = run(optimizer)
            best[name] = max(best[name], rate)
            print(f"  round {r + 1}: {name:<24} {rate:8.1f} images/s", flush=True)
    pure_rate, ours_rate, seed_rate = best.values()
    print("best of rounds:")
    for name, rate in best.items():
        print(f"  {name:<24} {rate:8.1f} images/s")
    print(f"ours / pure       = {ours_rate / pure_rate:.3f}  (target >= 0.95)")
    print(f"ours / seed-style = {ours_rate / seed_rate:.2f}x (target >= 3x)")

    def ours_data_path():
        g = torch.Generator().manual_seed(0)
        return (rt.prepare(x, Augmentation(), g) for x, _ in ours_loader)

    data_rates = {
        "ours: data path only": images_per_s(ours_data_path(), args.steps),
        "seed-style: data path only": images_per_s((x for x, _ in seed_loader), args.steps),
    }
    for name, rate in data_rates.items():
        print(f"  {name:<28} {rate:8.1f} images/s")
    ours_data, seed_data = data_rates.values()
    print(f"data path ours / seed-style = {ours_data / seed_data:.2f}x")
    return 0


def images_per_s(batches, steps: int) -> float:
    n, start = 0, time.perf_counter()
    for _, x in zip(range(steps), batches, strict=False):
        n += len(x)
    return n / (time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(main())
