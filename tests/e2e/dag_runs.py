"""Runs DAGs one after another in this one process with `dag.test()`, as `airflow dags test` does for one:
``python tests/e2e/dag_runs.py '[["dag_id", {conf}], ...]'``. One process for many runs saves the start of
Airflow, Spark and MLflow that each `airflow dags test` pays. Prints ``DAG RUN <dag_id> <state>`` after each
run, and exits 1 at the first that does not succeed."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from airflow.cli.commands.dag_command import get_bagged_dag
from airflow.utils.state import DagRunState


def main(runs: list[tuple[str, dict]]) -> int:
    for dag_id, conf in runs:
        dag = get_bagged_dag(bundle_names=None, dag_id=dag_id, dagfile_path=None)
        run = dag.test(logical_date=datetime.now(UTC), run_conf=conf)
        print(f"DAG RUN {dag_id} {json.dumps(conf, sort_keys=True)} {run.state}", flush=True)
        if run.state != DagRunState.SUCCESS:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
