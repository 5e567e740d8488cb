"""Where the runtime keeps its state and which engines it talks to.

Everything lives under one home folder (``FLIGHTPLAN_HOME``); every endpoint can be pointed elsewhere
by its own environment variable so the production stack is a matter of configuration only.
Reading settings has no side effects: folders are created by the code that writes into them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PACKAGE_PIPELINES_DIR = Path(__file__).resolve().parents[1] / "pipelines"
SPARK_REMOTE_NONE = "none"


@dataclass(frozen=True)
class Settings:
    home: Path
    data_root: Path
    pipelines_dir: Path
    spark_master: str
    spark_driver_memory: str
    # A Spark Connect server every stage connects to (``sc://host:port``); "none": each process starts its own
    # Spark; None (not set): the same, except in the embedded stack, whose tasks connect to its own server.
    spark_remote: str | None
    spark_server: str  # where the embedded stack's Spark Connect server listens
    ingest_engine: str
    # Stages whose input holds at most this many rows run in this process on Arrow rather than on Spark, with the
    # same outputs (0: always Spark).
    local_engine_rows: int
    mlflow_tracking_uri: str
    mlflow_artifact_root: str | None  # None: the tracking server keeps the artifacts (it proxies them)
    mlflow_ui_url: str  # where people open the MLflow UI (links from the Models page)
    airflow_url: str  # the embedded Airflow's API server and web UI
    airflow_home: Path
    airflow_database_url: str
    predictions_db_url: str
    service_url: str
    task_retry_delay_seconds: float  # how long Airflow waits before it retries a failed task

    @property
    def tracks_locally(self) -> bool:
        """MLflow's store is a database or folder of this machine (not a tracking server someone else runs)."""
        return not self.mlflow_tracking_uri.startswith("http")

    @property
    def spark_connect_url(self) -> str | None:
        """The Spark Connect server this process's stages connect to (None: a Spark of its own)."""
        return None if self.spark_remote in (None, SPARK_REMOTE_NONE) else self.spark_remote

    @property
    def gx_root(self) -> Path:
        return self.home / "gx"

    @property
    def reports_root(self) -> Path:
        return self.home / "reports"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("FLIGHTPLAN_HOME", Path.home() / ".flightplan")).expanduser().resolve()
    airflow_home = Path(env.get("AIRFLOW_HOME", home / "airflow"))
    tracking_uri = env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return Settings(
        home=home,
        data_root=Path(env.get("FLIGHTPLAN_DATA_ROOT", home / "data")),
        pipelines_dir=Path(env.get("FLIGHTPLAN_PIPELINES_DIR", PACKAGE_PIPELINES_DIR)),
        spark_master=env.get("FLIGHTPLAN_SPARK_MASTER", "local[*]"),
        spark_driver_memory=env.get("FLIGHTPLAN_SPARK_DRIVER_MEMORY", "4g"),
        spark_remote=env.get("FLIGHTPLAN_SPARK_REMOTE") or None,
        # "localhost", not 127.0.0.1: Spark's client sends a token without TLS only to that name.
        spark_server=env.get("FLIGHTPLAN_SPARK_SERVER", "sc://localhost:15002"),
        ingest_engine=env.get("FLIGHTPLAN_INGEST_ENGINE", "spark"),
        local_engine_rows=int(env.get("FLIGHTPLAN_LOCAL_ENGINE_ROWS", "0")),
        mlflow_tracking_uri=tracking_uri,
        mlflow_artifact_root=env.get(
            "FLIGHTPLAN_MLFLOW_ARTIFACT_ROOT",
            None if tracking_uri.startswith("http") else (home / "mlflow" / "artifacts").as_uri(),
        ),
        mlflow_ui_url=env.get(
            "FLIGHTPLAN_MLFLOW_UI_URL", tracking_uri if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
        ),
        airflow_url=env.get("FLIGHTPLAN_AIRFLOW_URL", "http://127.0.0.1:8080"),
        airflow_home=airflow_home,
        airflow_database_url=env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_home / 'airflow.db'}"),
        service_url=env.get("FLIGHTPLAN_SERVICE_URL", "http://127.0.0.1:8000"),
        predictions_db_url=env.get("FLIGHTPLAN_PREDICTIONS_DB", f"sqlite:///{home / 'serving' / 'predictions.db'}"),
        task_retry_delay_seconds=float(env.get("FLIGHTPLAN_TASK_RETRY_DELAY_SECONDS", "60")),
    )


def async_database_url(url: str) -> str | None:
    """The asyncio twin of a PostgreSQL metadata URL on psycopg 3, which Airflow needs as well (left to
    itself it derives an asyncpg URL, a driver this project does not install); None for other URLs."""
    sync_prefix = "postgresql+psycopg://"
    return "postgresql+psycopg_async://" + url.removeprefix(sync_prefix) if url.startswith(sync_prefix) else None


def airflow_environment(settings: Settings, dags_folder: Path, plugins_folder: Path) -> dict[str, str]:
    """The environment an embedded Airflow (LocalExecutor, SQLite by default) runs with."""
    async_url = async_database_url(settings.airflow_database_url)
    return {
        **({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": async_url} if async_url else {}),
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # The LocalExecutor, whose workers have the stages' libraries imported before they fork a task (plugins/).
        "AIRFLOW__CORE__EXECUTOR": "flightplan_executor.PreloadingLocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_database_url,
        "FLIGHTPLAN_HOME": str(settings.home),
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "GX_ANALYTICS_ENABLED": "False",
    }


# What a client of the inference API may do: answers; ground truth and raw rows, which end up in training sets;
# model reloads. Each scope has a token of its own, as MLflow and SageMaker keep inference and management
# credentials apart: a client that may predict can neither rewrite labels nor add training rows nor reload.
ApiScope = Literal["predict", "feedback", "admin"]
TOKEN_VARIABLES: dict[ApiScope, str] = {
    "predict": "FLIGHTPLAN_API_TOKEN",
    "feedback": "FLIGHTPLAN_FEEDBACK_TOKEN",
    "admin": "FLIGHTPLAN_ADMIN_TOKEN",
}


def api_token(settings: Settings, scope: ApiScope = "predict") -> str | None:
    """The inference API's bearer token of ``scope``: its variable (``TOKEN_VARIABLES``), else the one `flightplan
    up` generated under the home folder (readable by its owner only)."""
    token = os.environ.get(TOKEN_VARIABLES[scope])
    if token:
        return token
    stored = token_file(settings, scope)
    return (stored.read_text().strip() or None) if stored.exists() else None


def api_tokens(settings: Settings) -> dict[ApiScope, str]:
    """The token of each scope that has one."""
    return {scope: token for scope in TOKEN_VARIABLES if (token := api_token(settings, scope))}


def token_file(settings: Settings, scope: ApiScope = "predict") -> Path:
    return settings.home / "serving" / ("api-token" if scope == "predict" else f"{scope}-token")
