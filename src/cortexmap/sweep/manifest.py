"""The run manifest: versions, model identity, seeds and arguments, so any run can be reproduced."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from cortexmap.results.layout import SCHEMA_VERSION

_PACKAGES = ("cortexmap", "torch", "transformers", "numpy", "pandas", "pyarrow", "scipy", "gguf", "safetensors")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def base_manifest(config: Any, facts: dict[str, Any], tasks: list[Any], skipped: dict[str, str]) -> dict[str, Any]:
    """A fresh manifest for a run of ``config`` on a model described by ``facts`` (``handle.describe()``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cortexmap_version": package_versions()["cortexmap"],
        "versions": package_versions(),
        "platform": platform.platform(),
        "model": facts,
        "dtype": facts["dtype"],
        "device": facts["device"],
        "seed": config.seed,
        "arguments": config.to_dict(),
        "interventions": [s.label for s in config.specs],
        "tasks": {t.name: {"level": t.level, "n_prompts": len(t.pairs), "dropped": t.dropped,
                           "version": t.version, "has_corrupt": t.has_corrupt,
                           "metric": getattr(t, "metric", "logit_diff")} for t in tasks},
        "skipped_tasks": skipped,
    }
