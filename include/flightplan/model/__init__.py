"""Model engineering: tuning, training, evaluation, the acceptance gate, ONNX packaging, the registry."""
