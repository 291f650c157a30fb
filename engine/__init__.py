"""The networks, datasets, training, ONNX export and inference backends."""
