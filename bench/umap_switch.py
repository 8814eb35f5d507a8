"""What a user waits for when the Embeddings page switches from PCA to UMAP: two 256-point maps.

Each case runs in a fresh interpreter (numba's compiled code lives per process):

- cold: the first UMAP fits of the process (what the page did before the warm-up);
- warm: ``core.embed.warm_umap()`` started as the page does when it shows PCA, the user looks at
  the PCA maps until it is done (its time is printed apart), then the two UMAP maps.

    python bench/umap_switch.py [--points 256] [--width 64] [--rounds 2]

Prints seconds per case and warm/cold; the issue's target is ≤ 10 s for the two maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from core.embed import reduce_2d, warm_umap
points, width, warm = {points}, {width}, {warm}
rng = np.random.default_rng(0)
features = [rng.normal(size=(points, width)).astype(np.float32) for _ in range(2)]
warmed = None
if warm:
    t = time.perf_counter()
    warm_umap().join()
    warmed = time.perf_counter() - t
t = time.perf_counter()
for f in features:
    reduce_2d(f, "umap", seed=0)
print(json.dumps({{"maps_s": time.perf_counter() - t, "warm_up_s": warmed}}))
"""


def run_case(points: int, width: int, warm: bool) -> dict:
    code = CHILD.format(repo=str(REPO), points=points, width=width, warm=warm)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="feature width (hcd_cnn: 64)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cold, warm, warm_up = [], [], []
    for _ in range(args.rounds):  # alternate, so a change in load hits both cases
        cold.append(run_case(args.points, args.width, warm=False)["maps_s"])
        result = run_case(args.points, args.width, warm=True)
        warm.append(result["maps_s"])
        warm_up.append(result["warm_up_s"])
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"two {args.points}-point UMAP maps, width {args.width}, {args.rounds} rounds (median)")
    print(f"  cold (first fits of the process): {c:.1f} s  {[round(x, 1) for x in cold]}")
    print(f"  after the warm-up:                {w:.1f} s  {[round(x, 1) for x in warm]}")
    print(f"  warm-up itself (while PCA shows): {statistics.median(warm_up):.1f} s")
    print(
        f"  warm / cold = {w / c:.2f}; target for the two maps <= 10 s: {'met' if w <= 10 else 'not met'}"
    )


if __name__ == "__main__":
    main()
