"""pyspark and a pyspark-client of another version overwrite each other's files and break every Python
UDF; this keeps a pandas UDF running on the installed pair."""

from __future__ import annotations

import pandas as pd


def test_pandas_udf_runs(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    # pyspark's stubs know the pandas UDF only by its function type, which type hints replaced.
    @F.pandas_udf("double")  # type: ignore[call-overload]
    def doubled(values: pd.Series) -> pd.Series:
        return values * 2.0

    rows = spark.range(5).select(doubled(F.col("id").cast("double")).alias("x")).collect()
    assert [r.x for r in rows] == [0.0, 2.0, 4.0, 6.0, 8.0]
