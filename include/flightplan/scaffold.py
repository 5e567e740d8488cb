"""`flightplan init`: profile a data file and write the pipeline YAML that runs the whole workflow on it.

The profile is taken from the file as it is, which the user vouches for: column types are inferred the way
ingestion will parse them, the task from the target's values, the expectation suite from what the data
shows (null rates, ranges, allowed sets, a little slack for the batches to come), and features from every
column but the ones that cannot help (the target, identifiers, constants, free text), each left out with
its reason written next to it. Every choice is a value in the YAML the user can read and change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import yaml

from flightplan.config import (
    DEFAULT_NULL_VALUES,
    IDENTIFIER,
    RESERVED_NAMES,
    ColumnType,
    PipelineConfig,
    parse_pipeline,
)
from flightplan.data.ingest import read_header
from flightplan.data.parse import FINITE_NUMBER, INTEGER_BOUNDS, TRUE_WORDS
from flightplan.files import replace_atomically

TASKS = ("binary", "multiclass", "regression")
MAX_CLASSES = 100
# An integer target with at most this many values is read as classes (ratings, counts of a few kinds).
MAX_INTEGER_CLASSES = 10
# A string column with at most this many values gets an allowed set in the expectation suite.
MAX_ALLOWED_VALUES = 25
# A string column with more distinct values than this share of its rows is free text or an identifier.
MAX_CATEGORY_SHARE = 0.5
# Words that name the event a binary target is usually about, so it is the positive class.
POSITIVE_WORDS = ("1", "true", "yes", "y", "t", "positive", "pos", "bad", "default", "fraud", "churn", "spam", "deny")
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%d.%m.%Y")
TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
)
# At most 18 digits: a whole number that the cast to int64 cannot overflow.
WHOLE_NUMBER = r"^[+-]?\d{1,18}$"
# The words that make a text column boolean: 'yes' and 'no' are a label's classes to a reader, 1 and 0 numbers.
BOOLEAN_WORDS = ("true", "false", "t", "f")
DAY_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIME_COLUMN_REASON = "a time: its parts (hour, weekday, month) are derived features instead"
DRAFT_TUNING = {
    "trials": 20,
    "timeout_minutes": 10,
    "num_boost_round": 400,
    "early_stopping_rounds": 30,
    "fixed": {"tree_method": "hist", "max_cat_to_onehot": 1, "max_bin": 256},
    "space": {
        "max_depth": {"type": "int", "low": 2, "high": 8},
        "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
        "min_child_weight": {"type": "float", "low": 1, "high": 20, "log": True},
        "subsample": {"type": "float", "low": 0.6, "high": 1.0},
        "colsample_bytree": {"type": "float", "low": 0.5, "high": 1.0},
        "reg_lambda": {"type": "float", "low": 0.01, "high": 10, "log": True},
    },
}


class OneLine(dict[str, Any]):
    """A mapping written on one line of the YAML (a column's spec)."""


class DraftDumper(yaml.SafeDumper):
    pass


DraftDumper.add_representer(
    OneLine, lambda dumper, value: dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)
)


class InitError(ValueError):
    """The data cannot become a pipeline; the message names the file or column and what was expected."""


@dataclass
class ColumnProfile:
    """What the file shows of one column."""

    name: str  # the config name: an identifier
    header: str  # the name in the file
    type: ColumnType
    rows: int
    nulls: int
    distinct: int
    format: str | None = None
    min: float | None = None
    max: float | None = None
    values: list[Any] = field(default_factory=list)  # the distinct values, most frequent first (when few)
    top_count: int = 0  # how many rows hold the most frequent value
    words: bool = False  # text with spaces in it: prose rather than a code

    @property
    def null_fraction(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0


@dataclass(frozen=True)
class Draft:
    """The pipeline YAML and what it was inferred from, for the command to report."""

    path: Path
    text: str
    config: PipelineConfig
    rows: int
    excluded: dict[str, str]


@dataclass(frozen=True)
class DataProfile:
    """A data file or folder as read: how it is stored, its rows, and its columns profiled."""

    path: Path
    format: str
    daily: bool  # a folder of daily drops (YYYY-MM-DD subfolders) rather than a snapshot
    table: pa.Table
    columns: dict[str, ColumnProfile]  # by header, in the file's order

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)

    @property
    def headers(self) -> dict[str, str]:
        """The header of each config name."""
        return {c.name: c.header for c in self.columns.values()}


