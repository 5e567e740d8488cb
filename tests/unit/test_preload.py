"""What the embedded stack's scheduler imports before it forks its executor's workers (flightplan.preload)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# In a fresh interpreter: preload, then fork a child that uses what started native threads on import (numpy's
# and scipy's OpenBLAS pools, pyarrow's jemalloc) and creates an MLflow SQL store. A lock left held by a thread
# that did not survive the fork hangs the child, which the timeout turns into a failure.
FORKED_CHILD = textwrap.dedent(
    """
    import os, sys, tempfile, threading
    from flightplan.preload import preload_task_modules

    failed = preload_task_modules()
    assert not failed, failed
    assert threading.active_count() == 1, threading.enumerate()
    pid = os.fork()
    if pid == 0:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        from scipy import linalg
        from sklearn.metrics import roc_auc_score
        from mlflow.tracking import MlflowClient

        matrix = np.random.default_rng(0).random((600, 600))
        assert linalg.inv(matrix @ matrix.T + np.eye(600)).shape == (600, 600)
        assert pc.sum(pa.array(np.arange(1_000_000))).as_py() == 499999500000
        assert roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
        store = tempfile.mkdtemp()
        client = MlflowClient(f"sqlite:///{store}/mlflow.db")
        assert client.create_experiment("forked")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_preloaded_modules_start_no_thread_and_a_forked_child_can_use_them() -> None:
    result = subprocess.run([sys.executable, "-c", FORKED_CHILD], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_module_that_does_not_import_is_reported_and_the_rest_still_load(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from flightplan import preload

    monkeypatch.setattr(preload, "TASK_MODULES", ("flightplan.no_such_stage", "flightplan.slices"))
    sys.modules.pop("flightplan.slices", None)
    failed = preload.preload_task_modules()
    assert list(failed) == ["flightplan.no_such_stage"]
    assert "ModuleNotFoundError" in failed["flightplan.no_such_stage"]
    assert "flightplan.slices" in sys.modules
