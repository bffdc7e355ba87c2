"""Exact path patching against independent computations.

The reference for one edge is built by hand, sharing nothing with :mod:`cortexmap.circuits` but
the geometry facts: plain torch hooks cache every sender's output (a head's through the output
projection *module* on an input with the other heads zeroed, minus the projection of zeros) and
every receiver's input in a clean and a corrupt run; the receiver's input is rebuilt as clean
input + (corrupt - clean) contribution of the sender; a second forward runs the receiving norm and
projection modules on it and splices the receiving head's (or KV group's) slice into the pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cortexmap.circuits.graph import Edge, Graph
from cortexmap.circuits.patching import PathPatcher, circuit_metric, circuit_metrics, edge_effects, patch_edges
from cortexmap.errors import InterventionError
from cortexmap.interventions import intervene
from cortexmap.tasks.core import logit_diff
from tests.circuits.tiny_circuits import SUPPORTED, circuit_handle, task_batch

ATOL = 1e-5


def _arg(args, kwargs):  # noqa: ANN001, ANN202
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def cache_run(handle, ids):  # noqa: ANN001, ANN201
    """One forward with plain hooks: senders' raw outputs and receivers' raw inputs."""
    geometry, block = handle.geometry, handle.geometry.block
    cache, hooks = {}, []
    blocks = handle.blocks()

    def keep(key):  # noqa: ANN001, ANN202
        def pre(module, args, kwargs):  # noqa: ANN001, ANN202
            cache[key] = _arg(args, kwargs).clone()

        return pre

    def keep_out(key):  # noqa: ANN001, ANN202
        def post(module, args, out):  # noqa: ANN001, ANN202
            cache[key] = out.clone()

        return post

    hooks.append(blocks[0].register_forward_pre_hook(keep("emb"), with_kwargs=True))
    for layer, b in enumerate(blocks):
        attn = getattr(b, geometry.attn)
        hooks.append(getattr(attn, geometry.out_proj).register_forward_pre_hook(keep(("z", layer)), with_kwargs=True))
        hooks.append(getattr(b, block.mlp).register_forward_hook(keep_out(("mlp", layer))))
        hooks.append(getattr(b, block.attn_norm).register_forward_pre_hook(keep(("attn_in", layer)), with_kwargs=True))
        hooks.append(getattr(b, block.mlp_norm).register_forward_pre_hook(keep(("mlp_in", layer)), with_kwargs=True))
    hooks.append(handle.final_modules()[0].register_forward_pre_hook(keep("final_in"), with_kwargs=True))
    try:
        logits = handle.model(input_ids=ids, use_cache=False).logits[:, -1]
    finally:
        for h in hooks:
            h.remove()
    return cache, logits


@torch.no_grad()
def contribution(handle, cache, sender, shape):  # noqa: ANN001, ANN201
    if sender == "emb":
        return cache["emb"]
    if sender.startswith("M"):
        return cache[("mlp", int(sender[1:]))].reshape(shape)
    layer, head = (int(x) for x in sender[1:].split("H"))
    z = cache[("z", layer)]
    d = handle.d_head
    masked = torch.zeros_like(z)
    masked[..., head * d:(head + 1) * d] = z[..., head * d:(head + 1) * d]
    proj = handle.out_proj(layer)
    return proj(masked) - proj(torch.zeros_like(z))


@torch.no_grad()
def independent_metric(handle, batch, edge: Edge, ablation: str = "corrupt"):  # noqa: ANN001, ANN201
    ids = batch.input_ids
    clean, _ = cache_run(handle, ids)
    shape = clean["emb"].shape
    here = contribution(handle, clean, edge.sender, shape)
    if ablation == "corrupt":
        source = contribution(handle, cache_run(handle, batch.corrupt_ids)[0], edge.sender, shape)
    elif ablation == "zero":
        source = torch.zeros_like(here)
    else:
        source = here.mean(0, keepdim=True)
    delta = source - here
    geometry, block = handle.geometry, handle.geometry.block
    blocks = handle.blocks()
    receiver = edge.receiver
    if receiver == "logits":
        modified = clean["final_in"] + delta
        module, hook_kind = handle.final_modules()[0], "pre"
    elif receiver.startswith("M"):
        layer = int(receiver[1:])
        modified = clean[("mlp_in", layer)] + delta.reshape(clean[("mlp_in", layer)].shape)
        module, hook_kind = getattr(blocks[layer], block.mlp_norm), "pre"
    else:
        layer = int(receiver[1:].split("H")[0].split("K")[0])
        slot = int(receiver.split("H")[-1]) if edge.kind == "q" else int(receiver.split("KV")[-1])
        b = blocks[layer]
        attn = getattr(b, geometry.attn)
        proj = getattr(attn, {"q": geometry.q_proj, "k": block.k_proj, "v": block.v_proj}[edge.kind])
        normed = getattr(b, block.attn_norm)(clean[("attn_in", layer)] + delta)
        rebuilt = proj(normed)
        d = handle.d_head
        module, hook_kind = proj, "post"
    if hook_kind == "pre":
        hook = module.register_forward_pre_hook(lambda m, a: (modified.reshape(a[0].shape),) + tuple(a[1:]))
    else:
        def splice(m, a, out):  # noqa: ANN001, ANN202
            out = out.clone()
            out[..., slot * d:(slot + 1) * d] = rebuilt[..., slot * d:(slot + 1) * d]
            return out

        hook = module.register_forward_hook(splice)
    try:
        logits = handle.model(input_ids=ids, use_cache=False).logits[:, -1]
    finally:
        hook.remove()
    return logit_diff(logits.float(), batch.target_ids, batch.foil_ids).numpy()


def sample_edges(graph: Graph, n_random: int = 10, seed: int = 0) -> list[Edge]:
    """One edge of every receiver kind and sender kind, plus seeded random ones."""
    last = graph.n_layers - 1
    picked = [Edge("emb", "L0H1", "q"), Edge("emb", "L0KV0", "k"), Edge("L0H2", f"L{last}KV0", "v"),
              Edge("M0", "L1H0", "q"), Edge("L1H3", "M1", "in"), Edge("emb", "M0", "in"),
              Edge(f"L{last}H1", "logits", "in"), Edge(f"M{last}", "logits", "in"), Edge("emb", "logits", "in")]
    rng = np.random.default_rng(seed)
    return picked + [graph.edges[i] for i in rng.choice(graph.n_edges, n_random, replace=False)]


@pytest.mark.parametrize("arch", SUPPORTED)
def test_single_edge_effect_equals_independent_computation(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch()
    patcher = PathPatcher(handle, batch)
    edges = sample_edges(patcher.graph)
    effects = patcher.edge_effects(edges, rows_per_pass=16)  # 4 edges per pass: batching exercised
    for i, edge in enumerate(edges):
        reference = independent_metric(handle, batch, edge) - patcher.clean_metric
        np.testing.assert_allclose(effects[:, i], reference, atol=ATOL, err_msg=str(edge))
    assert np.abs(effects).max() > 0.05  # the effects are not trivially small


@pytest.mark.parametrize("arch", ["llama_gqa", "opt"])
def test_mean_ablation_edge_equals_independent_computation(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch()
    patcher = PathPatcher(handle, batch, ablation="mean")
    edges = sample_edges(patcher.graph, n_random=4, seed=1)
    effects = patcher.edge_effects(edges)
    for i, edge in enumerate(edges):
        reference = independent_metric(handle, batch, edge, "mean") - patcher.clean_metric
        np.testing.assert_allclose(effects[:, i], reference, atol=ATOL, err_msg=str(edge))


@pytest.mark.parametrize("arch", ["llama_gqa", "opt"])
def test_zero_ablation_edges_in_a_head_ablated_model_equal_independent_computation(arch):  # noqa: ANN001
    """The edge regulator test's measurement: zero-ablated edges while another head is zero-ablated."""
    handle, batch = circuit_handle(arch), task_batch()
    intact = PathPatcher(handle, batch, ablation="zero")
    edges = sample_edges(intact.graph, n_random=4, seed=2)
    with intervene(handle, ablate=["L0H1"]):
        patcher = PathPatcher(handle, batch, ablation="zero")
        effects = patcher.edge_effects(edges)
        for i, edge in enumerate(edges):
            reference = independent_metric(handle, batch, edge, "zero") - patcher.clean_metric
            np.testing.assert_allclose(effects[:, i], reference, atol=ATOL, err_msg=str(edge))
    assert np.abs(patcher.clean_metric - intact.clean_metric).max() > 1e-3  # the ablation changed the model
    assert np.abs(effects - intact.edge_effects(edges)).max() > 1e-3  # ... and the edges


