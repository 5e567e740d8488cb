"""Model engineering: features, tuning, training, evaluation, the acceptance gate, ONNX packaging, registry."""
