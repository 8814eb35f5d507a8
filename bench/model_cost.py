"""Training cost of registered models on this machine, against a baseline model, in one run.

    python bench/model_cost.py [--size 50] [--models idc_cnn bn_cnn small_resnet]
        [--batch-size 64] [--steps 6] [--rounds 3] [--threads 2]

The pure training step (forward + backward + AdamW on a pre-made batch of random images, no data
path) of each model, as core.train runs it on the CPU (channels_last, fused AdamW), measured in ``--rounds`` alternating rounds so load from other processes
hits every model alike; prints the best round's images/s and its cost relative to the first
model (time per image / the first model's). bench/recipe_search.py's CPU_COST comes from here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def images_per_s(model, batch, labels, optimizer, steps: int) -> float:
    import torch.nn.functional as F

    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * len(batch) / (time.perf_counter() - start)


def main(argv=None) -> int:
    import torch

    from core.models import build_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=50)
    p.add_argument("--models", nargs="+", default=["idc_cnn", "bn_cnn", "small_resnet"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cl = torch.channels_last
    batch = torch.randn(args.batch_size, 3, args.size, args.size).contiguous(memory_format=cl)
    labels = torch.randint(0, 2, (args.batch_size,))
    setups = {}
    for name in args.models:
        model = build_model(name)[0].train().to(memory_format=cl)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        images_per_s(model, batch, labels, optimizer, 1)  # warm-up
        setups[name] = (model, optimizer)
    best = dict.fromkeys(args.models, 0.0)
    for _ in range(args.rounds):
        for name, (model, optimizer) in setups.items():
            best[name] = max(best[name], images_per_s(model, batch, labels, optimizer, args.steps))
    base = args.models[0]
    print(f"pure training step, {args.size} px, batch {args.batch_size}, {args.threads} threads")
    for name in args.models:
        print(f"{name:14s} {best[name]:8.1f} img/s   cost ×{best[base] / best[name]:.2f} of {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
