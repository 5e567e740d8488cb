"""Label: the label column from the config rule (or an existing column), and the ground truth sent back to
the inference API for predictions whose records carried the source key; rows whose label cannot be known
are kept in quarantine."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from flightplan.config import PipelineConfig
from flightplan.data.profile import label_expression
from flightplan.data.rewrite import REASON

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TRUTH = "__ground_truth"
log = logging.getLogger(__name__)


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
    """Why the local engine cannot label the pipeline's rows as Spark does (None: it can): ground truth to join,
    or a rule the local evaluator does not read as Spark does."""
    from flightplan.data.rules import Unsupported, evaluate
    from flightplan.spark import ARROW_TYPES

    if truth:
        return f"{len(truth)} label(s) sent back to join"
    empty = pa.schema([(c.name, ARROW_TYPES[c.type]) for c in config.all_columns]).empty_table()
    try:
        evaluate(label_expression(config), empty)
    except Unsupported as err:
        return f"the label rule: {err}"
    return None


def label_table(table: pa.Table, config: PipelineConfig) -> pa.Table:
    """``label_frame`` on an Arrow table, without ground truth (``local_refusal``): the label column set (or
    replaced) by the rule, the rows it leaves unknown marked for quarantine."""
    from flightplan.data.rules import evaluate

    values = evaluate(label_expression(config), table)
    name = config.label.name
    place = table.schema.get_field_index(name)
    labeled = table.set_column(place, name, values) if place >= 0 else table.append_column(name, values)
    reasons = pc.if_else(pc.is_null(values), pa.scalar(unknown_label(config)), pa.scalar(None, pa.string()))
    return labeled.append_column(REASON, reasons)
