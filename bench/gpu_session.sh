#!/usr/bin/env bash
# One prepared session on the GPU machine (repo root is the cwd; results go under $OUT, which
# comes back; keep it to a few files). Ends inside ~420 s: every step has its own timeout.
#
#   OUT=/some/folder [EXTRA_CMD='...'] bash bench/gpu_session.sh
#
# 1. $OUT/env.txt          the GPU, python, torch, and which optional packages import
# 2. $OUT/gpu_train.txt    bench/gpu_train.py (PCam-size epoch figures), <= 200 s
# 3. $OUT/pytest_cuda.txt  the core tests with CUDA visible, one line per test as it ends (so
#    $OUT/junit.xml        failures are named even if the cap stops the run), <= 180 s; pages
#                          and browser skip cleanly where streamlit/plotly/grad-cam are missing
# 4. $OUT/extra.txt        $EXTRA_CMD, if set, run alongside step 3 with the same cap
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

timeout -s INT -k 15 200 python3 bench/gpu_train.py 2>&1 | tee "$OUT/gpu_train.txt"
echo "gpu_train exit: $?" | tee -a "$OUT/gpu_train.txt"

if [ -n "${EXTRA_CMD:-}" ]; then
  timeout -k 10 180 bash -c "$EXTRA_CMD" > "$OUT/extra.txt" 2>&1 &
  extra=$!
fi
# SIGINT at the cap: pytest stops and still prints its summary and junit file
timeout -s INT -k 20 180 python3 -m pytest -n 12 --maxfail=20 -v -rfE --tb=short \
  -p no:cacheprovider --junitxml="$OUT/junit.xml" -m "not browser" tests 2>&1 \
  | tee "$OUT/pytest_cuda.txt"
echo "pytest exit: $?" | tee -a "$OUT/pytest_cuda.txt"
if [ -n "${extra:-}" ]; then
  wait "$extra"
  echo "extra exit: $?" >> "$OUT/extra.txt"
fi
