"""quantpipe: take a trained PyTorch model to compressed, measured ONNX/TensorRT engines."""

__version__ = "0.1.0"
