"""Evaluation throughput: our cached, prefetching ``predict_split`` vs pure inference, one run.

    /work/venv/bin/python bench/eval_throughput.py [--n 32768] [--model hcd_cnn] [--batch-size 128]

1. Writes ``--n`` patches (default 32,768 = the PCam test split) in the published PCam layout
   (``camelyonpatch_level_2_split_test_{x,y}.h5``, 96×96×3 uint8, one gzip chunk per patch) under
   ``bench/out/pcam_bench``, tiled from the synthetic demo's patches with random D4 transforms
   (realistic texture, so gzip costs what it costs on real files). Reused if already there.
2. Pure inference vs ours, alternating in ``--rounds`` rounds so load from other processes on a
   shared machine hits both sides alike. Pure = the model on pre-loaded, pre-normalised input
   tensors (channels_last, inference mode, same batch size): no reading, decoding or
   preprocessing. Ours = ``core.evaluate.predict_indices`` on the next n/rounds patches: reads
   the h5 in a background thread, preprocesses from the model card, forward, softmax.
3. ``core.evaluate.predict_split`` end to end with a cold prediction cache (+ parquet write),
   then again with the cache warm.

Prints images/s of each and the ratio ours / pure (target ≥ 0.90), and the CPU seconds per
batch of reading, preprocessing and forward alone: on cores the model already fills, the loader
can cost at most its CPU share. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUT = Path(__file__).resolve().parent / "out"
PREFIX = "camelyonpatch_level_2_split_test_"
SLAB = 4096  # patches written per h5 slice


def write_bench_pcam(folder: Path, n: int, seed: int = 0) -> Path:
    """PCam-layout test split of ``n`` patches tiled from the demo's training patches."""
    import h5py

    from core.d4 import D4_GROUP
    from core.data import open_dataset
    from core.data.demo import write_demo

    x_path, y_path = folder / f"{PREFIX}x.h5", folder / f"{PREFIX}y.h5"
    if x_path.exists() and y_path.exists():
        with h5py.File(x_path, "r") as f:
            if f["x"].shape[0] == n:
                return folder
    demo = open_dataset(write_demo(Path(tempfile.mkdtemp(dir=OUT)))["pcam"])
    source_idx = demo.indices(split="train")
    source = demo.read_batch(source_idx)
    source_labels = demo.meta["label"].to_numpy()[source_idx]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(x_path, "w") as fx, h5py.File(y_path, "w") as fy:
        x = fx.create_dataset(
            "x", shape=(n, 96, 96, 3), dtype=np.uint8, chunks=(1, 96, 96, 3), compression="gzip"
        )
        y = fy.create_dataset("y", shape=(n, 1, 1, 1), dtype=np.uint8)
        for start in range(0, n, SLAB):
            count = min(SLAB, n - start)
            pick = rng.integers(0, len(source), count)
            views = rng.integers(0, len(D4_GROUP), count)
            slab = source[pick].transpose(0, 3, 1, 2)  # D4 acts on the last two axes
            slab = np.stack([D4_GROUP[v].apply(img) for v, img in zip(views, slab, strict=True)])
            x[start : start + count] = slab.transpose(0, 2, 3, 1)
            y[start : start + count] = source_labels[pick].reshape(-1, 1, 1, 1)
    return folder


