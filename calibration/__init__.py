"""INT8/FP16 model conversion with an accuracy gate, TensorRT engine building, scanner geometry."""
