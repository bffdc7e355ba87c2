"""The typer app, its console and the error guard shared by every command.

Each command parses its options, calls one library function and prints a short rich summary.
A :class:`~cortexmap.errors.CortexmapError` becomes one red line and exit code 1 (``--debug``
shows the traceback). torch is imported inside commands so ``--help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Callable

import typer
from rich.console import Console
from rich.table import Table

from cortexmap.errors import CortexmapError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Map the function of every attention head of a causal LM by intervening on it.")
tasks_app = typer.Typer(no_args_is_help=True, help="The task battery: list tasks, check a model's baseline.")
app.add_typer(tasks_app, name="tasks")
# Piped output (logs, CI) gets a wide console so tables do not fold at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
_STATE = {"debug": False}

Model = Annotated[str, typer.Option("--model", "-m", help="bundled name, .gguf path, HF directory or hub id")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    """Map the function of every attention head of a causal LM by intervening on it."""
    _STATE["debug"] = debug
    import logging
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the CLI shows its own progress
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _say(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a cortexmap error becomes one red line and exit code 1."""
    try:
        return fn()
    except CortexmapError as exc:
        if _STATE["debug"]:
            raise
        err.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]: finished units are saved; continue with --resume")
        raise typer.Exit(code=130) from None


def table_of(df: Any, title: str | None = None, floatfmt: str = "{:.3g}") -> Table:
    """A rich table from a DataFrame."""
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col))
    for _, row in df.iterrows():
        table.add_row(*[floatfmt.format(v) if isinstance(v, float) else str(v) for v in row])
    return table


def _load(spec: str, device: str = "cpu", dtype: str = "float32") -> Any:
    from cortexmap.models import load_model

    return load_model(spec, device=device, dtype=dtype, progress=_say)
