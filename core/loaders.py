"""Training and validation loaders that read whole uint8 batches.

A worker reads one batch with one ``read_batch`` call as uint8 N×H×W×3; augmentation, resizing
and normalisation happen on the device afterwards (core.augment, core.preprocess).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from core.device import Dist


class BatchReader(Dataset):
    """Positions in ``indices`` -> one (uint8 N×H×W×3, int64 labels) batch per item.

    Used with a BatchSampler as the DataLoader's sampler and ``batch_size=None``, so each worker
    reads a whole batch with one ``read_batch`` call. The PatchDataset pickles without file
    handles and opens them lazily, so every worker reopens its own h5 file.

    ``shuffle_seed`` permutes the labels among these patches (the data randomisation test):
    the class counts stay, the pairing of image and label is gone.
    """

    def __init__(self, ds, indices: np.ndarray, shuffle_seed: int | None = None):
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = ds.meta["label"].to_numpy(dtype=np.int64)[self.indices]
        if shuffle_seed is not None:
            self.labels = np.random.default_rng(shuffle_seed).permutation(self.labels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions) -> tuple[torch.Tensor, torch.Tensor]:
        positions = np.asarray(positions, dtype=np.int64)
        images = self.ds.read_batch(self.indices[positions])
        return torch.from_numpy(images), torch.from_numpy(self.labels[positions])


def make_loader(
    reader: BatchReader,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    dist_info: Dist,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Training loaders shuffle with DistributedSampler (also for one process: it gives a
    seeded order per epoch via set_epoch) and drop a ragged last batch; validation loaders
    take a contiguous shard per rank without padding, so every patch counts exactly once.
    Each loader has its own generator: a DataLoader draws its workers' base seed whenever it
    makes an iterator (every epoch without persistent workers), and from torch's global RNG,
    which dropout uses, when it has none."""
    if shuffle:
        sampler = DistributedSampler(
            reader, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=seed
        )
        drop_last = len(sampler) > batch_size
    else:
        sampler = range(dist_info.rank, len(reader), dist_info.world)
        drop_last = False
    return DataLoader(
        reader,
        sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def shutdown_workers(*loaders: DataLoader) -> None:
    """Stop the loaders' persistent workers now and in order (each gets its end-of-work
    message and is joined), not at interpreter exit. A cancelled run ends this way too."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # persistent workers live here
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None
