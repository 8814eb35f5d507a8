"""core.loaders.device_batches: preparing batches ahead in a thread (the CUDA default) changes
when the data path runs, never what it yields: same batches, same random draws, same trained
weights; a loader error reaches the training loop; stopping early leaves no thread behind."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from core import train
from core.augment import Augmentation, epoch_generator
from core.checkpoints import ModelCard
from core.data import open_dataset
from core.device import Dist
from core.loaders import BatchReader, device_batches, make_loader
from core.models import build_model

CPU = torch.device("cpu")


@pytest.fixture
def loader(demo_root):
    ds = open_dataset(demo_root / "pcam")
    reader = BatchReader(ds, ds.indices(split="train")[:96])
    return make_loader(
        reader, 16, shuffle=True, seed=0, dist_info=Dist(), workers=0, pin_memory=False
    )


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "histolens-prefetch"]


def augmented(rt: train.Runtime, generator):
    return lambda images: rt.prepare(images, Augmentation(), generator)


def test_ahead_yields_the_same_batches_and_random_draws_as_inline(loader):
    rt = train.Runtime(CPU, ModelCard.for_model("hcd_cnn"))
    runs = {}
    for ahead in (False, True):
        prepare = augmented(rt, epoch_generator(0, 0, 0))
        runs[ahead] = list(device_batches(loader, CPU, prepare, ahead=ahead))
    assert len(runs[True]) == len(runs[False]) == 6
    for (x, y), (x_ahead, y_ahead) in zip(runs[False], runs[True], strict=True):
        assert x.dtype == torch.float32 and torch.equal(x, x_ahead) and torch.equal(y, y_ahead)
    assert not prefetch_threads()


def test_a_loader_error_reaches_the_consumer_and_the_thread_ends():
    def broken():
        yield torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
        raise OSError("truncated file: batch 2")

    batches = device_batches(broken(), CPU, lambda x: x.float(), ahead=True)
    assert next(batches)[0].shape == (2, 4, 4, 3)
    with pytest.raises(OSError, match="truncated file: batch 2"):
        next(batches)
    assert not prefetch_threads()


def test_closing_early_stops_the_thread_without_reading_the_rest():
    taken = []

    def endless():
        while True:
            taken.append(1)
            yield torch.zeros(1, 2, 2, 3, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64)

    batches = device_batches(endless(), CPU, lambda x: x.float(), ahead=True, depth=2)
    next(batches)
    assert prefetch_threads()
    batches.close()  # what a cancel (TrainingCancelled) or an error in the step does
    assert not prefetch_threads()
    assert len(taken) <= 1 + 2 + 1  # the one consumed, a full queue, the one in hand


@pytest.fixture
def one_cpu_thread():
    """CPU reductions then do not depend on the thread count (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_with_the_prefetch_thread_gives_the_same_weights(loader, one_cpu_thread):
    weights = {}
    for ahead in (False, True):
        torch.manual_seed(0)
        model, _ = build_model("hcd_cnn")
        rt = train.Runtime(CPU, ModelCard.for_model("hcd_cnn"), prefetch=ahead)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        result = train.train_one_epoch(
            model, loader, optimizer, nn.CrossEntropyLoss(), rt, epoch=0,
            generator=epoch_generator(0, 0, 0), augment=Augmentation(), limit=4, log_every=2,
        )  # fmt: skip
        assert result["n"] == 4 * 16
        weights[ahead] = model.state_dict()
    for name, value in weights[False].items():
        assert torch.equal(value, weights[True][name]), name


def test_a_cancel_inside_the_epoch_stops_the_prefetch_thread(loader):
    model, _ = build_model("hcd_cnn")
    rt = train.Runtime(CPU, ModelCard.for_model("hcd_cnn"), prefetch=True)
    calls = []

    def stop_at_second_step():
        calls.append(1)
        return len(calls) == 2

    with pytest.raises(train.TrainingCancelled):
        train.train_one_epoch(
            model, loader, torch.optim.AdamW(model.parameters()), nn.CrossEntropyLoss(), rt,
            epoch=0, generator=epoch_generator(0, 0, 0), should_stop=stop_at_second_step,
        )  # fmt: skip
    assert not prefetch_threads()
