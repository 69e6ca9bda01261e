"""Accuracy metrics and the evaluation loop shared by every runner."""
