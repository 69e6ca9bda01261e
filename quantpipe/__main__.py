"""`python -m quantpipe` is the same as the `quantpipe` console script."""

from quantpipe.cli import main

raise SystemExit(main())
