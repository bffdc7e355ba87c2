"""Faithfulness curves end to end on a tiny model: rankings, random baselines, the references."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.curves import faithfulness_curves
from cortexmap.circuits.faithfulness import curve_table, summarize_curves
from cortexmap.circuits.patching import PathPatcher
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
    table = curve_table(frame)
    at_full = table[table["fraction"] == 1.0]["faithfulness"]
    np.testing.assert_allclose(at_full, 1.0, atol=1e-5)  # keeping every edge is the clean model
    summary = summarize_curves(frame, n_boot=100).set_index(["method", "draw"])
    assert summary.loc[("exact", 0), "cpr"] > summary.loc[("random", 0), "cpr"]
    again = faithfulness_curves(handle, batch, {}, fractions=FRACTIONS, n_random=2, seed=5)
    pd.testing.assert_frame_equal(again[again["method"] == "random"].reset_index(drop=True),
                                  frame[frame["method"] == "random"].reset_index(drop=True))
