"""Running ``cortexmap`` in-process (typer's CliRunner) and checking its one-line errors."""

from __future__ import annotations

from typing import Any

from click.testing import Result
from typer.testing import CliRunner

from cortexmap.cli import app


def invoke(*args: Any) -> Result:
    """Run ``cortexmap ARGS...`` in this process; stdout and stderr are kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(result: Result) -> str:
    """The command succeeded; returns its stdout."""
    assert result.exit_code == 0 and result.exception is None, (result.exception, result.output[-3000:])
    return result.stdout


def assert_one_line_error(result: Result, message: str) -> None:
    """The command failed as a handled error: exit 1, one ``error:`` line naming ``message``, no traceback.

    CliRunner catches a crash and reports exit code 1 without printing a traceback, so a crash
    is told apart by its exception: a handled error leaves only ``SystemExit(1)``.
    """
    assert result.exit_code == 1, result.output[-3000:]
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.output
