"""The whole sanity check against plain CAMs of the same patches, in the same run.

    python bench/sanity.py [--checkpoint checkpoints/demo_pcam_hcd_cnn.pt] [--data DEMO_PCAM]
                           [--n 16] [--seeds 0 1 2] [--methods gradcam ...] [--road]

Baseline: ``core.explain.compute_cams`` of every default method on the sample (what the Explain
page draws for these patches), on one torch thread as the check runs on a CPU. Measured: ``core.sanity.sanity_check`` of the same methods on the
same patches (no disk cache): stage-grouped cascading randomisation with every seed, both
controls, localisation (and ROAD with ``--road``). Budget: 60 s on 2 CPU cores for the default
method set on the shipped demo checkpoint. Prints wall and process-CPU seconds (CPU time is the
steadier figure on a shared machine), the ratio check / baseline, the CAM passes it took, and the
1-minute load average before and after. Without ``--data``, the demo is written to a temporary
folder (core.data.demo.write_demo).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.checkpoints import load_checkpoint  # noqa: E402
from core.config import REPO_ROOT  # noqa: E402
from core.data import open_dataset  # noqa: E402
from core.device import one_thread  # noqa: E402
from core.explain import compute_cams  # noqa: E402
from core.sanity import (  # noqa: E402
    DEFAULT_METHODS,
    DEFAULT_PATCHES,
    DEFAULT_SEEDS,
    dataset_sample,
    pick_indices,
    sanity_check,
)

BUDGET_S = 60.0


def timed(fn):
    """(result, wall s, process CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(REPO_ROOT / "checkpoints" / "demo_pcam_hcd_cnn.pt"))
    p.add_argument("--data", default=None, help="dataset (default: the demo PCam, written now)")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=DEFAULT_PATCHES)
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--road", action="store_true")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from core.data.demo import write_demo

            data = str(write_demo(Path(tmp) / "demo")["pcam"])
        loaded = load_checkpoint(args.checkpoint)
        ds = open_dataset(data, seed=loaded.card.data_split_seed)
        sample = dataset_sample(ds, pick_indices(ds, args.split, args.n))
        load_before = os.getloadavg()[0]
        compute_cams(loaded, sample.images[:2], "gradcam")  # warm-up (first-call costs)

        def plain():  # on one thread, as the check runs on a CPU (core.sanity._cpu_threads)
            with one_thread():
                for method in args.methods:
                    compute_cams(loaded, sample.images, method, "tumour")

        passes = []

        def check():
            return sanity_check(
                loaded,
                sample,
                args.methods,
                seeds=args.seeds,
                road=args.road,
                use_cache=False,
                progress=lambda done, total: passes.append(total),
            )

        _, plain_wall, plain_cpu = timed(plain)
        report, check_wall, check_cpu = timed(check)
    print(
        f"{Path(args.checkpoint).name} on {sample.description}; methods {' '.join(args.methods)}; "
        f"seeds {args.seeds}; ROAD {'on' if args.road else 'off'}; one torch thread on a CPU"
    )
    print(
        f"plain CAMs ({len(args.methods)} passes): {plain_wall:6.1f} s wall {plain_cpu:6.1f} s CPU"
    )
    print(
        f"sanity check ({passes[-1] if passes else 0} steps): {check_wall:6.1f} s wall "
        f"{check_cpu:6.1f} s CPU  = {check_wall / plain_wall:.1f}x / {check_cpu / plain_cpu:.1f}x "
        f"the plain CAMs; budget {BUDGET_S:.0f} s: "
        + ("within" if check_wall <= BUDGET_S else f"over ({check_wall / BUDGET_S:.1f}x)")
    )
    print(f"load average (1 min): {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(report.verdicts[["method", "end_abs_rho", "low", "high", "verdict"]].round(2).to_string())


if __name__ == "__main__":
    main()
