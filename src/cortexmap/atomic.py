"""Atomic writes: every file or directory cortexmap writes appears whole or not at all.

The content goes to a temporary sibling (``.NAME.PID.tmp``) that is renamed over the target,
so a process killed at any moment (SIGKILL included) leaves the old file or the new one, never
half of one. No cortexmap imports: every layer, the model cache included, writes through here.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def temporary_sibling(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file or a directory); rename it into place on success.

    On an exception the temporary is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and target.is_dir():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Atomically create ``path`` by calling ``write(tmp)`` on its temporary sibling."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(data: Any, path: str | Path) -> Path:
    """Atomically write ``data`` as indented JSON (non-JSON values via ``str``)."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_parquet(frame: Any, path: str | Path) -> Path:
    """Atomically write a pandas DataFrame as Parquet (no index)."""
    return write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))
