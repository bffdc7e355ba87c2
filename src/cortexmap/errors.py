"""Errors cortexmap raises on bad input.

Every message is one sentence saying what went wrong and what to try; the CLI prints it as a
single red line and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations


class CortexmapError(Exception):
    """Base class of every error cortexmap raises on purpose."""


class ModelLoadError(CortexmapError):
    """A model spec could not be resolved or loaded."""


class UnsupportedArchitectureError(CortexmapError):
    """The model's ``config.model_type`` has no row in the head-geometry table."""


class UnknownHeadError(CortexmapError):
    """A head index is outside the model's layers x heads grid."""


class InterventionError(CortexmapError):
    """An intervention cannot be applied as asked (shape mismatch, missing source, ...)."""


class TaskError(CortexmapError):
    """A task is unknown, malformed, or has too few usable pairs."""


class ResultsError(CortexmapError):
    """A run directory or results file is missing, incomplete or of another schema."""


class CheckFailedError(CortexmapError):
    """An invariant of ``cortexmap check`` failed on the model: the tool's results would not be trustworthy."""
