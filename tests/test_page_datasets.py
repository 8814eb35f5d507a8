"""AppTest: the app and the Datasets page run on the demo data, and the filters change the view."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest
from drawn import drawn, ok, visit, widget  # noqa: E402 (after the skip)

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
PAGE = str(REPO / "pages" / "datasets.py")


@pytest.fixture
def demo_data(demo_root, tmp_path, monkeypatch):
    """A data root holding the session's demo (copied: pages may write caches beside it)."""
    data = tmp_path / "data"
    shutil.copytree(demo_root, data / "demo")
    monkeypatch.setenv("HISTOLENS_DATA", str(data))
    return data


def shown_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Showing"))


def zoom_keys(at) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith("zoom_")]


def test_app_runs_and_reaches_datasets(demo_data):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    at.switch_page("pages/datasets.py").run()
    assert not at.exception
    assert at.title[0].value.startswith("🗂️ Datasets")


def test_datasets_page_shows_summary_gallery_and_synthetic_label(demo_data):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.selectbox(key="datasets_entry").options == [
        "demo/hcd (hcd, synthetic)",
        "demo/idc (idc, synthetic)",
        "demo/pcam (pcam, synthetic)",
    ]
    assert any("Synthetic demo data" in w.value for w in at.warning)
    assert len(zoom_keys(at)) == 64
    assert "synthetic patches" in shown_caption(at)


@pytest.mark.parametrize("entry", [0, 1, 2])
def test_every_demo_format_renders(demo_data, entry):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.selectbox(key="datasets_entry").select_index(entry).run()
    assert not at.exception
    assert zoom_keys(at)


def test_filter_change_changes_the_gallery(demo_data):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    names = at.selectbox(key="datasets_entry").options
    at.selectbox(key="datasets_entry").select_index(
        names.index("demo/pcam (pcam, synthetic)")
    ).run()
    before_caption, before_keys = shown_caption(at), zoom_keys(at)
    at.selectbox(key="gallery_split").select("test").run()
    assert not at.exception
    assert shown_caption(at) != before_caption and "of 256" in shown_caption(at)
    assert zoom_keys(at) != before_keys
    at.selectbox(key="gallery_label").select(1).run()
    assert "of 128" in shown_caption(at)


def test_enlarge_and_page(demo_data):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    first_page = zoom_keys(at)
    chosen = first_page[3]
    at.button(key=chosen).click().run()
    assert not at.exception
    assert any(f"Synthetic patch #{chosen.removeprefix('zoom_')}*" in m.value for m in at.markdown)
    at.number_input(key="gallery_page").set_value(2).run()
    assert not at.exception
    assert zoom_keys(at) and not set(zoom_keys(at)) & set(first_page)


def open_tab(at, label: str):
    at.session_state["datasets_tab"] = label
    return ok(at.run())


def test_only_the_open_tab_runs(demo_data):
    """Tabs are lazy: the first open draws the gallery only; colour statistics (a sample of
    patches read) and the slide mosaic run when their tab is opened, and the gallery then not."""
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    entry = at.selectbox(key="datasets_entry")
    entry.select_index(next(k for k, o in enumerate(entry.options) if "demo/idc" in o)).run()
    assert zoom_keys(at)
    assert not [m for m in at.metric if m.label == "Near-white background patches"]
    assert not [c for c in at.caption if "patches at scale" in c.value]

    open_tab(at, "Colour statistics")
    assert [m for m in at.metric if m.label == "Near-white background patches"]
    assert any("patches drawn with seed 0" in c.value for c in at.caption)
    assert not zoom_keys(at)

    open_tab(at, "Slide mosaic")
    assert any("patches at scale" in c.value for c in at.caption)
    assert not [m for m in at.metric if m.label == "Near-white background patches"]

    open_tab(at, "Gallery")
    assert len(zoom_keys(at)) == 64


def test_switching_dataset_resets_its_patient_choices_without_a_warning(demo_data):
    """The mosaic's patient belonged to the other dataset: nothing was lost, so no "No longer
    available" warning (it read as if something had gone wrong)."""
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    entry = at.selectbox(key="datasets_entry")
    entry.select_index(next(k for k, o in enumerate(entry.options) if "demo/idc" in o)).run()
    open_tab(at, "Slide mosaic")
    idc_patient = at.selectbox(key="mosaic_patient").value
    entry = at.selectbox(key="datasets_entry")
    entry.select_index(next(k for k, o in enumerate(entry.options) if "demo/pcam" in o)).run()
    assert not at.exception
    assert not [w for w in at.warning if "No longer available" in w.value]
    assert at.selectbox(key="mosaic_patient").value != idc_patient
    assert any("patches at scale" in c.value for c in at.caption)


def test_path_outside_data_root_is_refused(demo_data, tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="datasets_path").input(str(tmp_path)).run()
    assert not at.exception
    assert any("outside the data root" in e.value for e in at.error)


def test_a_typed_folder_that_is_not_a_dataset_shows_its_message_literally(demo_data):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="datasets_path").input("demo").run()
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "not a dataset" in message
    assert r"camelyonpatch\_\*.h5" in message  # Markdown-escaped: shows as camelyonpatch_*.h5
    demo = demo_data / "demo"  # the three demo sets are one level down: the message names them
    plain = message.replace("\\_", "_")  # the page escapes Markdown; paths hold underscores
    assert f"one level down: {demo / 'hcd'} (HCD), {demo / 'idc'} (IDC), {demo / 'pcam'}" in plain
    assert message.split("  \n")[0].endswith("give one of them.")
    # the list in the sidebar is not in use while a folder is typed: the fix says so
    assert message.endswith("Clear the typed folder in the sidebar, or type another one.")
    assert any("typed folder" in c.value for c in at.sidebar.caption)


