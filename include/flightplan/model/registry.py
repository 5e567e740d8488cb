"""The MLflow model registry: a new version with the `challenger` alias and lineage tags, and the current
`champion` (its ONNX model and feature map) for the comparison the gate makes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flightplan.features import FeatureMap
from flightplan.settings import Settings
from flightplan.tracking import client

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"
REASON_TAG = "flightplan.reason"  # on a version: why its model was trained


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    alias: str
    onnx: bytes
    feature_map: FeatureMap
    metadata: dict[str, Any]


def register(settings: Settings, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``name`` and point `challenger` at it; returns the version."""
    import mlflow

    mlflow_client = client(settings)
    version = mlflow.register_model(model_uri, name, tags=tags)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def newest_version_time(settings: Settings, name: str, reason_prefix: str) -> datetime | None:
    """When the newest version of ``name`` trained for a reason that starts with ``reason_prefix`` was
    registered (None: no such version)."""
    versions = client(settings).search_model_versions(f"name = '{name}'")
    stamps = [v.creation_timestamp for v in versions if v.tags.get(REASON_TAG, "").startswith(reason_prefix)]
    return datetime.fromtimestamp(max(stamps) / 1000, UTC) if stamps else None


def load_alias(settings: Settings, name: str, alias: str) -> RegisteredModel | None:
    """The model version an alias points at, or None when the model or the alias does not exist."""
    version = alias_version(settings, name, alias)
    return None if version is None else load_version(settings, name, version, alias)


def alias_version(settings: Settings, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_version(settings: Settings, name: str, version: str, alias: str = "") -> RegisteredModel:
    """One registry version's ONNX model, feature map and metadata (``alias``: how it was found)."""
    import mlflow

    metadata, feature_map = version_metadata(settings, name, version)
    onnx_model = mlflow.onnx.load_model(f"models:/{name}/{version}")
    return RegisteredModel(
        name=name,
        version=version,
        alias=alias,
        onnx=onnx_model.SerializeToString(),
        feature_map=feature_map,
        metadata=metadata,
    )


def version_metadata(settings: Settings, name: str, version: str) -> tuple[dict[str, Any], FeatureMap]:
    """A registry version's metadata and feature map, without loading its model (and onnx, 2 s to import)."""
    import mlflow

    client(settings)
    metadata = dict(mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {})
    return metadata, FeatureMap.from_json(json.dumps(metadata["feature_map"]))


def decision_threshold(metadata: dict[str, Any]) -> float:
    """A binary model's cut on P(1), chosen on validation when it was evaluated; 0.5 when none was kept."""
    return float(metadata.get("threshold") or 0.5)


def training_run_id(settings: Settings, name: str, version: str) -> str:
    """The model-engineering run that trained a registry version (its lineage tag)."""
    return str(client(settings).get_model_version(name, version).tags["flightplan.run_id"])


def split_manifest_path(settings: Settings, run_id: str) -> str:
    """The manifest of the split a training run (``training_run_id``) trained on: its lineage tag."""
    return str(client(settings).get_run(run_id).data.tags["flightplan.split_manifest"])


def native_booster(settings: Settings, name: str, version: str) -> Any | None:
    """A registry version's booster, loaded; None for a version registered by hand, without the run that
    trained it (its ONNX model then answers everything)."""
    import xgboost as xgb

    try:
        raw = load_booster(settings, name, version)
    except KeyError:
        return None
    return xgb.Booster(model_file=bytearray(raw))


def load_booster(settings: Settings, name: str, version: str) -> bytes:
    """The native XGBoost booster behind a registry version (its ONNX model's parity was proven on the
    whole test set), for paths where xgboost is faster than onnxruntime: large batches."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=training_run_id(settings, name, version), artifact_path="booster/booster.ubj"
    )
    with open(local, "rb") as booster_file:
        return booster_file.read()
