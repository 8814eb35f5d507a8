"""UI helpers every page shares (Streamlit only; logic stays in core/).

A package, not a ``pages/_shared.py`` file: Streamlit's legacy ``pages/``-folder mode lists every
``pages/*.py`` as a page (only dot-files and ``__init__.py`` are skipped), and the standalone
page test runs each of them. Import it as ``pages._shared`` after the page's sys.path line.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import streamlit as st

from core import config
from core.data import exclusions, open_dataset
from core.data.demo import first_demo_set, retry_demo
from core.files import file_sha256


def ensure_demo_or_warn() -> None:
    """First launch: wait for the background demo writer's first set (PCam, ~1/3 of the write;
    the others are listed from the visitor's next click on, no polling). A disk that cannot
    take it (read-only, full) gets one warning with a retry button; the page goes on without
    the demo."""
    with st.spinner("Writing the synthetic demo datasets (first launch only)…"):
        progress = first_demo_set()
    demo_error_or_retry(progress.error, key="demo_retry_page")
    if not progress.ready and not progress.error:  # no polling here: the page stays idle
        st.caption(
            f"First launch: {progress.total - progress.done} more demo set(s) are being written "
            "in the background; they are listed from your next click on."
        )


def demo_error_or_retry(error: str | None, key: str) -> None:
    """A failed demo write: its one line, and a button that starts the writer again."""
    if error is None:
        return
    st.warning(error)
    if st.button("Retry writing the demo", key=key):
        retry_demo()
        st.rerun()


def _into_the_router() -> None:
    """A deep link (``/training``) that is a cold server's first request runs the page file
    itself, in Streamlit's legacy ``pages/``-folder mode: raw file names as navigation, and
    none of streamlit_app.py (page config, public notice). Streamlit leaves that mode only when
    st.navigation runs, so the page turns it off and reruns: the rerun goes through the router
    to the same page. Streamlit has no public switch for this; the flag is PagesManager's."""
    try:  # private: a Streamlit that moves it just keeps the quirk (the page still works)
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if getattr(PagesManager, "uses_pages_directory", None):
        PagesManager.uses_pages_directory = False
        st.rerun()


_into_the_router()


MAX_MODELS = 8  # checkpoints kept loaded (Compare shows up to 4, Explain several)


MAX_DATASETS = 8  # datasets kept open (indexes and h5 handles), least recently used out


@st.cache_resource(
    show_spinner="Opening the dataset (the first time indexes it)…", max_entries=MAX_DATASETS
)
def _dataset(path: str, seed: int, exclusions_revision: str):  # the revision: a key only
    return open_dataset(path, seed=seed)


def dataset(path, seed: int = 0):
    """The dataset at ``path`` with split ``seed``: one cache entry per (resolved path, seed,
    exclusion list version), whichever page opens it (Compare and Explain choose the seed with
    core.evaluate's ``open_dataset_for(..., opener=dataset)``). A list written by the Datasets
    page or `python -m core data check --exclude` shows at the next rerun."""
    path = str(Path(path).resolve())
    return _dataset(path, int(seed), exclusions.revision(path))


@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=MAX_MODELS)
def _loaded_model(path: str, sha: str, device: str = "cpu"):
    """A checkpoint's model, loaded once per file content (``sha``) and device for every page.
    Shared by sessions: CAMs and predictions run under core.checkpoints.model_lock."""
    from core.checkpoints import load_checkpoint

    return load_checkpoint(path, device=device)


def shared_model(path, device="cpu"):
    """The ``loader`` core.evaluate's predictions take: the same cached model CAMs use."""
    return _loaded_model(str(path), file_sha256(path), str(device))


PUBLIC_NOTICE = (
    "Public deployment: nothing you do here is kept. Uploads, uploaded checkpoints and caches "
    "last only until the app sleeps, restarts or is redeployed; training is off."
)


def public_mode() -> bool:
    """Public mode, from ``HISTOLENS_PUBLIC`` as an environment variable or a top-level Streamlit
    secret. Streamlit copies top-level text and number secrets into the environment but not
    booleans, so a TOML ``HISTOLENS_PUBLIC = true`` is copied here; core reads the environment."""
    if not config.public_mode() and st.secrets.load_if_toml_exists():
        if st.secrets.get("HISTOLENS_PUBLIC") is True:
            os.environ["HISTOLENS_PUBLIC"] = "1"
    return config.public_mode()


def session_checkpoints(key: str) -> list[Path]:
    """An upload for the visitor's own checkpoints (.pt), held for this browser session only;
    returns every checkpoint the session uploaded, on any page. Each file is validated exactly
    like a local one (core.checkpoints.load_uploaded_checkpoint); a bad one gets one line."""
    from core.checkpoints import MAX_UPLOADED_CHECKPOINT_BYTES

    cap = MAX_UPLOADED_CHECKPOINT_BYTES // 2**20
    files = st.file_uploader(
        "Your own checkpoint (.pt from `python -m core train`; this session only)",
        type=["pt"],
        accept_multiple_files=True,
        key=key,
        max_upload_size=cap,
        help=f"Up to {cap} MB a file (a larger one is refused before it is sent): a best.pt "
        "of the models training picks by default is 3-10 MB.",
    )
    held = st.session_state.setdefault("session_checkpoints", {})  # sha256 -> path
    for file in files or []:
        data = file.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        if sha not in held:
            path = _validated_upload(file.name, data)
            if path is not None:
                held[sha] = path
    return [Path(p) for p in held.values() if Path(p).is_file()]


def say_not_calibrated(named) -> None:
    """One caption per chosen checkpoint (``{path: name}``) whose card is not calibrated, saying
    why; the chooser's label says "not calibrated" too (core.catalogue.checkpoint_label)."""
    from core.catalogue import not_calibrated_why

    for path, name in named.items():
        why = not_calibrated_why(path)
        if why:
            st.caption(f"{name} is not calibrated: {why}.")


def _validated_upload(name: str, data: bytes) -> str | None:
    from core.checkpoints import CheckpointError, load_uploaded_checkpoint

    try:
        loaded = load_uploaded_checkpoint(name, data, config.cache_dir() / "uploaded_checkpoints")
    except CheckpointError as err:
        st.error(str(err))
        return None
    return str(loaded.path)
