"""Benchmarking engines the way trtexec does: timed loop, latency statistics, references."""
