"""Features from the config: the columns a model sees, how they are encoded, and which of them earn their place.

A model's input is a float matrix whose columns are named f0..fN (the names ONNX converters accept);
categorical values enter as their category code, as a float, and an unseen value as missing. The
:class:`FeatureMap` records which name and which categories each position stands for; it is saved with
the model and used by every path that predicts (evaluation, ONNX parity, the online service, batch
scoring), so they all encode a row the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flightplan.config import DerivedFeature, PipelineConfig

PART_FUNCTIONS = {
    "hour": pc.hour,
    "day_of_week": pc.day_of_week,  # Monday is 0
    "day_of_month": pc.day,
    "day_of_year": pc.day_of_year,
    "week": pc.iso_week,
    "month": pc.month,
    "quarter": pc.quarter,
}


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # "numeric" or "categorical"
    categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FeatureMap:
    """What each column of the model's input matrix is, and how the label is coded."""

    features: list[Feature]
    label: str
    task: str
    classes: list[str] = field(default_factory=list)  # multiclass: the class of each code
    # What wrangling fills a missing raw input with, as on the train side; serving fills the same.
    fill: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def model_names(self) -> list[str]:
        return [f"f{i}" for i in range(len(self.features))]

    @property
    def model_types(self) -> list[str]:
        return ["c" if f.kind == "categorical" else "q" for f in self.features]

    def keep(self, names: list[str]) -> FeatureMap:
        wanted = set(names)
        return FeatureMap(
            [f for f in self.features if f.name in wanted], self.label, self.task, self.classes, self.fill
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureMap:
        raw = json.loads(text)
        return cls(
            features=[Feature(**f) for f in raw["features"]],
            label=raw["label"],
            task=raw["task"],
            classes=raw.get("classes", []),
            fill=raw.get("fill", {}),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        return cls.from_json(path.read_text())


def derive(table: pa.Table, derived: list[DerivedFeature]) -> pa.Table:
    """``table`` with the derived features appended (int32), each read in its own time zone."""
    for feature in derived:
        values = table.column(feature.column)
        if pa.types.is_timestamp(values.type):
            values = pc.cast(values, pa.timestamp(values.type.unit, tz=feature.timezone))
        part = PART_FUNCTIONS[feature.part](values)
        table = table.append_column(feature.name, pc.cast(part, pa.int32()))
    return table


def input_columns(config: PipelineConfig) -> list[str]:
    """The raw columns a prediction needs: the non-derived features and the inputs of the derived ones."""
    derived = {d.name for d in config.features.derived}
    listed = [n for n in config.features.numeric + config.features.categorical if n not in derived]
    return sorted(set(listed) | {d.column for d in config.features.derived})


def configured_features(config: PipelineConfig, categories: Callable[[str], list[str]]) -> list[Feature]:
    """Every configured feature in the order of the model's columns: the numeric ones, the derived ones (as
    numeric), then the categorical ones, each with the categories ``categories`` gives it."""
    features = [Feature(name, "numeric") for name in config.features.numeric]
    features += [Feature(d.name, "numeric") for d in config.features.derived if d.name not in config.features.numeric]
    return features + [Feature(name, "categorical", categories(name)) for name in config.features.categorical]


def build_feature_map(train: pd.DataFrame, config: PipelineConfig) -> FeatureMap:
    """Every configured feature, with categories as seen on the train side, most frequent first, so codes are
    stable for the same data."""

    def seen(name: str) -> list[str]:
        counts = train[name].dropna().astype(str).value_counts()
        return [value for value, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]

    features = configured_features(config, seen)
    classes: list[str] = []
    if config.label.task == "multiclass":
        classes = sorted(train[config.label.name].dropna().astype(str).unique().tolist())
    return FeatureMap(features, config.label.name, config.label.task, classes, fill_values(train, config))


class LabelLeak(ValueError):
    """A feature carries the label itself: a model would learn to copy it and fail on new data."""


def leaking_features(train: pd.DataFrame, feature_map: FeatureMap) -> list[str]:
    """The features identical to the label on the train side: equal to it (regression), or its classes under
    other names, one value per class and one class per value (classification)."""
    label = train[feature_map.label]
    known = label.notna()
    leaking = []
    for name in feature_map.names:
        values = train.loc[known, name]
        if values.isna().any():
            continue
        if feature_map.task == "regression":
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.notna().all() and np.allclose(numbers.to_numpy(float), label[known].to_numpy(float)):
                leaking.append(name)
            continue
        pairs = pd.DataFrame({"value": values.astype(str), "label": label[known].astype(str)}).drop_duplicates()
        if len(pairs) == pairs["value"].nunique() == pairs["label"].nunique():
            leaking.append(name)
    return leaking


def fill_values(train: pd.DataFrame, config: PipelineConfig) -> dict[str, Any]:
    """The value each imputation rule of the raw inputs stands for on the train side (a median or mode there
    is the one a prediction should get)."""
    values: dict[str, Any] = {}
    for name, rule in config.wrangle.impute.items():
        if name not in train.columns:
            continue
        column = train[name].dropna()
        if rule.strategy == "constant" or column.empty:
            values[name] = rule.value
        elif rule.strategy == "median":
            values[name] = float(column.median())
        else:
            counts = column.astype(str).value_counts()
            values[name] = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[0][0]
    return values


def encode(frame: pd.DataFrame, feature_map: FeatureMap) -> np.ndarray:
    """The model's float32 input matrix for ``frame`` (raw feature values, derived ones included)."""
    missing = [name for name in feature_map.names if name not in frame.columns]
    if missing:
        raise KeyError(f"rows lack feature column(s) {missing}")
    matrix = np.empty((len(frame), len(feature_map.features)), dtype=np.float32)
    for position, feature in enumerate(feature_map.features):
        column = frame[feature.name]
        if feature.kind == "categorical":
            codes = pd.Categorical(column.astype("string"), categories=feature.categories).codes
            matrix[:, position] = np.where(codes < 0, np.nan, codes)
        else:
            matrix[:, position] = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
    return matrix


def label_problem(task: str, classes: list[str], value: Any) -> str | None:
    """What a true label of ``task`` must be, when ``value`` is not one (None when it is). ``classes`` are a
    multiclass model's (empty: any class). Checked wherever a label comes in (the API, the label queue) and
    wherever stored ones are read (the label step, monitoring): one bad label would otherwise stop training
    (an unknown class) or monitoring's metrics (a 7 or a "banana" in a binary task)."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if task == "binary":
        return None if (number or isinstance(value, bool)) and value in (0, 1) else "0 or 1"
    if task == "regression":
        return None if number else "a finite number"
    if not (isinstance(value, str | int | bool) or number):
        return "a class"
    # A column of integer classes read with missing values comes back as floats: 2.0 is class '2'.
    names = {str(value), str(int(value))} if isinstance(value, float) and value.is_integer() else {str(value)}
    if classes and not names & set(classes):
        shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
        return f"one of the classes {shown}"
    return None


def encode_label(frame: pd.DataFrame, feature_map: FeatureMap) -> np.ndarray:
    values = frame[feature_map.label]
    if feature_map.task == "multiclass":
        codes = pd.Categorical(values.astype("string"), categories=feature_map.classes).codes
        if (codes < 0).any():
            unseen = sorted(set(values.astype(str)) - set(feature_map.classes))
            raise ValueError(f"label '{feature_map.label}' has classes not seen in training: {unseen}")
        return codes.astype(np.float32)
    return pd.to_numeric(values).astype("float64").to_numpy(dtype=np.float32)


def gain_shares(importances: dict[str, float], feature_map: FeatureMap) -> dict[str, float]:
    """Total gain per feature (by name, zero for unused ones) as a share of the model's total gain."""
    total = sum(importances.values()) or 1.0
    return {
        name: importances.get(model_name, 0.0) / total
        for name, model_name in zip(feature_map.names, feature_map.model_names, strict=True)
    }


def select(shares: dict[str, float], min_share: float, keep_at_least: int) -> tuple[list[str], list[str]]:
    """Kept and dropped feature names: drop those under ``min_share``, but never keep fewer than ``keep_at_least``."""
    ranked = sorted(shares, key=lambda name: (-shares[name], name))
    kept = [name for name in ranked if shares[name] >= min_share]
    kept = ranked[: max(len(kept), min(keep_at_least, len(ranked)))]
    return kept, [name for name in ranked if name not in kept]
