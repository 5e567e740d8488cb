"""Profile: per-column statistics and counts per label class for a batch, as JSON and as a page to read. On
Spark, or in this process on Arrow (the local engine): the same statistics, exact where Spark's are approximate
(distinct counts; quantiles of batches over some ten thousand rows)."""

from __future__ import annotations

import html
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flightplan.config import ColumnSpec, PipelineConfig
from flightplan.files import write_json_atomic

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

NUMERIC = ("int", "long", "double")
TOP_VALUES = 10
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
LABEL_QUANTILES = (0.05, 0.5, 0.95)


def label_expression(config: PipelineConfig) -> str:
    """The Spark SQL expression that yields the label of a row."""
    label = config.label
    if label.rule is None and label.positive is not None:
        return f"CAST((`{label.column}` = {sql_literal(label.positive)}) AS INT)"
    if label.rule is None:
        return f"`{label.column}`"
    return f"CAST(({label.rule}) AS INT)" if label.task == "binary" else f"({label.rule})"


def sql_literal(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def profile_frame(frame: DataFrame, config: PipelineConfig) -> dict[str, Any]:
    """Statistics of every configured column of ``frame`` in three Spark jobs: the aggregates, the most frequent
    values of the text columns, the class counts."""
    totals = frame.agg(*_aggregates(config.all_columns)).collect()[0].asDict()
    top_values = most_frequent(frame, [c for c in config.all_columns if c.type in ("string", "boolean")])
    rows = totals["__rows"]
    columns = {column.name: _column_stats(column, totals, rows, top_values) for column in config.all_columns}
    return {"rows": rows, "label": _label_summary(frame, config, rows), "columns": columns}


def _aggregates(columns: list[ColumnSpec]) -> list[Column]:
    """The row count and, for each column, its statistics, named ``<column>__<statistic>``."""
    from pyspark.sql import functions as F

    aggregates = [F.count(F.lit(1)).alias("__rows")]
    for column in columns:
        c = F.col(column.name)
        aggregates += [
            F.count(c).alias(f"{column.name}__count"),
            F.approx_count_distinct(c).alias(f"{column.name}__distinct"),
        ]
        if column.type in NUMERIC:
            aggregates += [
                F.min(c).alias(f"{column.name}__min"),
                F.max(c).alias(f"{column.name}__max"),
                F.mean(c).alias(f"{column.name}__mean"),
                F.stddev(c).alias(f"{column.name}__stddev"),
                F.percentile_approx(c, list(QUANTILES)).alias(f"{column.name}__quantiles"),
            ]
        elif column.type in ("date", "timestamp"):
            aggregates += [
                F.min(c).cast("string").alias(f"{column.name}__min"),
                F.max(c).cast("string").alias(f"{column.name}__max"),
            ]
    return aggregates


def _column_stats(
    column: ColumnSpec, totals: dict[str, Any], rows: int, top_values: dict[str, list[list[Any]]]
) -> dict[str, Any]:
    """One column's statistics from the ``totals`` of :func:`_aggregates` and its most frequent values."""
    stats: dict[str, Any] = {"type": column.type, "count": totals[f"{column.name}__count"]}
    stats["nulls"] = rows - stats["count"]
    stats["null_fraction"] = stats["nulls"] / rows if rows else 0.0
    stats["distinct"] = totals[f"{column.name}__distinct"]
    for stat in ("min", "max", "mean", "stddev"):
        if f"{column.name}__{stat}" in totals:
            stats[stat] = totals[f"{column.name}__{stat}"]
    if column.type in NUMERIC:
        quantiles = totals[f"{column.name}__quantiles"] or [None] * 5
        stats["quantiles"] = dict(zip(("p05", "p25", "p50", "p75", "p95"), quantiles, strict=True))
    if column.name in top_values:
        stats["top_values"] = top_values[column.name]
    return stats


def _label_summary(frame: DataFrame, config: PipelineConfig, rows: int) -> dict[str, Any]:
    """The label's name and rule, with its class counts (or, for regression, its distribution)."""
    from pyspark.sql import functions as F

    label = F.expr(label_expression(config))
    summary: dict[str, Any] = {"name": config.label.name, "rule": config.label.rule or label_expression(config)}
    if config.label.task == "regression":
        summary.update(_label_distribution(frame, label, rows))
    else:
        classes = frame.groupBy(label.alias("label")).count().orderBy("label").collect()
        summary["counts"] = {("unknown" if r["label"] is None else str(r["label"])): r["count"] for r in classes}
    return summary


def _label_distribution(frame: DataFrame, label: Column, rows: int) -> dict[str, Any]:
    """A number per row has no classes to count: its distribution instead, and how many rows lack it."""
    from pyspark.sql import functions as F

    found = frame.agg(
        F.count(label).alias("known"),
        F.min(label).alias("min"),
        F.mean(label).alias("mean"),
        F.max(label).alias("max"),
        F.percentile_approx(label, list(LABEL_QUANTILES)).alias("quantiles"),
    ).collect()[0]
    return distribution(found.asDict(), rows)


def distribution(found: dict[str, Any], rows: int) -> dict[str, Any]:
    """The label's distribution from its count of known values, min, mean, max and quantiles."""
    quantiles = found["quantiles"] or [None] * len(LABEL_QUANTILES)
    return {
        "counts": {"known": found["known"], "unknown": rows - found["known"]},
        "distribution": {
            "min": found["min"],
            "p05": quantiles[0],
            "median": quantiles[1],
            "mean": found["mean"],
            "p95": quantiles[2],
            "max": found["max"],
        },
    }


def most_frequent(frame: DataFrame, columns: list[ColumnSpec]) -> dict[str, list[list[Any]]]:
    """The TOP_VALUES most frequent values of each column (missing included), most frequent first, ties by
    value: one job over (column, value) pairs, rather than one job per column (each costs seconds on Spark)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not columns:
        return {}
    pairs = F.array(
        *[F.struct(F.lit(c.name).alias("column"), F.col(c.name).cast("string").alias("value")) for c in columns]
    )
    counted = frame.select(F.explode(pairs).alias("pair")).select("pair.*").groupBy("column", "value").count()
    order = Window.partitionBy("column").orderBy(F.desc("count"), F.asc("value"))
    top = counted.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= TOP_VALUES)
    booleans = {c.name for c in columns if c.type == "boolean"}
    found: dict[str, list[list[Any]]] = {c.name: [] for c in columns}
    for row in top.orderBy("column", "rank").collect():
        value = row["value"] if row["column"] not in booleans or row["value"] is None else row["value"] == "true"
        found[row["column"]].append([value, row["count"]])
    return found


def profile_table(table: pa.Table, config: PipelineConfig) -> dict[str, Any]:
    """``profile_frame`` of an Arrow table (``rewrite.read_days_locally``), its label by the local rule evaluator
    (``label.local_refusal`` says which rules it reads as Spark does)."""
    totals: dict[str, Any] = {"__rows": table.num_rows}
    for column in config.all_columns:
        totals.update(local_aggregates(table.column(column.name), column))
    texts = [c for c in config.all_columns if c.type in ("string", "boolean")]
    top_values = {c.name: most_frequent_locally(table.column(c.name), c.type) for c in texts}
    rows = table.num_rows
    columns = {column.name: _column_stats(column, totals, rows, top_values) for column in config.all_columns}
    return {"rows": rows, "label": _local_label_summary(table, config, rows), "columns": columns}


def local_aggregates(values: pa.ChunkedArray, column: ColumnSpec) -> dict[str, Any]:
    """``_aggregates`` of one column: its count, exact distinct count, and range, mean, sample deviation and
    quantiles (numbers) or range (times)."""
    from flightplan.data.wrangle import spark_text_of

    name, count = column.name, len(values) - values.null_count
    found: dict[str, Any] = {f"{name}__count": count, f"{name}__distinct": pc.count_distinct(values).as_py()}
    if column.type in NUMERIC:
        bounds = pc.min_max(values)
        found[f"{name}__min"], found[f"{name}__max"] = bounds["min"].as_py(), bounds["max"].as_py()
        found[f"{name}__mean"] = pc.mean(values).as_py()
        found[f"{name}__stddev"] = pc.stddev(values, ddof=1).as_py() if count > 1 else None
        found[f"{name}__quantiles"] = exact_quantiles(values, QUANTILES)
    elif column.type in ("date", "timestamp"):
        bounds = pc.min_max(values)
        found[f"{name}__min"], found[f"{name}__max"] = spark_text_of(bounds["min"]), spark_text_of(bounds["max"])
    return found


def exact_quantiles(values: pa.ChunkedArray, quantiles: tuple[float, ...]) -> list[Any] | None:
    """The known values at Spark's ranks for ``quantiles`` (``split.exact_quantile``); None without any."""
    from flightplan.data.split import exact_quantile

    known = np.sort(pc.drop_null(values).to_numpy())
    return [exact_quantile(known, quantile) for quantile in quantiles] if len(known) else None


def most_frequent_locally(values: pa.ChunkedArray, kind: str) -> list[list[Any]]:
    """``most_frequent`` of one column: its values as text, most frequent first, ties by text (missing first)."""
    counted = pc.value_counts(values.cast(pa.string())).to_pylist()
    ranked = sorted(counted, key=lambda each: (-each["counts"], each["values"] is not None, each["values"] or ""))
    top = ranked[:TOP_VALUES]
    if kind == "boolean":
        return [[None if each["values"] is None else each["values"] == "true", each["counts"]] for each in top]
    return [[each["values"], each["counts"]] for each in top]


def _local_label_summary(table: pa.Table, config: PipelineConfig, rows: int) -> dict[str, Any]:
    """``_label_summary`` of an Arrow table."""
    from flightplan.data.rules import evaluate

    label = evaluate(label_expression(config), table)
    summary: dict[str, Any] = {"name": config.label.name, "rule": config.label.rule or label_expression(config)}
    if config.label.task == "regression":
        bounds = pc.min_max(label)
        known = {"known": len(label) - label.null_count, "min": bounds["min"].as_py(), "max": bounds["max"].as_py()}
        known.update(mean=pc.mean(label).as_py(), quantiles=exact_quantiles(pa.chunked_array([label]), LABEL_QUANTILES))
        summary.update(distribution(known, rows))
    else:
        counted = pc.value_counts(label).to_pylist()
        ordered = sorted(counted, key=lambda each: (each["values"] is not None, each["values"]))
        summary["counts"] = {
            ("unknown" if each["values"] is None else str(each["values"])): each["counts"] for each in ordered
        }
    return summary


def write_profile(profile: dict[str, Any], folder: Path, title: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = write_json_atomic(profile, folder / "profile.json")
    html_path = folder / "profile.html"
    html_path.write_text(render_html(profile, title))
    return json_path, html_path


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def render_html(profile: dict[str, Any], title: str) -> str:
    rows = profile["rows"]
    label = profile["label"]
    total = sum(label["counts"].values()) or 1
    class_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{v / total:.1%}</td>"
        f"<td><div class='bar' style='width:{200 * v / total:.0f}px'></div></td></tr>"
        for k, v in label["counts"].items()
    )
    spread = label.get("distribution")
    distribution = (
        "<table><tr>"
        + "".join(f"<th>{html.escape(k)}</th>" for k in spread)
        + "</tr><tr>"
        + "".join(f"<td>{_fmt(v)}</td>" for v in spread.values())
        + "</tr></table>"
        if spread
        else ""
    )
    column_rows = []
    for name, s in profile["columns"].items():
        quantiles = s.get("quantiles") or {}
        top = ", ".join(f"{html.escape(str(v))} ({_fmt(n)})" for v, n in s.get("top_values", [])[:5])
        warn = " class='warn'" if s["null_fraction"] > 0.2 else ""
        column_rows.append(
            f"<tr><td><b>{html.escape(name)}</b></td><td>{s['type']}</td><td{warn}>{s['null_fraction']:.1%}</td>"
            f"<td>{_fmt(s['distinct'])}</td><td>{_fmt(s.get('min'))}</td><td>{_fmt(quantiles.get('p25'))}</td>"
            f"<td>{_fmt(quantiles.get('p50'))}</td><td>{_fmt(quantiles.get('p75'))}</td><td>{_fmt(s.get('max'))}</td>"
            f"<td>{_fmt(s.get('mean'))}</td><td>{top}</td></tr>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}
td:first-child,th:first-child,td:last-child{{text-align:left}}
th{{background:#f3f5f7}}.bar{{height:12px;background:#3b82f6}}.warn{{color:#b45309;font-weight:bold}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{_fmt(rows)} rows.</p>
<h2>Label <code>{html.escape(label["name"])}</code> = <code>{html.escape(str(label["rule"]))}</code></h2>
<table><tr><th>class</th><th>rows</th><th>share</th><th></th></tr>{class_rows}</table>{distribution}
<h2>Columns</h2><table><tr><th>column</th><th>type</th><th>nulls</th><th>distinct</th><th>min</th><th>p25</th>
<th>median</th><th>p75</th><th>max</th><th>mean</th><th>most frequent</th></tr>{"".join(column_rows)}</table>
</body></html>"""


def profile_title(config: PipelineConfig, start: date, end: date) -> str:
    return f"Profile of {config.name}, {start.isoformat()} to {end.isoformat()} (end excluded)"