def profile_data(path: Path, delimiter: str = ",") -> DataProfile:
    """Read ``path`` and profile each of its columns under an identifier of its header."""
    table, fmt, daily = read_table(path, delimiter)
    names = config_names(table.column_names)
    columns = {header: profile_column(table.column(header), names[header], header) for header in table.column_names}
    return DataProfile(path, fmt, daily, table, columns)


def read_table(path: Path, delimiter: str = ",") -> tuple[pa.Table, str, bool]:
    """The data of a file or folder as text (CSV) or as stored (Parquet), its format, and whether the folder
    holds daily drops (YYYY-MM-DD subfolders) rather than a snapshot."""
    if not path.exists():
        raise InitError(f"{path} does not exist")
    daily = path.is_dir() and any(p.is_dir() and DAY_FOLDER.match(p.name) for p in path.iterdir())
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise InitError(f"{path} holds no data files")
    fmt = "parquet" if all(_is_parquet(f) for f in files) else "csv"
    tables = [_read_parquet(f) if fmt == "parquet" else _read_csv(f, delimiter) for f in files]
    names = tables[0].column_names
    for other, table in zip(files[1:], tables[1:], strict=True):
        if table.column_names != names:
            raise InitError(f"{other}: its columns {table.column_names} differ from {files[0]}'s {names}")
    table = pa.concat_tables(tables, promote_options="permissive")
    if table.num_rows == 0:
        raise InitError(f"{path}: the file has a header but no rows")
    return table, fmt, daily


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InitError(f"{path}: not a readable Parquet file: {err}") from None


def _read_csv(path: Path, delimiter: str) -> pa.Table:
    try:  # the first line read as ingestion reads it: the same file is refused for the same reason
        header, _ = read_header(path, delimiter)
    except ValueError as err:
        raise InitError(f"{path}: {err}") from None
    if header is None:
        raise InitError(f"{path} is empty: expected a header line and rows")
    parse = pcsv.ParseOptions(delimiter=delimiter)
    try:
        # Every column as text: types are inferred the way ingestion parses a field, not the way pyarrow does.
        names = pcsv.open_csv(path, parse_options=parse).schema.names
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=1 << 26),
            parse_options=parse,
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=list(DEFAULT_NULL_VALUES),
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as err:
        raise InitError(f"{path} is not a table with delimiter '{delimiter}': {err}") from None
    if table.num_columns < 2:
        raise InitError(
            f"{path}: found {table.num_columns} column ({table.column_names}); a pipeline needs a target and "
            f"at least one feature (is the delimiter '{delimiter}'?)"
        )
    return table


def config_names(headers: list[str]) -> dict[str, str]:
    """An identifier for each header: spaces, dots and other signs become '_', and a clash gets a suffix."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for header in headers:
        name = header if re.match(IDENTIFIER, header) else re.sub(r"\W+", "_", header.strip()).strip("_") or "column"
        if not re.match(r"^[A-Za-z_]", name):
            name = f"c_{name}"
        base, counter = name, 2
        while name in taken or name in RESERVED_NAMES or name == "ds":
            name = f"{base}_{counter}"
            counter += 1
        taken.add(name)
        names[header] = name
    return names


def profile_column(values: pa.ChunkedArray, name: str, header: str) -> ColumnProfile:
    """Type and statistics of one column (text from a CSV file, typed from a Parquet one)."""
    array = values.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.cast(pa.string())
    rows = len(array)
    column_type, column_format, typed = _infer(array)
    present = typed.drop_null()
    if pa.types.is_floating(present.type):
        present = present.filter(pc.is_finite(present))
    counts = pc.value_counts(present)
    ordered = sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
        key=lambda item: (-item[1], str(item[0])),
    )
    profile = ColumnProfile(name, header, column_type, rows, rows - len(present), len(ordered), column_format)
    if column_type in ("int", "long", "double") and len(present):
        profile.min, profile.max = float(pc.min(present).as_py()), float(pc.max(present).as_py())
    if column_type == "string" and len(present):
        profile.words = bool(pc.any(pc.match_substring_regex(present, r"\S\s+\S")).as_py())
    if len(ordered) <= MAX_CLASSES:
        profile.values = [value for value, _ in ordered]
    profile.top_count = ordered[0][1] if ordered else 0
    return profile


def _infer(array: pa.Array) -> tuple[ColumnType, str | None, pa.Array]:
    """The column type ingestion should parse ``array`` as, its format, and the values so typed."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _infer_from_text(array)
    if pa.types.is_boolean(kind):
        return "boolean", None, array
    if pa.types.is_integer(kind):
        return _integer_type(array), None, array
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "double", None, array.cast(pa.float64())
    if pa.types.is_date(kind):
        return "date", "%Y-%m-%d", array
    if pa.types.is_timestamp(kind):
        return "timestamp", None, array
    return "string", None, array.cast(pa.string())


