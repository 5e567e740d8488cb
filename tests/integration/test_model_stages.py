"""Model engineering on the real splits of the demo days, with real XGBoost, Optuna, MLflow (tracking and
registry) and onnxruntime; no Airflow here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flightplan.layout import Layout
from flightplan.model import stages
from flightplan.tracking import RunContext

from tests.support.pipeline import QUICK, WORSE, run_chain


def test_chain_registers_a_challenger_with_lineage(challenger: tuple[str, dict[str, str]], layout: Layout) -> None:
    from flightplan.model.registry import load_alias
    from flightplan.tracking import client

    run_id, registered = challenger
    model = load_alias(layout.settings, "flights-delayed", "challenger")
    assert model is not None and model.version == registered["version"]
    run_dir = layout.model_run(run_id)
    assert json.loads((run_dir / "parity.json").read_text())["ok"] is True
    saved = json.loads((run_dir / "feature_map.json").read_text())["features"]
    assert model.feature_map.names == [f["name"] for f in saved]
    version = client(layout.settings).get_model_version("flights-delayed", model.version)
    for tag in (
        "airflow.dag_id",
        "airflow.run_id",
        "git.commit",
        "flightplan.config_hash",
        "flightplan.data_fingerprint",
    ):
        assert version.tags.get(tag), tag
    run = client(layout.settings).get_run(run_id)
    assert run.data.metrics["test_roc_auc"] > 0.5
    assert {"validation_logloss", "validation_auc", "train_roc_auc", "test_log_loss"} <= set(run.data.metrics)
    assert len(client(layout.settings).get_metric_history(run_id, "validation_logloss")) > 1
    assert run.inputs is not None and run.inputs.dataset_inputs
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.name == "train" and dataset.schema and dataset.profile
    assert {"name": "origin", "type": "string", "required": True} in json.loads(dataset.schema)["mlflow_colspec"]
    assert json.loads(dataset.profile)["num_rows"] == run.data.metrics["train_rows"]
    assert run.data.tags["flightplan.verdict"] == "accepted"
    card = (run_dir / "model_card.md").read_text()
    assert "## Slices" in card and "| origin | EWR |" in card
    assert {p.name for p in (run_dir / "plots").iterdir()} >= {"roc.png", "calibration.png", "confusion_matrix.png"}


def test_evaluation_leaves_the_monitoring_reference_with_the_models_answers(
    challenger: tuple[str, dict[str, str]], layout: Layout
) -> None:
    import pandas as pd
    from flightplan.monitoring.window import VersionScores
    from flightplan.scoring import PROBABILITY, REFERENCE_FILE

    run_id, registered = challenger
    run_dir = layout.model_run(run_id)
    reference = pd.read_parquet(run_dir / REFERENCE_FILE)
    trained_on = pd.read_parquet(run_dir / "frames" / "train.parquet")
    assert len(reference) == len(trained_on)
    scorer = VersionScores(layout.settings, layout.config, registered["version"])
    assert reference[PROBABILITY].to_numpy() == pytest.approx(scorer(trained_on), abs=1e-6)
    assert set(reference["prediction"]) <= {0, 1}


def test_a_model_worse_than_the_champion_is_rejected_and_not_registered(
    challenger: tuple[str, dict[str, str]], layout: Layout
) -> None:
    from flightplan.tracking import client

    mlflow_client = client(layout.settings)
    mlflow_client.set_registered_model_alias("flights-delayed", "champion", challenger[1]["version"])
    before = len(mlflow_client.search_model_versions("name = 'flights-delayed'"))
    with pytest.raises(stages.ModelRejected, match="vs the champion's") as caught:
        run_chain(stages.ModelJob("flights", RunContext(dag_id="model_engineering", run_id="it-worse"), WORSE))
    assert "not registered" in str(caught.value)
    assert len(mlflow_client.search_model_versions("name = 'flights-delayed'")) == before
    experiment = mlflow_client.get_experiment_by_name("flights-model-engineering")
    assert experiment is not None
    rejected = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`airflow.run_id` = 'it-worse' and tags.`flightplan.role` = 'model'",
    )
    assert rejected[0].data.tags["flightplan.verdict"] == "rejected"
    assert Path(layout.model_run(rejected[0].info.run_id) / "verdict.json").exists()


def test_the_champions_own_search_run_again_is_accepted(challenger: tuple[str, dict[str, str]], layout: Layout) -> None:
    """The same seeded search on the same split gives the same model, which must not lose to itself. Both
    sides of the champion comparison are scored by their native boosters: on the demo year's 49,113 test rows,
    the champion's float32 ONNX answers made its identical retrained model lose (0.70250273 against 0.70250274),
    which a split this small does not show; here the test holds the chain to being deterministic. Both models
    train here, on one split: other tests of this module add days and split again."""
    from flightplan.tracking import client

    mlflow_client = client(layout.settings)
    split = json.loads((layout.splits / "latest.json").read_text())["manifest"]
    same = {**QUICK, "model.acceptance.champion_margin": 0.0}
    try:
        first = stages.ModelJob("flights", RunContext(dag_id="model_engineering", run_id="it-first"), QUICK, split)
        mlflow_client.set_registered_model_alias("flights-delayed", "champion", run_chain(first)[1]["version"])
        job = stages.ModelJob("flights", RunContext(dag_id="model_engineering", run_id="it-again"), same, split)
        again = stages.features(job)
        stages.tune(job, again)
        stages.train(job, again)
        stages.evaluate(job, again)
        stages.accept(job, again)
    finally:  # the module's champion and challenger back, for the tests after this one
        for alias in ("champion", "challenger"):
            mlflow_client.set_registered_model_alias("flights-delayed", alias, challenger[1]["version"])
    verdict = json.loads((layout.model_run(again) / "verdict.json").read_text())
    compared = next(c for c in verdict["checks"] if "vs the champion's" in c["check"])
    assert compared["value"] == compared["bound"], compared


def test_a_run_with_the_same_data_config_and_code_reuses_tuning_and_training(
    challenger: tuple[str, dict[str, str]], layout: Layout
) -> None:
    """Tune and train are skipped (no trial, the earlier booster copied, the reuse in the run's tags) when the
    inputs are the same; ``fresh`` or one config value changed makes the run do the work."""
    from flightplan.tracking import REUSED_TAG, client

    mlflow_client = client(layout.settings)
    earlier, _ = challenger
    split = mlflow_client.get_run(earlier).data.tags["flightplan.split_manifest"]

    def tuned_and_trained(run_id: str, overrides: dict, fresh: bool = False) -> tuple[str, dict[str, str]]:
        job = stages.ModelJob("flights", RunContext("model_engineering", run_id), overrides, split, fresh=fresh)
        mlflow_run = stages.features(job)
        stages.tune(job, mlflow_run)
        stages.train(job, mlflow_run)
        return mlflow_run, mlflow_client.get_run(mlflow_run).data.tags

    def trials(mlflow_run: str) -> int:
        experiment = mlflow_client.get_run(mlflow_run).info.experiment_id
        query = f"tags.mlflow.parentRunId = '{mlflow_run}' and tags.`flightplan.role` = 'trial'"
        return len(mlflow_client.search_runs([experiment], filter_string=query))

    def booster(mlflow_run: str) -> bytes:
        return (layout.model_run(mlflow_run) / "booster.ubj").read_bytes()

    again, tags = tuned_and_trained("it-cached", QUICK)
    reused = tags[REUSED_TAG].splitlines()  # the newest run with these inputs: the module's, or one that reused it
    source = reused[0].removeprefix("tune: run ")
    assert reused == [f"tune: run {source}", f"train: run {source}"] and source != again
    assert trials(again) == 0 and "train_seconds" not in mlflow_client.get_run(again).data.metrics
    assert booster(again) == booster(source) == booster(earlier)
    forced, tags = tuned_and_trained("it-fresh", QUICK, fresh=True)
    assert REUSED_TAG not in tags and trials(forced) == QUICK["model.tuning.trials"]
    changed, tags = tuned_and_trained("it-changed", {**QUICK, "model.tuning.seed": 8})
    assert REUSED_TAG not in tags and trials(changed) == QUICK["model.tuning.trials"]


def test_spark_engine_trains_a_booster_that_packages_with_parity(
    challenger: tuple[str, dict[str, str]], layout: Layout, spark
) -> None:  # type: ignore[no-untyped-def]
    """xgboost.spark on the shared Spark session, two workers, from the same split as the local model."""
    import xgboost as xgb
    from flightplan.tracking import client

    overrides = {**QUICK, "model.tuning.trials": 1, "model.engine": "spark", "model.spark_workers": 2}
    job = stages.ModelJob("flights", RunContext(dag_id="model_engineering", run_id="it-spark"), overrides)
    run_id = stages.features(job)
    stages.tune(job, run_id)
    booster = xgb.Booster(model_file=stages.train(job, run_id))
    best = json.loads((layout.model_run(run_id) / "best.json").read_text())
    assert booster.num_boosted_rounds() == best["rounds"]
    assert booster.feature_types and "c" in booster.feature_types
    stages.evaluate(job, run_id)
    model_uri = stages.package_onnx(job, run_id)
    assert model_uri.startswith("models:/")
    assert json.loads((layout.model_run(run_id) / "parity.json").read_text())["ok"] is True
    run = client(layout.settings).get_run(run_id)
    assert run.data.params["engine"] == "spark"
    assert run.data.metrics["test_roc_auc"] > 0.5
    history = client(layout.settings).get_metric_history(run_id, "validation_logloss")
    assert len(history) == best["rounds"] and "train_logloss" not in run.data.metrics
