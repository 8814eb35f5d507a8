"""Where the work runs: device choice, precision (autocast), seeding and torchrun set-up.

Training, evaluation and CAMs import this small module instead of the training loop.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from core.errors import InputError
from core.train_config import precision_without_cuda


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) before any random draw."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """cuda > mps > cpu for "auto"; an explicit device that is not available is an error."""
    kind = requested.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: Apple MPS is not available; use --device cpu or auto")
    if kind == "cuda":
        index = int(requested.split(":")[1]) if ":" in requested else local_rank
        return torch.device("cuda", index)
    return torch.device(kind)


def default_workers(device: torch.device) -> int:
    """DataLoader workers when the config leaves it open: up to 4 on CUDA (the host must keep
    the GPU fed), none on the CPU (the cores do the model's math; a worker would take one)."""
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run computes in: "auto" = bf16 on CUDA (fp16 on GPUs without bf16),
    fp32 elsewhere; "fp32" and "bf16" are taken as asked, on any device (bf16 autocast runs on
    the CPU too, which is how CPU tests cover the path CUDA machines take by default)."""
    if device.type == "cuda" and requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision_without_cuda(requested)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(device: torch.device, precision: str = "auto"):
    """The autocast context of ``precision`` on ``device`` (a disabled one for fp32)."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[resolved])


@dataclass(frozen=True)
class Dist:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> Dist:
    """Join the torchrun process group (nccl on CUDA, gloo otherwise) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_request.split(":")[0] in ("auto", "cuda")
        if use_nccl:
            torch.cuda.set_device(local_rank)  # before NCCL init: one GPU per process
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: on CUDA it is copied from
    pinned memory with ``non_blocking`` (a plain copy synchronises host and device)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


_ONE_THREAD = threading.Lock()
_one_thread_holders = 0  # how many one_thread() blocks are open, in any thread
_threads_before = 0  # torch's thread count when the first of them opened


@contextlib.contextmanager
def one_thread():
    """Small host-side tensor math on one thread. With the cores busy (loader workers, other
    runs) every OpenMP region waits for a time slice: one batch's augmentation parameters took
    13-26 ms on 2 threads vs 0.5 ms on one (2 loaded cores), enough to starve a GPU.

    torch's thread count is the process's, and the app runs blocks like this from several
    threads at once (a sanity check, a stain sweep, another session's stain slider): the first
    block to open saves the count and the last to close restores it. Saving and restoring per
    block left the process on one thread for good when two blocks overlapped out of order."""
    global _one_thread_holders, _threads_before
    with _ONE_THREAD:
        if _one_thread_holders == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _one_thread_holders += 1
    try:
        yield
    finally:
        with _ONE_THREAD:
            _one_thread_holders -= 1
            if _one_thread_holders == 0:
                torch.set_num_threads(_threads_before)


def busy_cores(device: torch.device) -> str | None:
    """Why CPU training should run on one thread, or None. When other processes already keep
    every core busy (1-minute load average ≥ cores), each of torch's OpenMP regions waits for
    all its threads to get a time slice: on 2 cores at load 6-12, one 30-step bn_cnn run
    trained in 63 s on one thread vs 95 s on two, with 0.47x the CPU time. An explicit
    OMP_NUM_THREADS is the user's choice and is kept."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if cores < 2 or load < cores:
        return None
    return (
        f"the {cores} cores are busy (load {load:.1f}): training on one thread, which is "
        "faster there (set OMP_NUM_THREADS to choose)"
    )
