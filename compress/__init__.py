"""ONNX export, INT8 quantization and TensorRT engines."""
