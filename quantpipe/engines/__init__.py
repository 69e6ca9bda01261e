"""Backends and their runners (ONNX Runtime, PyTorch, TensorRT), behind one registry."""
