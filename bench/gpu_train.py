"""Training throughput on a PCam-size random set, on the GPU (or the CPU), in one run.

    python3 bench/gpu_train.py [--n 262144] [--models resnet18:256,hcd_cnn] [--steps 100]

1. Writes a random set in PCam's published layout to a temp folder (removed at the end):
   ``--n`` training patches and ``--n // 8`` each for valid and test (262,144 + 2 × 32,768 by
   default, as PCam), 96×96×3 uint8, uncompressed contiguous h5.
2. For each ``MODEL[:BATCH]`` (no batch: the trainer's default for the device), images/s of
   - pure step: forward + backward + AdamW on batches already on the device, normalised, in the
     trainer's precision and memory format: the ceiling for this model, batch and machine;
   - loader: the trainer's loader (``core.loaders``) alone, batches moved to the device;
   - loader + augmentation: the same plus D4 + HED + brightness jitter and normalisation;
   - epoch: one real ``python -m core train`` epoch (a subprocess: the CLI as users run it),
     from the trainer's first step to its last training step, plus the ratio epoch / pure;
   - launch to first step: from starting that subprocess to its first optimizer step (status.json
     ``first_step_at``, written by the trainer), split by the trainer's ``startup`` stages
     (imports, dataset, model on the device, loaders; the rest is workers + the first step).
   While the epoch runs, GPU SM utilisation is sampled with ``nvidia-smi dmon`` when available.

Without CUDA it runs the same on the CPU with ``--n 4096`` (and says so). Needs only torch,
torchvision, numpy, pandas, h5py (no streamlit, plotly or grad-cam). Sized for ≤ 4 minutes on
one H200.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PREFIX = "camelyonpatch_level_2_split_"
SLAB = 8192  # patches per h5 write


def write_random_pcam(folder: Path, n_train: int, seed: int = 0) -> Path:
    """PCam layout, random pixels and labels; one random slab repeated (content does not change
    the speed of uncompressed reads), so writing costs the disk, not the random generator."""
    import h5py

    rng = np.random.default_rng(seed)
    slab = rng.integers(0, 256, (min(SLAB, n_train), 96, 96, 3), dtype=np.uint8)
    for split, n in (("train", n_train), ("valid", n_train // 8), ("test", n_train // 8)):
        with h5py.File(folder / f"{PREFIX}{split}_x.h5", "w") as f:
            x = f.create_dataset("x", shape=(n, 96, 96, 3), dtype=np.uint8)
            for start in range(0, n, len(slab)):
                stop = min(start + len(slab), n)
                x[start:stop] = slab[: stop - start]
        with h5py.File(folder / f"{PREFIX}{split}_y.h5", "w") as f:
            f.create_dataset("y", data=rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))
    return folder


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(device, batches, count: int, warmup: int = 3) -> float:
    """images/s over ``count`` items of ``batches`` (each yields its batch size) after
    ``warmup`` items, with the device synchronised at both ends."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    synchronize(device)
    n, start = 0, time.perf_counter()
    for _, size in zip(range(count), it, strict=False):
        n += size
    synchronize(device)
    return n / (time.perf_counter() - start)


def pure_steps(model, optimizer, rt, batch: int, size: int):
    """Forward + backward + step on four fixed device batches, in the trainer's precision."""
    import torch

    criterion = torch.nn.CrossEntropyLoss()
    memory = torch.channels_last if rt.channels_last else torch.contiguous_format
    xs = [
        torch.randn(batch, 3, size, size, device=rt.device).contiguous(memory_format=memory)
        for _ in range(4)
    ]
    ys = [torch.randint(0, 2, (batch,), device=rt.device) for _ in range(4)]
    model.train()
    k = 0
    while True:
        with rt.autocast():
            loss = criterion(model(xs[k % 4]).float(), ys[k % 4])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        k += 1
        yield batch


def loader_batches(loader, rt, augment):
    """The trainer's data path without the model: batches on the device, optionally augmented
    and normalised (the trainer's ``Runtime.prepare``)."""
    from core.augment import epoch_generator

    epoch = 0
    while True:
        loader.sampler.sampler.set_epoch(epoch)
        generator = epoch_generator(0, epoch, 0)
        for images, _labels in loader:
            images = images.to(rt.device, non_blocking=True)
            if augment is not None:
                images = rt.prepare(images, augment, generator)
            yield len(images)
        epoch += 1


