"""Faithfulness curves end to end on a tiny model: rankings, random baselines, the references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.curves import faithfulness_curves
from cortexmap.circuits.faithfulness import curve_table, summarize_curves
from cortexmap.circuits.patching import PathPatcher
from cortexmap.errors import CortexmapError
from tests.circuits.tiny_circuits import circuit_handle, task_batch

FRACTIONS = (0.02, 0.1, 0.3, 1.0)


def test_curves_of_a_ranking_and_random_baselines():
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    exact = PathPatcher(handle, batch).edge_effects().mean(0)
    eap = edge_scores(handle, batch, "eap").mean(0)
    seen = []
    frame = faithfulness_curves(handle, batch, {"exact": exact, "eap": eap}, fractions=FRACTIONS, n_random=2,
                                seed=5, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4 * len(FRACTIONS), 4 * len(FRACTIONS))
    assert set(frame["method"]) == {"exact", "eap", "random", "full", "empty"}
    assert sorted(frame.loc[frame["method"] == "random", "draw"].unique()) == [0, 1]
    assert set(frame["order"]) == {"absolute", "random", ""}
    table = curve_table(frame)
    at_full = table[table["fraction"] == 1.0]["faithfulness"]
    np.testing.assert_allclose(at_full, 1.0, atol=1e-5)  # keeping every edge is the clean model
    summary = summarize_curves(frame, n_boot=100).set_index(["method", "draw"])
    assert summary.loc[("exact", 0), "cpr"] > summary.loc[("random", 0), "cpr"]
    again = faithfulness_curves(handle, batch, {}, fractions=FRACTIONS, n_random=2, seed=5)
    pd.testing.assert_frame_equal(again[again["method"] == "random"].reset_index(drop=True),
                                  frame[frame["method"] == "random"].reset_index(drop=True))


def test_signed_order_and_repeated_circuits():
    """The signed order ranks by ``sign * score``; a circuit two orders share is evaluated once, with one value."""
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    patcher = PathPatcher(handle, batch)
    n = patcher.graph.n_edges
    scores = np.linspace(-1.0, 0.5, n)  # the most negative first when sign = -1
    frame = faithfulness_curves(handle, batch, {"s": scores}, fractions=FRACTIONS, orders=("absolute", "signed"),
                                sign=-1.0, n_random=0)
    size = int(0.1 * n)
    signed = np.zeros(n, dtype=bool)
    signed[:size] = True
    rows = frame[(frame["order"] == "signed") & (frame["fraction"] == 0.1)].sort_values("prompt")
    np.testing.assert_allclose(rows["metric"], patcher.circuits([signed])[0], atol=1e-6)
    # by |score| the top 10% are the same most negative edges: one evaluation, equal rows
    absolute = frame[(frame["order"] == "absolute") & (frame["fraction"] == 0.1)].sort_values("prompt")
    np.testing.assert_array_equal(absolute["metric"].to_numpy(), rows["metric"].to_numpy())
    both = frame[frame["fraction"] == 1.0]
    np.testing.assert_array_equal(*[both[both["order"] == o].sort_values("prompt")["metric"] for o in ("absolute", "signed")])
    with pytest.raises(CortexmapError, match="unknown ranking order"):
        faithfulness_curves(handle, batch, {"s": scores}, fractions=FRACTIONS, orders=("up",))
    with pytest.raises(CortexmapError, match="score every edge"):
        faithfulness_curves(handle, batch, {"s": scores[:5]}, fractions=FRACTIONS)
