"""Output consoles for the command line: full-width tables when the output is piped.

rich wraps and truncates cells to 80 columns when stdout is not a terminal, which silently cuts
ids and fingerprints from ``xds-node ... | grep`` or a file. Piped output gets a console wide enough
that no cell is ever wrapped; a terminal keeps its own width.
"""

from __future__ import annotations

import sys

from rich.console import Console

#: Width of a console writing to a pipe or file: wider than any row we print.
PIPE_WIDTH = 100_000


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Console(stderr=stderr) if tty else Console(stderr=stderr, width=PIPE_WIDTH)


def to_json(data: object) -> str:
    """JSON for scripts: dates and paths as strings."""
    import json

    return json.dumps(data, indent=2, default=str)
