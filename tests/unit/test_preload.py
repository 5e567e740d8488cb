"""What the embedded stack's scheduler imports before it forks its executor's workers (flightplan.preload)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# In a fresh interpreter: preload, then fork a child that uses what the preloaded libraries start on import or
# first use (numpy's and scipy's OpenBLAS pools, pyarrow's jemalloc, xgboost's OpenMP threads, a gRPC channel, an
# MLflow SQL store, a Great Expectations context). A lock left held by a thread that did not survive the fork
# hangs the child, which the timeout turns into a failure.
FORKED_CHILD = textwrap.dedent(
    """
    import os, socket, sys, tempfile, threading
    from flightplan.preload import preload_task_modules

    failed = preload_task_modules()
    assert not failed, failed
    assert threading.active_count() == 1, threading.enumerate()
    pid = os.fork()
    if pid == 0:
        import grpc
        import great_expectations as gx
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import xgboost as xgb
        from scipy import linalg
        from sklearn.metrics import roc_auc_score
        from mlflow.tracking import MlflowClient

        rng = np.random.default_rng(0)
        matrix = rng.random((600, 600))
        assert linalg.inv(matrix @ matrix.T + np.eye(600)).shape == (600, 600)
        assert pc.sum(pa.array(np.arange(1_000_000))).as_py() == 499999500000
        assert roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
        features = rng.random((2000, 5))
        booster = xgb.train({"nthread": 2}, xgb.DMatrix(features, features[:, 0] > 0.5), 5)
        assert booster.predict(xgb.DMatrix(features)).shape == (2000,)
        with socket.socket() as probe:  # a port nobody listens on: the channel must time out, not hang
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=1)
        except grpc.FutureTimeoutError:
            pass
        assert gx.get_context(mode="ephemeral") is not None
        store = tempfile.mkdtemp()
        assert MlflowClient(f"sqlite:///{store}/mlflow.db").create_experiment("forked")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_preloaded_modules_start_no_thread_and_a_forked_child_can_use_them() -> None:
    # As the scheduler runs: without the variables that tell MLflow it runs under a test or in CI.
    env = {key: value for key, value in os.environ.items() if key not in ("PYTEST_CURRENT_TEST", "CI")}
    result = subprocess.run([sys.executable, "-c", FORKED_CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_flightplan_itself_is_not_preloaded() -> None:
    """A task imports the library from disk: an edited library needs no restart of the scheduler."""
    from flightplan.preload import TASK_MODULES

    assert [name for name in TASK_MODULES if name.split(".")[0] == "flightplan"] == []


def test_a_module_that_does_not_import_is_reported_and_the_rest_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flightplan import preload

    (tmp_path / "preload_probe.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "preload_probe", raising=False)
    monkeypatch.setattr(preload, "TASK_MODULES", ("flightplan.no_such_stage", "preload_probe"))
    failed = preload.preload_task_modules()
    assert list(failed) == ["flightplan.no_such_stage"]
    assert "ModuleNotFoundError" in failed["flightplan.no_such_stage"]
    assert "not preloaded for tasks: flightplan.no_such_stage (ModuleNotFoundError" in caplog.text
    assert sys.modules["preload_probe"].LOADED
    monkeypatch.delitem(sys.modules, "preload_probe")
