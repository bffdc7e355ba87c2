"""Fixtures of the apply tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they cost ~10 ms per op."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
