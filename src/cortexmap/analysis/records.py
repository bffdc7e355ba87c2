"""Analysis records: frozen dataclasses that travel as JSON and state themselves as findings.

Every analysis of the atlas is ``f(view, *, own_params) -> Record`` (:mod:`cortexmap.analysis.view`).
A record is a frozen dataclass whose fields are JSON values, numpy scalars, DataFrames, other
records, or lists / dicts of those; it has a ``findings()`` method returning
:class:`~cortexmap.analysis.findings.Finding` records. :func:`to_dict` and :func:`from_dict` are the
one JSON round trip of every record (DataFrames as lists of row dicts, NaN as None), so ``atlas.json``
is written and read back without any reader knowing a record's keys. A DataFrame travels as
``{"columns": [...], "rows": [...]}``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, TypeVar

import numpy as np
import pandas as pd

T = TypeVar("T")


def jsonable(value: Any) -> Any:
    """Plain JSON-ready Python: numpy values unwrapped, NaN and infinities as None, a DataFrame as
    ``{"columns": [...], "rows": [row dicts]}`` (so an empty table keeps its columns)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, pd.DataFrame):
        return {"columns": [str(c) for c in value.columns], "rows": [jsonable(r) for r in value.to_dict("records")]}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [jsonable(v) for v in list(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_dict(record: Any) -> dict[str, Any]:
    """A record's fields as JSON-ready values (nested records become dicts)."""
    return {f.name: jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _revive(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is pd.DataFrame:
        if isinstance(value, dict) and "rows" in value:
            return pd.DataFrame(value["rows"], columns=value.get("columns"))
        return pd.DataFrame(value)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin in (list, tuple) and args:
        inner = args[0]
        items = [_revive(inner, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict and len(args) == 2:
        return {k: _revive(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        for option in args:
            if option is type(None):
                continue
            if option is pd.DataFrame or dataclasses.is_dataclass(option):
                return _revive(option, value)
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """The record of class ``cls`` that :func:`to_dict` wrote (unknown keys are ignored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: _revive(hints.get(f.name), data[f.name]) for f in dataclasses.fields(cls) if f.name in data}
    return cls(**kwargs)
