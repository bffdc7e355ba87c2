"""Path patching on the bundled Gemma-3-270M (sandwich norms, 18 layers x 4 heads, one KV head)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.graph import Edge
from cortexmap.circuits.patching import PathPatcher
from cortexmap.tasks import build_task, encode_task
from cortexmap.tasks.core import logit_diff
from tests.circuits.test_patching import independent_metric


@pytest.mark.slow
def test_gemma3_ioi_edges_are_exact(gemma3):  # noqa: ANN001
    task = build_task("ioi", gemma3.tokenizer, n=16)
    batch = max(encode_task(task, gemma3.tokenizer, max_batch=4), key=len)
    patcher = PathPatcher(gemma3, batch)
    assert patcher.graph.residual == "sandwich" and patcher.graph.n_edges == 2395
    with torch.no_grad():
        logits = gemma3.model(input_ids=batch.corrupt_ids, use_cache=False).logits[:, -1]
    corrupt = logit_diff(logits.float(), batch.target_ids, batch.foil_ids).numpy()
    np.testing.assert_allclose(patcher.patch(np.ones(patcher.graph.n_edges, dtype=bool)), corrupt, atol=5e-5)
    # the screen's top edges, a head's edge into its layer's attention output and an A -> key edge
    top = np.argsort(-np.abs(edge_scores(gemma3, batch, "eap").mean(0)))[:3]
    edges = [patcher.graph.edges[i] for i in top] + [Edge("L11H3", "A11", "in"), Edge("A5", "L13KV0", "k")]
    effects = patcher.edge_effects(edges)
    assert np.abs(effects).max() > 1.0
    for i, edge in enumerate(edges):
        reference = independent_metric(gemma3, batch, edge) - patcher.clean_metric
        # measured <= 4e-5 against effects up to 10: float32 rounding of Gemma's large residual stream
        np.testing.assert_allclose(effects[:, i], reference, atol=1e-4, err_msg=str(edge))
