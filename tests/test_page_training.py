"""The Training page under AppTest: it starts a real (tiny) background run and its status,
polled through the page's own refresh, moves to finished; failed and killed runs show errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from core import run_folder

AppTest = pytest.importorskip("streamlit.testing.v1", reason="needs streamlit").AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "training.py")


@pytest.fixture
def data_root(demo_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "demo").symlink_to(demo_root, target_is_directory=True)
    monkeypatch.setenv("HISTOLENS_DATA", str(root))
    return root


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_start_a_tiny_job_from_the_page_and_see_it_finish(data_root):
    at = page()
    at.selectbox(key="training_data").set_value(str(data_root / "demo" / "idc"))
    at.number_input(key="training_epochs").set_value(1)
    at.number_input(key="training_batch").set_value(16)
    at.number_input(key="training_limit").set_value(2)
    at.selectbox(key="training_device").set_value("cpu")
    at.text_input(key="training_name").set_value("smoke")
    at.number_input(key="training_seed").set_value(2)
    at.number_input(key="training_split_seed").set_value(3)
    at.selectbox(key="training_stain_norm").set_value("reinhard")
    at.button[0].click().run()
    assert not at.exception, at.exception
    runs = run_folder.list_runs()
    assert len(runs) == 1 and runs[0].config["data"].endswith("idc")
    assert "-bn_cnn-smoke-" in runs[0].name  # the model the trainer picks, and the user's name
    assert (runs[0].config["seed"], runs[0].config["split_seed"]) == (2, 3)
    assert runs[0].config["stain_norm"] == "reinhard"
    deadline = time.monotonic() + 150
    while (
        run_folder.read_status(runs[0].path)["state"] in run_folder.ACTIVE_STATES
        and time.monotonic() < deadline
    ):
        time.sleep(1)
        at.run()  # AppTest advances the run_every fragment on run()
        assert not at.exception, at.exception
    at.run()
    assert run_folder.read_status(runs[0].path)["state"] == "finished", run_folder.tail_log(
        runs[0].path
    )
    assert "`finished`" in " ".join(m.value for m in at.markdown)
    assert at.multiselect(key="training_selected").value == [runs[0].name]
    assert len(at.get("plotly_chart")) == 1
    from core.checkpoints import read_card

    assert read_card(runs[0].path / "best.pt").stain_norm["method"] == "reinhard"
    table = at.dataframe[0].value
    assert list(table["dataset"]) == ["demo/idc"]


def test_a_failed_and_a_killed_run_show_their_errors(data_root, tmp_path):
    failed = run_folder.make_run_dir("resnet18")
    run_folder.write_config(failed, {"data": "x", "model": "resnet18"})
    run_folder.write_status(
        failed, state="failed", error="boom: out of memory", traceback="Traceback ..."
    )
    killed = run_folder.make_run_dir("idc_cnn")
    run_folder.write_config(killed, {"data": "x", "model": "idc_cnn"})
    run_folder.write_status(killed, state="running", pid=2**22 + 11, host=os.uname().nodename)
    at = page()
    at.multiselect(key="training_selected").set_value([failed.name, killed.name]).run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "boom: out of memory" in errors and "--resume" in errors
    table = at.dataframe[0].value
    assert set(table["state"]) == {"failed"}


def test_the_page_runs_standalone_with_no_runs(data_root):
    at = page()
    assert any("No runs yet" in i.value for i in at.info)


def test_a_cancelled_run_shows_no_eta_and_offers_its_best_checkpoint(data_root):
    """A cancelled run still showed "ETA 4m 04s"; its best.pt (calibrated, like a finished
    run's) was offered only for finished runs."""
    run = run_folder.make_run_dir("bn_cnn")
    run_folder.write_config(run, {"data": "x", "model": "bn_cnn"})
    progress = {"epoch": 2, "epochs": 6, "step": 5, "steps_per_epoch": 9, "fraction": 0.3}
    run_folder.write_status(run, state="cancelled", progress=progress | {"eta_s": 244.0})
    (run / "best.pt").write_bytes(b"a checkpoint")
    at = page()
    at.multiselect(key="training_selected").set_value([run.name]).run()
    assert not at.exception, at.exception
    texts = [p.proto.text for p in at.get("progress")]
    assert texts and not any("ETA" in t for t in texts)
    assert any("best checkpoint" in c.value and "best.pt" in c.value for c in at.caption)
    assert "created" not in at.dataframe[0].value.columns  # the run name holds its start time
