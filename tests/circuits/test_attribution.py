"""EAP and EAP-IG: exact gradients, completeness, and agreement with exact edge effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cortexmap.circuits.attribution import attribute_edges, edge_scores
from cortexmap.circuits.patching import PathPatcher
from cortexmap.circuits.rewire import RewiredPass
from cortexmap.errors import CortexmapError
from cortexmap.tasks.core import logit_diff
from tests.circuits.test_patching import sample_edges
from tests.circuits.tiny_circuits import SUPPORTED, circuit_handle, task_batch


@pytest.mark.parametrize("arch", SUPPORTED)
def test_eap_score_is_the_derivative_along_the_edge_weight(arch):  # noqa: ANN001
    """EAP's score of e is dM/dw_e at the clean run: compare with a central finite difference.

    The model is float64 but eager attention takes its softmax in float32 (and Gemma's RMSNorms
    normalize in float32), so the step is 1e-3: truncation error ~2e-5, rounding ~5e-6 (~1e-4 on
    the Gemma models), against scores of order 0.01-0.7. Largest deviation measured: 1.2e-4
    (gemma3_text), 9e-5 on the others.
    """
    handle, batch = circuit_handle(arch, dtype=torch.float64), task_batch()
    patcher = PathPatcher(handle, batch)
    graph = patcher.graph
    eap = edge_scores(handle, batch, "eap")
    step = 1e-3
    for edge in sample_edges(graph, n_random=6):
        e = graph.index([edge])[0]
        weights = torch.zeros(2, graph.n_edges, dtype=torch.float64)
        weights[0, e], weights[1, e] = step, -step
        with torch.no_grad():
            logits = RewiredPass(patcher.layout, patcher.source, weights).run(patcher.input_ids)
        plus, minus = logit_diff(logits, batch.target_ids.repeat(2), batch.foil_ids.repeat(2)).view(2, -1).numpy()
        np.testing.assert_allclose(eap[:, e], (plus - minus) / (2 * step), rtol=1e-3, atol=2e-4, err_msg=str(edge))


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "gpt_neox", "gemma3_text"])
def test_eap_ig_scores_are_complete(arch):  # noqa: ANN001
    """Integrated gradients sum to M(corrupt) - M(clean); the midpoint rule's error falls as 1/steps^2."""
    handle, batch = circuit_handle(arch, dtype=torch.float64), task_batch()
    patcher = PathPatcher(handle, batch)
    total = patcher.patch(np.ones(patcher.graph.n_edges, dtype=bool)) - patcher.clean_metric
    errors = [np.abs(edge_scores(handle, batch, "eap-ig-edges", steps).sum(1) - total).max() for steps in (8, 32)]
    assert errors[1] < 2e-3 * np.abs(total).max()
    assert errors[1] < errors[0] / 8  # measured ratio 16.3 on llama_gqa (second order)


@pytest.mark.parametrize("seed", [0, 1])
def test_eap_agrees_with_exact_edge_effects(seed):  # noqa: ANN001
    """Correlation over (prompt, edge) of EAP with the exact single-edge effect.

    Measured on these tiny models (llama and llama_gqa, seeds 0-3, weights x1, x2, x4): 0.81 to
    0.96. EAP is first order, and a one-token corruption moves softmax attention patterns enough for
    second-order terms to matter; the derivative itself is exact (previous test). The bound sits
    below every measured value.
    """
    handle, batch = circuit_handle("llama_gqa", seed), task_batch(seed=seed + 1)
    exact = PathPatcher(handle, batch).edge_effects()
    for method in ("eap", "eap-ig-edges"):
        scores = edge_scores(handle, batch, method, steps=4)
        assert np.corrcoef(exact.ravel(), scores.ravel())[0, 1] > 0.75, method


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "gemma3_text"])
def test_eap_ig_first_point_is_eap_at_the_corrupt_run(arch):  # noqa: ANN001
    """EAP-IG's (MIB's EAP-IG-inputs) k = 0 point runs on the corrupt embeddings with clean-run differences:
    that is minus EAP with clean and corrupt prompts swapped."""
    handle, batch = circuit_handle(arch, dtype=torch.float64), task_batch()
    swapped = task_batch()
    swapped.input_ids, swapped.corrupt_ids = batch.corrupt_ids, batch.input_ids
    np.testing.assert_allclose(edge_scores(handle, batch, "eap-ig", steps=1),
                               -edge_scores(handle, swapped, "eap"), atol=1e-6)
    exact = PathPatcher(handle, batch).edge_effects()
    assert np.corrcoef(exact.ravel(), edge_scores(handle, batch, "eap-ig", steps=5).ravel())[0, 1] > 0.75
    with pytest.raises(CortexmapError, match="ablation='corrupt'"):
        edge_scores(handle, batch, "eap-ig", ablation="mean")


def test_mean_ablation_scores_and_table():
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    table = attribute_edges(handle, batch, "eap-ig-edges", steps=16, ablation="mean")
    assert list(table.columns) == ["sender", "receiver", "kind", "sender_layer", "receiver_layer", "score", "score_sd",
                                   "n_prompts", "method", "steps", "ablation"]
    patcher = PathPatcher(handle, batch, ablation="mean")
    assert len(table) == patcher.graph.n_edges
    assert (table["method"] == "eap-ig-edges").all() and (table["steps"] == 16).all() and (table["ablation"] == "mean").all()
    # complete toward the all-mean run too (measured error 1e-3 of a total of 1.05)
    total = patcher.patch(np.ones(patcher.graph.n_edges, dtype=bool)) - patcher.clean_metric
    assert abs(table["score"].sum() - total.mean()) < 5e-3 * np.abs(total).max()
    assert all(p.requires_grad for p in handle.model.parameters())  # parameters restored


def test_bad_arguments():
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    with pytest.raises(CortexmapError, match="unknown attribution method"):
        edge_scores(handle, batch, "acdc")
    with pytest.raises(CortexmapError, match="at least one"):
        edge_scores(handle, batch, "eap-ig", steps=0)