class GpuSampler:
    """SM utilisation (%) from ``nvidia-smi dmon`` while a block runs; empty without it."""

    def __init__(self, device):
        self.samples: list[int] = []
        self.proc = None
        if device.type == "cuda" and shutil.which("nvidia-smi"):
            index = device.index or 0
            self.proc = subprocess.Popen(
                ["nvidia-smi", "dmon", "-s", "u", "-d", "1", "-i", str(index)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        column = None
        for line in self.proc.stdout:
            fields = line.split()
            if line.startswith("#") and "sm" in fields:
                column = fields.index("sm") - 1  # "# gpu sm mem ..." : '#' is not a column
            elif column is not None and len(fields) > column and fields[column].isdigit():
                self.samples.append(int(fields[column]))

    def stop(self) -> str:
        if self.proc is None:
            return "not sampled (no CUDA or no nvidia-smi)"
        self.proc.terminate()
        self.proc.wait(timeout=10)
        s = self.samples[2:]  # the first seconds are process start-up
        if not s:
            return "no samples"
        return (
            f"median {statistics.median(s):.0f} %, mean {statistics.mean(s):.0f} %, "
            f"min {min(s)} %, max {max(s)} % ({len(s)} one-second samples)"
        )


def cli_epoch(data: Path, run: Path, model: str, batch: int, device, log_every: int) -> dict:
    """One epoch of `python -m core train` as a subprocess; times from its own files."""
    argv = [sys.executable, "-m", "core", "train", "--data", str(data), "--out", str(run)]
    argv += ["--model", model, "--batch-size", str(batch), "--epochs", "1"]
    argv += ["--device", device.type, "--log-every", str(log_every), "--seed", "0"]
    sampler = GpuSampler(device)
    launched = time.time()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    ended = time.time()
    utilisation = sampler.stop()
    if result.returncode != 0:
        raise RuntimeError(f"core train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    status = json.loads((run / "status.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    first = float(status["first_step_at"])
    images = train[-1]["step"] * batch
    marks = {**status["startup"], "first step": first}
    stages, before = [], launched
    for stage, at in marks.items():  # imports, dataset, model, loaders, first step
        stages.append(f"{stage} {at - before:.1f}")
        before = at
    return {
        "launch_to_first_step_s": first - launched,
        "startup": ", ".join(stages),
        "train_s": train[-1]["time"] - first,
        "images": images,
        "images_per_s": images / (train[-1]["time"] - first),
        "wall_s": ended - launched,
        "utilisation": utilisation,
    }


def bench_model(name: str, batch: int, args, data: Path, device, tmp: Path) -> None:
    import torch

    from core.augment import Augmentation
    from core.checkpoints import ModelCard
    from core.data import open_dataset
    from core.device import Dist, resolve_precision
    from core.loaders import BatchReader, make_loader, shutdown_workers
    from core.models import build_model
    from core.train import Runtime

    on_cuda = device.type == "cuda"
    model, _ = build_model(name)
    card = ModelCard.for_model(name, input_size=96)
    precision = resolve_precision("auto", device)  # what `core train` computes in
    rt = Runtime(device, card, channels_last=on_cuda, precision=precision)
    model.to(device, memory_format=torch.channels_last if on_cuda else torch.preserve_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = args.steps if on_cuda else max(2, args.steps // 20)
    pure = rate(device, pure_steps(model, optimizer, rt, batch, 96), steps)

    ds = open_dataset(data)
    reader = BatchReader(ds, ds.indices(split="train"))
    workers = min(4, os.cpu_count() or 1) if on_cuda else 0
    loader = make_loader(
        reader, batch, shuffle=True, seed=0, dist_info=Dist(), workers=workers, pin_memory=on_cuda
    )
    load = rate(device, loader_batches(loader, rt, None), steps * 2)
    augmented = rate(device, loader_batches(loader, rt, Augmentation()), steps * 2)
    shutdown_workers(loader)

    epoch = cli_epoch(data, tmp / f"run-{name}", name, batch, device, args.log_every)
    layout = ", channels_last" if on_cuda else ""
    print(f"\n{name}, batch {batch} ({precision}{layout}):")
    print(f"  pure step                {pure:10.0f} images/s")
    print(f"  loader alone             {load:10.0f} images/s  ({workers} workers)")
    print(f"  loader + augmentation    {augmented:10.0f} images/s")
    print(
        f"  core train epoch         {epoch['images_per_s']:10.0f} images/s  "
        f"({epoch['images']} images in {epoch['train_s']:.1f} s; process {epoch['wall_s']:.1f} s)"
    )
    print(f"  epoch / pure             {epoch['images_per_s'] / pure:10.2f}  (target >= 0.90)")
    print(f"  launch to first step     {epoch['launch_to_first_step_s']:10.1f} s  (target <= 5 s)")
    print(f"    by stage (s)           {epoch['startup']}")
    print(f"  GPU SM utilisation       {epoch['utilisation']}", flush=True)


def parse_models(text: str, default_batch: int) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, batch = item.partition(":")
        out.append((name, int(batch) if batch else default_batch))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="training patches (default 262144; CPU: 4096)")
    parser.add_argument("--models", default="resnet18:256,hcd_cnn", help="MODEL[:BATCH],...")
    parser.add_argument("--steps", type=int, default=100, help="timed batches (loader: 2x)")
    parser.add_argument("--log-every", type=int, default=100, help="the epoch's metrics lines")
    parser.add_argument("--tmp", help="folder for the temp data (default: the system's temp)")
    args = parser.parse_args()

    import torch

    from core.train_config import DEFAULTS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
        args.n = args.n or 262_144
    else:
        machine = "no CUDA: running on the CPU"
        args.n = args.n or 4096
    print(f"{machine}; torch {torch.__version__}; {os.cpu_count()} cores; --n {args.n}")
    tmp = Path(tempfile.mkdtemp(prefix="histolens-gpu-bench-", dir=args.tmp))
    try:
        start = time.perf_counter()
        data = write_random_pcam(tmp, args.n)
        print(f"wrote {args.n} + 2 x {args.n // 8} random 96x96 patches (uncompressed h5) "
              f"in {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
        for name, batch in parse_models(args.models, DEFAULTS["batch_size"]):
            try:
                bench_model(name, batch, args, data, device, tmp)
            except Exception as err:  # one shot on the GPU machine: measure the other models
                print(f"\n{name}, batch {batch}: FAILED {type(err).__name__}: {err}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
