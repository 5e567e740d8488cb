"""Label: the label column from the config rule (or an existing column); rows whose label cannot be
known (the rule yields null) are kept in quarantine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flightplan.config import PipelineConfig
from flightplan.data.profile import label_expression
from flightplan.data.rewrite import REASON

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def label_frame(frame: DataFrame, config: PipelineConfig) -> DataFrame:
    from pyspark.sql import functions as F

    label = config.label
    source = f"rule '{label.rule}'" if label.rule else f"column '{label.column}'"
    labeled = frame.withColumn(label.name, F.expr(label_expression(config)))
    return labeled.withColumn(
        REASON, F.when(F.col(label.name).isNull(), F.lit(f"label unknown: {source} is null")).otherwise(None)
    )
