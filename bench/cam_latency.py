"""CAM latency per method against one forward+backward of the same batch, in the same run.

    python bench/cam_latency.py [--arch hcd_cnn] [--size 96] [--batch 32] [--rounds 5]
                                [--slow-batch 4] [--methods gradcam,eigencam,...]

Baseline: ``to_model_input`` + forward + backward of the tumour logit for the batch — the least
work any gradient CAM can do. Measured: ``core.explain.compute_cams`` on the same uint8 batch
(preprocessing, hooks, CAM weights, resize to the input size, per-map normalisation, lock).
Rounds alternate baseline / CAM so machine load hits both; the table reports medians and the
ratio CAM / baseline (target ≤ 1.3×). ScoreCAM and AblationCAM run one forward per channel of
the target layer by design, so they are timed on ``--slow-batch`` images against the baseline of
that same smaller batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.checkpoints import LoadedModel, ModelCard  # noqa: E402
from core.explain import CAM_METHODS, SLOW_METHODS, compute_cams  # noqa: E402
from core.models import build_model  # noqa: E402
from core.preprocess import to_model_input  # noqa: E402


def forward_backward(loaded: LoadedModel, images: np.ndarray) -> None:
    x = to_model_input(images, loaded.card, loaded.device).requires_grad_(True)
    loaded.model.zero_grad(set_to_none=True)
    loaded.model(x)[:, 1].sum().backward()
    loaded.model.zero_grad(set_to_none=True)


def timed(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds; CPU time is the steadier figure on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(
    loaded, images, method: str, rounds: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, CPU) seconds of baseline and of CAM over alternating rounds, after a warm-up."""
    base, cam = [], []
    forward_backward(loaded, images)
    compute_cams(loaded, images, method, batch_size=len(images))
    for _ in range(rounds):
        base.append(timed(lambda: forward_backward(loaded, images)))
        cam.append(timed(lambda: compute_cams(loaded, images, method, batch_size=len(images))))
    return _medians(base), _medians(cam)


def _medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="hcd_cnn")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--slow-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slow-rounds", type=int, default=1)
    parser.add_argument("--methods", default=",".join(CAM_METHODS))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, _ = build_model(args.arch)
    card = ModelCard.for_model(args.arch, input_size=args.size)
    loaded = LoadedModel(
        model=model.eval(), card=card, path=Path(f"<untrained {args.arch}>"), sha256=""
    )
    rng = np.random.default_rng(0)
    print(
        f"# {args.arch} at {args.size}px, target layer {card.target_layer}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU"
    )
    print("| method | batch | fwd+bwd wall s | CAM wall s | ratio wall | ratio CPU time |")
    print("|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        slow = method in SLOW_METHODS
        n = args.slow_batch if slow else args.batch
        images = rng.integers(0, 256, (n, args.size, args.size, 3), dtype=np.uint8)
        base, cam = measure(loaded, images, method, args.slow_rounds if slow else args.rounds)
        ratio_wall, ratio_cpu = cam[0] / base[0], cam[1] / base[1]
        print(
            f"| {method} | {n} | {base[0]:.3f} | {cam[0]:.3f} | {ratio_wall:.2f}× | {ratio_cpu:.2f}× |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
