"""The ``afedpg`` console script's entry point.

It only imports the command line, so that a Ctrl-C while that import runs (the first fraction of a
second, longer on a loaded machine) ends like any other interrupt - one line, exit 130 - instead of
with Python's traceback through the import machinery.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> int:
    """Load the command line and run it; a Ctrl-C while loading exits 130 with one line."""
    try:
        from afedpg_ray.cli import main as cli_main
    except KeyboardInterrupt:
        print("afedpg: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main()
