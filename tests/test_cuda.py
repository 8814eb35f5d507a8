"""CUDA only (skipped with the reason elsewhere): training steps never make the host wait for
the GPU, apart from the logging flush every ``log_every`` steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core import train
from core.augment import Augmentation, epoch_generator
from core.checkpoints import ModelCard
from core.data import open_dataset
from core.device import Dist
from core.loaders import BatchReader, make_loader
from core.models import build_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: checks host-device synchronisation"
)


def test_training_steps_do_not_synchronise_except_the_log_flush(demo_root, monkeypatch):
    device = torch.device("cuda")
    ds = open_dataset(demo_root / "pcam")
    reader = BatchReader(ds, ds.indices(split="train"))
    loader = make_loader(
        reader, 16, shuffle=True, seed=0, dist_info=Dist(), workers=0, pin_memory=True
    )
    model, _ = build_model("hcd_cnn")
    model.to(device, memory_format=torch.channels_last)
    rt = train.Runtime(device, ModelCard.for_model("hcd_cnn"), channels_last=True, precision="bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    flushes = []
    real_flush = train._Window.flush

    def allowed_flush(window):
        torch.cuda.set_sync_debug_mode("default")
        try:
            flushes.append(1)
            return real_flush(window)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(train._Window, "flush", allowed_flush)

    def epoch(limit: int):
        return train.train_one_epoch(
            model, loader, optimizer, nn.CrossEntropyLoss(), rt, epoch=0,
            generator=epoch_generator(0, 0, 0), augment=Augmentation(), scheduler=scheduler,
            limit=limit, log_every=3,
        )  # fmt: skip

    epoch(limit=1)  # warm-up: lazy initialisation (cuBLAS/cuDNN handles, index maps) may wait
    flushes.clear()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = epoch(limit=6)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result["n"] == 6 * 16 and len(flushes) == 2
