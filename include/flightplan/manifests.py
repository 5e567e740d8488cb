"""The contracts between stages: each manifest or summary that one stage writes and another reads, as a typed
model. A writer builds the model and writes it; every reader reads it back through the model, so a key renamed
or dropped on one side fails at once, naming the file and the field, instead of reading as missing somewhere
downstream. Unknown keys are refused for the same reason."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flightplan.files import write_json_atomic


class ManifestError(ValueError):
    """A manifest that does not hold what its model says; the message names the file and each field."""


class Manifest(BaseModel):
    # Metrics may be infinite or undefined (a metric of an empty slice): written as JSON's Infinity and NaN.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants", populate_by_name=True)

    @classmethod
    def read(cls, path: Path) -> Self:
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as err:
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in err.errors())
            raise ManifestError(f"{path} is not a valid {cls.__name__}: {fields}") from err

    def write(self, path: Path) -> Path:
        return write_json_atomic(self.to_json(), path)

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON values (what XCom and the file hold)."""
        return self.model_dump(mode="json", by_alias=True)


def _absent_when_none(value: object) -> bool:
    return value is None


class Interval(Manifest):
    start: date
    end: date  # excluded


class PartitionCounts(Manifest):
    """What a stage left in a dataset and its quarantine, per day partition."""

    rows: dict[str, int]
    quarantined: dict[str, int]
    rows_total: int
    quarantined_total: int
    output: str
    quarantine: str
    engine: str = "spark"  # what wrote them: Spark, or Arrow in the task's process ("local")


class LandingFile(Manifest):
    """A data file as ingest found it; the optional notes are written only when there is something to say."""

    path: str
    day: date
    bytes: int
    problem: str | None = Field(default=None, exclude_if=_absent_when_none)
    missing_columns: list[str] | None = Field(default=None, exclude_if=_absent_when_none)
    unexpected_columns: list[str] | None = Field(default=None, exclude_if=_absent_when_none)


class IngestManifest(PartitionCounts):
    pipeline: str
    stage: Literal["ingest"] = "ingest"
    interval: Interval
    days_without_landing: list[date]  # none of their rows were replaced
    days_kept: list[date] = []  # of those, the days that held rows, kept as they were
    files: list[LandingFile]
    quarantine_reasons: dict[str, int]
    dimensions: dict[str, dict[str, Any]]


class ValidationManifest(Manifest):
    success: bool
    problems: list[str]
    data_docs: str
    gx_result: dict[str, Any]


class WrangleManifest(PartitionCounts):
    stage: Literal["wrangle"] = "wrangle"
    imputed_with: dict[str, Any]


class LabelManifest(PartitionCounts):
    stage: Literal["label"] = "label"
    ground_truth_matched: int
    ground_truth_set_aside: int
    ground_truth_set_aside_examples: list[dict[str, Any]]  # each with its reason


class SplitSide(Manifest):
    rows: int
    first: str | None = Field(alias="from")
    last: str | None = Field(alias="to")
    classes: dict[str, int]
    fingerprint: str


class SplitManifest(Manifest):
    pipeline: str
    split_id: str
    strategy: str
    fractions: dict[str, float]
    seed: int
    window: Interval
    label: str
    time_column: str | None
    sides: dict[str, SplitSide]
    paths: dict[str, str]
    fingerprint: str
    config_hash: str
    # What the split was made of (the labeled days' contents, the window, the config, the code): a later split
    # whose inputs have this key writes nothing (flightplan.data.stages.split). None: written before keys were kept.
    input_key: str | None = None


class LatestSplit(Manifest):
    """`latest.json` of a pipeline's splits: which split is the newest, and its manifest."""

    split_id: str
    manifest: str


class RunFile(Manifest):
    """A file one model_engineering task writes into the run's folder for the tasks after it."""

    FILE: ClassVar[str]


class FeatureSelection(RunFile):
    FILE: ClassVar[str] = "selection.json"
    kept: list[str]
    dropped: list[str]
    gain_share: dict[str, float]  # of each candidate feature, in a quick booster's total gain


class BestTrial(RunFile):
    FILE: ClassVar[str] = "best.json"
    params: dict[str, Any]
    rounds: int
    metric: str
    score: float | None
    trial: int