def _infer_from_text(array: pa.Array) -> tuple[ColumnType, str | None, pa.Array]:
    """The narrowest type that reads every present value of a text column (blank is missing): whole numbers,
    numbers, booleans, dates or timestamps of one format; else text."""
    text = pc.utf8_trim_whitespace(array)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    present = text.drop_null()
    if len(present) == 0:
        return "string", None, text
    if pc.all(pc.match_substring_regex(present, WHOLE_NUMBER)).as_py():
        integers = pc.cast(text, pa.int64())
        return _integer_type(integers), None, integers
    if pc.all(pc.match_substring_regex(present, FINITE_NUMBER)).as_py():
        return "double", None, pc.cast(text, pa.float64())
    if pc.all(pc.is_in(pc.utf8_lower(present), value_set=pa.array(BOOLEAN_WORDS))).as_py():
        truth = pc.is_in(pc.utf8_lower(text), value_set=pa.array(TRUE_WORDS))
        # is_in answers False for a missing value: kept missing, it counts against the column's null fraction.
        return "boolean", None, pc.if_else(pc.is_null(text), pa.scalar(None, pa.bool_()), truth)
    return _infer_time(text, present) or ("string", None, text)


def _integer_type(integers: pa.Array) -> ColumnType:
    """int when no value is larger, either side of zero, than the largest int; long otherwise."""
    if len(integers.drop_null()) == 0:
        return "int"
    magnitude = max(abs(pc.min(integers).as_py()), abs(pc.max(integers).as_py()))
    return "int" if magnitude <= INTEGER_BOUNDS["int"][1] else "long"


def _infer_time(text: pa.Array, present: pa.Array) -> tuple[ColumnType, str, pa.Array] | None:
    """Date or timestamp with the first of its formats that reads every present value, and the values so read;
    None when no format does."""
    candidates: tuple[tuple[ColumnType, tuple[str, ...]], ...] = (
        ("date", DATE_FORMATS),
        ("timestamp", TIMESTAMP_FORMATS),
    )
    for column_type, formats in candidates:
        for candidate in formats:
            if pc.strptime(present, format=candidate, unit="us", error_is_null=True).null_count == 0:
                return column_type, candidate, pc.strptime(text, format=candidate, unit="us", error_is_null=True)
    return None


def infer_task(target: ColumnProfile) -> str:
    """binary for two values, multiclass for text or few integers, regression for other numbers."""
    if target.distinct == 2 or target.type == "boolean":
        return "binary"
    if target.type == "string":
        return "multiclass"
    if target.type in ("int", "long") and target.distinct <= MAX_INTEGER_CLASSES:
        return "multiclass"
    if target.type in ("int", "long", "double"):
        return "regression"
    raise InitError(f"target '{target.header}' is a {target.type} column; expected numbers or classes")


def positive_class(target: ColumnProfile) -> Any:
    """The value a binary label calls positive: the one named like an event ('yes', 'bad', 1), else the rarer."""
    by_word = [v for v in target.values if str(v).strip().lower() in POSITIVE_WORDS]
    if len(by_word) == 1:
        return by_word[0]
    return target.values[-1]


