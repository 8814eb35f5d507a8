"""Choose the default training recipe by measurement, on validation patients only.

    python bench/recipe_search.py --data ../shared/data/real/idc --device cuda --parallel 12 \\
        --out recipe.jsonl --final auto
    python bench/recipe_search.py --data DATA --device cuda --parallel 12 --workers 1 \\
        --only hcd_cnn-cw-96px,bn_cnn-cw-96px,small_resnet-cw-96px,resnet18-cw-96px --out r96.jsonl
    python bench/recipe_search.py --data DATA --device cuda --skip-grid --final bn_cnn-cw-ls \\
        --parallel 3 --workers 3 --out final.jsonl [--split-seed 0]
    # smoke test of either on the CPU: add --device cpu --quick, with the demo set as DATA

Trains every recipe of the grid × ``--seeds`` with the real trainer (``python -m core train``,
``--parallel`` processes at a time), then scores each run's ``best.pt`` on its VALIDATION split
(IDC splits are by patient; seed k trains and is scored on split k, so a recipe is chosen across
patient splits, unless ``--split-seed N`` puts every seed on split N): AUC, the threshold of maximum
balanced accuracy and the balanced accuracy there, and the ECE of the raw probabilities and of
temperature / Platt scaling, each cross-fitted over validation patients (fitted on half of them,
scored on the other half; see core/calibration.py). One JSON line per run goes to ``--out``.

``--final RECIPE`` (or ``auto``: the best mean validation AUC among the recipes that fit the CPU
budget, below) then looks at the TEST split once, for that recipe only, with the calibration map
and threshold the trainer fitted on validation into each card: test AUC (95% CI by patient),
balanced accuracy, F1, sensitivity and specificity at the card's threshold, ECE before and after
calibration, and patient-level metrics (core.metrics.patient_level: max aggregation).
``--skip-grid --final RECIPE`` runs only that. ``--only NAME[,NAME...]`` runs a subset of the
grid (e.g. the four ``*-96px`` rows). ``--quick`` trains every chosen recipe for 2 epochs of 2
batches of 16: a smoke test of the whole path on the CPU (``--device cpu`` and the demo set).

Each run's row (figures and train wall time) is printed as soon as it is scored, so a run cut by
a time cap still leaves figures; each phase ends with a table of mean ± sd over seeds per recipe.

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
# bench/model_cost.py --threads 1 (channels_last, fused AdamW as core.train), 2 loaded cores
CPU_COST = {"idc_cnn": 1.0, "bn_cnn": 1.32, "small_resnet": 3.03}  # others: not a CPU default
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
    ("-ls-e30", {"label_smoothing": 0.1, "epochs": 30, "patience": 8}),  # the default, longer
)


def full_grid() -> list[Recipe]:
    """20 recipes: today's defaults (batch 64, and 256 with the lr scaled ×4: issue 15 item 3),
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


QUICK = {"epochs": 2, "limit_batches": 2, "batch_size": 16}  # --quick: a smoke test


def select(names: str | None, grid: list[Recipe], quick: bool) -> dict[str, Recipe]:
    """The recipes named in ``names`` (comma-separated; all when None), with QUICK on top
    when ``quick``. ValueError names any unknown one and the known ones."""
    recipes = {r.name: r for r in grid}
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else list(recipes)
    unknown = [n for n in chosen if n not in recipes]
    if unknown:
        raise ValueError(f"unknown recipe {', '.join(unknown)}; choose from {', '.join(recipes)}")
    return {n: Recipe(n, {**recipes[n].flags, **QUICK}) if quick else recipes[n] for n in chosen}


def split_seed_of(seed: int, opts) -> int:
    """The patient split a run trains and is scored on: ``--split-seed`` for every run, else one
    per seed (the grid's default, so a recipe is chosen across patient splits)."""
    return seed if opts.split_seed is None else opts.split_seed


