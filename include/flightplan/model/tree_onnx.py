"""An XGBoost booster as an ONNX graph: all its trees in one ``TreeEnsemble`` node (ai.onnx.ml opset 5).

A categorical split of XGBoost sends the categories of a set to its right child. Opset 5's ``BRANCH_MEMBER``
holds the whole set in one node, so the graph, its conversion and its inference cost the same whatever the
number of categories. onnxmltools instead unrolls each set into one equality node per category and walks the
subtree below each of them again: minutes for a model with a column of thousands of categories.

The graph's outputs are in the layout onnxmltools gives, so that a session reads either alike: a regression's
values; a classifier's labels, then its probabilities (two columns for a binary model).

Category codes are whole numbers (``features.encode``): XGBoost truncates a fractional code, while the graph
tests the value itself for membership."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

INPUT_NAME = "input"
ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 5  # the first with TreeEnsemble and BRANCH_MEMBER
ONNX_OPSET = 21
IR_VERSION = 10  # enough for opset 21; a newer onnx would stamp its own, which an older onnxruntime refuses
BRANCH_LT = 1  # true (goes to the first child) when the value is below the threshold
BRANCH_MEMBER = 6  # true when the value is in the node's set
AGGREGATE_SUM = 1
POST_TRANSFORM_NONE = 0
LEAF = -1  # a leaf's children in XGBoost's JSON
CATEGORICAL_SPLIT = 1
SET_ENDING = np.array([np.nan], dtype=np.float32)  # ends a node's set in ``membership_values``


@dataclass
class Ensemble:
    """The attributes of one TreeEnsemble node, filled tree by tree: a tree's splits are nodes; their children
    are other nodes or leaves, each leaf a weight added to one target."""

    roots: list[int] = field(default_factory=list)
    modes: list[int] = field(default_factory=list)
    features: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    true_children: list[int] = field(default_factory=list)
    true_is_leaf: list[int] = field(default_factory=list)
    false_children: list[int] = field(default_factory=list)
    false_is_leaf: list[int] = field(default_factory=list)
    missing_goes_true: list[int] = field(default_factory=list)
    members: list[Any] = field(default_factory=list)  # each BRANCH_MEMBER node's set, then SET_ENDING
    leaf_targets: list[int] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)

    def add_tree(self, tree: dict[str, Any], target: int) -> None:
        left, right, values = tree["left_children"], tree["right_children"], tree["split_conditions"]
        splits = [node for node in range(len(left)) if left[node] != LEAF]
        place = {node: len(self.modes) + order for order, node in enumerate(splits)}

        def child(node: int) -> tuple[int, int]:
            if left[node] != LEAF:
                return 0, place[node]
            self.leaf_targets.append(target)
            self.leaf_weights.append(float(values[node]))
            return 1, len(self.leaf_weights) - 1

        if not splits:  # a tree of one leaf: a split whose two sides are that leaf
            self.roots.append(len(self.modes))
            leaf = child(0)
            self._split(BRANCH_LT, 0, 0.0, leaf, leaf, missing_goes_true=True)
            return
        self.roots.append(place[0])
        categories = np.asarray(tree["categories"], dtype=np.float32)
        sets = {
            node: categories[start : start + size]
            for node, start, size in zip(
                tree["categories_nodes"], tree["categories_segments"], tree["categories_sizes"], strict=True
            )
        }
        for node in splits:
            feature, default_left = int(tree["split_indices"][node]), bool(tree["default_left"][node])
            if tree["split_type"][node] == CATEGORICAL_SPLIT:  # in the set: right
                self.members += [sets[node], SET_ENDING]
                self._split(BRANCH_MEMBER, feature, 0.0, child(right[node]), child(left[node]), not default_left)
            else:  # below the threshold: left
                threshold = float(values[node])
                self._split(BRANCH_LT, feature, threshold, child(left[node]), child(right[node]), default_left)

    def _split(
        self,
        mode: int,
        feature: int,
        threshold: float,
        when_true: tuple[int, int],
        when_false: tuple[int, int],
        missing_goes_true: bool,
    ) -> None:
        self.modes.append(mode)
        self.features.append(feature)
        self.thresholds.append(threshold)
        self.true_is_leaf.append(when_true[0])
        self.true_children.append(when_true[1])
        self.false_is_leaf.append(when_false[0])
        self.false_children.append(when_false[1])
        self.missing_goes_true.append(int(missing_goes_true))

    def node(self, targets: int, output: str) -> Any:
        from onnx import helper, numpy_helper

        def tensor(name: str, values: list[Any], kind: Any) -> Any:
            return numpy_helper.from_array(np.asarray(values, dtype=kind), name)

        # A set of categories only where a split has one (an empty attribute is refused).
        members = np.concatenate(self.members) if self.members else None
        sets = {"membership_values": numpy_helper.from_array(members, "members")} if members is not None else {}
        return helper.make_node(
            "TreeEnsemble",
            [INPUT_NAME],
            [output],
            domain=ML_DOMAIN,
            **sets,
            n_targets=targets,
            aggregate_function=AGGREGATE_SUM,
            post_transform=POST_TRANSFORM_NONE,
            tree_roots=self.roots,
            nodes_modes=tensor("modes", self.modes, np.uint8),
            nodes_featureids=self.features,
            nodes_splits=tensor("splits", self.thresholds, np.float32),
            nodes_truenodeids=self.true_children,
            nodes_trueleafs=self.true_is_leaf,
            nodes_falsenodeids=self.false_children,
            nodes_falseleafs=self.false_is_leaf,
            nodes_missing_value_tracks_true=self.missing_goes_true,
            leaf_targetids=self.leaf_targets,
            leaf_weights=tensor("weights", self.leaf_weights, np.float32),
        )


def booster_to_onnx(booster: Any, n_features: int) -> bytes:
    """The booster (gbtree, one of the objectives flightplan trains with) as a serialized ONNX model taking one
    float32 matrix named ``input``."""
    from flightplan.model.train import OBJECTIVES  # imports xgboost, which a service loading a graph does not need

    tasks = {objective: task for task, (objective, _) in OBJECTIVES.items()}
    learner = json.loads(bytes(booster.save_raw("json")))["learner"]
    objective, model = learner["objective"]["name"], learner["gradient_booster"]
    if objective not in tasks or model["name"] != "gbtree":
        raise ValueError(f"cannot convert a {model['name']} booster with objective {objective} to ONNX")
    if int(learner["learner_model_param"].get("num_target", 1)) > 1 or any(
        int(tree["tree_param"].get("size_leaf_vector", 1)) > 1 for tree in model["model"]["trees"]
    ):
        raise ValueError("cannot convert trees with a vector per leaf (multi_strategy='multi_output_tree') to ONNX")
    targets = max(1, int(learner["learner_model_param"]["num_class"]))
    ensemble = Ensemble()
    # The base margin first, as a tree of one leaf per target: XGBoost starts each row's sum from it and adds
    # the trees in order, in float32, as a one-thread session of this graph does (a regression's values are then
    # XGBoost's to the bit; more threads split the sum, and its last bits differ).
    for target, margin in enumerate(base_margins(learner, objective, targets)):
        ensemble.add_tree({"left_children": [LEAF], "right_children": [LEAF], "split_conditions": [margin]}, target)
    for tree, target in zip(model["model"]["trees"], model["model"]["tree_info"], strict=True):
        ensemble.add_tree(tree, int(target))
    return _graph(ensemble, targets, tasks[objective], n_features).SerializeToString()  # type: ignore[no-any-return]


def base_margins(learner: dict[str, Any], objective: str, targets: int) -> list[float]:
    """Where each target's sum starts: ``base_score`` (one, or one per target) in margin space."""
    text = learner["learner_model_param"]["base_score"]
    scores = np.atleast_1d(np.asarray(json.loads(text), dtype=np.float32))
    scores = np.broadcast_to(scores, (targets,)) if len(scores) == 1 else scores
    if objective == "binary:logistic":  # a probability: its log-odds
        scores = np.log(scores / (np.float32(1) - scores))
    return [float(score) for score in scores.astype(np.float32)]


def _graph(ensemble: Ensemble, targets: int, task: str, n_features: int) -> Any:
    """The trees, then the objective's link: the values of a regression; a classifier's labels and
    probabilities."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [ensemble.node(targets, "scores")]
    constants = []
    if task == "regression":
        outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 1])]
    else:
        if task == "binary":
            constants.append(numpy_helper.from_array(np.ones(1, dtype=np.float32), "one"))
            nodes += [
                helper.make_node("Sigmoid", ["scores"], ["positive"]),
                helper.make_node("Sub", ["one", "positive"], ["negative"]),
                helper.make_node("Concat", ["negative", "positive"], ["probabilities"], axis=1),
            ]
        else:
            nodes.append(helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1))
        nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
        outputs = [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, max(2, targets)]),
        ]
    graph = helper.make_graph(
        nodes,
        "flightplan_booster",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_features])],
        outputs,
        initializer=constants,
    )
    opsets = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="flightplan", ir_version=IR_VERSION)