def test_datasets_choices_survive_a_visit_to_another_page(demo_data):
    """Issue 13, item 3: real IDC + tumour, Home and back, showed demo HCD, all labels."""
    at = visit(ok(AppTest.from_file(APP, default_timeout=120).run()), "datasets")
    entry = widget(at.sidebar, "selectbox", "Dataset")
    entry.select_index(next(k for k, o in enumerate(entry.options) if "demo/idc" in o))
    drawn(at, entry)
    drawn(at, widget(at, "selectbox", "Label").set_value(1))
    visit(at, "home")
    visit(at, "datasets")
    entry = widget(at.sidebar, "selectbox", "Dataset")
    assert "demo/idc" in entry.options[entry.index]
    assert widget(at, "selectbox", "Label").value == 1

    open_tab(at, "Slide mosaic")  # the open tab is kept too (it came back on Gallery)
    visit(at, "home")
    visit(at, "datasets")
    assert at.session_state["datasets_tab"] == "Slide mosaic"
    assert any("patches at scale" in c.value for c in at.caption) and not zoom_keys(at)


def test_first_launch_shows_the_first_demo_set_while_the_others_are_written(tmp_path, monkeypatch):
    """The page waits for the background writer's first set (PCam) only: it is listed and
    shown, with a line saying more are coming, while the next set is still being written."""
    import threading

    from core.data import demo

    small = dict(pcam=(("train", 8, 1),), hcd_labelled=4, hcd_test=0, hcd_slides=1)
    full_size, write_hcd, release = demo.DemoSizes, demo.WRITERS["hcd"], threading.Event()

    def held_hcd(*args):
        assert release.wait(120), "the test never released the HCD writer"
        return write_hcd(*args)

    monkeypatch.setattr(demo, "DemoSizes", lambda: full_size(**small, idc_patients=1))
    monkeypatch.setitem(demo.WRITERS, "hcd", held_hcd)
    monkeypatch.setenv("HISTOLENS_DATA", str(tmp_path / "data"))
    try:
        at = AppTest.from_file(PAGE, default_timeout=180).run()
        assert not at.exception, at.exception
        assert [str(o) for o in at.sidebar.selectbox[0].options] == ["demo/pcam (pcam, synthetic)"]
        assert shown_caption(at).startswith("Showing")
        assert any("2 more demo set(s) are being written" in c.value for c in at.caption)
    finally:
        release.set()
    deadline = time.monotonic() + 120
    while not demo.demo_in_background().ready:  # no writer left running after the test
        assert time.monotonic() < deadline, "the demo was never finished"
        time.sleep(0.05)


def wait_for_check(path, timeout_s: float = 120):
    """The background check of ``path`` once it ended (the page only polls it)."""
    from core.data.check import check_progress

    deadline = time.monotonic() + timeout_s
    while (progress := check_progress(path)) is not None and progress.running:
        assert time.monotonic() < deadline, "the background check never ended"
        time.sleep(0.1)
    return progress


def pick(at, name: str):
    entry = at.selectbox(key="datasets_entry")
    entry.select_index(next(k for k, o in enumerate(entry.options) if name in o)).run()
    return ok(at)


def test_check_every_patch_finds_a_damaged_one_and_excludes_it(demo_data):
    root = demo_data / "demo" / "idc"
    damaged = sorted(root.glob("*/*/*.png"))[5]
    damaged.write_bytes(damaged.read_bytes()[:100])
    at = pick(AppTest.from_file(PAGE, default_timeout=60).run(), "demo/idc")
    n = int(next(m for m in at.metric if m.label == "Patches").value.replace(",", ""))
    assert not [m for m in at.metric if m.label == "Excluded"]
    at.button(key="datasets_check").click().run()
    assert not at.exception
    progress = wait_for_check(root)
    assert progress.report is not None and len(progress.report.unreadable) == 1
    ok(at.run())
    assert any("1 unreadable patch(es)" in e.value for e in at.error)
    shown = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    assert list(shown["id"]) == [damaged.stem] and "truncated or corrupt" in shown["reason"][0]
    at.button(key="datasets_exclude").click().run()
    assert not at.exception
    assert next(m for m in at.metric if m.label == "Excluded").value == "1"
    patches = next(m for m in at.metric if m.label == "Patches").value
    assert int(patches.replace(",", "")) == n - 1
    assert any("Excluded: every page and run leaves them out" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "datasets_exclude"]


def test_check_every_patch_of_a_clean_set_says_so(demo_data):
    at = pick(AppTest.from_file(PAGE, default_timeout=60).run(), "demo/hcd")
    at.button(key="datasets_check").click().run()
    assert wait_for_check(demo_data / "demo" / "hcd").report.clean
    ok(at.run())
    assert any(s.value.startswith("Every patch reads") for s in at.success)


def test_an_exclusion_made_on_the_command_line_shows_at_the_next_rerun(demo_data):
    import subprocess
    import sys

    import h5py

    root = demo_data / "demo" / "pcam"
    at = pick(AppTest.from_file(PAGE, default_timeout=60).run(), "demo/pcam")
    caption = shown_caption(at)
    x = root / "camelyonpatch_level_2_split_train_x.h5"
    with h5py.File(x, "r") as f:
        chunk = f["x"].id.get_chunk_info(0)
    with open(x, "r+b") as fh:  # the first patch's compressed bytes, zeroed
        fh.seek(chunk.byte_offset)
        fh.write(b"\0" * chunk.size)
    # another process, as from a terminal (this one's HDF5 keeps the open file's chunks cached)
    command = [sys.executable, "-m", "core", "data", "check", str(root), "--exclude"]
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0
    ok(at.run())
    assert next(m for m in at.metric if m.label == "Excluded").value == "1"
    assert shown_caption(at) != caption  # the gallery's count too
