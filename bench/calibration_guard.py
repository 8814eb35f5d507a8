"""What the calibration guard and the conformal sets do on a trained run (issue 27, items 4-5).

    /work/main/.venv/bin/python bench/calibration_guard.py --run RUN_DIR --data DATA

Predicts the raw (uncalibrated) P(tumour) of the run's best.pt on its validation and test
splits (the dataset opened with the checkpoint's split), then prints, on the test split:
ECE of the raw probabilities, of the map asked for fitted without the guard, and of the map the
guard keeps (with its reason); and, for the split-conformal sets fitted on validation with the
guarded map, the coverage per patch and the mean per patient against 1 − α.

Then what the coverage rests on: the coverage of each class on validation and on test; the
test coverage's 95% interval over test patients (cluster bootstrap); how much the coverage of
one split moves when patients, not patches, are what is exchangeable (validation only: sets
fitted on a random half of the validation patients, coverage on the other half, 500 times);
and class-conditional (Mondrian) sets, the usual remedy for a shift in class balance, for
comparison (not used by the card).
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
    prob_v, prob_t = guarded.apply(raw_v), guarded.apply(raw_t)
    fitted = fit_conformal(y_v, prob_v)
    for key, row in coverage(y_t, prob_t, fitted, known_groups(test)).items():
        print(
            f"  conformal α={key}: coverage {row['coverage']:.4f} per patch "
            f"(target {row['target']:.2f}, {row['coverage'] - row['target']:+.4f}), "
            f"mean per patient {row['patient_mean_coverage']:.4f}; sets {row['sets']}"
        )
    what_coverage_rests_on(valid, test, prob_v, prob_t, fitted)


def what_coverage_rests_on(valid, test, prob_v, prob_t, fitted) -> None:
    import numpy as np

    from core.conformal import fit_conformal, prediction_sets

    y_v, y_t = valid["label"].to_numpy(), test["label"].to_numpy()
    patients_v, patients_t = valid["patient"].to_numpy(), test["patient"].to_numpy()
    for name, frame in (("validation", valid), ("test", test)):
        print(
            f"  {name}: {frame['patient'].nunique()} patients, tumour share "
            f"{frame['label'].mean():.3f}, mean calibrated P(tumour) "
            f"{(prob_v if name == 'validation' else prob_t).mean():.3f}"
        )
    rng = np.random.default_rng(0)
    for key, quantile in fitted["quantiles"].items():
        alpha = float(key)
        cov_v = _covered(y_v, prediction_sets(prob_v, quantile))
        cov_t = _covered(y_t, prediction_sets(prob_t, quantile))
        low, high = _patient_interval(cov_t, patients_t, rng)
        print(
            f"  α={key}: coverage of tumour / normal patches, validation "
            f"{cov_v[y_v == 1].mean():.3f} / {cov_v[y_v == 0].mean():.3f}, test "
            f"{cov_t[y_t == 1].mean():.3f} / {cov_t[y_t == 0].mean():.3f}; test coverage "
            f"{cov_t.mean():.3f}, 95% interval over test patients {low:.3f}–{high:.3f}"
        )
        halves = []
        for _ in range(500):
            names = np.unique(patients_v)
            fit = np.isin(patients_v, rng.permutation(names)[: names.size // 2])
            q = fit_conformal(y_v[fit], prob_v[fit], alphas=(alpha,))["quantiles"][key]
            halves.append(_covered(y_v[~fit], prediction_sets(prob_v[~fit], q)).mean())
        halves = np.array(halves)
        print(
            f"    validation halves (sets fitted on half the patients, covering the others): "
            f"mean {halves.mean():.3f}, sd {halves.std():.3f}, within 2 points of "
            f"{1 - alpha:.2f} in {np.mean(np.abs(halves - (1 - alpha)) <= 0.02):.0%} of 500"
        )
        by_class = [  # class c is in a patch's set when its score is within q̂ of class c
            prediction_sets(
                prob_t, fit_conformal(y_v[y_v == c], prob_v[y_v == c])["quantiles"][key]
            )[:, c]
            for c in (0, 1)
        ]
        mondrian = _covered(y_t, np.column_stack(by_class))
        print(
            f"    class-conditional (Mondrian) sets, for comparison: test coverage "
            f"{mondrian.mean():.3f} (tumour {mondrian[y_t == 1].mean():.3f}, normal "
            f"{mondrian[y_t == 0].mean():.3f})"
        )


def _covered(y, sets):
    import numpy as np

    return sets[np.arange(y.size), y]


def _patient_interval(covered, patients, rng, n_boot: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the coverage with whole patients resampled."""
    import numpy as np

    names, inverse = np.unique(patients, return_inverse=True)
    hits = np.bincount(inverse, weights=covered.astype(float))
    sizes = np.bincount(inverse)
    drawn = rng.integers(0, names.size, (n_boot, names.size))
    ratios = hits[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    return tuple(np.percentile(ratios, [2.5, 97.5]))


def _asked_method(best: Path) -> str:
    from core.catalogue import read_card

    return read_card(best).train_config.get("calibration", "platt")


if __name__ == "__main__":
    main()
