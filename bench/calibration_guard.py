"""What the calibration guard and the conformal sets do on a trained run (issue 27, items 4-5).

    /work/main/.venv/bin/python bench/calibration_guard.py --run RUN_DIR --data DATA

Predicts the raw (uncalibrated) P(tumour) of the run's best.pt on its validation and test
splits (the dataset opened with the checkpoint's split), then prints, on the test split:
ECE of the raw probabilities, of the map asked for fitted without the guard, and of the map the
guard keeps (with its reason); and, for the split-conformal sets fitted on validation with the
guarded map, the coverage per patch and the mean per patient against 1 − α.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from core.calibration import fit_calibration, guarded_calibration
    from core.conformal import coverage, fit_conformal
    from core.evaluate import (
        labelled,
        open_dataset_for,
        predict_indices,
        prediction_frame,
        split_indices,
    )
    from core.metrics import expected_calibration_error, known_groups

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    best = args.run / "best.pt"
    ds, _ = open_dataset_for(args.data, [best])
    method = _asked_method(best)
    split = {}
    for name in ("valid", "test"):
        indices = split_indices(ds, name)
        raw = predict_indices(best, ds, indices, calibrated=False)
        split[name] = labelled(prediction_frame(ds, indices, raw))
    valid, test = split["valid"], split["test"]
    y_v, raw_v = valid["label"].to_numpy(), valid["prob"].to_numpy()
    y_t, raw_t = test["label"].to_numpy(), test["prob"].to_numpy()
    unguarded = fit_calibration(y_v, raw_v, method)
    guarded, note = guarded_calibration(y_v, raw_v, method)
    print(f"{best}: {len(valid)} validation, {len(test)} test patches; map asked: {method}")
    print(f"  unguarded {unguarded}")
    print(f"  guarded   {guarded} {note or '(as asked)'}")
    for label, prob in (
        ("raw", raw_t),
        ("unguarded map", unguarded.apply(raw_t)),
        ("guarded map", guarded.apply(raw_t)),
    ):
        print(f"  test ECE, {label}: {expected_calibration_error(y_t, prob):.4f}")
    fitted = fit_conformal(y_v, guarded.apply(raw_v))
    for key, row in coverage(y_t, guarded.apply(raw_t), fitted, known_groups(test)).items():
        print(
            f"  conformal α={key}: coverage {row['coverage']:.4f} per patch "
            f"(target {row['target']:.2f}, {row['coverage'] - row['target']:+.4f}), "
            f"mean per patient {row['patient_mean_coverage']:.4f}; sets {row['sets']}"
        )


def _asked_method(best: Path) -> str:
    from core.catalogue import read_card

    return read_card(best).train_config.get("calibration", "platt")


if __name__ == "__main__":
    main()
