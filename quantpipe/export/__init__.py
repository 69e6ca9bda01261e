"""PyTorch → ONNX export, metadata and the parity check."""
