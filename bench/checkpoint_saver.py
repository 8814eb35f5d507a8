"""What an improving epoch's checkpoints cost: best.pt as its own weights-only file, calibrated on
the epoch's validation predictions (what core.train writes), against last.pt serialised once and
best.pt hard-linked to it (timm's CheckpointSaver; what core.train wrote before), in the same run.
Beside it, what calibrating best.pt on cancel would cost instead: one validation pass, and what
one training epoch costs, to read the difference per epoch.

    python bench/checkpoint_saver.py [--rounds 5] [--archs bn_cnn,hcd_cnn,resnet18]
                                     [--valid 1137,32768] [--train 5519]

Each architecture gets AdamW state from one step (last.pt carries it, as in training). Rounds
alternate the two strategies. Columns: median milliseconds of ``own`` (best.pt weights-only +
calibration fit on ``--valid`` predictions + last.pt) and ``link`` (last.pt + hard link), their
ratio, the calibration fit alone, best.pt's size either way, the seconds one validation pass
over that many patches would take here (forward passes at the model's input size, batch 64,
measured on 256 patches and scaled), and ``own - link`` as a share of one training epoch over
``--train`` patches (AdamW steps of batch 64, measured on 3 steps and scaled; augmentation and
data loading left out, so the share is an upper bound). 1137 / 5519 are the real IDC sample's
validation / training splits, 32768 PCam's validation split.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.calibration import fit_operating_point  # noqa: E402
from core.checkpoints import ModelCard, save_checkpoint  # noqa: E402
from core.models import build_model, get_spec  # noqa: E402


def own_best(folder: Path, model, card, extra, labels, probs) -> None:
    fitted = fit_operating_point(labels, probs, "platt")
    save_checkpoint(folder / "best.pt", model, replace(card, **fitted.card_fields()))
    save_checkpoint(folder / "last.pt", model, card, **extra)


def once_and_link(folder: Path, model, card, extra, labels, probs) -> None:
    save_checkpoint(folder / "last.pt", model, card, **extra)
    tmp = folder / ".best.pt.tmp"
    os.link(folder / "last.pt", tmp)
    os.replace(tmp, folder / "best.pt")


def validation_predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a plausible, imperfect model's raw P(tumour) for ``n`` patches."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probs = 1 / (1 + np.exp(-(2.0 * (labels - 0.5) * 2 + rng.normal(0, 1.5, n))))
    return labels, probs


@torch.inference_mode()
def pass_seconds_per_patch(model, size: int, n: int = 256, batch: int = 64) -> float:
    model.eval()
    x = torch.rand(batch, 3, size, size)
    model(x)  # warm-up
    start = time.perf_counter()
    for _ in range(n // batch):
        torch.softmax(model(x), dim=1)
    return (time.perf_counter() - start) / n


def train_seconds_per_patch(model, size: int, steps: int = 3, batch: int = 64) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters())
    x, y = torch.rand(batch, 3, size, size), torch.randint(0, 2, (batch,))

    def step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / (steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--archs", default="bn_cnn,hcd_cnn,resnet18")
    parser.add_argument("--valid", default="1137,32768", help="validation sizes, comma-separated")
    parser.add_argument("--train", type=int, default=5519, help="training patches per epoch")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; ",
        end="",
    )
    print(f"medians of {args.rounds} alternating rounds")
    fit_operating_point(*validation_predictions(100), "platt")  # scipy + scikit-learn imported once
    header = f"{'arch':<9} {'valid':>6} {'own ms':>7} {'link ms':>8} {'own/link':>8}"
    print(header + f" {'fit ms':>7} {'best MB own / link':>19} {'valid pass s':>12} {'% epoch':>8}")
    for arch in args.archs.split(","):
        model, _ = build_model(arch)
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.rand(2, 3, 64, 64)).sum().backward()
        optimizer.step()
        card = ModelCard.for_model(arch)
        extra = {"optimizer": optimizer.state_dict(), "loop": {"epoch": 1}}
        size = get_spec(arch).input_size
        per_patch = pass_seconds_per_patch(model, size)
        epoch_s = train_seconds_per_patch(copy.deepcopy(model), size) * args.train
        for n in map(int, args.valid.split(",")):
            labels, probs = validation_predictions(n)
            times = {"own": [], "link": [], "fit": []}
            with tempfile.TemporaryDirectory() as tmp:
                folders = {k: Path(tmp) / k for k in ("own", "link")}
                for folder in folders.values():
                    folder.mkdir()
                for _ in range(args.rounds):
                    for name, fn in (("own", own_best), ("link", once_and_link)):
                        start = time.perf_counter()
                        fn(folders[name], model, card, extra, labels, probs)
                        times[name].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    fit_operating_point(labels, probs, "platt")
                    times["fit"].append(time.perf_counter() - start)
                sizes = [(folders[k] / "best.pt").stat().st_size / 1e6 for k in ("own", "link")]
            own, link, fit = (statistics.median(times[k]) * 1e3 for k in ("own", "link", "fit"))
            print(
                f"{arch:<9} {n:>6} {own:>7.1f} {link:>8.1f} {own / link:>8.2f} {fit:>7.1f} "
                f"{sizes[0]:>9.1f} / {sizes[1]:<7.1f} {per_patch * n:>12.1f} "
                f"{100 * (own - link) / 1e3 / epoch_s:>8.2f}"
            )


if __name__ == "__main__":
    main()
