"""Sensitivity-based mixed precision: sensitivity, bit allocation, packed storage."""
