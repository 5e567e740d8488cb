"""Label: the label column from the config rule (or an existing column), and the ground truth sent back to
the inference API for predictions whose records carried the source key; rows whose label cannot be known
are kept in quarantine."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from flightplan.config import PipelineConfig
from flightplan.data.profile import label_expression
from flightplan.data.rewrite import REASON

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TRUTH = "__ground_truth"
# What Spark's TRY_CAST reads as a boolean (after trimming, in any case); other text is null.
TRUE_TEXTS, FALSE_TEXTS = frozenset({"t", "true", "y", "yes", "1"}), frozenset({"f", "false", "n", "no", "0"})
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
DECIMAL_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
SPARK_BLANKS = "".join(map(chr, range(33)))  # what Spark trims from text it casts
log = logging.getLogger(__name__)


class SparkReadsItsOwnWay(ValueError):
    """Text whose TRY_CAST the local engine does not mirror (a double in another notation, a date)."""


def truth_frame(frame: DataFrame, config: PipelineConfig, truth: list[dict[str, Any]]) -> DataFrame:
    """Ground-truth rows (key columns and ``label``) typed as ``frame``'s key and label columns; a label that
    does not convert to the label's type is dropped (null)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    key = config.source.key
    label_type = frame.select(F.expr(label_expression(config)).alias("label")).schema["label"].dataType
    rows = [[None if row[k] is None else str(row[k]) for k in key] + [_text(row["label"])] for row in truth]
    schema = T.StructType([T.StructField(name, T.StringType()) for name in [*key, TRUTH]])
    raw = frame.sparkSession.createDataFrame(rows, schema)
    typed = [F.col(name).try_cast(frame.schema[name].dataType).alias(name) for name in key]
    return raw.select(*typed, F.col(TRUTH).try_cast(label_type).alias(TRUTH)).where(F.col(TRUTH).isNotNull())


