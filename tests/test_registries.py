"""Every registry entry is tied to its test material, as timm and torchvision do it: each
registered model names its classifier head, and each registered dataset reader has a fake-data
writer in conftest (a new reader without one fails here)."""

from __future__ import annotations

import conftest
import pytest

from core.data import READERS, detect_format, open_dataset
from core.models import MODELS, build_model, get_target_layer


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_names_its_two_logit_classifier(name):
    torch = pytest.importorskip("torch")
    model, _ = build_model(name)
    head = get_target_layer(model, MODELS[name].classifier)
    assert isinstance(head, torch.nn.Linear) and head.out_features == 2


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """Every fake dataset conftest's fake_set fixture runs the shared reader checks on."""
    root = tmp_path_factory.mktemp("fakes")
    return {key: write(root / key) for key, write in conftest.FAKE_WRITERS.items()}


def test_every_registered_reader_has_a_fake_data_writer(fakes):
    missing = set(READERS) - {fake.format for fake in fakes.values()}
    assert not missing, f"tests/conftest.py FAKE_WRITERS writes no {sorted(missing)} data"


@pytest.mark.parametrize("key", sorted(conftest.FAKE_WRITERS))
def test_each_fake_writer_writes_its_readers_format(key, fakes):
    fake = fakes[key]
    assert detect_format(fake.root) == fake.format
    ds = open_dataset(fake.root)
    assert ds.format == fake.format and len(ds) == len(fake.pixels) > 0
