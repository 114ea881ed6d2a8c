"""Export stage: the best training run to a checked ONNX file."""