def exclusion(column: ColumnProfile) -> str | None:
    """Why a column should not be a feature, or None when it may be one."""
    present = column.rows - column.nulls
    if present == 0:
        return "always missing"
    if column.distinct == 1:
        return f"constant: every row holds {column.values[0]!r}"
    if column.type == "string" and column.words and column.distinct > MAX_CATEGORY_SHARE * present:
        return f"free text: {column.distinct:,} distinct values in {present:,} rows"
    if column.type in ("string", "int", "long") and column.distinct == present == column.rows:
        return "identifier: every row has its own value"
    if column.type == "string" and column.distinct > MAX_CATEGORY_SHARE * present:
        return f"nearly an identifier: {column.distinct:,} distinct values in {present:,} rows"
    return None


# A numeric column this correlated with a regression target is taken for the target under another name.
LEAK_CORRELATION = 0.999


def suspected_leak(table: pa.Table, column: ColumnProfile, target: ColumnProfile, task: str) -> str | None:
    """Why a column looks like the answer rather than a clue (it alone determines the target), or None: each of
    its values, repeated over many rows, always goes with one class; or, for regression, it follows the target
    almost exactly. Such a column is usually known only after the outcome."""
    present = column.rows - column.nulls
    if present == 0 or column.type in ("date", "timestamp"):
        return None
    frame = table.select([column.header, target.header]).to_pandas().dropna()
    if frame.empty:
        return None
    values, labels = frame[column.header], frame[target.header]
    if task == "regression":
        if column.type not in ("int", "long", "double") or values.nunique() < 3 or labels.nunique() < 3:
            return None
        correlation = float(values.astype(float).corr(labels.astype(float)))
        if math.isfinite(correlation) and abs(correlation) >= LEAK_CORRELATION:
            return f"suspected leak: correlation {correlation:.4f} with the target (keep it only if known in advance)"
        return None
    if values.nunique() > MAX_CATEGORY_SHARE * len(frame) or labels.nunique() < 2:
        return None  # values that seldom repeat say nothing about whether they determine the class
    if int(frame.groupby(column.header)[target.header].nunique().max()) == 1:
        return (
            f"suspected leak: each of its {values.nunique():,} values goes with one class of the target "
            "(keep it only if it is known before the outcome)"
        )
    return None


def check_target(target: ColumnProfile, task: str) -> None:
    present = target.rows - target.nulls
    if present == 0:
        raise InitError(f"target '{target.header}' is always missing: there is nothing to learn")
    if target.distinct < 2:
        raise InitError(
            f"target '{target.header}' has one value ({target.values[0]!r}) in its {present:,} rows: "
            "a model needs at least two classes (or varying numbers) to learn from"
        )
    if task == "binary" and target.distinct != 2:
        raise InitError(f"target '{target.header}' has {target.distinct} values; a binary task needs exactly two")
    if task == "multiclass" and target.distinct > MAX_CLASSES:
        raise InitError(
            f"target '{target.header}' has {target.distinct:,} values; at most {MAX_CLASSES} classes are supported "
            "(is it a regression target? pass --task regression)"
        )
    if task == "regression" and target.type not in ("int", "long", "double"):
        raise InitError(f"target '{target.header}' is a {target.type} column; regression needs numbers")


def draft(
    data: Path,
    target: str,
    name: str,
    output: Path,
    task: str | None = None,
    time_column: str | None = None,
    key: list[str] | None = None,
    delimiter: str = ",",
    today: date | None = None,
) -> Draft:
    """Profile ``data`` and write the pipeline YAML to ``output``; the result is loaded back, so a draft that
    would not validate is never written."""
    _check_arguments(name, task)
    profile = profile_data(data.expanduser().resolve(), delimiter)
    _check_named_columns(profile, target, time_column, key or [])
    label_column = profile.columns[target]
    task = task or infer_task(label_column)
    check_target(label_column, task)
    if time_column:
        _check_time_column(profile.columns[time_column])
    excluded = left_out(profile, label_column, task)
    keys = [profile.columns[k].name for k in key] if key else _identifiers(excluded)[:1]
    today = today or date.today()
    majority = _majority_share(label_column, task)
    doc = {
        "name": name,
        "description": f"Drafted by `flightplan init` from {profile.path.name} ({profile.rows:,} rows) on {today}; "
        f"{task} target '{target}'.",
        "source": _source_section(profile, delimiter, today, keys, time_column),
        "label": _label_section(profile, label_column, task),
        "features": _features_section(profile, excluded),
        **_training_sections(profile, excluded, task, majority, time_split=bool(time_column)),
    }
    text = _render(doc, excluded, profile.headers, label_column, majority)
    config = parse_pipeline(text, str(output))
    replace_atomically(output, lambda partial: partial.write_text(text))
    return Draft(output, text, config, profile.rows, excluded)


