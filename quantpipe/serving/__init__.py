"""Serving: Triton model repositories (and, next, the server and its images)."""
