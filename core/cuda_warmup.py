"""Create the GPU's CUDA context in the background while ``import torch`` runs.

Launch to first step on an H200 was ~10-15 s, of which 4-7 s went to the stage that first puts
a tensor on the GPU: the driver's initialisation and the device's primary context (the context
every CUDA runtime call in the process then uses, torch's included). torch creates it while
holding the GIL, so nothing else in the process moves meanwhile. Here a thread asks the driver
for that same primary context through ctypes (foreign calls release the GIL) as soon as a run
starts, so the driver works while the main thread imports torch and opens the dataset; when
torch reaches the GPU the context is already there. If libcuda is missing or any call fails,
nothing happens and torch initialises as it always does.

torch-free on purpose: it must start before torch is imported.
"""

from __future__ import annotations

import ctypes
import os
import threading

_started: list[threading.Thread] = []


def wanted(device_request: str) -> bool:
    """Warm only runs that may use CUDA ("auto" or "cuda[:N]") on a machine that shows a GPU."""
    kind = device_request.split(":")[0]
    if kind not in ("auto", "cuda") or os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/dxg")  # Linux / WSL


def start(device_request: str) -> threading.Thread | None:
    """Begin warming the device this process will use (``cuda:N``, else LOCAL_RANK, else 0);
    returns the thread, or None when there is nothing to warm. Called once per process."""
    if _started or not wanted(device_request):
        return None
    _, _, index = device_request.partition(":")
    ordinal = int(index) if index.isdigit() else int(os.environ.get("LOCAL_RANK", "0") or 0)
    thread = threading.Thread(
        target=_retain_primary_context, args=(ordinal,), name="histolens-cuda-warmup", daemon=True
    )
    thread.start()
    _started.append(thread)
    return thread


def _retain_primary_context(ordinal: int) -> bool:
    """cuInit + cuDevicePrimaryCtxRetain for ``ordinal`` (its index among the visible devices).
    The context is retained for the life of the process, as torch's would be."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        device, context = ctypes.c_int(), ctypes.c_void_p()
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0:
            return False
        return cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device) == 0
    except (OSError, AttributeError):  # no driver library here: torch will say what it finds
        return False