def _check_arguments(name: str, task: str | None) -> None:
    if not re.match(r"^[a-z][a-z0-9_]*$", name):
        raise InitError(f"pipeline name '{name}': expected lower-case letters, digits and '_', starting with a letter")
    if task is not None and task not in TASKS:
        raise InitError(f"task '{task}': expected one of {TASKS}")


def _check_named_columns(profile: DataProfile, target: str, time_column: str | None, key: list[str]) -> None:
    """Refuses a target, time column or key column the data does not have, naming the ones it has."""
    for wanted, what in [(target, "target"), (time_column, "time column"), *[(k, "key column") for k in key]]:
        if wanted is not None and wanted not in profile.columns:
            raise InitError(
                f"{what} '{wanted}' is not a column of {profile.path}; its columns are {profile.table.column_names}"
            )


def _check_time_column(column: ColumnProfile) -> None:
    if column.type not in ("date", "timestamp"):
        raise InitError(f"time column '{column.header}' holds {column.type} values; expected dates or timestamps")


def left_out(profile: DataProfile, target: ColumnProfile, task: str) -> dict[str, str]:
    """Why each column that cannot be a feature is left out, by config name: the target first, then in the
    file's order. A time column is left out too: its parts are the features."""
    excluded: dict[str, str] = {target.name: "the target"}
    for column in profile.columns.values():
        if column is target:
            continue
        reason = exclusion(column)
        if column.type in ("date", "timestamp") and reason is None:
            reason = TIME_COLUMN_REASON
        reason = reason or suspected_leak(profile.table, column, target, task)
        if reason:
            excluded[column.name] = reason
    return excluded


def _identifiers(excluded: dict[str, str]) -> list[str]:
    return [name for name, reason in excluded.items() if reason.startswith("identifier")]


def _majority_share(target: ColumnProfile, task: str) -> float | None:
    """The share of the most frequent class among the labeled rows: the accuracy a multiclass model must beat."""
    labeled = target.rows - target.nulls
    return target.top_count / labeled if task == "multiclass" and labeled else None


def _source_section(
    profile: DataProfile, delimiter: str, today: date, keys: list[str], time_column: str | None
) -> dict[str, Any]:
    """Where the data is (daily drops, or a snapshot of ``today``), how to read it, and its columns' rules."""
    source: dict[str, Any] = {"format": profile.format}
    if profile.daily:
        source["landing"] = str(profile.path)
    else:
        source["snapshot"] = {"path": str(profile.path), "day": today.isoformat()}
    if profile.format == "csv" and delimiter != ",":
        source["delimiter"] = delimiter
    source["key"] = keys
    if time_column:
        source["time_column"] = profile.columns[time_column].name
    source["columns"] = [OneLine(_column_spec(c)) for c in profile.columns.values()]
    return source


def _label_section(profile: DataProfile, target: ColumnProfile, task: str) -> dict[str, Any]:
    """The label, named after its column (and a binary label after its positive class) apart from every column."""
    taken = [c.name for c in profile.columns.values()]
    if task == "binary":
        positive = positive_class(target)
        name = _label_name(target.name, f"is_{positive}", taken)
        return {"name": name, "task": task, "column": target.name, "positive": positive}
    return {"name": _label_name(target.name, "label", taken), "task": task, "column": target.name}


