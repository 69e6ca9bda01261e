"""The run report: one comparison table of every engine a run benchmarked (tables.py) and
its figures (plots.py).

This package is a library: it knows rows and numbers, not stages. `stages/report.py`
reads the run's records, turns them into `tables.Row`s and assembles report.md.
"""
