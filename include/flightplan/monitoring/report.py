"""The Evidently 0.7 reports of a monitoring run, for people to read: data drift per feature and of the
prediction, a data summary, and the model's performance on ground truth when there is enough of it.

Drawn on a seeded sample of at most ``monitoring.report_rows`` per side (Evidently draws its plots on every
row it is given), with each column's test pinned to the one the verdicts of record chose on every row.

They are drawn in a child process (``python -m flightplan.monitoring.report``), started when a check starts:
importing Evidently (about 5 s here) overlaps the reading of the window, and the drawing overlaps the
verdicts, which do not depend on it. The child draws the first report and forks itself for each other one, so
that all are drawn at once. The check waits for the child before it logs the reports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flightplan.scoring import PREDICTION, PROBABILITY

SAMPLE_SEED = 0


CATEGORY_TESTS = ("chisquare", "z")
# The reports each kind of job draws, one file pair each: the drift and the summary of the columns apart, so that
# they are drawn at once (in forks of the child), as the performance report is.
REPORTS = {"drift": ("drift", "summary"), "performance": ("performance",)}
FULLWIDTH_LESS_THAN = "\uff1c"


@dataclass(frozen=True)
class Roles:
    """What each column of the frames is to Evidently."""

    numeric: list[str]
    categorical: list[str]
    task: str  # binary, multiclass, regression
    target: str | None = None  # set for the performance report


class ReportFailed(RuntimeError):
    """The child process drawing the reports failed; the message ends with what it printed."""


@dataclass(frozen=True)
class ReportJob:
    """One report to draw: its name (the files are ``<name>.html`` and ``<name>.json``), the two frames,
    the columns' roles and, for a drift report, the test pinned for each column."""

    name: str  # "drift" (its reports: the drift and a summary of the columns) or "performance"
    current: pd.DataFrame
    reference: pd.DataFrame
    roles: Roles
    methods: dict[str, str] | None = None


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=SAMPLE_SEED)


def inert_text(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every '<' of its text values replaced by FULLWIDTH LESS-THAN SIGN (U+FF1C), which reads
    the same. Evidently writes the values into ``<script>`` blocks without escaping them: a logged request field
    holding '</script>' would end the block and run as whoever opens the report. The same replacement on both
    sides keeps each column's categories apart, so the drift the report shows is the drift of the values sent."""

    def inert(value: Any) -> Any:
        return value.replace("<", FULLWIDTH_LESS_THAN) if isinstance(value, str) else value

    text = [
        column
        for column in frame.columns
        if frame[column].dtype == object or isinstance(frame[column].dtype, (pd.StringDtype, pd.CategoricalDtype))
    ]
    return frame.assign(**{column: frame[column].map(inert) for column in text}) if text else frame


def model_output(task: str) -> tuple[str, bool]:
    """The column of the model's output that is tested for drift, and whether it is numeric: a binary model's
    probability, a multiclass model's class, a regression's value."""
    return (PROBABILITY, True) if task == "binary" else (PREDICTION, task != "multiclass")


def _role_columns(roles: Roles) -> tuple[list[str], list[str]]:
    """The numeric and the categorical columns of a report: the features, the model's output and the target
    when set."""
    numeric, categorical = list(roles.numeric), list(roles.categorical)
    output, output_numeric = model_output(roles.task)
    (numeric if output_numeric else categorical).append(output)
    if roles.target:
        (numeric if roles.task == "regression" else categorical).append(roles.target)
    return numeric, categorical


class ReportProcess:
    """The child process that draws a check's reports: started at once, given its jobs with ``draw``, waited
    for with ``wait``; a child or fork still running when the context ends (the check failed) is killed."""

    def __init__(self) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="flightplan-reports-"))
        self._log = self._scratch / "report.log"
        with self._log.open("w") as log_file:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "flightplan.monitoring.report"],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # a group of its own, which its forks join: killed together
            )
        self._expected: dict[str, Path] = {}

    def __enter__(self) -> ReportProcess:
        return self

    def __exit__(self, *_: object) -> None:
        if self._child.poll() is None:  # the check failed or timed out: the child and its forks go
            os.killpg(self._child.pid, signal.SIGKILL)
            self._child.wait()
        if self._child.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._child.stdin.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def draw(self, jobs: list[ReportJob], folder: Path, rows: int) -> None:
        """Hands the jobs to the child (each frame sampled to ``rows``) and returns while it draws them."""
        described = []
        for job in jobs:
            columns = [column for kind in _role_columns(job.roles) for column in kind]
            inputs = {}
            for side in ("current", "reference"):
                inputs[side] = str(self._scratch / f"{job.name}-{side}.parquet")
                inert_text(_sample(getattr(job, side)[columns], rows)).to_parquet(inputs[side], index=False)
            described.append({"name": job.name, **inputs, "roles": asdict(job.roles), "methods": job.methods})
            for report in REPORTS[job.name]:
                self._expected |= {f"{report}_{kind}": folder / f"{report}.{kind}" for kind in ("html", "json")}
        job_file = self._scratch / "jobs.json"
        job_file.write_text(json.dumps({"folder": str(folder), "reports": described}))
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(f"{job_file}\n")
            self._child.stdin.close()
        except BrokenPipeError:
            raise ReportFailed(f"the report process ended with {self._child.wait()}:\n{self._tail()}") from None

    def wait(self, timeout: float = 900) -> dict[str, Path]:
        """The reports' paths once the child has drawn them all; raises ReportFailed if it could not."""
        if self._child.stdin is not None and not self._child.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._child.stdin.close()  # nothing was handed over: the child ends at once
        try:
            code = self._child.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ReportFailed(f"the reports were not drawn in {timeout:.0f} s:\n{self._tail()}") from None
        missing = [str(p) for p in self._expected.values() if not p.exists()]
        if code != 0 or missing:
            raise ReportFailed(f"the report process ended with {code} (missing: {missing}):\n{self._tail()}")
        return dict(self._expected)

    def _tail(self) -> str:
        return self._log.read_text(errors="replace")[-4000:]