class Clock:
    """Wall time and CPU time (all threads of this process) of a ``with`` block.

    CPU time is the robust figure on a shared machine: other processes stretch wall time but
    not the work we do. On a machine whose cores the model already fills, loader CPU time is
    what the loader costs in wall time, so the CPU-time ratio is the conservative one.
    """

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def pure_inference(loaded, ds, n_images: int, batch_size: int, n_distinct: int = 16) -> Clock:
    """Run the model on ``n_images`` pre-loaded, pre-normalised inputs; returns its Clock."""
    import torch

    from core.evaluate import forward_probs
    from core.preprocess import to_model_input

    model = loaded.model.to(memory_format=torch.channels_last)
    batches = [
        to_model_input(
            ds.read_batch(np.arange(k * batch_size, (k + 1) * batch_size)),
            loaded.card,
            "cpu",
            channels_last=True,
        )
        for k in range(n_distinct)
    ]
    forward_probs(model, batches[0])  # warm-up
    with Clock() as clock:
        for k in range(n_images // batch_size):
            forward_probs(model, batches[k % n_distinct])
    return clock


def cpu_breakdown(loaded, ds, batch_size: int, reps: int = 8) -> tuple[float, float, float]:
    """CPU seconds per batch of reading, preprocessing and forward, each alone."""
    import torch

    from core.evaluate import forward_probs
    from core.preprocess import to_model_input

    model = loaded.model.to(memory_format=torch.channels_last)
    starts = np.linspace(0, len(ds) - batch_size, reps).astype(int)
    with Clock() as read:
        images = [ds.read_batch(np.arange(s, s + batch_size)) for s in starts]
    with Clock() as prep:
        inputs = [to_model_input(im, loaded.card, "cpu", channels_last=True) for im in images]
    with Clock() as forward:
        for x in inputs:
            forward_probs(model, x)
    return read.cpu / reps, prep.cpu / reps, forward.cpu / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--model", default="hcd_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8, help="alternations of pure and ours")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["HISTOLENS_CACHE"] = tempfile.mkdtemp(prefix="cache-", dir=OUT)  # cold cache

    import torch

    from core.checkpoints import ModelCard, load_checkpoint, save_checkpoint
    from core.data import open_dataset
    from core.evaluate import predict_indices, predict_split
    from core.models import build_model

    t0 = time.perf_counter()
    ds = open_dataset(write_bench_pcam(OUT / "pcam_bench", args.n))
    print(f"data: {len(ds)} PCam-layout patches ready in {time.perf_counter() - t0:.1f} s")
    torch.manual_seed(0)
    model, _ = build_model(args.model)
    ckpt = save_checkpoint(OUT / f"bench_{args.model}.pt", model, ModelCard.for_model(args.model))
    loaded = load_checkpoint(ckpt)
    print(f"model: {args.model}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    read, prep, forward = cpu_breakdown(loaded, ds, args.batch_size)
    print(
        f"cpu s per batch: read_batch {read:.3f}, to_model_input {prep:.3f}, forward {forward:.3f}"
        f" -> even fully serialised with the model, ours/pure >= "
        f"{forward / (read + prep + forward):.3f}"
    )
    pure, ours = np.zeros(2), np.zeros(2)  # (wall s, cpu s)
    for chunk in np.array_split(np.arange(args.n), args.rounds):
        clock = pure_inference(loaded, ds, len(chunk), args.batch_size)
        pure += (clock.wall, clock.cpu)
        with Clock() as clock:
            predict_indices(ckpt, ds, chunk, batch_size=args.batch_size, device="cpu")
        ours += (clock.wall, clock.cpu)
    for label, (p, o) in (("wall", (pure[0], ours[0])), ("cpu", (pure[1], ours[1]))):
        print(
            f"{label:4} time  pure (pre-loaded tensors) {args.n / p:7.1f} images/s ({p:.1f} s)"
            f" | ours (h5 -> P(tumour)) {args.n / o:7.1f} images/s ({o:.1f} s)"
            f" | ratio ours/pure {p / o:.3f} (target >= 0.90)"
        )

    timings = []
    for _ in range(2):
        start = time.perf_counter()
        preds = predict_split(ckpt, ds, split="test", batch_size=args.batch_size, device="cpu")
        timings.append(time.perf_counter() - start)
    assert len(preds) == args.n
    print(
        f"predict_split, cold cache:           {args.n / timings[0]:8.1f} images/s ({timings[0]:.1f} s)"
    )
    print(f"predict_split, warm cache (parquet): {timings[1]:8.3f} s for {args.n} predictions")


if __name__ == "__main__":
    main()
