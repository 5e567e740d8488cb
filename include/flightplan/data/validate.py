"""The one place that talks to Great Expectations 1.x: a suite built from the pipeline config, run on a
pandas batch through a checkpoint that writes Data Docs under the home folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flightplan.config import ColumnType, PipelineConfig
from flightplan.data.partitions import held

if TYPE_CHECKING:
    import pandas as pd

# Type names as GX 1.x checks a pandas batch read with nullable types (see flightplan.data.batches):
# the dtype class for pandas' extension types, the numpy name otherwise, the value type for objects.
# GX accepts no name for a time-zone-aware datetime column; date and timestamp types are enforced by
# the Parquet schema ingest writes, so the suite leaves them out rather than carry a check that cannot pass.
PANDAS_TYPES: dict[ColumnType, list[str]] = {
    "string": ["str"],
    "int": ["Int32Dtype"],
    "long": ["Int64Dtype"],
    "double": ["float64"],
    "boolean": ["BooleanDtype"],
}


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    observed: str


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    outcomes: list[ExpectationOutcome]
    data_docs: Path
    raw: dict[str, Any]

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def build_expectations(config: PipelineConfig) -> list[Any]:
    """Types, null rates, ranges, allowed sets and row count, as the config states them."""
    import great_expectations.expectations as gxe

    expectations: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=config.validation.min_rows)]
    for column in config.all_columns:
        expectations.append(gxe.ExpectColumnToExist(column=column.name))
        if column.type in PANDAS_TYPES:
            expectations.append(
                gxe.ExpectColumnValuesToBeInTypeList(column=column.name, type_list=PANDAS_TYPES[column.type])
            )
        if column.max_null_fraction < 1:
            expectations.append(
                gxe.ExpectColumnValuesToNotBeNull(column=column.name, mostly=1 - column.max_null_fraction)
            )
        if column.min is not None or column.max is not None:
            expectations.append(
                gxe.ExpectColumnValuesToBeBetween(column=column.name, min_value=column.min, max_value=column.max)
            )
        if column.allowed is not None:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=column.name, value_set=column.allowed))
    return expectations


def validate_frame(frame: pd.DataFrame, config: PipelineConfig, gx_root: Path, batch_name: str) -> ValidationReport:
    """Run the pipeline's suite on ``frame``; the result and the Data Docs site are kept under ``gx_root``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # One GX project holds every pipeline's suite, checkpoint and Data Docs, and each run rewrites them: two runs
    # validating at once (two pipelines, or two intervals of one) would otherwise find the suite changed under them.
    with held(gx_root / "validation.lock", "another validation"):
        return _run_checkpoint(frame, config, gx_root, batch_name)


def _run_checkpoint(frame: pd.DataFrame, config: PipelineConfig, gx_root: Path, batch_name: str) -> ValidationReport:
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    name = config.name
    source = context.data_sources.add_or_update_pandas(name=name)
    asset = next((a for a in source.assets if a.name == name), None) or source.add_dataframe_asset(name=name)
    batch = next(
        (b for b in asset.batch_definitions if b.name == "batch"), None
    ) or asset.add_batch_definition_whole_dataframe("batch")
    suite = context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=build_expectations(config)))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(name=name, validation_definitions=[definition], actions=[UpdateDataDocsAction(name="data_docs")])
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=gx.RunIdentifier(run_name=batch_name))
    validation = next(iter(result.run_results.values()))
    outcomes = [_outcome(r) for r in validation.results]
    docs = gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return ValidationReport(
        success=bool(result.success), outcomes=outcomes, data_docs=docs, raw=validation.to_json_dict()
    )


def _outcome(result: Any) -> ExpectationOutcome:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    column = kwargs.pop("column", None)
    details = result.result or {}
    if "observed_value" in details:
        observed = f"observed {details['observed_value']!r}"
    elif "unexpected_count" in details:
        sample = details.get("partial_unexpected_list") or []
        observed = (
            f"{details['unexpected_count']} of {details.get('element_count')} values unexpected"
            f" ({details.get('unexpected_percent') or 0:.2f}%)" + (f", e.g. {sample[:5]}" if sample else "")
        )
    else:
        observed = str(details)[:200]
    if result.exception_info and result.exception_info.get("raised_exception"):
        observed = f"could not run: {result.exception_info.get('exception_message')}"
    arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return ExpectationOutcome(
        expectation=f"{config.type}({arguments})", column=column, success=bool(result.success), observed=observed
    )