def _definition(roles: Roles) -> Any:
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression

    numeric, categorical = _role_columns(roles)
    outcome: dict[str, Any] = {}
    if roles.target and roles.task == "binary":
        outcome["classification"] = [
            BinaryClassification(target=roles.target, prediction_probas=PROBABILITY, pos_label=1)
        ]
    elif roles.target and roles.task == "multiclass":
        outcome["classification"] = [MulticlassClassification(target=roles.target, prediction_labels=PREDICTION)]
    elif roles.target:
        outcome["regression"] = [Regression(target=roles.target, prediction=PREDICTION)]
    return DataDefinition(numerical_columns=numeric, categorical_columns=categorical, **outcome)


def _presets(job: dict[str, Any], report: str) -> list[Any]:
    """The Evidently presets of one of a job's reports (``REPORTS``)."""
    from evidently.presets import ClassificationPreset, DataDriftPreset, DataSummaryPreset, RegressionPreset

    roles, methods = Roles(**job["roles"]), job["methods"]
    if report == "summary":
        return [DataSummaryPreset(columns=list(methods))]
    if report == "drift":
        # Evidently refuses the name of a test for categories on a numeric column, though its own default
        # picks that very test for a numeric column of few values in a small sample: leave those to it.
        named = {
            column: method
            for column, method in methods.items()
            if not (column in roles.numeric and method in CATEGORY_TESTS)
        }
        return [DataDriftPreset(columns=list(methods), per_column_method=named)]
    return [RegressionPreset() if roles.task == "regression" else ClassificationPreset()]


def _draw(job: dict[str, Any], report: str, folder: Path) -> None:
    """One report of a job, run and saved as HTML and JSON."""
    from evidently import Dataset, Report

    definition = _definition(Roles(**job["roles"]))
    snapshot = Report(_presets(job, report)).run(
        Dataset.from_pandas(pd.read_parquet(job["current"]), data_definition=definition),
        Dataset.from_pandas(pd.read_parquet(job["reference"]), data_definition=definition),
    )
    snapshot.save_html(str(folder / f"{report}.html"))  # Evidently writes only to a path given as a str
    snapshot.save_json(str(folder / f"{report}.json"))


def main() -> int:
    """The child: imports Evidently, then draws the jobs of the file whose path arrives on stdin (none when
    stdin closes empty). Each report but the first is drawn in a fork of this process, which shares the import:
    the reports are drawn on all cores while the parent finishes its verdicts and waits."""
    import evidently.presets  # noqa: F401  (imported while the parent reads the window)

    line = sys.stdin.readline().strip()
    if not line:
        return 0
    jobs = json.loads(Path(line).read_text())
    folder = Path(jobs["folder"])
    reports = [(job, report) for job in jobs["reports"] for report in REPORTS[job["name"]]]
    forks = [_draw_in_fork(job, report, folder) for job, report in reports[1:]]
    try:
        for job, report in reports[:1]:
            _draw(job, report, folder)
    finally:
        failed = [pid for pid in forks if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    return 1 if failed else 0


def _draw_in_fork(job: dict[str, Any], report: str, folder: Path) -> int:
    """Forks; the fork draws ``report`` of ``job`` and exits 0, or 1 with the error written to the log. Returns
    the fork's pid. Safe here: the child has no thread when it forks."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _draw(job, report, folder)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid  # not reached: os._exit ends the fork


def drift_verdicts(snapshot: Any) -> dict[str, tuple[float, bool]]:
    """Evidently's own score and verdict of each column of a drift report run with ``include_tests=True``."""
    result = snapshot.dict()
    failed = {
        test["metric_config"]["metric_id"]
        for test in result["tests"]
        if test["id"] == "drift" and str(getattr(test["status"], "value", test["status"])).endswith("FAIL")
    }
    return {
        metric["config"]["column"]: (float(metric["value"]), metric["id"] in failed)
        for metric in result["metrics"]
        if metric["config"]["type"].endswith(":ValueDrift")
    }


if __name__ == "__main__":
    sys.exit(main())
