#!/usr/bin/env bash
# One prepared session on the GPU machine (repo root is the cwd; results go under $OUT, at most
# 8 files come back). Ends inside 540 s: every step has its own timeout.
#
#   OUT=/some/folder bash bench/gpu_session.sh
#
# 1. $OUT/env.txt          the machine, python, torch, and which optional packages import
# 2. $OUT/gpu_train.txt    bench/gpu_train.py (PCam-size epoch figures, ≤ 250 s)
# 3. $OUT/pytest_cuda.txt  the core tests with CUDA visible (pages and browser skip cleanly
#                          where streamlit/plotly/grad-cam are missing), ≤ 250 s
# Pure-python packages carried in .gpu/site (pytorch_grad_cam, ttach) are put on PYTHONPATH.
set -o pipefail
OUT="${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT"
if [ -d .gpu/site ]; then export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi -L 2>&1
  python3 --version
  timeout 60 python3 - <<'EOF'
import importlib, os
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "cores", os.cpu_count())
for name in ("torchvision", "numpy", "pandas", "pyarrow", "h5py", "PIL", "sklearn", "scipy",
             "tqdm", "cv2", "pytest", "xdist", "pytest_timeout", "streamlit", "plotly",
             "pytorch_grad_cam", "ttach"):
    try:
        print(f"{name:18} {getattr(importlib.import_module(name), '__version__', 'ok')}")
    except Exception as err:
        print(f"{name:18} MISSING ({type(err).__name__}: {err})")
EOF
} > "$OUT/env.txt" 2>&1

timeout 250 python3 bench/gpu_train.py 2>&1 | tee "$OUT/gpu_train.txt"
echo "gpu_train exit: $?" | tee -a "$OUT/gpu_train.txt"

timeout 250 python3 -m pytest -n 12 --maxfail=20 --tb=short -q -p no:cacheprovider \
  -m "not browser" tests 2>&1 | tee "$OUT/pytest_cuda.txt"
echo "pytest exit: $?" | tee -a "$OUT/pytest_cuda.txt"