def usable_labels(task: str, truth: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The labels sent back that fit the task, and the others, each with its reason: a bad label stored before
    the API checked them (or written to the log by other means) is set aside, never trained on."""
    from flightplan.features import label_problem

    usable, set_aside = [], []
    for row in truth:
        expected = label_problem(task, [], row["label"])
        if expected is None:
            usable.append(row)
        else:
            set_aside.append({**row, "label": repr(row["label"])[:100], "reason": f"expected {expected}"})
    if set_aside:
        log.warning("%d label(s) sent back set aside, e.g. %s", len(set_aside), set_aside[0])
    return usable, set_aside


def _text(label: Any) -> str:
    return str(int(label)) if isinstance(label, bool) else str(label)


def unknown_label(config: PipelineConfig) -> str:
    """The quarantine reason of a row whose label the rule (or the column) leaves unknown."""
    label = config.label
    source = f"rule '{label.rule}'" if label.rule else f"column '{label.column}'"
    return f"label unknown: {source} is null"


def label_frame(frame: DataFrame, config: PipelineConfig, truth: DataFrame | None = None) -> DataFrame:
    from pyspark.sql import functions as F

    label = config.label
    reason = unknown_label(config)
    labeled = frame.withColumn(label.name, F.expr(label_expression(config)))
    if truth is not None and label.feedback != "ignore":
        labeled = labeled.join(F.broadcast(truth), on=config.source.key, how="left")
        known = [F.col(label.name), F.col(TRUTH)]
        labeled = labeled.withColumn(
            label.name, F.coalesce(*known) if label.feedback == "fill" else F.coalesce(*reversed(known))
        ).drop(TRUTH)
        reason += " and no ground truth was sent back"
    return labeled.withColumn(REASON, F.when(F.col(label.name).isNull(), F.lit(reason)).otherwise(None))


def local_refusal(config: PipelineConfig, truth: list[dict[str, Any]]) -> str | None:
    """Why the local engine cannot label the pipeline's rows as Spark does (None: it can): a rule the local
    evaluator does not read as Spark does, or ground truth sent back as text Spark casts its own way."""
    from flightplan.data.rules import Unsupported, evaluate
    from flightplan.spark import ARROW_TYPES

    empty = pa.schema([(c.name, ARROW_TYPES[c.type]) for c in config.all_columns]).empty_table()
    try:
        label_type = evaluate(label_expression(config), empty).type
    except Unsupported as err:
        return f"the label rule: {err}"
    if truth and not config.source.key:
        return "ground truth sent back for a source without a key"
    try:
        truth_table(empty, config, truth, label_type)
    except SparkReadsItsOwnWay as err:
        return f"a label sent back: {err}"
    return None


def label_table(table: pa.Table, config: PipelineConfig, truth: list[dict[str, Any]]) -> tuple[pa.Table, int]:
    """``label_frame`` on an Arrow table, with the ground truth sent back (``local_refusal`` says which it reads
    as Spark does): the label column set (or replaced) by the rule, then filled or overridden by the truth of its
    key (the key columns first, as Spark's join puts them), the rows left unknown marked for quarantine; and how
    many rows the truth matched."""
    from flightplan.data.rules import evaluate

    values = evaluate(label_expression(config), table)
    name = config.label.name
    place = table.schema.get_field_index(name)
    labeled = table.set_column(place, name, values) if place >= 0 else table.append_column(name, values)
    reason, matched = unknown_label(config), 0
    if truth and config.label.feedback != "ignore":
        labeled, matched = _with_truth(labeled, config, truth_table(labeled, config, truth, values.type))
        reason += " and no ground truth was sent back"
    unknown = pc.is_null(labeled.column(name))
    return labeled.append_column(REASON, pc.if_else(unknown, pa.scalar(reason), pa.scalar(None, pa.string()))), matched


def _with_truth(labeled: pa.Table, config: PipelineConfig, truth: pa.Table) -> tuple[pa.Table, int]:
    key, name = config.source.key, config.label.name
    joined = labeled.join(truth, keys=key, join_type="left outer")
    known = [joined.column(name), joined.column(TRUTH)]
    value = pc.coalesce(*(known if config.label.feedback == "fill" else reversed(known)))
    joined = joined.set_column(joined.schema.get_field_index(name), name, value)
    matched = labeled.join(truth, keys=key, join_type="left semi").num_rows  # a row matched twice counts once
    order = [*key, *(column for column in labeled.column_names if column not in key)]
    return joined.select(order), matched


def truth_table(
    table: pa.Table, config: PipelineConfig, truth: list[dict[str, Any]], label_type: pa.DataType
) -> pa.Table:
    """``truth_frame`` in Arrow: the key parts and the label sent back, as text cast to ``table``'s key types and
    the label's type as Spark's TRY_CAST casts it; rows with a part or the label unread are dropped (no row of
    ``table`` could join them)."""
    columns = {}
    for name in config.source.key:
        kind = table.schema.field(name).type
        columns[name] = pa.array([spark_try_cast(_key_text(row[name]), kind) for row in truth], kind)
    columns[TRUTH] = pa.array([spark_try_cast(_text(row["label"]), label_type) for row in truth], label_type)
    typed = pa.table(columns, schema=pa.schema([(name, array.type) for name, array in columns.items()]))
    complete = pc.is_valid(typed.column(TRUTH))
    for name in config.source.key:
        complete = pc.and_(complete, pc.is_valid(typed.column(name)))
    return typed.filter(complete)


def _key_text(value: Any) -> str | None:
    return None if value is None else str(value)


def spark_try_cast(text: str | None, kind: pa.DataType) -> Any:
    """``TRY_CAST(text AS kind)`` as Spark gives it for a string, an integer, a boolean or a decimal number in
    plain notation; other text raises ``SparkReadsItsOwnWay``."""
    if text is None or pa.types.is_string(kind):
        return text
    trimmed = text.strip(SPARK_BLANKS)
    if pa.types.is_integer(kind):
        limit = 2 ** (kind.bit_width - 1)
        value = int(trimmed) if INTEGER_TEXT.fullmatch(trimmed) else None
        return value if value is not None and -limit <= value < limit else None
    if pa.types.is_boolean(kind):
        lowered = trimmed.lower()
        return True if lowered in TRUE_TEXTS else False if lowered in FALSE_TEXTS else None
    if pa.types.is_float64(kind) and DECIMAL_TEXT.fullmatch(trimmed):
        return float(trimmed)
    raise SparkReadsItsOwnWay(f"{text!r} as {kind}, which Spark casts its own way")
