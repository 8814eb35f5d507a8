"""Read every patch of a dataset before a long run: ``python -m core data check PATH``.

``data summary`` never touches pixels, so one corrupt tif among 220,000 used to stop a training
run when its batch came up, hours in. ``check_dataset`` reads every patch of every split through
the readers' own ``read_batch`` (the path training takes: decoding, the 8-bit RGB check, the
patch-size check), in worker processes, and lists each unreadable patch with the reader's own
one-line reason. ``core.data.exclusions.write_exclusions`` then keeps them out of every reader.

The Datasets page runs the same check in a background thread (``start_check`` /
``check_progress``): it never calls Streamlit, the page polls its progress.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.data.base import DatasetError, PatchDataset
from core.data.exclusions import in_force, write_exclusions
from core.data.registry import dataset_name, open_dataset

CHUNK = 256  # patches per task: one read_batch, re-read one by one only when it fails
# A spawned worker takes ~2 s to start (its imports; 2.3 s measured on 2 loaded cores, 0.04 s
# forked), about what one process needs for 4,096 PNGs: by default each gets at least this many.
MIN_PATCHES_PER_PROCESS = 4096


@dataclass(frozen=True)
class Unreadable:
    """A patch the reader refused: its position in the dataset as checked (every patch in),
    id, split, the reader's one-line reason, and the fingerprint of its files when checked
    (what keeps its exclusion valid)."""

    index: int
    id: str
    split: str
    reason: str
    fingerprint: str


@dataclass(frozen=True)
class CheckReport:
    """What ``check_dataset`` found. ``excluded_before``: patches the list in force kept out
    when the check started (the check reads them too)."""

    root: str
    name: str
    format: str
    n: int
    unreadable: tuple[Unreadable, ...]
    excluded_before: int
    seconds: float
    workers: int

    @property
    def clean(self) -> bool:
        return not self.unreadable

    def to_dict(self) -> dict:
        """The ``python -m core data check --json`` object."""
        found = asdict(self)
        found["unreadable"] = [
            {k: v for k, v in asdict(u).items() if k != "fingerprint"} for u in self.unreadable
        ]
        found["seconds"] = round(self.seconds, 3)
        found["patches_per_s"] = round(self.n / self.seconds, 1) if self.seconds else None
        return found


Progress = Callable[[int, int], None]


def check_dataset(
    path,
    workers: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> CheckReport:
    """Read every patch of the dataset at ``path`` (excluded ones too) with ``workers``
    processes (default: one per usable CPU, fewer for small sets). ``progress(done, total)`` counts
    patches; setting ``stop`` ends the check early with a DatasetError. ``seed`` is the split
    seed, which only decides the split named beside each patch."""
    ds = open_dataset(path, seed=seed, exclusions=False)
    excluded_before = len(in_force(ds)[0])
    started = time.perf_counter()
    workers = _workers(len(ds), workers)
    failures = _read_all(ds, workers, progress or (lambda done, total: None), stop)
    seconds = time.perf_counter() - started
    return CheckReport(
        root=str(ds.root),
        name=dataset_name(ds.root),
        format=ds.format,
        n=len(ds),
        unreadable=tuple(_describe(ds, i, reason) for i, reason in sorted(failures)),
        excluded_before=excluded_before,
        seconds=seconds,
        workers=workers,
    )


def exclude_unreadable(report: CheckReport) -> Path | None:
    """Make the report's unreadable patches the dataset's exclusion list (a clean report
    removes it). Returns the list's path, or None when nothing is excluded now."""
    return write_exclusions(report.root, report.format, report.unreadable)


def _workers(n: int, asked: int | None) -> int:
    """``asked`` as given; by default one per usable CPU, with MIN_PATCHES_PER_PROCESS each."""
    if asked is not None:
        if asked < 1:
            raise DatasetError(f"--workers {asked}: use 1 or more worker processes.")
        return asked
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, n // MIN_PATCHES_PER_PROCESS))


def _read_all(
    ds: PatchDataset, workers: int, progress: Progress, stop: threading.Event | None
) -> list[tuple[int, str]]:
    chunks = [np.arange(s, min(s + CHUNK, len(ds))) for s in range(0, len(ds), CHUNK)]
    failures: list[tuple[int, str]] = []
    if workers == 1:
        progress(0, len(ds))
        for done, chunk in enumerate(chunks, 1):
            _stop_if(stop)
            failures += _check_chunk(ds, chunk)
            progress(min(done * CHUNK, len(ds)), len(ds))
        return failures
    with _process_pool(ds, workers) as pool:
        sizes = {pool.submit(_check_in_worker, chunk): len(chunk) for chunk in chunks}
        pending, done = set(sizes), 0
        progress(0, len(ds))  # after the workers started: a progress bar's thread is not forked
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _stop_if(stop)
                for future in finished:
                    failures += future.result()
                    done += sizes[future]
                progress(done, len(ds))
        except BaseException:  # Ctrl-C, stop, a worker's bug: don't wait for the queued chunks
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return failures