def _features_section(profile: DataProfile, excluded: dict[str, str]) -> dict[str, Any]:
    """Numbers as numeric features, text and booleans as categorical ones, the parts of each time column as
    derived ones; data with none of them is refused, with why each column was left out."""
    features = [c for c in profile.columns.values() if c.name not in excluded]
    times = [c for c in profile.columns.values() if excluded.get(c.name) == TIME_COLUMN_REASON]
    numeric = [c.name for c in features if c.type in ("int", "long", "double")]
    categorical = [c.name for c in features if c.type in ("string", "boolean")]
    derived = [
        {"name": f"{c.name}_{part}", "column": c.name, "part": part, "timezone": "UTC"}
        for c in times
        for part in (("hour", "day_of_week", "month") if c.type == "timestamp" else ("day_of_week", "month"))
    ]
    if not (numeric or categorical or derived):
        raise InitError(
            f"{profile.path}: no column can be a feature: " + "; ".join(f"{n}: {why}" for n, why in excluded.items())
        )
    return {"numeric": numeric, "categorical": categorical, **({"derived": derived} if derived else {})}


def _training_sections(
    profile: DataProfile, excluded: dict[str, str], task: str, majority: float | None, time_split: bool
) -> dict[str, Any]:
    """Validation, split, model and monitoring, sized to the data: the settings left to the user's judgement."""
    slices = [
        c.name
        for c in profile.columns.values()
        if c.name not in excluded and c.type == "string" and 2 <= c.distinct <= 10
    ][:1]
    return {
        "validation": {"min_rows": max(1, profile.rows // 10)},
        "split": {
            "strategy": "time" if time_split else "stratified",
            "fractions": {"train": 0.7, "validation": 0.15, "test": 0.15},
            "seed": 42,
        },
        "model": {
            **({"slices": slices} if slices else {}),
            "selection": {"min_gain_share": 0.0, "keep_at_least": 5},
            "tuning": DRAFT_TUNING,
            "acceptance": _acceptance(task, majority),
        },
        "monitoring": {
            "min_rows": min(1000, max(50, profile.rows // 10)),
            "min_labeled_rows": min(200, max(30, profile.rows // 20)),
        },
        # Half the test side: on a snapshot, the only rows that no model of its split trained on.
        "deployment": {"min_rows": min(100, max(30, profile.rows * 15 // 200))},
    }


def _label_name(column: str, suffix: str, taken: Any) -> str:
    name = re.sub(r"\W+", "_", f"{column}_{suffix}").strip("_").lower()
    while name in set(taken) or name in RESERVED_NAMES:
        name += "_"
    return name if re.match(r"^[A-Za-z_]", name) else f"label_{name}"


def _column_spec(column: ColumnProfile) -> dict[str, Any]:
    """The column's type and the data-quality rules its profile supports, with some slack for new batches."""
    spec: dict[str, Any] = {"name": column.name}
    if column.header != column.name:
        spec["header"] = column.header
    spec["type"] = column.type
    if column.format and column.type in ("date", "timestamp"):
        spec["format"] = column.format
    spec["max_null_fraction"] = (
        0 if column.nulls == 0 else min(1.0, math.ceil(round((column.null_fraction + 0.05) * 100, 6)) / 100)
    )
    if column.min is not None and column.max is not None:
        slack = (column.max - column.min) * 0.1 or abs(column.max) * 0.1 or 1.0
        low, high = column.min - slack, column.max + slack
        if column.min >= 0:
            low = max(0.0, low)
        if column.type in ("int", "long"):
            low, high = math.floor(low), math.ceil(high)
        else:
            low, high = _round(low, math.floor), _round(high, math.ceil)
        spec["min"], spec["max"] = low, high
    if column.type == "string" and 0 < column.distinct <= MAX_ALLOWED_VALUES:
        spec["allowed"] = sorted(str(v) for v in column.values)
    return spec


def _round(value: float, direction: Any) -> float:
    """``value`` to three significant digits, rounded outwards."""
    if value == 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(abs(value))) - 2)
    return float(direction(value / scale) * scale) if scale >= 1 else round(direction(value / scale) * scale, 12)


def _acceptance(task: str, majority: float | None) -> dict[str, Any]:
    """Gates a useful model passes and a trivial one does not."""
    if task == "binary":
        return {"minimum": {"roc_auc": 0.6}, "champion_margin": 0.0}
    if task == "multiclass":
        return {"minimum": {"accuracy": round(min(0.99, (majority or 0) + 0.01), 3)}, "champion_margin": 0.0}
    return {"minimum": {"r2": 0.1}, "champion_margin": 0.0}


SECTION_NOTES = {
    "source": [
        "The data and how to read it. A snapshot is the whole dataset in one file or folder: each",
        "data_engineering run reads all of it into the partition of `day`. (Daily drops instead: set",
        "`landing` to a folder of YYYY-MM-DD subfolders and remove `snapshot`.) `key` identifies a record:",
        "duplicates of a key are quarantined, and ground truth sent to the API later is matched on it.",
        "Each column's rules (max_null_fraction, min, max, allowed) become the Great Expectations suite",
        "that validates every batch; they were drafted from this file with some slack: tighten or relax them.",
        "`header` is the column's name in the file where it is not an identifier.",
    ],
    "label": [
        "What the model predicts. `positive` is the class a binary model gives the probability of.",
    ],
    "features": [
        "The columns the model sees: numbers as they are, text and booleans as categories (any number of",
        "them; a value unseen in training counts as missing). Missing values are fine everywhere.",
    ],
    "validation": ["A batch with fewer rows fails validation (a tenth of this file's)."],
    "split": [
        "Train / validation / test. 'stratified' keeps each class's share on every side, and a row's side",
        "is fixed by a hash of its key and the seed; 'time' puts the latest rows in the test set.",
    ],
    "monitoring": [
        "The nightly check of the served model's traffic (drift, and performance once ground truth is sent",
        "back): with fewer answered or labeled rows in its window it reports but does not decide. Sized to",
        "this file; see the configuration reference for the drift and metric thresholds.",
    ],
    "deployment": [
        "A retrained challenger is compared with the champion on recent labeled rows that neither trained",
        "on; with fewer such rows it is not promoted (half the test side of this file's split).",
    ],
    "model": [
        "Model engineering: slices get their own metrics, selection drops features that earn less than",
        "min_gain_share of a quick model's gain, Optuna searches `space` for `trials` (or `timeout_minutes`),",
        "and the acceptance gate refuses a model below `minimum` (or above `maximum`) on the test set, or",
        "one that does not beat the champion by `champion_margin`.",
    ],
}


def _render(
    doc: dict[str, Any],
    excluded: dict[str, str],
    headers: dict[str, str],
    target: ColumnProfile,
    majority: float | None,
) -> str:
    lines = [
        f"# Pipeline '{doc['name']}', drafted by `flightplan init`.",
        f"# Review it, then run `flightplan check {doc['name']}`.",
        "# Every DAG reads this file; the Airflow trigger forms select it by name.",
    ]
    for section, value in doc.items():
        notes = SECTION_NOTES.get(section, [])
        if section == "features":
            notes = notes + ["Left out, and why:"] + [f"  {headers.get(n, n)}: {why}" for n, why in excluded.items()]
        if section == "label" and doc["label"]["task"] == "binary":
            notes = [
                *notes,
                f"'{target.header}' has the values {target.values}; '{doc['label']['positive']}' was taken as",
                "positive (named like an event, or the rarer one): change `positive` if the other is meant.",
            ]
        if section == "model":
            gate = {
                "binary": "roc_auc 0.6: clearly better than chance (0.5)",
                "multiclass": f"accuracy above always answering the most frequent class ({majority or 0:.3f})",
                "regression": "r2 0.1: better than always answering the mean (0)",
            }[doc["label"]["task"]]
            notes = [*notes, f"The drafted gate: {gate}."]
        if notes:
            lines.append("")
            lines += [f"# {note}".rstrip() for note in notes]
        flow = None if isinstance(value, dict | list) else False
        dumped = yaml.dump(
            {section: value},
            Dumper=DraftDumper,
            sort_keys=False,
            default_flow_style=flow,
            width=110,
            allow_unicode=True,
        )
        lines.append(dumped.rstrip())
    return "\n".join(lines) + "\n"
