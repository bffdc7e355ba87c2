"""Fixtures of the bundled-model tests (the session's ``smollm2`` / ``gemma3`` handles are in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session", params=["smollm2-135m", "gemma3-270m"])
def bundled_tokenizer(request: pytest.FixtureRequest) -> Any:
    """A bundled model's tokenizer. Failing to load it fails the test, as the bundled models do
    (``CORTEXMAP_SKIP_SLOW=1`` skips every slow test on a machine that cannot fetch them)."""
    from cortexmap.models import load_tokenizer

    return load_tokenizer(request.param)
