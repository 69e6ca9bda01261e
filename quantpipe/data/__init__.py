"""Data set registry, deterministic splits and preprocessing."""
