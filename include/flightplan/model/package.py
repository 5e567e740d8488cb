"""The ONNX adapter: run a booster's ONNX graph (tree_onnx) with onnxruntime, prove parity.

Boosters are trained on features named f0..fN with categorical codes as floats (see features.py); the ONNX
graph takes one float32 matrix named ``input``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flightplan.model.tree_onnx import INPUT_NAME


@dataclass(frozen=True)
class Parity:
    rows: int
    max_abs_diff: float
    max_scaled_diff: float  # |onnx - native| / max(1, |native|): absolute for probabilities, relative for large values
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_scaled_diff <= self.tolerance


def session(model: bytes, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def predict(onnx_session: Any, matrix: np.ndarray, task: str) -> np.ndarray:
    """Predictions in the shape the native model gives (binary: P(1); multiclass: probabilities; values)."""
    outputs = onnx_session.run(None, {INPUT_NAME: np.ascontiguousarray(matrix, dtype=np.float32)})
    if task == "regression":
        return np.asarray(outputs[0], dtype=np.float64).reshape(-1)
    probabilities = np.asarray(outputs[1], dtype=np.float64)
    return probabilities[:, 1] if task == "binary" else probabilities


def parity(native: np.ndarray, converted: np.ndarray, tolerance: float) -> Parity:
    if native.shape != converted.shape:
        raise ValueError(f"ONNX output shape {converted.shape} differs from the native {native.shape}")
    diff = np.abs(converted - native)
    scaled = diff / np.maximum(1.0, np.abs(native))
    return Parity(
        rows=len(native),
        max_abs_diff=float(diff.max(initial=0.0)),
        max_scaled_diff=float(scaled.max(initial=0.0)),
        tolerance=tolerance,
    )