@pytest.mark.parametrize("arch", ["llama", "llama_gqa", "mistral", "qwen2"])
def test_patching_every_edge_is_the_corrupt_run_and_none_the_clean_run(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch()
    patcher = PathPatcher(handle, batch)
    n = patcher.graph.n_edges
    with torch.no_grad():
        logits = handle.model(input_ids=batch.corrupt_ids, use_cache=False).logits[:, -1]
    corrupt = logit_diff(logits, batch.target_ids, batch.foil_ids).numpy()
    np.testing.assert_allclose(patcher.patch(np.ones(n, dtype=bool)), corrupt, atol=ATOL)
    np.testing.assert_array_equal(patcher.patch(np.zeros(n, dtype=bool)), patcher.clean_metric)
    assert np.abs(corrupt - patcher.clean_metric).max() > 0.05
    # the MIB reading: the empty circuit is the corrupt run, the full circuit the clean model
    np.testing.assert_allclose(circuit_metric(handle, batch, []), corrupt, atol=ATOL)
    np.testing.assert_array_equal(circuit_metric(handle, batch, np.ones(n, dtype=bool)), patcher.clean_metric)


def test_query_key_and_value_inputs_differ():
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    patcher = PathPatcher(handle, batch)
    edges = [Edge("M0", "L1H2", "q"), Edge("M0", "L1KV1", "k"), Edge("M0", "L1KV1", "v")]
    effects = patcher.edge_effects(edges)
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(effects[:, i] - effects[:, j]).max() > 1e-3, (edges[i], edges[j])


@torch.no_grad()
def node_patched_metric(handle, batch, sender: str):  # noqa: ANN001, ANN201
    """Replace one sender's output by its corrupt output with a plain hook (a node patch)."""
    corrupt, _ = cache_run(handle, batch.corrupt_ids)
    if sender.startswith("M"):
        layer = int(sender[1:])
        module = getattr(handle.blocks()[layer], handle.geometry.block.mlp)
        hook = module.register_forward_hook(lambda m, a, out: corrupt[("mlp", layer)].reshape(out.shape))
    else:
        layer, head = (int(x) for x in sender[1:].split("H"))
        d = handle.d_head

        def swap(m, a):  # noqa: ANN001, ANN202
            z = a[0].clone()
            z[..., head * d:(head + 1) * d] = corrupt[("z", layer)][..., head * d:(head + 1) * d]
            return (z,) + tuple(a[1:])

        hook = handle.out_proj(layer).register_forward_pre_hook(swap)
    try:
        logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[:, -1]
    finally:
        hook.remove()
    return logit_diff(logits, batch.target_ids, batch.foil_ids).numpy()


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2"])
@pytest.mark.parametrize("sender", ["L0H2", "M0", "L1H1"])
def test_patching_every_edge_out_of_a_sender_is_a_node_patch(arch, sender):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch()
    patcher = PathPatcher(handle, batch)
    out_of = [e for e in patcher.graph.edges if e.sender == sender]
    np.testing.assert_allclose(patcher.patch(out_of), node_patched_metric(handle, batch, sender), atol=ATOL)


def test_circuits_in_one_pass_equal_circuits_one_at_a_time():
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    rng = np.random.default_rng(0)
    n = Graph.for_model(handle).n_edges
    circuits = [rng.random(n) < p for p in (0.05, 0.3, 0.7)]
    together = circuit_metrics(handle, batch, circuits, rows_per_pass=12)  # 3 circuits per pass
    alone = np.stack([circuit_metric(handle, batch, c) for c in circuits])
    np.testing.assert_allclose(together, alone, atol=ATOL)
    assert np.abs(alone[0] - alone[2]).max() > 1e-3


def test_edge_effects_table_and_errors():
    handle, batch = circuit_handle("llama_gqa"), task_batch()
    graph = Graph.for_model(handle)
    table = edge_effects(handle, batch, graph.edges[:10], n_boot=200)
    assert list(table.columns) == ["sender", "receiver", "kind", "effect", "ci_low", "ci_high", "n_prompts", "clean",
                                   "method", "ablation"]
    assert ((table["ci_low"] <= table["effect"]) & (table["effect"] <= table["ci_high"])).all()
    assert (table["method"] == "exact").all() and (table["n_prompts"] == 4).all()
    alone = patch_edges(handle, batch, [graph.edges[3]]) - PathPatcher(handle, batch).clean_metric
    np.testing.assert_allclose(table["effect"].iloc[3], alone.mean(), atol=ATOL)
    no_corrupt = task_batch()
    no_corrupt.corrupt_ids = None
    with pytest.raises(InterventionError, match="corrupt prompts"):
        PathPatcher(handle, no_corrupt)
    with pytest.raises(InterventionError, match="unknown ablation"):
        PathPatcher(handle, batch, ablation="resample")
