"""A model double for the inference API: the service runs whole (request schema, row encoder, prediction log,
metrics, reloads and their smoke test) with a model that needs no training, whose outputs a test can compute
from the row it sent. Tests of the API itself use it; tests of what the registry serves train a real champion.

Run as a module, it is `flightplan serve` with the double, for the tests that need a process of their own:
``python -m tests.support.model_double --port N [--pipeline NAME ...] [--poll-seconds S]``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
from flightplan.config import PipelineConfig
from flightplan.features import FeatureMap, configured_features
from flightplan.model.registry import CHALLENGER, CHAMPION
from flightplan.serving.inputs import RowEncoder
from flightplan.serving.models import ModelRefused, ModelSource, Scorer, ServedModel, smoke_test

DOUBLE_THRESHOLD = 0.5


def double_feature_map(config: PipelineConfig) -> FeatureMap:
    """Every configured feature (derived ones numeric) in the trained map's order, with no category seen: every
    category a client sends is unseen, so it enters as missing."""
    return FeatureMap(configured_features(config, lambda _: []), config.label.name, config.label.task)


def present_share(matrix: np.ndarray) -> np.ndarray:
    """The share of each encoded row's features that are present (not missing, not unseen)."""
    return 1.0 - np.isnan(matrix).mean(axis=1)


def double_scores(task: str, classes: list[str], version: str) -> Scorer:
    """binary: P(1) is the present share divided by the version's number, so that versions answer apart;
    regression: the sum of the present values; multiclass: all the
    probability on the class whose index is the count of present features, modulo the classes."""
    if task == "binary":
        return lambda matrix: present_share(matrix) / int(version)
    if task == "regression":
        return lambda matrix: np.nansum(matrix.astype(np.float64), axis=1)

    def one_hot(matrix: np.ndarray) -> np.ndarray:
        chosen = (~np.isnan(matrix)).sum(axis=1) % len(classes)
        return np.eye(len(classes))[chosen]

    return one_hot


def model_double(config: PipelineConfig, version: str, classes: list[str] | None = None) -> ServedModel:
    """Version ``version`` of the pipeline's double (``classes``: a multiclass pipeline's classes)."""
    task = config.label.task
    if task == "multiclass" and not classes:
        raise ValueError(f"pipeline '{config.name}' is multiclass: give its double the classes it answers")
    chosen = classes or []
    return ServedModel(
        name=f"{config.registered_model} (double)",
        version=version,
        task=task,
        threshold=DOUBLE_THRESHOLD,
        classes=chosen,
        encoder=RowEncoder(config, double_feature_map(config)),
        scores=double_scores(task, chosen, version),
    )


@dataclass
class DoubleRegistry:
    """The double's registry: each pipeline's champion alias points at version 1 until a test moves it, its
    challenger alias at none until a test sets it, and a version listed in ``broken`` fails to load, as a
    version a registry holds but cannot serve."""

    champions: dict[str, str | None] = field(default_factory=dict)
    challengers: dict[str, str | None] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    classes: list[str] | None = None

    def __call__(self, config: PipelineConfig) -> ModelSource:
        return PipelineDoubles(self, config)


@dataclass(frozen=True)
class PipelineDoubles:
    registry: DoubleRegistry
    config: PipelineConfig

    def version_of(self, alias: str) -> str | None:
        if alias == CHALLENGER:
            return self.registry.challengers.get(self.config.name)
        assert alias == CHAMPION, alias
        return self.registry.champions.get(self.config.name, "1")

    def load(self, version: str) -> ServedModel:
        if version in self.registry.broken:
            raise ModelRefused(f"{self.config.registered_model} version {version}: broken on purpose")
        model = model_double(self.config, version, self.registry.classes)
        smoke_test(model)
        return model


def main() -> None:
    from flightplan.serving.app import ServiceOptions, create_app, run_service
    from flightplan.settings import api_tokens, load_settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pipeline", action="append")
    parser.add_argument("--poll-seconds", type=float, default=3600)
    args = parser.parse_args()
    settings = load_settings()
    options = ServiceOptions(args.pipeline, api_tokens(settings), args.poll_seconds)
    run_service(create_app(settings, options, DoubleRegistry()), "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
