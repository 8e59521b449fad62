"""`python -m socketlab` is the same as the `socketlab` command."""

from socketlab.cli import run

run()
