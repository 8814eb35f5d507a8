"""Training and validation loaders that read whole uint8 batches.

A worker reads one batch with one ``read_batch`` call as uint8 N×H×W×3; augmentation, resizing
and normalisation happen on the device afterwards (core.augment, core.preprocess).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from core.device import Dist


class BatchReader(Dataset):
    """Positions in ``indices`` -> one (uint8 N×H×W×3, int64 labels) batch per item.

    Used with a BatchSampler as the DataLoader's sampler and ``batch_size=None``, so each worker
    reads a whole batch with one ``read_batch`` call. The PatchDataset pickles without file
    handles and opens them lazily, so every worker reopens its own h5 file.
    """

    def __init__(self, ds, indices: np.ndarray):
        self.ds = ds
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = ds.meta["label"].to_numpy(dtype=np.int64)[self.indices]

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
    take a contiguous shard per rank without padding, so every patch counts exactly once."""
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
    )


def shutdown_workers(*loaders: DataLoader) -> None:
    """Stop the loaders' persistent workers now and in order (each gets its end-of-work
    message and is joined), not at interpreter exit. A cancelled run ends this way too."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)  # persistent workers live here
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


def device_batches(
    batches: Iterable,
    device: torch.device,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    ahead: bool,
    depth: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(model input, labels) on ``device`` for each (uint8 images, labels) of ``batches``;
    ``prepare`` turns the uint8 batch on the device into the model input (augmentation and
    normalisation: ``Runtime.prepare``), called once per batch, in order.

    With ``ahead`` a background thread does this up to ``depth`` batches in advance, on a side
    CUDA stream: the host work of the data path (taking the batch from the loader's workers,
    the copy, the augmentation's draws and launches) then runs while the main thread is inside
    the model step, whose ``backward`` releases the GIL, instead of in series with it (measured
    on an H200: the step and the data path each cost the host ~11 ms per resnet18 batch of 256,
    so in series the GPU idled three quarters of the time). This is the timm / NVIDIA
    "prefetcher" with the host part moved off the main thread. The batches, their order and
    every random draw are the same either way (``prepare`` runs in order on one thread).

    A failure in the thread is raised here, in the consumer; closing the iterator early (a
    cancel, an error in the step) stops the thread and waits for it, so the loader's workers
    can then be shut down in order."""
    if not ahead:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            yield prepare(images), labels.to(device, non_blocking=True)
        return
    yield from _Prefetcher(batches, device, prepare, depth)


_END = object()


class _Prefetcher:
    """The ``ahead`` half of ``device_batches``: one producer thread, a bounded queue."""

    def __init__(self, batches, device, prepare, depth: int):
        self.batches, self.device, self.prepare = batches, device, prepare
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.cuda = device.type == "cuda"

    def __iter__(self):
        thread = threading.Thread(target=self._produce, name="histolens-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = self.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                inputs, labels, ready = item
                if ready is not None:  # the side stream's work on this batch comes first
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(ready)
                    inputs.record_stream(stream)  # memory made on the side stream, used here
                    labels.record_stream(stream)
                yield inputs, labels
        finally:
            self.stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    self.queue.get(timeout=0.05)
            thread.join()

    def _produce(self) -> None:
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        try:
            for images, labels in self.batches:
                if self.stop.is_set():
                    return
                with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
                    inputs = self.prepare(images.to(self.device, non_blocking=True))
                    labels = labels.to(self.device, non_blocking=True)
                    ready = stream.record_event() if stream else None
                if not self._put((inputs, labels, ready)):
                    return
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(err)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
