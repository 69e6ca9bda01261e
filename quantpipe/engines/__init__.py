"""Runners with one contract: ONNX Runtime, PyTorch (and TensorRT on GPU hosts)."""