def command(recipe: Recipe, data: str, seed: int, split_seed: int, device: str, run_dir: Path,
            workers: int):  # fmt: skip
    args = [sys.executable, "-m", "core", "train", "--data", data, "--out", str(run_dir)]
    args += ["--seed", str(seed), "--split-seed", str(split_seed)]
    args += ["--device", device, "--workers", str(workers)]
    for key, value in recipe.flags.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def train(recipe: Recipe, seed: int, split_seed: int, opts) -> dict:
    run_dir = opts.runs / f"{recipe.name}-s{seed}"
    args = command(recipe, opts.data, seed, split_seed, opts.device, run_dir, opts.workers)
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

    def predictions(self, checkpoint: Path, split_seed: int, split: str):
        from core.data import open_dataset
        from core.evaluate import predict_indices

        with self.lock:
            if split_seed not in self.datasets:
                self.datasets[split_seed] = open_dataset(self.data, seed=split_seed)
            ds = self.datasets[split_seed]
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


def test_scores(scorer: Scorer, checkpoint: Path, seed: int, split_seed: int) -> dict:
    """The test split, once: with the calibration map and threshold the trainer fitted on
    validation into the checkpoint's card (what every consumer applies)."""
    import pandas as pd

    from core.checkpoints import read_card
    from core.metrics import binary_metrics, bootstrap_auc_ci, ci_unit, patient_level

    card = read_card(checkpoint)
    y, raw, patients = scorer.predictions(checkpoint, split_seed, "test")
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


def cpu_estimate_s(records: list[dict]) -> float | None:
    """Minutes a recipe's mean epochs would take on the CPU; None where CPU_COST (50 px) does
    not say: other models, and any run at another input size."""
    cost = CPU_COST.get(records[0]["model"])
    if cost is None or "img_size" in records[0]["flags"]:
        return None
    return cost * CPU_EPOCH_S * float(np.mean([r["epochs_run"] for r in records]))


def run_one(recipe: Recipe, seed: int, opts, scorer: Scorer, final: bool) -> dict:
    split_seed = split_seed_of(seed, opts)
    trained = train(recipe, seed, split_seed, opts)
    status = trained["status"]
    record = {
        "recipe": recipe.name,
        "seed": seed,
        "split_seed": split_seed,
        "flags": recipe.flags,
        "model": _read_json(trained["run_dir"] / "config.json").get("model"),
        "rc": trained["rc"],
        "epochs_run": status.get("epochs_run"),
        "train_wall_s": round(trained["wall_s"], 1),
    }
    best = trained["run_dir"] / "best.pt"
    if trained["rc"] == 0 and best.is_file():
        y, prob, patients = scorer.predictions(best, split_seed, "valid")
        record.update(validation_scores(y, prob, patients))
        if final:
            record.update(test_scores(scorer, best, seed, split_seed))
    return record


VALID_COLUMNS = (
    ("val AUC", "val_auc"),
    ("val bal.acc", "val_balanced_accuracy"),
    ("ECE raw", "val_ece_raw"),
    ("ECE temp.", "val_ece_temperature"),
    ("ECE Platt", "val_ece_platt"),
    ("epochs", "epochs_run"),
    ("train s", "train_wall_s"),
)
# the test split at the card's threshold, ECE before / after the card's calibration
TEST_COLUMNS = (
    ("test AUC", "test_auc"),
    ("bal.acc", "test_balanced_accuracy"),
    ("F1", "test_f1"),
    ("sens.", "test_sensitivity"),
    ("spec.", "test_specificity"),
    ("ECE raw", "test_ece_raw"),
    ("ECE cal.", "test_ece"),
    ("threshold", "test_threshold"),
    ("epochs", "epochs_run"),
    ("train s", "train_wall_s"),
)
NAME_WIDTH, CELL_WIDTH = 30, 15


def _header(columns) -> str:
    return f"{'recipe':{NAME_WIDTH}s}" + "".join(f"{t:>{CELL_WIDTH}s}" for t, _ in columns)


