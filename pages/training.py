"""Training: start runs as background processes, watch their live curves, cancel them.

UI only. core.jobs starts `python -m core train` in its own process; core.run_folder reads run
directories from disk, so runs survive an app restart and runs started from the command line
show up too.
Each browser session keeps its own choices in st.session_state; runs never share a directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run pages/<page>.py` puts only pages/ on sys.path; make `core` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import jobs, run_folder
from core.config import RESEARCH_NOTICE
from core.data import list_datasets
from core.data.registry import MAX_SEED
from core.figures import curves_figure
from core.train_config import DEFAULTS, DEVICES, SCHEDULERS, STAIN_NORMS, TrainConfig
from pages._shared import ensure_demo_or_warn, public_mode
from pages._shared.state import SESSION

REFRESH = "2s"
AUTO_MODEL = "auto (recommended for the patch size)"
# TrainConfig field -> the widget (session-state key) that sets it
WIDGETS = {
    "epochs": "training_epochs",
    "batch_size": "training_batch",
    "lr": "training_lr",
    "augment": "training_augment",
    "class_weighting": "training_class_weighting",
    "device": "training_device",
    "seed": "training_seed",
    "split_seed": "training_split_seed",
    "scheduler": "training_scheduler",
    "patience": "training_patience",
    "limit_batches": "training_limit",
    "stain_norm": "training_stain_norm",
}


@st.cache_data(show_spinner=False, max_entries=1)
def model_descriptions() -> dict[str, str]:
    from core.models import MODELS  # imports torch: only when this page runs

    return {name: spec.description for name, spec in MODELS.items()}


def dataset_choices() -> dict[str, str]:
    entries = list_datasets()
    if not entries:
        ensure_demo_or_warn()  # first launch: the embedded synthetic demo
        entries = list_datasets()
    return {str(e.path): e.label() for e in entries}


def start_form() -> None:
    datasets = dataset_choices()
    models = model_descriptions()
    with st.form("training_start"):
        st.subheader("Start a run")
        data = st.selectbox(
            "Dataset",
            list(datasets),
            format_func=datasets.get,
            key="training_data",
            persist_state=SESSION,
        )
        model = st.selectbox(
            "Model",
            [AUTO_MODEL, *models],
            format_func=lambda m: m if m == AUTO_MODEL else f"{m} — {models[m]}",
            key="training_model",
            persist_state=SESSION,
        )
        name = st.text_input(
            "Run name (optional)",
            max_chars=30,
            key="training_name",
            persist_state=SESSION,
            help="Added to the run folder after the model, e.g. `idc_cnn-baseline`.",
        )
        c1, c2, c3, c4 = st.columns(4)
        c1.number_input("Epochs", 1, 1000, step=1, key="training_epochs", persist_state=SESSION)
        c2.number_input("Batch size", 1, 4096, step=8, key="training_batch", persist_state=SESSION)
        c3.number_input(
            "Learning rate", 1e-7, 1.0, format="%.5f", key="training_lr", persist_state=SESSION
        )
        c4.selectbox(
            "Device",
            DEVICES,
            key="training_device",
            persist_state=SESSION,
            help="auto = cuda > mps > cpu",
        )
        st.checkbox(
            "Augmentation: 8 dihedral flips/rotations + light stain jitter",
            key="training_augment",
            persist_state=SESSION,
        )
        st.checkbox(
            "Weight the loss by inverse class frequency",
            key="training_class_weighting",
            persist_state=SESSION,
        )
        with st.expander("Advanced"):
            a1, a2, a3 = st.columns(3)
            a1.number_input(
                "Seed",
                0,
                MAX_SEED,
                key="training_seed",
                persist_state=SESSION,
                help="Initial weights, batch order and augmentation.",
            )
            a2.number_input(
                "Split seed",
                0,
                MAX_SEED,
                key="training_split_seed",
                persist_state=SESSION,
                help="Which patients (IDC) or patches (HCD) go to train, valid and test. Keep it "
                "to compare models on the same unseen patients; PCam ships its own split.",
            )
            a3.selectbox("LR schedule", SCHEDULERS, key="training_scheduler", persist_state=SESSION)
            b1, b2, b3 = st.columns(3)
            b1.number_input(
                "Early-stopping patience", 1, 100, key="training_patience", persist_state=SESSION
            )
            b2.number_input(
                "Max batches per epoch (0 = all)",
                0,
                10**6,
                key="training_limit",
                persist_state=SESSION,
            )
            b3.selectbox(
                "Stain normalisation",
                STAIN_NORMS,
                key="training_stain_norm",
                persist_state=SESSION,
                help="Normalise every patch's stain to a target fitted on 256 training patches; "
                "stored in the checkpoint and applied wherever it is used. On the real IDC sample "
                "Macenko cost 0.014 AUC on unshifted patches and took 40-70 % off the AUC lost "
                "to a HED stain shift (README, 'Will it hold at another hospital?').",
            )
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        state = st.session_state
        values = {field: state[key] for field, key in WIDGETS.items()}
        cfg = TrainConfig.from_form(data, None if model == AUTO_MODEL else model, values)
        run = jobs.start_run(cfg, name=name)
        state.training_selected = [run.name, *state.training_selected]
        st.toast(f"Started {run.name} in the background.", icon="🚀")


def training_refused() -> None:
    """Public mode: why there is no start button, and how to train instead."""
    st.subheader("Start a run")
    st.info(
        "Training is off on this public deployment: a run holds the server's CPU for minutes, "
        "every visitor shares that CPU and memory, and the run would vanish at the next restart. "
        "Train on your own machine, then upload the checkpoint (best.pt) on Explain or Compare:"
    )
    st.code("python -m core train --data data/demo/pcam --out runs/my-run", language="bash")


def run_panel(run: run_folder.RunInfo) -> None:
    status = run.status
    progress = status.get("progress") or {}
    with st.container(border=True):
        head, button = st.columns([5, 1])
        head.markdown(f"**{run.name}** · `{run.state}` · {run.config.get('model') or 'auto'}")
        if (
            run.state in run_folder.ACTIVE_STATES
            and not public_mode()
            and button.button("Cancel", key=f"training_cancel::{run.name}")
        ):
            jobs.cancel_run(run.path)
            st.toast(f"Cancelling {run.name}…")
        if progress:
            active = run.state in run_folder.ACTIVE_STATES
            text = (
                f"epoch {progress['epoch']}/{progress['epochs']} · "
                f"step {progress['step']}/{progress['steps_per_epoch']} · "
                f"{progress.get('images_per_s') or 0:.0f} images/s"
                # an ended run has no time left: its last ETA would read as if it were running
                + (f" · ETA {jobs.format_seconds(progress.get('eta_s'))}" if active else "")
            )
            st.progress(min(float(progress["fraction"]), 1.0), text=text)
        elif run.state in run_folder.ACTIVE_STATES:
            st.caption("Starting: opening the dataset and building the model…")
        if status.get("notice"):
            st.info(status["notice"])
        if status.get("excluded_patches"):
            st.caption(
                f"{status['excluded_patches']} patches left out: unreadable when the dataset "
                "was checked (`python -m core data check`)."
            )
        if run.state == "failed":
            st.error(status.get("error") or "failed")
            if status.get("traceback"):
                with st.expander("Traceback"):
                    st.code(status["traceback"], language="text")
        if run.state not in run_folder.ACTIVE_STATES and (run.path / "best.pt").is_file():
            # a stopped run's best.pt is calibrated too: usable on Explain and Compare
            st.caption(f"best checkpoint: `{run.path / 'best.pt'}`")


@st.fragment(run_every=REFRESH)
def runs_section() -> None:
    runs = run_folder.list_runs()
    st.subheader("Runs")
    if not runs:
        st.info(
            "No runs yet. Start one above, or with `python -m core train --data PATH --out RUN_DIR`."
        )
        return
    st.dataframe(
        jobs.runs_table(runs),
        hide_index=True,
        width="stretch",
        # narrow columns, so the table fits a 1400 px page
        column_config={
            "run": st.column_config.TextColumn(width="medium"),
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0, max_value=1, width="small"
            ),
        },
    )
    by_name = {r.name: r for r in runs}
    # Keep only runs that still exist (another session may have removed a folder).
    st.session_state.training_selected = [
        n for n in st.session_state.training_selected if n in by_name
    ]
    if not st.session_state.training_selected:
        st.session_state.training_selected = [runs[0].name]
    chosen = st.multiselect(
        "Runs to show", list(by_name), key="training_selected", persist_state=SESSION
    )
    for name in chosen:
        run_panel(by_name[name])
    curves = {name: run_folder.read_metrics(by_name[name].path) for name in chosen}
    curves = {name: frame for name, frame in curves.items() if not frame.empty}
    if curves:
        st.plotly_chart(curves_figure(curves), key="training_curves")
    elif chosen:
        st.caption("Curves appear after the first logged steps.")


st.title("Training")
st.caption(RESEARCH_NOTICE)
for field, key in WIDGETS.items():
    default = DEFAULTS[field]
    st.session_state.setdefault(key, 0 if default is None else default)  # batch limit 0 = all
st.session_state.setdefault("training_selected", [])
if public_mode():
    training_refused()
else:
    start_form()
runs_section()
