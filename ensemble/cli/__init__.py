"""The `vote` command line: a thin shell over the library (rich only here)."""
from ensemble.cli.app import main

__all__ = ["main"]
