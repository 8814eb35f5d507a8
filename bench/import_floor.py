"""The floor under the app's memory and Explain's first render: what importing costs alone.

    .venv/bin/python bench/import_floor.py

Each row is a fresh interpreter importing what the app holds at that point (nothing runs):
Home and Datasets (streamlit, pandas, plotly, the data readers); + torch (any model);
+ core.explain (pytorch-grad-cam, which imports torchvision, scikit-learn, scipy and
matplotlib at its package import); + core.compare. Prints peak RSS (VmHWM) and import seconds,
and the share of bench/app_memory.py's 900 MB budget the imports alone take.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_MB = 900
STAGES = {
    "Home/Datasets: streamlit, pandas, plotly, core.data": [
        "streamlit", "pandas", "plotly.graph_objects", "core.data", "core.figures",
    ],
    "+ torch": ["torch"],
    "+ core.explain (grad-cam, torchvision, sklearn, scipy, matplotlib)": ["core.explain"],
    "+ core.compare, core.metrics": ["core.compare", "core.metrics"],
}  # fmt: skip

CHILD = """
import importlib, json, sys, time
started = time.perf_counter()
for name in sys.argv[1:]:
    importlib.import_module(name)
seconds = time.perf_counter() - started
status = open("/proc/self/status").read()
hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"seconds": seconds, "hwm_mb": hwm}))
"""


def main() -> None:
    modules: list[str] = []
    print(f"{'imports':<70} {'peak MB':>8} {'seconds':>8} {'of 900 MB':>9}")
    for stage, names in STAGES.items():
        modules += names
        out = subprocess.run(
            [sys.executable, "-c", CHILD, *modules], cwd=REPO, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        share = row["hwm_mb"] / BUDGET_MB
        print(f"{stage:<70} {row['hwm_mb']:8.0f} {row['seconds']:8.2f} {share:9.2f}")


if __name__ == "__main__":
    main()