class Evaluation(RunFile):
    FILE: ClassVar[str] = "evaluation.json"
    metrics: dict[str, dict[str, float]]  # of each side
    threshold: float | None  # binary only: the decision threshold, chosen on the validation side
    slices: list[dict[str, Any]]  # the test side's metrics per value of each slice column


class AcceptanceVerdict(RunFile):
    FILE: ClassVar[str] = "verdict.json"
    accepted: bool
    reasons: list[str]
    checks: list[dict[str, Any]]
    champion_version: str | None


class ParityReport(RunFile):
    FILE: ClassVar[str] = "parity.json"
    rows: int
    max_abs_diff: float
    max_scaled_diff: float
    tolerance: float
    ok: bool


class ColumnDriftResult(Manifest):
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


class MonitoringDecision(Manifest):
    outcome: Literal["retrain", "hold", "undecided"]
    reason: str
    retrain: bool


class MonitoringWindow(Manifest):
    start: datetime
    end: datetime


class MonitoringSummary(Manifest):
    """`summary.json` of one monitoring check: the window, the reference it was compared with, what was measured
    and the decision."""

    FILE: ClassVar[str] = "summary.json"
    pipeline: str
    window: MonitoringWindow
    model_version: str  # the version that answered most of the window
    answered_by: dict[str, int]  # rows per version
    reference: str
    split_manifest: str
    rows: int
    labeled_rows: int
    labels_set_aside: int
    drift_share: float
    columns: list[ColumnDriftResult]
    prediction_drift: list[ColumnDriftResult]
    performance: dict[str, float]  # live metrics on the window's labeled rows
    primary_metric: str
    champion_test_score: float | None  # the primary metric on the model's own test split
    decision: MonitoringDecision
    reports: dict[str, str]

    def drifted_columns(self) -> list[str]:
        """The columns found drifting: features, then the model's output."""
        return [c.column for c in [*self.columns, *self.prediction_drift] if c.drifted]


class DeploymentDecision(Manifest):
    """The deployment gate's decision: ``note`` when there was nothing to compare (no champion yet, or the
    candidate is the champion), else the comparison on the newest labeled days: ``rows`` compared, after
    ``learned_rows_left_out`` rows that either version trained on."""

    pipeline: str
    candidate: str
    champion: str | None
    accepted: bool
    reasons: list[str]
    note: str | None = Field(default=None, exclude_if=_absent_when_none)
    checks: list[dict[str, Any]] | None = Field(default=None, exclude_if=_absent_when_none)
    rows: int | None = Field(default=None, exclude_if=_absent_when_none)
    learned_rows_left_out: int | None = Field(default=None, exclude_if=_absent_when_none)
    days: list[date] | None = Field(default=None, exclude_if=_absent_when_none)
    candidate_metrics: dict[str, float] | None = Field(default=None, exclude_if=_absent_when_none)
    champion_metrics: dict[str, float] | None = Field(default=None, exclude_if=_absent_when_none)


class LiveDecision(Manifest):
    """A decision taken on live rows. The live gate's (``gate`` "live"): whether the candidate is promoted over
    the champion. The watch's after a promotion ("watch"): the replaced champion is the candidate, challenging
    the new one, and ``accepted`` means it took the champion back (a rollback). ``note`` when there was nothing
    to prove, else ``test``: the paired bootstrap on the labeled live rows both versions answered (its metric,
    rows, both versions' values, the candidate's gain, its lower bound, the p-value, margin and confidence)."""

    gate: Literal["live", "watch"] = "live"
    pipeline: str
    candidate: str
    champion: str | None
    decided_at: datetime
    accepted: bool
    reasons: list[str]
    note: str | None = Field(default=None, exclude_if=_absent_when_none)
    test: dict[str, Any] | None = Field(default=None, exclude_if=_absent_when_none)


class BatchScoringManifest(Manifest):
    stage: Literal["batch_inference"] = "batch_inference"
    model: str
    model_version: str
    rows: dict[str, int]
    rows_total: int
    output: str


class MonitoringOutcome(Manifest):
    """What the monitoring DAG hands on (XCom): where the summary is, the decision, and the conf of the
    model_engineering run to start when the decision is to retrain."""

    summary: str
    rows: int
    drift_share: float
    decision: MonitoringDecision
    retrain_conf: dict[str, Any]
