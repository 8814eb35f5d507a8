"""One data-root rule for the list and the typed box: entries the owner places in the data root
(folders or links to other disks) open both ways; nothing below them may lead outside; odd
typed names are one-line messages; links inside a dataset that leave it are reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import FAKE_WRITERS

from core import config
from core.data import list_datasets, open_dataset
from core.data.base import OUTWARD_LINKS


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


@pytest.mark.parametrize("fmt", sorted(FAKE_WRITERS))
def test_owner_links_to_other_disks_open_from_the_list_and_the_typed_box(fmt, root, tmp_path):
    FAKE_WRITERS[fmt](tmp_path / "other-disk" / fmt)
    (root / "big").symlink_to(tmp_path / "other-disk" / fmt)
    FAKE_WRITERS[fmt](root / "shelf" / fmt)
    listed = {e.name: e.path for e in list_datasets()}
    assert set(listed) == {"big", f"shelf/{fmt}"}
    for name, path in listed.items():
        typed = config.folder_in_data_root(name)
        assert typed == path
        assert len(open_dataset(typed)) == len(open_dataset(path)) > 0


def test_a_link_below_a_root_entry_that_leads_outside_is_neither_listed_nor_typed(root, tmp_path):
    FAKE_WRITERS["idc"](tmp_path / "outside" / "idc")
    (root / "shelf").mkdir()
    (root / "shelf" / "escape").symlink_to(tmp_path / "outside" / "idc")
    assert list_datasets() == []
    with pytest.raises(ValueError, match="outside the data root"):
        config.folder_in_data_root("shelf/escape")


@pytest.mark.parametrize(
    "typed",
    [
        "x" * 300,
        "a/" * 300,
        "demo\n/idc",
        "demo\x00",
        "\x1b[31mred",
        "../x",
        "demo/../../etc",
        "/etc",
    ],
)
def test_odd_typed_names_are_one_line_messages(typed, root):
    with pytest.raises(ValueError) as err:
        config.folder_in_data_root(typed)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def _link_out(fake, tmp_path):
    """Replace one data file (or IDC label folder) of ``fake`` by a link to a copy outside."""
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    if fake.format == "pcam":
        inner = fake.root / "camelyonpatch_level_2_split_test_x.h5"
    elif fake.format == "idc":
        inner = sorted(fake.files.values())[0].parent  # a <patient>/<label> folder
    else:
        inner = sorted(fake.files.values())[0]
    moved = outside / inner.name
    inner.rename(moved)
    inner.symlink_to(moved)
    return inner


@pytest.mark.parametrize("fmt", sorted(FAKE_WRITERS))
def test_links_inside_a_dataset_that_leave_it_are_reported(fmt, tmp_path):
    fake = FAKE_WRITERS[fmt](tmp_path / fmt)
    link = _link_out(fake, tmp_path)
    ds = open_dataset(fake.root)
    assert any(OUTWARD_LINKS in p and str(link) in p for p in ds.problems), ds.problems
    assert len(ds) == len(open_dataset(fake.root))


def test_datasets_page_marks_a_broken_first_dataset_and_goes_on(root):
    """A broken set that sorts first is marked in the select box with one error, never a crash;
    the next one opens."""
    from helpers import rewrite_h5, write_fake_idc, write_fake_pcam

    at_cls = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest
    write_fake_pcam(root / "a-broken")
    rewrite_h5(root / "a-broken" / "camelyonpatch_level_2_split_train_y.h5", "y", data=1)
    write_fake_idc(root / "b-good")
    page = str(Path(__file__).resolve().parent.parent / "pages" / "datasets.py")
    at = at_cls.from_file(page, default_timeout=120).run()
    assert not at.exception
    assert len(at.error) == 1 and "y.h5: 'y' is a single value" in at.error[0].value
    box = at.selectbox(key="datasets_entry")
    assert box.options[0].startswith("⚠ a-broken") and not box.options[1].startswith("⚠")
    box.set_value(next(e for e in list_datasets() if e.name == "b-good")).run()
    assert not at.exception and not at.error