def _cell(values: list) -> str:
    """One figure, or mean ± sd over seeds; '-' when none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1 and isinstance(values[0], int):
        return str(values[0])
    digits = 1 if max(abs(v) for v in values) >= 10 or isinstance(values[0], int) else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _row(name: str, records: list[dict], columns) -> str:
    cells = (_cell([r.get(key) for r in records]) for _, key in columns)
    return f"{name:{NAME_WIDTH}s}" + "".join(f"{c:>{CELL_WIDTH}s}" for c in cells)


def run_grid(recipes: list[Recipe], opts, final: bool = False) -> list[dict]:
    """Train and score every recipe × seed, ``opts.parallel`` at a time; each run's row is
    printed (and its JSON line written) as soon as it is scored."""
    scorer = Scorer(opts.data, opts.device)
    jobs = [(r, s) for r in recipes for s in range(opts.seeds)]
    columns = TEST_COLUMNS if final else VALID_COLUMNS
    out = opts.out.open("a")
    lock = threading.Lock()
    records = []

    def one(job):
        record = run_one(*job, opts, scorer, final)
        with lock:
            out.write(json.dumps({**record, "split": "test" if final else "valid"}) + "\n")
            out.flush()
            records.append(record)
            name = f"{record['recipe']} s{record['seed']}" + (" FAILED" if record["rc"] else "")
            print(_row(name, [record], columns), flush=True)

    print(_header(columns), flush=True)
    with ThreadPoolExecutor(opts.parallel) as pool:
        list(pool.map(one, jobs))
    out.close()
    return records


def print_summary(records: list[dict], columns, title: str) -> None:
    """Mean ± sd over seeds per recipe (best first by the first column)."""
    by_recipe: dict[str, list[dict]] = {}
    for r in records:
        if r.get(columns[0][1]) is not None:
            by_recipe.setdefault(r["recipe"], []).append(r)
    order = sorted(by_recipe, key=lambda k: -np.mean([r[columns[0][1]] for r in by_recipe[k]]))
    print(f"\n{title} (mean ± sd over seeds)\n{_header(columns)}  seeds  CPU estimate")
    for name in order:
        rs = by_recipe[name]
        cpu = cpu_estimate_s(rs)
        cpu_text = f"~{cpu / 60:.1f} min" if cpu else "(not estimated)"
        print(f"{_row(name, rs, columns)}  {len(rs):5d}  {cpu_text}")


def summarise(records: list[dict]) -> dict[str, dict]:
    """Per recipe: mean validation AUC and the CPU estimate (what ``choose`` needs)."""
    by_recipe: dict[str, list[dict]] = {}
    for r in records:
        if r.get("val_auc") is not None:
            by_recipe.setdefault(r["recipe"], []).append(r)
    return {
        name: {
            "val_auc_mean": float(np.mean([r["val_auc"] for r in rs])),
            "cpu_estimate_s": cpu_estimate_s(rs),
        }
        for name, rs in by_recipe.items()
    }


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
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    p.add_argument(
        "--split-seed",
        type=int,
        help="train and score every seed on this patient split (default: seed k on split k)",
    )
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per run")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    p.add_argument("--runs", type=Path, help="run directories (default: a new temp folder)")
    p.add_argument("--only", help="comma-separated recipe names: run only these of the grid")
    p.add_argument("--quick", action="store_true", help="2 epochs of 2 batches: a smoke test")
    p.add_argument("--final", help="recipe name, or 'auto', to score on the test split")
    p.add_argument("--skip-grid", action="store_true", help="only --final (runs retrained)")
    opts = p.parse_args(argv)
    if opts.final == "auto" and opts.skip_grid:
        p.error("--final auto chooses from the grid: drop --skip-grid or name the recipe")
    opts.runs = opts.runs or Path(tempfile.mkdtemp(prefix="recipe-runs-"))
    try:
        grid = select(opts.only, full_grid(), opts.quick)
        named_final = opts.final not in (None, "auto")
        final = select(opts.final, full_grid(), opts.quick) if named_final else grid
    except ValueError as err:
        p.error(str(err))
    t0 = time.perf_counter()
    summary = {}
    if not opts.skip_grid:
        print(f"{len(grid)} recipes × {opts.seeds} seeds, {opts.parallel} at a time", flush=True)
        records = run_grid(list(grid.values()), opts)
        print_summary(records, VALID_COLUMNS, "validation patients")
        summary = summarise(records)
        grid_s = time.perf_counter() - t0
        print(
            f"grid: {grid_s:.0f} s wall ({grid_s / GRID_BUDGET_S:.2f}× the {GRID_BUDGET_S} s budget)"
        )
    if opts.final:
        name = choose(summary) if opts.final == "auto" else next(iter(final))
        print(f"\nfinal: {name} on the test split, {opts.seeds} seeds", flush=True)
        t1 = time.perf_counter()
        opts.runs = opts.runs / "final"
        records = run_grid([final[name]], opts, final=True)
        print_summary(records, TEST_COLUMNS, f"test patients, looked at once: {name}")
        print(f"final: {time.perf_counter() - t1:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
