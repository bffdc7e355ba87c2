"""Path patching on the real SmolLM2-135M (sdpa attention, tied embeddings, 9 heads in 3 KV groups)."""

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
def test_smollm2_ioi_edges_are_exact(smollm2):  # noqa: ANN001
    task = build_task("ioi", smollm2.tokenizer, n=16)
    batch = max(encode_task(task, smollm2.tokenizer, max_batch=4), key=len)
    patcher = PathPatcher(smollm2, batch)
    assert patcher.graph.counts()["edges"] == 70651
    with torch.no_grad():
        logits = smollm2.model(input_ids=batch.corrupt_ids, use_cache=False).logits[:, -1]
    corrupt = logit_diff(logits.float(), batch.target_ids, batch.foil_ids).numpy()
    np.testing.assert_allclose(patcher.patch(np.ones(patcher.graph.n_edges, dtype=bool)), corrupt, atol=5e-5)
    # the screen's top edges (effects of 1-6 logits: L23H3 -> logits first) and a small k edge
    top = np.argsort(-np.abs(edge_scores(smollm2, batch, "eap").mean(0)))[:3]
    edges = [patcher.graph.edges[i] for i in top] + [Edge("L5H1", "L20KV1", "k")]
    effects = patcher.edge_effects(edges)
    assert np.abs(effects).max() > 1.0
    for i, edge in enumerate(edges):
        reference = independent_metric(smollm2, batch, edge) - patcher.clean_metric
        np.testing.assert_allclose(effects[:, i], reference, atol=5e-5, err_msg=str(edge))  # measured <= 7e-6
