"""Exact path patching against independent computations.

The reference for one edge is built by hand, sharing nothing with :mod:`cortexmap.circuits` but
the geometry facts: plain torch hooks cache every sender's output (a head's through the output
projection *module* on an input with the other heads zeroed, minus the projection of zeros; a
sandwich layer's ``A{l}`` as its post-attention norm's output) and every receiver's input in a
clean and a corrupt run; the receiver's input is rebuilt as clean input + (corrupt - clean)
contribution of the sender; a second forward runs the receiving norm and projection modules on it
and splices the receiving head's (or KV group's) columns into the pass. Where those columns sit in
a fused q/k/v output is written here from transformers' modeling code (GPT-2 splits ``c_attn`` in
``[q | k | v]``; GPT-NeoX views ``query_key_value`` as ``[n_heads, 3 * d_head]`` and chunks it),
not read from the geometry row, and :func:`test_fused_columns_are_where_the_model_reads_them`
checks them against the model itself.
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


def sandwich(handle) -> bool:  # noqa: ANN001
    return handle.geometry.block.residual == "sandwich"


def mlp_out(handle, layer: int):  # noqa: ANN001, ANN201
    """The module whose output is the MLP's term of the residual."""
    block = handle.geometry.block
    return getattr(handle.blocks()[layer], block.post_mlp_norm if sandwich(handle) else block.mlp)


def receiver_columns(handle, kind: str, slot: int) -> torch.Tensor:  # noqa: ANN001
    """Columns of head / KV group ``slot``'s ``kind`` in the output of the module computing it."""
    d, width = handle.d_head, handle.n_heads * handle.d_head
    if handle.model_type == "gpt2":  # query, key, value = c_attn(x).split(split_size=width)
        return "qkv".index(kind) * width + slot * d + torch.arange(d)
    if handle.model_type == "gpt_neox":  # qkv.view(.., n_heads, 3 * d).chunk(3, dim=-1)
        return slot * 3 * d + "qkv".index(kind) * d + torch.arange(d)
    return slot * d + torch.arange(d)


def receiver_module(handle, layer: int, kind: str):  # noqa: ANN001, ANN201
    geometry, block = handle.geometry, handle.geometry.block
    attn = getattr(handle.blocks()[layer], geometry.attn)
    if geometry.qkv_fused:
        return getattr(attn, geometry.qkv_fused)
    return getattr(attn, {"q": geometry.q_proj, "k": block.k_proj, "v": block.v_proj}[kind])


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
        hooks.append(mlp_out(handle, layer).register_forward_hook(keep_out(("mlp", layer))))
        if sandwich(handle):
            post = getattr(b, block.post_attn_norm)
            hooks.append(post.register_forward_hook(keep_out(("attn", layer))))
            hooks.append(post.register_forward_pre_hook(keep(("attn_out_in", layer)), with_kwargs=True))
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
    if sender[0] in "MA":
        return cache[("mlp" if sender[0] == "M" else "attn", int(sender[1:]))].reshape(shape)
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
    elif receiver[0] in "MA":
        layer = int(receiver[1:])
        key, norm = ("mlp_in", block.mlp_norm) if receiver[0] == "M" else ("attn_out_in", block.post_attn_norm)
        modified = clean[(key, layer)] + delta.reshape(clean[(key, layer)].shape)
        module, hook_kind = getattr(blocks[layer], norm), "pre"
    else:
        layer = int(receiver[1:].split("H")[0].split("K")[0])
        slot = int(receiver.split("H")[-1]) if edge.kind == "q" else int(receiver.split("KV")[-1])
        proj = receiver_module(handle, layer, edge.kind)
        normed = getattr(blocks[layer], block.attn_norm)(clean[("attn_in", layer)] + delta)
        rebuilt = proj(normed)
        columns = receiver_columns(handle, edge.kind, slot)
        module, hook_kind = proj, "post"
    if hook_kind == "pre":
        hook = module.register_forward_pre_hook(lambda m, a: (modified.reshape(a[0].shape),) + tuple(a[1:]))
    else:
        def splice(m, a, out):  # noqa: ANN001, ANN202
            out = out.clone()
            out[..., columns] = rebuilt[..., columns]
            return out

        hook = module.register_forward_hook(splice)
    try:
        logits = handle.model(input_ids=ids, use_cache=False).logits[:, -1]
    finally:
        hook.remove()
    return logit_diff(logits.float(), batch.target_ids, batch.foil_ids).numpy()


def _node_type(name: str) -> str:
    return name if name in ("emb", "logits") else ("head" if "H" in name or "KV" in name else name[0])


def sample_edges(graph: Graph, n_random: int = 10, seed: int = 0) -> list[Edge]:
    """One edge of every (sender type, receiver type, kind) the graph has, plus seeded random ones."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(graph.n_edges)
    picked: dict[tuple[str, str, str], Edge] = {}
    for i in order:
        edge = graph.edges[i]
        picked.setdefault((_node_type(edge.sender), _node_type(edge.receiver), edge.kind), edge)
    rest = [graph.edges[i] for i in order if graph.edges[i] not in picked.values()]
    return list(picked.values()) + rest[:n_random]


@pytest.mark.parametrize("arch", SUPPORTED)
def test_single_edge_effect_equals_independent_computation(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch()
    patcher = PathPatcher(handle, batch)
    strongest = patcher.graph.edges[int(np.abs(patcher.edge_effects()).max(0).argmax())]
    edges = sample_edges(patcher.graph) + [strongest]  # every kind of edge, and the largest effect
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


@pytest.mark.parametrize("arch", SUPPORTED)
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
    if sender[0] in "MA":
        layer, key = int(sender[1:]), "mlp" if sender[0] == "M" else "attn"
        block = handle.geometry.block
        module = mlp_out(handle, layer) if key == "mlp" else getattr(handle.blocks()[layer], block.post_attn_norm)
        hook = module.register_forward_hook(lambda m, a, out: corrupt[(key, layer)].reshape(out.shape))
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


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2", "gpt2", "gpt_neox", "gemma3_text"])
def test_patching_every_edge_out_of_a_sender_is_a_node_patch(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch), task_batch()
    patcher = PathPatcher(handle, batch)
    for sender in ["L0H2", "M0", "L1H1"] + (["A0", "A1"] if sandwich(handle) else []):
        out_of = [e for e in patcher.graph.edges if e.sender == sender]
        node = node_patched_metric(handle, batch, sender)
        np.testing.assert_allclose(patcher.patch(out_of), node, atol=ATOL, err_msg=sender)
        assert np.abs(node - patcher.clean_metric).max() > 1e-3, sender


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
