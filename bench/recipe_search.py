"""Choose the default training recipe by measurement, on validation patients only.

    python bench/recipe_search.py --data ../shared/data/real/idc --device cuda --parallel 12 \\
        --out recipe.jsonl --final auto

Trains every recipe of the grid × ``--seeds`` with the real trainer (``python -m core train``,
``--parallel`` processes at a time), then scores each run's ``best.pt`` on the VALIDATION split
of its seed (IDC splits are by patient and drawn with the seed): AUC, the threshold of maximum
balanced accuracy and the balanced accuracy there, and the ECE of the raw probabilities and of
temperature / Platt scaling, each cross-fitted over validation patients (fitted on half of them,
scored on the other half; see core/calibration.py). One JSON line per run goes to ``--out``.

``--final RECIPE`` (or ``auto``: the best mean validation AUC among the recipes that fit the CPU
budget, below) then looks at the TEST split once, for that recipe only, with the calibration map
and threshold the trainer fitted on validation into each card: test AUC (95% CI by patient),
balanced accuracy, F1, sensitivity and specificity at the card's threshold, ECE before and after
calibration, and patient-level metrics (core.metrics.patient_level: max aggregation).
``--skip-grid --final RECIPE`` runs only that.

The CPU budget: the default recipe must train in ~15 minutes on 2 loaded cores. An idc_cnn
epoch of the IDC sample takes ~20 s there (README, measured figures); ``CPU_COST`` is each
model's training cost relative to idc_cnn at 50 px, measured on this project's CPU machine
(bench/model_cost.py).
The figure printed at the end is the pace of the grid against the 4-minute budget on the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CPU_EPOCH_S = 20.0  # idc_cnn, one epoch of the IDC sample, 2 loaded cores
CPU_BUDGET_S = 15 * 60
# bench/model_cost.py --size 50 on 2 loaded cores: bn_cnn 1.45x, small_resnet 2.97x idc_cnn
CPU_COST = {"idc_cnn": 1.0, "bn_cnn": 1.45, "small_resnet": 3.0}  # others: not a CPU default
GRID_BUDGET_S = 240


@dataclass(frozen=True)
class Recipe:
    name: str
    flags: dict = field(default_factory=dict)


def _cw(model: str, **extra) -> dict:
    """Class-weighted loss, longer schedule with more patience: the issue's best measured start."""
    return {"model": model, "class_weighting": True, "epochs": 20, "patience": 6, **extra}


VARIANTS = (  # (name suffix, flags) on top of _cw
    ("", {}),
    ("-ls", {"label_smoothing": 0.1}),
    ("-lr3e-3", {"lr": 3e-3, "warmup_epochs": 1}),
    ("-e30", {"epochs": 30, "patience": 8}),
)


def full_grid() -> list[Recipe]:
    """18 recipes: today's defaults (batch 64, and 256 with the lr scaled ×4: issue 15 item 3),
    class weighting with variants for the three 50 px candidates, resnet18, and four models at
    96 px."""
    grid = [Recipe("defaults"), Recipe("defaults-bs256", {"batch_size": 256, "lr": 4e-3})]
    grid += [Recipe(f"idc_cnn-cw{s}", _cw("idc_cnn", **kw)) for s, kw in VARIANTS[:2]]
    for model in ("bn_cnn", "small_resnet"):
        grid += [Recipe(f"{model}-cw{suffix}", _cw(model, **kw)) for suffix, kw in VARIANTS]
    grid += [
        Recipe("bn_cnn-cw-bs256", _cw("bn_cnn", batch_size=256, lr=4e-3, warmup_epochs=1)),
        Recipe("resnet18-cw", _cw("resnet18")),
    ]
    # The 96 px recommendation: the IDC patches resized to 96 px at the model input.
    grid += [
        Recipe(f"{model}-cw-96px", _cw(model, img_size=96))
        for model in ("hcd_cnn", "bn_cnn", "small_resnet", "resnet18")
    ]
    return grid


def tiny_grid() -> list[Recipe]:
    """A smoke test of the whole path (CPU, demo data): two recipes, two batches per epoch."""
    quick = {"epochs": 2, "limit_batches": 2, "batch_size": 16}
    return [
        Recipe("tiny-idc_cnn", {"model": "idc_cnn", **quick}),
        Recipe("tiny-bn_cnn-cw", {"model": "bn_cnn", "class_weighting": True, **quick}),
    ]


