"""The ``cortexmap`` command line: a thin typer front end over the library.

Each command module registers its commands on :data:`cortexmap.cli.app.app`; each command
parses options, calls one library function and prints a short rich summary.
"""

from __future__ import annotations

import sys

from cortexmap.cli import (  # noqa: F401  (register commands)
    apply_cmds,
    circuit_cmds,
    map_cmds,
    model_cmds,
    plan_cmds,
    task_cmds,
    use_cmds,
)
from cortexmap.cli.app import app, err
from cortexmap.errors import CortexmapError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CortexmapError as exc:  # raised outside run_guarded
        err.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        sys.exit(1)
