"""core.display: p-values and headers as a person reads them (issue 13, item 6)."""

from __future__ import annotations

import math

import pandas as pd

from core.display import column_label, display_table, format_p


def test_p_values_never_print_as_a_row_of_zeros():
    assert format_p(0.04213) == "0.042"
    assert format_p(3.2e-5) == "3.2e-05"
    assert format_p(1e-300) == "< 1e-10" and format_p(0.0) == "< 1e-10"
    assert format_p(math.nan) == "n/a" and format_p(None) == "n/a"
    assert format_p(1.0) == "1.000"


def test_headers_are_for_people_and_the_numbers_stay_numbers():
    assert column_label("road_morf") == "ROAD MoRF ↓"
    assert column_label("mean_rank") == "mean rank"
    assert column_label("balanced_accuracy") == "balanced accuracy"
    table = pd.DataFrame({"model_a": ["a"], "mcnemar_p": [1e-40], "auc_diff": [0.01]})
    shown = display_table(table)
    assert list(shown.columns) == ["model A", "McNemar p", "AUC A − B"]
    assert shown.iloc[0].tolist() == ["a", "< 1e-10", 0.01]
    assert list(table.columns) == ["model_a", "mcnemar_p", "auc_diff"]  # exports keep theirs


def test_undefined_figures_read_n_a_not_none():
    """The per-patient table printed "None" where one patient's AUC is undefined (one class)."""
    table = pd.DataFrame({"patient": ["p1", "p2"], "auc": [0.91, None], "n": [3, 4]})
    shown = display_table(table)
    assert shown["AUC"].tolist() == ["0.91", "n/a"]  # one type per column (Arrow)
    assert shown["patches"].tolist() == [3, 4]  # columns without a gap keep their numbers