def _stop_if(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise DatasetError("the dataset check was stopped before every patch was read.")


def _check_chunk(ds: PatchDataset, indices: np.ndarray) -> list[tuple[int, str]]:
    """(position, reason) of each patch of ``indices`` that ``read_batch`` refuses."""
    try:
        ds.read_batch(indices)
        return []
    except DatasetError:
        pass  # find which one(s), each with its own reason
    failures = []
    for i in indices:
        try:
            ds.read_batch([i])
        except DatasetError as err:
            failures.append((int(i), str(err)))
    return failures


# -- worker processes ------------------------------------------------------------------------

_WORKER_DATASET: PatchDataset | None = None  # set once in each worker process


def _process_pool(ds: PatchDataset, workers: int) -> Executor:
    """Processes, for every format (bench/data_check.py): h5py holds one lock around every
    call, so threads read an h5 file one at a time, and a PNG or TIFF read releases the GIL
    for at most 40-70% of its time (Pillow parses in Python), which caps threads at ~1.7-3.6×
    on any number of cores; processes scale with the free cores. Forked when this process runs
    no other thread (the CLI: instant, nothing re-imported); spawned otherwise (a server's
    threads must not be forked holding a lock). The dataset travels once to each worker, which
    opens its files itself."""
    method = "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_adopt,
        initargs=(ds,),
    )


def _adopt(ds: PatchDataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = ds
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it cancels the rest


def _check_in_worker(indices: np.ndarray) -> list[tuple[int, str]]:
    return _check_chunk(_WORKER_DATASET, indices)


def _describe(ds: PatchDataset, i: int, reason: str) -> Unreadable:
    return Unreadable(
        index=i,
        id=str(ds.meta.at[i, "id"]),
        split=str(ds.meta.at[i, "split"]),
        reason=reason,
        fingerprint=ds.data_fingerprint([i]),
    )


# -- the Datasets page's background check ----------------------------------------------------


@dataclass(frozen=True)
class CheckProgress:
    """Where a background check of one dataset is: ``done`` of ``total`` patches read, and,
    once it ended, its ``report`` or its one-line ``error``."""

    done: int
    total: int
    report: CheckReport | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.report is None and self.error is None


@dataclass
class _BackgroundCheck:
    """One daemon thread checking one dataset; sessions only read its progress."""

    path: Path
    seed: int = 0
    done: int = 0
    total: int = 0
    report: CheckReport | None = None
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="data-check", daemon=True).start()

    def _run(self) -> None:
        try:
            self.report = check_dataset(
                self.path, seed=self.seed, progress=self._advance, stop=self.stop
            )
        except (DatasetError, OSError) as err:
            self.error = str(err)
        except Exception as err:  # a bug: the page says so instead of polling forever
            self.error = f"the check failed ({type(err).__name__}: {err})"

    def _advance(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def progress(self) -> CheckProgress:
        return CheckProgress(self.done, self.total, self.report, self.error)


_CHECKS: dict[Path, _BackgroundCheck] = {}  # one check per dataset and server process
_CHECKS_LOCK = threading.Lock()


def start_check(path, seed: int = 0) -> CheckProgress:
    """Start checking the dataset at ``path`` in a background thread (``seed``: the split seed
    the splits are named by), unless a check of it is running already (then that one is
    shared); returns its progress."""
    key = Path(path).resolve()
    with _CHECKS_LOCK:
        job = _CHECKS.get(key)
        if job is None or not job.progress().running:
            job = _CHECKS[key] = _BackgroundCheck(key, seed)
            job.start()
        return job.progress()


def check_progress(path) -> CheckProgress | None:
    """The progress of the latest background check of ``path`` in this process, or None."""
    job = _CHECKS.get(Path(path).resolve())
    return None if job is None else job.progress()


def stop_check(path) -> None:
    """Ask the running background check of ``path`` to stop (it ends with an error line)."""
    job = _CHECKS.get(Path(path).resolve())
    if job is not None:
        job.stop.set()
