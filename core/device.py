"""Where the work runs: device choice, autocast precision, seeding and torchrun set-up.

Training, evaluation and CAMs import this small module instead of the training loop.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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
        raise ValueError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: Apple MPS is not available; use --device cpu or auto")
    if kind == "cuda":
        index = int(requested.split(":")[1]) if ":" in requested else local_rank
        return torch.device("cuda", index)
    return torch.device(kind)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); a no-op context elsewhere."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


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
