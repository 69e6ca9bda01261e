"""Quantization-aware training on the exported graph: fake quantization, training, DDP."""
