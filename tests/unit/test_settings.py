"""Engines are chosen by environment variables alone; the defaults are the embedded ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from flightplan.settings import airflow_environment, load_settings


def test_the_defaults_are_embedded_engines(tmp_path: Path) -> None:
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path)})
    assert settings.spark_master == "local[*]"
    assert settings.tracks_locally and settings.mlflow_artifact_root == (tmp_path / "mlflow" / "artifacts").as_uri()
    assert settings.predictions_db_url.startswith("sqlite:///") and settings.airflow_database_url.startswith("sqlite:")
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC" not in airflow_environment(settings, tmp_path, tmp_path)


def test_a_tracking_server_keeps_the_artifacts_unless_a_root_is_named(tmp_path: Path) -> None:
    remote = {"FLIGHTPLAN_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    settings = load_settings(remote)
    assert not settings.tracks_locally and settings.mlflow_artifact_root is None
    assert settings.mlflow_ui_url == "http://mlflow:5000"
    named = load_settings({**remote, "FLIGHTPLAN_MLFLOW_ARTIFACT_ROOT": "s3://bucket/mlflow"})
    assert named.mlflow_artifact_root == "s3://bucket/mlflow"


def test_airflow_on_postgres_gets_the_asyncio_url_of_the_same_database(tmp_path: Path) -> None:
    url = "postgresql+psycopg://airflow:secret@db:5432/airflow"
    settings = load_settings({"FLIGHTPLAN_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url})
    env = airflow_environment(settings, tmp_path, tmp_path)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == "postgresql+psycopg_async://airflow:secret@db:5432/airflow"
    )


def test_the_stack_starts_a_spark_connect_server_for_its_tasks_unless_told_where_one_runs(tmp_path: Path) -> None:
    """Without FLIGHTPLAN_SPARK_REMOTE a process starts a Spark of its own, but the embedded stack starts a server
    and points its tasks at it; a remote URL is someone else's server, and `none` a Spark in every task."""
    from flightplan.dev.stack import StackError, processes, stack_airflow_environment

    home = {"FLIGHTPLAN_HOME": str(tmp_path)}
    embedded = load_settings(home)
    assert embedded.spark_connect_url is None
    [server] = processes(embedded, "spark")
    assert "spark.connect.grpc.binding.address=127.0.0.1" in server.command
    assert stack_airflow_environment(embedded, tmp_path, tmp_path)["FLIGHTPLAN_SPARK_REMOTE"] == "sc://localhost:15002"
    for remote, connects_to in (("sc://spark.example:15002", "sc://spark.example:15002"), ("none", None)):
        settings = load_settings({**home, "FLIGHTPLAN_SPARK_REMOTE": remote})
        assert settings.spark_connect_url == connects_to and processes(settings, "spark") == []
        assert stack_airflow_environment(settings, tmp_path, tmp_path)["FLIGHTPLAN_SPARK_REMOTE"] == remote
    numeric = load_settings({**home, "FLIGHTPLAN_SPARK_SERVER": "sc://127.0.0.1:15002"})
    with pytest.raises(StackError, match="localhost"):  # Spark's client sends a token without TLS to no other name
        processes(numeric, "spark")
