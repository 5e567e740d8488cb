"""The drift verdicts equal Evidently's default DataDriftPreset on the same frames, for every kind of column
and on both sides of the 1,000-row switch from p-values to distances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flightplan.monitoring.drift import column_drift, drift_share, frame_drift
from flightplan.monitoring.report import drift_verdicts

NUMERIC = ["wide", "barely_moved", "five_values", "two_values", "with_gaps", "constant"]
CATEGORICAL = ["four_classes", "two_classes", "new_class"]


def sample(rows: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    moved = shift > 0
    frame = pd.DataFrame(
        {
            "wide": rng.normal(shift, 1, rows),
            "barely_moved": rng.normal(0.02 * shift, 1, rows),
            "five_values": rng.choice([1, 2, 3, 4, 5], rows, p=[0.3, 0.2, 0.2, 0.15, 0.15] if moved else None) * 1.0,
            "two_values": rng.choice([0.0, 1.0], rows, p=[0.4, 0.6] if moved else None),
            "with_gaps": np.where(rng.random(rows) < 0.1, np.nan, rng.exponential(1 + shift, rows)),
            "constant": np.full(rows, 3.0),
            "four_classes": rng.choice(list("abcd"), rows, p=[0.3, 0.3, 0.2, 0.2] if moved else [0.4, 0.3, 0.2, 0.1]),
            "two_classes": rng.choice(["u", "v"], rows, p=[0.6, 0.4] if moved else [0.7, 0.3]),
            "new_class": rng.choice(["p", "q", "r", "s"] if moved else ["p", "q", "r"], rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "four_classes"] = None
    return frame


def evidently_verdicts(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, tuple[float, bool]]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return drift_verdicts(snapshot)


@pytest.mark.parametrize(
    ("reference_rows", "current_rows", "shift"),
    [(300, 400, 1.0), (1000, 800, 0.5), (1001, 900, 1.0), (5000, 3000, 0.5), (5000, 3000, 0.0)],
)
def test_verdicts_and_scores_equal_evidentlys(reference_rows: int, current_rows: int, shift: float) -> None:
    reference, current = sample(reference_rows, 0.0, seed=1), sample(current_rows, shift, seed=2)
    expected = evidently_verdicts(reference, current)
    ours = {c.column: c for c in frame_drift(reference, current, NUMERIC, CATEGORICAL)}
    assert set(ours) == set(expected)
    for column, (score, drifted) in expected.items():
        assert ours[column].score == pytest.approx(score, rel=1e-9, abs=1e-12), column
        assert ours[column].drifted == drifted, column


def test_a_shifted_sample_is_flagged_and_an_unshifted_one_is_not() -> None:
    reference = sample(20_000, 0.0, seed=3)
    assert drift_share(frame_drift(reference, sample(20_000, 0.0, seed=4), NUMERIC, CATEGORICAL)) == 0.0
    shifted = frame_drift(reference, sample(20_000, 1.0, seed=5), NUMERIC, CATEGORICAL)
    flagged = {c.column for c in shifted if c.drifted}
    assert {"wide", "with_gaps", "new_class"} <= flagged
    assert not {"barely_moved", "constant"} & flagged


def test_a_column_without_values_on_one_side_is_not_counted() -> None:
    verdict = column_drift("empty", pd.Series([1.0, 2.0]), pd.Series([np.nan, np.inf]), numeric=True)
    assert verdict.method == "no values" and not verdict.drifted
    assert drift_share([verdict]) == 0.0
