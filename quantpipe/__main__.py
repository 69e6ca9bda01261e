"""`python -m quantpipe` is the same as the `quantpipe` console script."""

from quantpipe.cli import program

raise SystemExit(program())