def command(recipe: Recipe, data: str, seed: int, device: str, run_dir: Path, workers: int):
    args = [sys.executable, "-m", "core", "train", "--data", data, "--out", str(run_dir)]
    args += ["--seed", str(seed), "--device", device, "--workers", str(workers)]
    for key, value in recipe.flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def train(recipe: Recipe, seed: int, opts) -> dict:
    run_dir = opts.runs / f"{recipe.name}-s{seed}"
    args = command(recipe, opts.data, seed, opts.device, run_dir, opts.workers)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    status = _read_json(run_dir / "status.json")
    if done.returncode != 0:
        print(f"{recipe.name} s{seed}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
    return {"run_dir": run_dir, "wall_s": wall, "status": status, "rc": done.returncode}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class Scorer:
    """Predicts with each run's best.pt on one split, one run at a time (shared device)."""

    def __init__(self, data: str, device: str):
        self.data, self.device = data, device
        self.lock = threading.Lock()
        self.datasets: dict[int, object] = {}

    def predictions(self, checkpoint: Path, seed: int, split: str):
        from core.data import open_dataset
        from core.evaluate import predict_indices

        with self.lock:
            ds = self.datasets.setdefault(seed, open_dataset(self.data, seed=seed))
            indices = np.sort(ds.indices(split=split))
            probs = predict_indices(
                checkpoint, ds, indices, device=self.device, batch_size=512, calibrated=False
            )
        meta = ds.meta.iloc[indices]
        patients = meta["patient"].to_numpy() if "patient" in meta else None
        return meta["label"].to_numpy(dtype=int), probs, patients


def validation_scores(y, prob, patients) -> dict:
    from core.calibration import cross_fitted_probs, max_balanced_accuracy_threshold
    from core.metrics import binary_metrics, expected_calibration_error

    threshold = max_balanced_accuracy_threshold(y, prob)
    scores = binary_metrics(y, prob, threshold)
    out = {
        "val_auc": scores["auc"],
        "val_threshold": threshold,
        "val_balanced_accuracy": scores["balanced_accuracy"],
        "val_ece_raw": scores["ece"],
    }
    for method in ("temperature", "platt"):
        calibrated = cross_fitted_probs(y, prob, patients, method)
        out[f"val_ece_{method}"] = expected_calibration_error(y, calibrated)
    return out


def test_scores(scorer: Scorer, checkpoint: Path, seed: int) -> dict:
    """The test split, once: with the calibration map and threshold the trainer fitted on
    validation into the checkpoint's card (what every consumer applies)."""
    import pandas as pd

    from core.checkpoints import read_card
    from core.metrics import binary_metrics, bootstrap_auc_ci, ci_unit, patient_level

    card = read_card(checkpoint)
    y, raw, patients = scorer.predictions(checkpoint, seed, "test")
    prob = card.calibrated(raw)
    m = binary_metrics(y, prob, card.threshold)
    out = {k: m[k] for k in ("auc", "balanced_accuracy", "f1", "sensitivity", "specificity")}
    out.update(ece_raw=binary_metrics(y, raw)["ece"], ece=m["ece"], threshold=card.threshold)
    out.update(calibration=card.calibration.get("method", "identity"))
    out.update(auc_ci95=bootstrap_auc_ci(y, prob, seed=seed, groups=patients))
    out.update(ci_unit=ci_unit(patients))
    if patients is not None:
        frame = pd.DataFrame({"label": y, "prob": prob, "patient": patients})
        out["patients"] = patient_level(frame, card.threshold)
    return {f"test_{k}": v for k, v in out.items()}


def cpu_estimate_s(model: str, epochs_run: float) -> float | None:
    cost = CPU_COST.get(model)
    return None if cost is None else cost * CPU_EPOCH_S * epochs_run


def run_one(recipe: Recipe, seed: int, opts, scorer: Scorer, final: bool) -> dict:
    trained = train(recipe, seed, opts)
    status = trained["status"]
    record = {
        "recipe": recipe.name,
        "seed": seed,
        "flags": recipe.flags,
        "model": _read_json(trained["run_dir"] / "config.json").get("model"),
        "rc": trained["rc"],
        "epochs_run": status.get("epochs_run"),
        "train_wall_s": round(trained["wall_s"], 1),
    }
    best = trained["run_dir"] / "best.pt"
    if trained["rc"] == 0 and best.is_file():
        y, prob, patients = scorer.predictions(best, seed, "valid")
        record.update(validation_scores(y, prob, patients))
        if final:
            record.update(test_scores(scorer, best, seed))
    return record


def run_grid(recipes: list[Recipe], opts, final: bool = False) -> list[dict]:
    scorer = Scorer(opts.data, opts.device)
    jobs = [(r, s) for r in recipes for s in range(opts.seeds)]
    out = opts.out.open("a")
    lock = threading.Lock()
    records = []

    def one(job):
        record = run_one(*job, opts, scorer, final)
        with lock:
            out.write(json.dumps({**record, "split": "test" if final else "valid"}) + "\n")
            out.flush()
            records.append(record)
            print(_line(record), flush=True)

    with ThreadPoolExecutor(opts.parallel) as pool:
        list(pool.map(one, jobs))
    out.close()
    return records


def _line(r: dict) -> str:
    keys = ("val_auc", "val_balanced_accuracy", "val_ece_raw", "val_ece_platt", "test_auc")
    figures = " ".join(f"{k}={r[k]:.3f}" for k in keys if r.get(k) is not None)
    return f"{r['recipe']} s{r['seed']}: {r['epochs_run']} epochs, {r['train_wall_s']} s, {figures}"


def summarise(records: list[dict]) -> dict[str, dict]:
    by_recipe: dict[str, list[dict]] = {}
    for r in records:
        if r.get("val_auc") is not None:
            by_recipe.setdefault(r["recipe"], []).append(r)
    summary = {}
    for name, rs in by_recipe.items():
        aucs = [r["val_auc"] for r in rs]
        epochs = float(np.mean([r["epochs_run"] for r in rs]))
        summary[name] = {
            "n": len(rs),
            "val_auc_mean": float(np.mean(aucs)),
            "val_auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
            "val_bacc_mean": float(np.mean([r["val_balanced_accuracy"] for r in rs])),
            "cpu_estimate_s": cpu_estimate_s(rs[0]["model"], epochs),
        }
    for name, s in sorted(summary.items(), key=lambda kv: -kv[1]["val_auc_mean"]):
        cpu = s["cpu_estimate_s"]
        cpu_text = f"CPU ~{cpu / 60:.1f} min" if cpu else "(not a CPU default)"
        print(
            f"{name:28s} val AUC {s['val_auc_mean']:.4f} ± {s['val_auc_sd']:.4f}  "
            f"bal.acc {s['val_bacc_mean']:.3f}  {cpu_text}"
        )
    return summary


def print_test_summary(records: list[dict]) -> None:
    """Mean ± sd over seeds of the test figures (the README table's row)."""
    for key in ("auc", "balanced_accuracy", "f1", "ece_raw", "ece", "threshold"):
        values = [r[f"test_{key}"] for r in records if r.get(f"test_{key}") is not None]
        if values:
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            print(f"test {key:18s} {np.mean(values):.3f} ± {sd:.3f}  (n={len(values)})")


def choose(summary: dict[str, dict]) -> str:
    """Best mean validation AUC among recipes trainable within the CPU budget."""
    feasible = {
        k: v
        for k, v in summary.items()
        if v["cpu_estimate_s"] is not None and v["cpu_estimate_s"] <= CPU_BUDGET_S
    }
    return max(feasible or summary, key=lambda k: (feasible or summary)[k]["val_auc_mean"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--parallel", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    p.add_argument("--runs", type=Path, help="run directories (default: a new temp folder)")
    p.add_argument("--grid", choices=("full", "tiny"), default="full")
    p.add_argument("--final", help="recipe name, or 'auto', to score on the test split")
    p.add_argument("--skip-grid", action="store_true", help="only --final (runs retrained)")
    opts = p.parse_args(argv)
    opts.runs = opts.runs or Path(tempfile.mkdtemp(prefix="recipe-runs-"))
    recipes = {r.name: r for r in (full_grid() if opts.grid == "full" else tiny_grid())}
    t0 = time.perf_counter()
    summary = {}
    if not opts.skip_grid:
        print(f"{len(recipes)} recipes × {opts.seeds} seeds, {opts.parallel} at a time", flush=True)
        summary = summarise(run_grid(list(recipes.values()), opts))
        grid_s = time.perf_counter() - t0
        print(f"grid: {grid_s:.0f} s ({grid_s / GRID_BUDGET_S:.2f}× the {GRID_BUDGET_S} s budget)")
    if opts.final:
        name = choose(summary) if opts.final == "auto" else opts.final
        print(f"final: {name} on the test split, {opts.seeds} seeds", flush=True)
        opts.runs = opts.runs / "final"
        print_test_summary(run_grid([recipes[name]], opts, final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
