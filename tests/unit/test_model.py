"""Pure model-engineering functions: feature encoding and selection, the gate, ONNX parity per objective."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from flightplan.config import AcceptanceSpec, DerivedFeature
from flightplan.features import Feature, FeatureMap, derive, encode, encode_label, select
from flightplan.model import package
from flightplan.model.gate import decide
from flightplan.model.train import booster_params, fit, matrices, predict
from flightplan.model.tree_onnx import booster_to_onnx

FEATURES = FeatureMap(
    [Feature("x", "numeric"), Feature("colour", "categorical", ["red", "blue", "green"])], "y", "binary"
)


def test_derived_parts_are_read_in_their_time_zone() -> None:
    instants = pa.array([pd.Timestamp("2013-01-07T03:30:00Z")], pa.timestamp("us", tz="UTC"))
    table = derive(
        pa.table({"at": instants}),
        [
            DerivedFeature(name="hour_utc", column="at", part="hour"),
            DerivedFeature(name="hour_ny", column="at", part="hour", timezone="America/New_York"),
            DerivedFeature(name="weekday_ny", column="at", part="day_of_week", timezone="America/New_York"),
        ],
    )
    assert table.column("hour_utc").to_pylist() == [3]
    assert table.column("hour_ny").to_pylist() == [22]
    assert table.column("weekday_ny").to_pylist() == [6]  # Sunday evening in New York, Monday in UTC


def test_categories_become_float_codes_and_unseen_ones_missing() -> None:
    frame = pd.DataFrame({"x": pd.array([1, None, 3], "Int64"), "colour": ["blue", "purple", None]})
    matrix = encode(frame, FEATURES)
    assert matrix.dtype == np.float32
    assert matrix[0].tolist() == [1.0, 1.0]
    assert np.isnan(matrix[1]).all() and np.isnan(matrix[2, 1])
    assert FEATURES.model_names == ["f0", "f1"] and FEATURES.model_types == ["q", "c"]
    assert FeatureMap.from_json(FEATURES.to_json()) == FEATURES


def test_multiclass_labels_are_coded_and_unknown_classes_refused() -> None:
    feature_map = FeatureMap([], "y", "multiclass", ["a", "b", "c"])
    assert encode_label(pd.DataFrame({"y": ["c", "a"]}), feature_map).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError, match=r"classes not seen in training: \['z'\]"):
        encode_label(pd.DataFrame({"y": ["z"]}), feature_map)


def test_selection_drops_low_gain_but_keeps_a_minimum() -> None:
    shares = {"a": 0.6, "b": 0.3, "c": 0.08, "d": 0.02, "e": 0.0}
    assert select(shares, 0.05, 2) == (["a", "b", "c"], ["d", "e"])
    assert select(shares, 0.5, 2) == (["a", "b"], ["c", "d", "e"])


@pytest.mark.parametrize(
    ("metrics", "champion", "accepted", "reason"),
    [
        ({"roc_auc": 0.71, "log_loss": 0.5}, None, True, None),
        ({"roc_auc": 0.55, "log_loss": 0.5}, None, False, "test roc_auc: 0.5500 does not meet >= 0.6000"),
        ({"roc_auc": 0.71, "log_loss": 0.7}, None, False, "test log_loss: 0.7000 does not meet <= 0.6500"),
        ({"roc_auc": 0.71, "log_loss": 0.5}, {"roc_auc": 0.70}, True, None),
        ({"roc_auc": 0.705, "log_loss": 0.5}, {"roc_auc": 0.70}, False, "vs the champion's 0.7000 (margin 0.01)"),
    ],
)
def test_gate(metrics: dict, champion: dict | None, accepted: bool, reason: str | None) -> None:
    spec = AcceptanceSpec(minimum={"roc_auc": 0.6}, maximum={"log_loss": 0.65}, champion_margin=0.01)
    verdict = decide(metrics, spec, "roc_auc", champion)
    assert verdict.accepted is accepted
    if reason:
        assert any(reason in r for r in verdict.reasons), verdict.reasons
    assert len(verdict.checks) == 2 + (champion is not None)


def test_gate_on_a_loss_wants_it_lower() -> None:
    spec = AcceptanceSpec(champion_margin=0.0)
    assert decide({"rmse": 1.0}, spec, "rmse", {"rmse": 1.2}).accepted
    assert not decide({"rmse": 1.3}, spec, "rmse", {"rmse": 1.2}).accepted


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("split", ["partition", "one-hot", "none"])
def test_onnx_matches_xgboost_with_categorical_features(task: str, split: str) -> None:
    """Categorical splits by a set (partition) or by one category (one-hot), and trees of one leaf (no split is
    worth its loss); missing and infinite values."""
    rng = np.random.default_rng(7)
    rows = 3000
    colour = rng.integers(0, 3, rows).astype(np.float32)
    colour[rng.random(rows) < 0.05] = np.nan
    matrix = np.column_stack([rng.normal(size=rows), colour]).astype(np.float32)
    signal = matrix[:, 0] + 2.0 * (np.nan_to_num(colour, nan=-1) == 1)
    labels = {
        "binary": (signal > 0.5).astype(np.float32),
        "multiclass": np.digitize(signal, [0.0, 1.0]).astype(np.float32),
        "regression": (100 * signal).astype(np.float32),
    }[task]
    feature_map = FeatureMap(FEATURES.features, "y", task, ["0", "1", "2"] if task == "multiclass" else [])
    dtrain, dval = matrices(feature_map, (matrix, labels), (matrix, labels))
    fixed: dict[str, dict[str, Any]] = {
        "partition": {"max_cat_to_onehot": 1},
        "one-hot": {"max_cat_to_onehot": 8},
        "none": {"gamma": 1e9},
    }
    booster = fit(booster_params(feature_map, fixed[split], {"max_depth": 4}, 1), dtrain, dval, 30)
    leaves_per_tree = booster.trees_to_dataframe().groupby("Tree").size()
    assert (leaves_per_tree.max() == 1) == (split == "none")
    scored = matrix.copy()
    scored[:20, 0] = [np.inf, -np.inf, np.nan, 0.0] * 5  # XGBoost trains on none of these, but answers them
    native = predict(booster, scored, task)
    converted = package.predict(package.session(booster_to_onnx(booster, 2)), scored, task)
    parity = package.parity(native, converted, 1e-5)
    assert parity.ok, parity
    assert parity.rows == rows
    assert package.parity(native, converted + 1e-3, 1e-5).ok is False


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_a_categorical_of_five_thousand_values_converts_to_one_node_per_split(task: str) -> None:
    """Each categorical split is one ONNX node holding its set, whatever its size (onnxmltools makes one node per
    category); the graph answers as the booster on rows with every category, unseen codes and missing values."""
    import onnx

    rng = np.random.default_rng(11)
    rows, values = 20_000, 5_000
    code = rng.integers(0, values, rows).astype(np.float32)
    effect = rng.normal(size=values)[code.astype(int)]
    code[rng.random(rows) < 0.05] = np.nan
    code[:50] = values + np.arange(50)  # codes the model never saw
    matrix = np.column_stack([rng.normal(size=rows), code]).astype(np.float32)
    signal = effect + 0.5 * matrix[:, 0]
    labels = {
        "binary": (signal > 0).astype(np.float32),
        "multiclass": np.digitize(signal, [-0.5, 0.5]).astype(np.float32),
        "regression": (100 * signal).astype(np.float32),
    }[task]
    feature_map = FeatureMap(FEATURES.features, "y", task, ["0", "1", "2"] if task == "multiclass" else [])
    dtrain, dval = matrices(feature_map, (matrix, labels), (matrix, labels))
    booster = fit(booster_params(feature_map, {}, {"max_depth": 6}, 1), dtrain, dval, 20)
    model = booster_to_onnx(booster, 2)
    native, converted = predict(booster, matrix, task), package.predict(package.session(model, threads=1), matrix, task)
    assert package.parity(native, converted, 1e-5).ok
    if task == "regression":  # summed in XGBoost's order, on one thread as the service runs it: to the bit
        assert np.array_equal(native, converted)
    trees = booster.trees_to_dataframe()
    splits, sets = int((trees.Feature != "Leaf").sum()), int((trees.Feature == "f1").sum())
    one_leaf = int((trees.groupby("Tree").size() == 1).sum())  # a tree of one leaf is one node that reaches it
    (ensemble,) = [node for node in onnx.load_from_string(model).graph.node if node.op_type == "TreeEnsemble"]
    modes = onnx.numpy_helper.to_array(next(a.t for a in ensemble.attribute if a.name == "nodes_modes"))
    bias_nodes = 3 if task == "multiclass" else 1  # a one-leaf tree of the base margin per target
    assert len(modes) == splits + one_leaf + bias_nodes and (modes == 6).sum() == sets > 0


@pytest.mark.parametrize(
    ("task", "classes", "value", "expected"),
    [
        ("binary", [], 1, None),
        ("binary", [], 0.0, None),
        ("binary", [], True, None),
        ("binary", [], 7, "0 or 1"),
        ("binary", [], "banana", "0 or 1"),
        ("binary", [], "1", "0 or 1"),
        ("binary", [], float("nan"), "0 or 1"),
        ("regression", [], 3.5, None),
        ("regression", [], float("inf"), "a finite number"),
        ("regression", [], True, "a finite number"),
        ("regression", [], "3.5", "a finite number"),
        ("multiclass", ["Adelie", "Gentoo"], "Gentoo", None),
        ("multiclass", ["Adelie", "Gentoo"], "Unicorn", "one of the classes 'Adelie', 'Gentoo'"),
        ("multiclass", ["1", "2"], 2.0, None),  # integer classes read back as floats
        ("multiclass", [], "anything", None),  # no model yet: any class
        ("multiclass", [], None, "a class"),
        ("multiclass", [], [1], "a class"),
    ],
)
def test_a_true_label_must_fit_the_task(task: str, classes: list[str], value: object, expected: str | None) -> None:
    from flightplan.features import label_problem

    assert label_problem(task, classes, value) == expected
