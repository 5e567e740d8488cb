"""The stages on a Spark Connect server, the embedded stack's (`flightplan up spark`), against the same stages on a
Spark of their own process: the same partitions, quarantine and manifests. The server listens on loopback only and
answers only clients that hold its token. A process that has connected cannot start a Spark of its own, so the
connected stages run in a process of their own, as Airflow's tasks do."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import psutil
from flightplan.config import load_pipeline
from flightplan.dev.stack import SPARK_CONNECT_SERVER_CLASS
from flightplan.layout import Layout
from flightplan.settings import PACKAGE_PIPELINES_DIR, load_settings

from tests.conftest import PreparedHome
from tests.support.pipeline import END_DAY, FIRST_DAY, REPO, data_digest, data_engineering_manifests

CONNECTED_DATA_ENGINEERING = f"""
import json
from datetime import date
from flightplan.config import load_pipeline
from flightplan.dev.replay import replay
from flightplan.layout import Layout
from flightplan.settings import load_settings
from flightplan.spark import get_spark
from tests.support.pipeline import run_data_engineering

settings = load_settings()
replay(Layout(settings, load_pipeline("flights", settings.pipelines_dir)), date.fromisoformat("{FIRST_DAY}"),
       date.fromisoformat("{END_DAY}"))
run_data_engineering(date.fromisoformat("{FIRST_DAY}"), date.fromisoformat("{END_DAY}"))
print(type(get_spark(settings)).__module__)
"""

ONE_QUERY = (
    "from pyspark.sql import SparkSession; print(SparkSession.builder.remote('{url}').getOrCreate().range(3).count())"
)


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def comparable(home: Path) -> dict[str, dict]:
    """The data_engineering manifests of the home, its folder taken out of their paths, and without what differs
    between any two runs (Great Expectations' result, with its run's time and id)."""
    layout = Layout(load_settings({"FLIGHTPLAN_HOME": str(home)}), load_pipeline("flights", PACKAGE_PIPELINES_DIR))
    manifests = data_engineering_manifests(layout, FIRST_DAY, END_DAY)
    text = json.dumps(manifests, sort_keys=True).replace(str(home), "<home>")
    found = json.loads(text)
    found["validate"].pop("gx_result")
    return found


def test_the_data_stages_write_the_same_through_spark_connect(
    prepared_home: PreparedHome, spark_connect: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "connected"
    env = {**os.environ, "FLIGHTPLAN_HOME": str(home), **spark_connect}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = python(CONNECTED_DATA_ENGINEERING, env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split()[-1] == "pyspark.sql.connect.session"  # the stages' session was the server's
    connected = comparable(home)
    assert connected == comparable(prepared_home.folder)
    assert data_digest(home / "data", "flights") == data_digest(prepared_home.folder / "data", "flights")
    assert connected["ingest"]["rows_total"] > 0 and connected["split"]["sides"]["train"]["rows"] > 0


def test_the_server_listens_on_loopback_and_answers_only_its_token(spark_connect: dict[str, str]) -> None:
    url = spark_connect["FLIGHTPLAN_SPARK_REMOTE"]
    port = int(url.rsplit(":", 1)[1])
    servers = [p for p in psutil.process_iter(["cmdline"]) if SPARK_CONNECT_SERVER_CLASS in (p.info["cmdline"] or [])]
    listening = {
        (server.pid, connection.laddr.ip)
        for server in servers
        for connection in server.net_connections("tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }
    [(pid, address)] = listening
    assert address in ("127.0.0.1", "::ffff:127.0.0.1")  # the JVM's IPv4 socket on a dual-stack host
    token = spark_connect["SPARK_CONNECT_AUTHENTICATE_TOKEN"]
    assert not any(token in part for part in psutil.Process(pid).cmdline())
    without = {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_AUTHENTICATE_TOKEN"}
    refused = python(ONE_QUERY.format(url=url), without)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr, refused.stderr[-3000:]
    wrong = python(
        ONE_QUERY.format(url=url), {**without, "SPARK_CONNECT_AUTHENTICATE_TOKEN": secrets.token_urlsafe(32)}
    )
    assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr[-3000:]
    answered = python(ONE_QUERY.format(url=url), {**os.environ, **spark_connect})
    assert answered.stdout.split() == ["3"], answered.stderr[-3000:]
