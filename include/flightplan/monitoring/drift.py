"""Per-column drift verdicts on every row of the reference and the current window.

Each column gets the test Evidently 0.7 picks by default, with its default threshold, so a verdict here is
the verdict Evidently gives on the same frames (a test proves it on frames of each kind):

- reference with more than 1,000 values: normed Wasserstein distance for numeric columns with more than
  five distinct values, Jensen-Shannon distance over the values otherwise; drift when the distance is at
  least 0.1;
- 1,000 values or fewer: the two-sample Kolmogorov-Smirnov test for such numeric columns, chi-square for
  columns with three to five values (or categorical ones), a two-proportion z-test for two values; drift
  when the p-value is under 0.05 (at most 0.05 for Kolmogorov-Smirnov).

Missing and infinite values are dropped from each side before a test, as Evidently does. Evidently itself
computes each column's test three times and draws its plots on every row (34 s for eleven columns of 1M
rows here); these vectorized tests take a fraction of that, and Evidently's report is drawn on a sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

LARGE_SAMPLE = 1000  # reference values above which distances replace p-value tests
FEW_VALUES = 5  # numeric columns with at most this many distinct values are tested as categories
DISTANCE_THRESHOLD = 0.1
P_VALUE_THRESHOLD = 0.05
MIN_STD = 0.001  # the normed Wasserstein distance divides by the reference's std, at least this
NO_VALUES = "no values"  # the method of a column without values on a side: not tested, not counted


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str  # wasserstein, jensenshannon, ks, chisquare, z; "no values" when a side has none
    score: float
    threshold: float
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _values(series: pd.Series, numeric: bool) -> np.ndarray:
    if numeric:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return values[np.isfinite(values)]
    return series.dropna().to_numpy()


def _cdf_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """The first Wasserstein distance between two samples: the area between their empirical CDFs, which step only
    at the distinct values. Counting by hash and sorting the distinct values alone costs less than sorting every
    value (most columns hold few distinct values)."""
    values, reference_counts, current_counts = _counts(reference, current)
    order = np.argsort(values)
    reference_cdf = np.cumsum(reference_counts[order])[:-1] / reference.size
    current_cdf = np.cumsum(current_counts[order])[:-1] / current.size
    return float(np.sum(np.abs(reference_cdf - current_cdf) * np.diff(values[order])))


def _counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each value seen on either side and its count on each side, aligned (hash-based: no sort of the values)."""
    codes, uniques = pd.factorize(np.concatenate([reference, current]))
    size = len(uniques)
    return (
        np.asarray(uniques),
        np.bincount(codes[: reference.size], minlength=size).astype(np.float64),
        np.bincount(codes[reference.size :], minlength=size).astype(np.float64),
    )


def _jensen_shannon(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    p = reference_counts / reference_counts.sum()
    q = current_counts / current_counts.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = np.where(p > 0, p * np.log(p / m), 0.0).sum() + np.where(q > 0, q * np.log(q / m), 0.0).sum()
    return float(np.sqrt(max(divergence / 2, 0.0)))


def _two_proportions(reference: np.ndarray, current: np.ndarray) -> float:
    """p-value of the two-sided z-test that the share of the second value is the same on both sides."""
    from scipy import stats

    first = sorted(set(reference.tolist()) | set(current.tolist()))[0]
    ref_share, cur_share = np.mean(reference != first), np.mean(current != first)
    pooled = (np.sum(reference != first) + np.sum(current != first)) / (reference.size + current.size)
    if pooled in (0.0, 1.0):  # one value on both sides
        return 1.0
    z = (ref_share - cur_share) / np.sqrt(pooled * (1 - pooled) * (1 / reference.size + 1 / current.size))
    return float(2 * (1 - stats.norm.cdf(abs(z))))


@dataclass(frozen=True)
class ColumnValues:
    """A column's non-missing values on each side and the test Evidently picks for them."""

    column: str
    reference: np.ndarray
    current: np.ndarray
    method: str


def column_values(column: str, reference: pd.Series, current: pd.Series, numeric: bool) -> ColumnValues:
    ref, cur = _values(reference, numeric), _values(current, numeric)
    if ref.size == 0 or cur.size == 0:
        return ColumnValues(column, ref, cur, NO_VALUES)
    distinct = len(pd.unique(np.concatenate([ref, cur])))
    continuous = numeric and distinct > FEW_VALUES
    if ref.size > LARGE_SAMPLE:
        method = "wasserstein" if continuous else "jensenshannon"
    else:
        method = "ks" if continuous else "chisquare" if distinct > 2 else "z"
    return ColumnValues(column, ref, cur, method)


def judge(values: ColumnValues) -> ColumnDrift:
    """The column's verdict by its test, on every value of each side."""
    column, ref, cur, method = values.column, values.reference, values.current, values.method
    if method == NO_VALUES:
        return ColumnDrift(column, method, float("nan"), float("nan"), False)
    if method in ("wasserstein", "jensenshannon"):
        score = (
            _cdf_distance(ref, cur) / max(float(np.std(ref)), MIN_STD)
            if method == "wasserstein"
            else _jensen_shannon(*_counts(ref, cur)[1:])
        )
        return ColumnDrift(column, method, score, DISTANCE_THRESHOLD, score >= DISTANCE_THRESHOLD)
    from scipy import stats  # only the p-value tests of small references need it (1.3 s to import)

    if method == "ks":
        p_value = float(stats.ks_2samp(ref, cur).pvalue)
        return ColumnDrift(column, method, p_value, P_VALUE_THRESHOLD, p_value <= P_VALUE_THRESHOLD)
    if method == "chisquare":
        _, ref_counts, cur_counts = _counts(ref, cur)
        expected = ref_counts * (cur.size / ref.size)
        p_value = float(stats.chisquare(cur_counts, expected).pvalue)
    else:
        p_value = _two_proportions(ref, cur)
    return ColumnDrift(column, method, p_value, P_VALUE_THRESHOLD, p_value < P_VALUE_THRESHOLD)


def column_drift(column: str, reference: pd.Series, current: pd.Series, numeric: bool) -> ColumnDrift:
    """The default Evidently test of one column, on every non-missing value of each side."""
    return judge(column_values(column, reference, current, numeric))


def frame_values(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> list[ColumnValues]:
    """The values and test of each listed column, in the order given (numeric first)."""
    return [
        *(column_values(c, reference[c], current[c], numeric=True) for c in numeric),
        *(column_values(c, reference[c], current[c], numeric=False) for c in categorical),
    ]


def frame_drift(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> list[ColumnDrift]:
    """The drift verdict of each listed column, in the order given (numeric first)."""
    return [judge(values) for values in frame_values(reference, current, numeric, categorical)]


def drift_share(columns: list[ColumnDrift]) -> float:
    """The share of tested columns that drift (columns without values on a side are not counted)."""
    tested = [c for c in columns if c.method != NO_VALUES]
    return sum(c.drifted for c in tested) / len(tested) if tested else 0.0
