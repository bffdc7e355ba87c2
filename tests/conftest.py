"""Shared fixtures: tiny random-weight models per architecture, and the bundled real models."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny import ARCHS, tiny_handle  # noqa: F401  (re-exported for tests)


def pytest_collection_modifyitems(config, items):  # noqa: ANN001, ANN201
    if os.environ.get("CORTEXMAP_SKIP_SLOW") == "1":
        skip = pytest.mark.skip(reason="CORTEXMAP_SKIP_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=ARCHS)
def arch(request):  # noqa: ANN001, ANN201
    return request.param


@pytest.fixture(scope="session")
def smollm2():  # noqa: ANN201
    import cortexmap

    return cortexmap.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():  # noqa: ANN201
    import cortexmap

    return cortexmap.load_model("gemma3-270m")


@pytest.fixture(autouse=True)
def _seed():  # noqa: ANN201
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread(request):  # noqa: ANN001, ANN202
    """Tests of tiny models run on one intra-op thread: a second buys nothing at width 32, and on a busy
    2-core machine the pool's spin-waits made them up to ten times slower (measured: 40 s vs 4 s for
    tests/circuits). Tests of the bundled real models (marked slow) keep the default."""
    if "slow" in request.keywords:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
