"""Path patching into one head's query and key against attention rebuilt by hand.

The reference shares nothing with :mod:`cortexmap.circuits` but the geometry facts and the
model's norm modules: plain hooks cache every sender's output and each layer's attention input
(:func:`tests.circuits.test_patching.cache_run`); a sender's edit is ``clean input + (source -
clean)`` of its output; the query and key are projected from the edited residual with the
projection *weights*, and the attention is recomputed by hand: per-head q/k norms where the model
has them, rotary from the rotary module's frequencies (partial rotary included), the model's
scaling (``query_pre_attn_scalar``, GPT-2's options), logit soft-capping, the causal mask and
sliding windows, GQA's shared keys. :func:`test_hand_attention_is_the_models` checks that reference
against the model's own eager attention on every tiny architecture, circuits-supported or not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cortexmap.circuits.attention import HeadPatcher, attention_metric, side_edges
from cortexmap.circuits.layout import unsupported_reason
from cortexmap.heads import HeadId
from cortexmap.models.hooks import eager_attention
from tests.circuits.test_patching import cache_run, contribution
from tests.circuits.tiny_circuits import SUPPORTED, circuit_handle, task_batch

ATOL = 1e-5
SCALE = 12.0  # weights scaled up three times more than the other circuit tests': sharp attention patterns
EVERY_ARCH = SUPPORTED
KEY, CONTRAST = 2, 4  # the positions the corrupt prompts change (task_batch)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(handle, layer: int, seq: int):  # noqa: ANN001, ANN202
    """``(cos, sin) [seq, rot_dim]`` from the rotary module's frequencies, or None (learned positions)."""
    rot = next((m for name, m in handle.model.named_modules() if name.endswith("rotary_emb")), None)
    if rot is None:
        return None
    layer_type = getattr(handle.model.config, "layer_types", None)
    prefix = f"{layer_type[layer]}_" if layer_type and hasattr(rot, f"{layer_type[layer]}_inv_freq") else ""
    inv_freq = getattr(rot, f"{prefix}inv_freq").float()
    scale = getattr(rot, f"{prefix}attention_scaling", 1.0)
    freqs = torch.arange(seq, dtype=torch.float32)[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def hand_scores(handle, layer: int, normed_q: torch.Tensor, normed_k: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Masked pre-softmax scores ``[batch, H, seq, seq]``: queries from ``normed_q``, keys from ``normed_k``."""
    config, attn = handle.model.config, handle.attention(layer)
    n, seq, d = normed_q.shape
    H, G, dh = handle.n_heads, handle.n_kv_heads, handle.d_head
    if handle.model_type == "gpt2":  # Conv1D [d, 3d]: q, k, v side by side
        q = (normed_q @ attn.c_attn.weight + attn.c_attn.bias)[..., :d]
        k = (normed_k @ attn.c_attn.weight + attn.c_attn.bias)[..., d:2 * d]
    elif handle.model_type == "gpt_neox":  # per head [q | k | v]
        qkv = attn.query_key_value
        q = F.linear(normed_q, qkv.weight, qkv.bias).view(n, seq, H, 3 * dh)[..., :dh]
        k = F.linear(normed_k, qkv.weight, qkv.bias).view(n, seq, H, 3 * dh)[..., dh:2 * dh]
    else:
        q = F.linear(normed_q, attn.q_proj.weight, attn.q_proj.bias)
        k = F.linear(normed_k, attn.k_proj.weight, attn.k_proj.bias)
    q, k = q.reshape(n, seq, H, dh), k.reshape(n, seq, G, dh)
    if hasattr(attn, "q_norm"):  # qwen3, gemma3: RMSNorm over each head's dims
        q, k = attn.q_norm(q), attn.k_norm(k)
    rotary = _rotary(handle, layer, seq)
    if rotary is not None:
        cos, sin = (t[None, :, None] for t in rotary)  # [1, seq, 1, rot_dim]
        r = cos.shape[-1]
        q = torch.cat((q[..., :r] * cos + _rotate_half(q[..., :r]) * sin, q[..., r:]), dim=-1)
        k = torch.cat((k[..., :r] * cos + _rotate_half(k[..., :r]) * sin, k[..., r:]), dim=-1)
    scaling = dh ** -0.5
    if getattr(config, "query_pre_attn_scalar", None):
        scaling = config.query_pre_attn_scalar ** -0.5
    if handle.model_type == "gpt2":
        scaling = (dh ** -0.5 if config.scale_attn_weights else 1.0) / (
            layer + 1 if config.scale_attn_by_inverse_layer_idx else 1)
    k = k.repeat_interleave(H // G, dim=2)  # query head h reads KV group h // (H / G)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scaling
    cap = getattr(config, "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    window = getattr(attn, "sliding_window", getattr(config, "sliding_window", None))
    i, j = torch.arange(seq)[:, None], torch.arange(seq)[None]
    masked = (j > i) | ((i - j >= window) if window else torch.zeros_like(j > i))
    return scores.masked_fill(masked, float("-inf"))


def hand_row(handle, head: HeadId, x_q, x_k, query: int = -1) -> torch.Tensor:  # noqa: ANN001
    """The head's attention row ``[batch, seq]`` with the query read from residual ``x_q`` and the key from ``x_k``."""
    norm = getattr(handle.blocks()[head.layer], handle.geometry.block.attn_norm)
    scores = hand_scores(handle, head.layer, norm(x_q), norm(x_k))
    return torch.softmax(scores[:, head.head, query], dim=-1)


def _masks(batch, key: int = KEY, contrast: int | None = CONTRAST):  # noqa: ANN001, ANN202
    n, seq = batch.input_ids.shape
    one = lambda p: F.one_hot(torch.full((n,), p), seq).bool()  # noqa: E731
    return one(key), None if contrast is None else one(contrast)


def _measure(batch, metric: str = "weight", **where):  # noqa: ANN001, ANN202
    key, contrast = _masks(batch, **where)
    n = len(batch)

    def measure(rows: torch.Tensor) -> torch.Tensor:
        k = rows.shape[0] // n
        return attention_metric(rows, key.repeat(k, 1), None if contrast is None else contrast.repeat(k, 1), metric)

    return measure


@pytest.mark.parametrize("arch", EVERY_ARCH)
def test_hand_attention_is_the_models(arch):  # noqa: ANN001
    """The reference itself: hand attention from each layer's attention input equals the model's own."""
    handle, ids = circuit_handle(arch, scale=SCALE), task_batch().input_ids
    inputs = {}
    hooks = [handle.attention(l).register_forward_pre_hook(
        lambda m, a, kw, l=l: inputs.__setitem__(l, (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True)
        for l in range(handle.n_layers)]
    try:
        with torch.no_grad(), eager_attention(handle.model):
            attentions = handle.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for layer in range(handle.n_layers):
            mine = torch.softmax(hand_scores(handle, layer, inputs[layer], inputs[layer]), dim=-1)
            torch.testing.assert_close(mine, attentions[layer].float(), atol=ATOL, rtol=0)
    assert max(float(a[:, :, -1].max()) for a in attentions) > 0.3  # patterns far from uniform


def _reference(handle, batch, head: HeadId, measure, ablation: str = "corrupt"):  # noqa: ANN001, ANN202
    """Per prompt ``[batch, 2U + 3]``: each sender on the query side, then on the key side; all per side; both."""
    clean, _ = cache_run(handle, batch.input_ids)
    source = cache_run(handle, batch.corrupt_ids)[0] if ablation == "corrupt" else clean
    x = clean[("attn_in", head.layer)]
    shape = clean["emb"].shape
    senders = side_edges_senders(handle, head)
    deltas = []
    for s in senders:
        here = contribution(handle, clean, s, shape)
        there = contribution(handle, source, s, shape)
        deltas.append((there if ablation == "corrupt" else here.mean(0, keepdim=True)) - here)
    base = measure(hand_row(handle, head, x, x))
    out = [measure(hand_row(handle, head, x + d, x)) - base for d in deltas]
    out += [measure(hand_row(handle, head, x, x + d)) - base for d in deltas]
    total = sum(deltas)
    out += [measure(hand_row(handle, head, x + total, x)) - base, measure(hand_row(handle, head, x, x + total)) - base,
            measure(hand_row(handle, head, x + total, x + total)) - base]
    return torch.stack(out, 1).numpy(), deltas, x


def side_edges_senders(handle, head: HeadId) -> list[str]:  # noqa: ANN001
    """The residual's terms before ``head``'s layer: a sandwich block writes its heads only through ``A{l}``."""
    names = ["emb"]
    for layer in range(head.layer):
        heads = [f"A{layer}"] if handle.geometry.block.residual == "sandwich" else \
            [f"L{layer}H{h}" for h in range(handle.n_heads)]
        names += heads + [f"M{layer}"]
    return names


def _patch(handle, batch, head: HeadId, measure, ablation: str = "corrupt"):  # noqa: ANN001, ANN202
    patcher = HeadPatcher(handle, batch, head, ablation)
    edges = side_edges(patcher.graph, head)
    both = edges["query"] + edges["key"]
    return patcher, both, patcher.effects(both, measure, [edges["query"], edges["key"], both], rows_per_pass=16)


@pytest.mark.parametrize("arch", EVERY_ARCH)
def test_attention_path_patching_equals_hand_computation(arch):  # noqa: ANN001
    handle, batch = circuit_handle(arch, scale=SCALE), task_batch()
    reason = unsupported_reason(handle)
    if reason:
        pytest.skip(reason)
    measure = _measure(batch)
    for head in (HeadId(1, 2), HeadId(handle.n_layers - 1, 3)):  # a middle layer, the last layer's last group
        patcher, edges, effects = _patch(handle, batch, head, measure)
        with torch.no_grad():
            reference, _, x = _reference(handle, batch, head, measure)
            np.testing.assert_allclose(patcher.clean_rows.numpy(), hand_row(handle, head, x, x).numpy(), atol=ATOL)
        np.testing.assert_allclose(effects, reference, atol=ATOL, err_msg=str(head))
        assert np.abs(effects).max() > 0.02  # effects are not trivially small
        with torch.no_grad(), eager_attention(handle.model):  # both sides from the corrupt run: its own pattern
            corrupt = handle.model(input_ids=batch.corrupt_ids, output_attentions=True, use_cache=False).attentions
        own = measure(corrupt[head.layer][:, head.head, -1].float()) - measure(patcher.clean_rows)
        np.testing.assert_allclose(effects[:, -1], own.numpy(), atol=ATOL)


@pytest.mark.parametrize("arch", ["llama_gqa", "opt"])
def test_mean_ablation_equals_hand_computation(arch):  # noqa: ANN001
    handle, batch, head = circuit_handle(arch, scale=SCALE), task_batch(), HeadId(2, 1)
    measure = _measure(batch, contrast=None)
    _, _, effects = _patch(handle, batch, head, measure, "mean")
    with torch.no_grad():
        reference = _reference(handle, batch, head, measure, "mean")[0]
    np.testing.assert_allclose(effects, reference, atol=ATOL)
    assert np.abs(effects).max() > 0.02


def test_log_weight_contrast_is_the_pre_softmax_score_difference():
    """With one key and one contrast position, the log-weight difference is the scores' difference."""
    handle, batch, head = circuit_handle("qwen3", scale=SCALE), task_batch(), HeadId(2, 3)
    _, _, effects = _patch(handle, batch, head, _measure(batch, "log-weight"))
    clean, _ = cache_run(handle, batch.input_ids)
    corrupt, _ = cache_run(handle, batch.corrupt_ids)
    x, shape = clean[("attn_in", 2)], clean["emb"].shape
    norm = getattr(handle.blocks()[2], handle.geometry.block.attn_norm)
    with torch.no_grad():
        def gap(x_q, x_k):  # noqa: ANN001, ANN202
            s = hand_scores(handle, 2, norm(x_q), norm(x_k))[:, head.head, -1]
            return (s[:, KEY] - s[:, CONTRAST]).numpy()

        for i, sender in enumerate(side_edges_senders(handle, head)):
            delta = contribution(handle, corrupt, sender, shape) - contribution(handle, clean, sender, shape)
            np.testing.assert_allclose(effects[:, i], gap(x + delta, x) - gap(x, x), atol=1e-4, err_msg=sender)
    assert np.abs(effects).max() > 0.1


@pytest.mark.parametrize("arch", ["llama_gqa", "qwen2", "gemma", "opt"])
def test_eap_screen_is_the_first_order_term_of_the_hand_computation(arch):  # noqa: ANN001
    handle, batch, head = circuit_handle(arch, scale=SCALE), task_batch(), HeadId(2, 1)
    measure = _measure(batch)
    patcher = HeadPatcher(handle, batch, head)
    edges = side_edges(patcher.graph, head)
    scores = patcher.eap(edges["query"] + edges["key"], measure)
    with torch.no_grad():
        _, deltas, x = _reference(handle, batch, head, measure)
    grads = []
    for side in ("query", "key"):
        leaf = x.clone().requires_grad_(True)
        row = hand_row(handle, head, leaf, x) if side == "query" else hand_row(handle, head, x, leaf)
        grads.append(torch.autograd.grad(measure(row).sum(), leaf)[0])
    reference = torch.stack([(d * g).sum((1, 2)) for g in grads for d in deltas], 1).detach().numpy()
    np.testing.assert_allclose(scores, reference, atol=ATOL)
    assert np.abs(scores).max() > 0.02


def test_patching_nothing_is_the_models_attention_and_hooks_are_removed():
    handle, batch, head = circuit_handle("llama_gqa", scale=SCALE), task_batch(), HeadId(2, 1)
    with torch.no_grad(), eager_attention(handle.model):
        own = handle.model(input_ids=batch.input_ids, output_attentions=True, use_cache=False).attentions[2]
    hooks = lambda: [(name, list(m._forward_hooks), list(m._forward_pre_hooks))  # noqa: E731
                     for name, m in handle.model.named_modules()]
    before = hooks()  # transformers' own output-capturing hooks included
    patcher = HeadPatcher(handle, batch, head, query=4)
    torch.testing.assert_close(patcher.clean_rows, own[:, 1, 4], atol=ATOL, rtol=0)
    none = patcher.rows(np.zeros((3, patcher.graph.n_edges), dtype=bool))  # three groups tiled in one call
    torch.testing.assert_close(none, patcher.clean_rows.expand(3, -1, -1), atol=0, rtol=0)
    assert handle.model.config._attn_implementation == "eager"  # as the tiny model was built; restored
    patcher.eap(side_edges(patcher.graph, head)["key"], _measure(batch))
    assert hooks() == before


@pytest.mark.slow
def test_smollm2_l23h3_attention_patching_is_exact(smollm2):  # noqa: ANN001
    """The real model (sdpa by default, switched to eager for the patched calls): edges and both sides exact."""
    from cortexmap.tasks import build_task, encode_task

    task = build_task("ioi", smollm2.tokenizer, n=8)
    batch = max(encode_task(task, smollm2.tokenizer, max_batch=4), key=len)
    head = HeadId(23, 3)
    ids = batch.input_ids
    key, contrast = ids == batch.target_ids[:, None], ids == batch.foil_ids[:, None]  # IO against S1 and S2
    n = len(batch)
    measure = lambda rows: attention_metric(rows, key.repeat(len(rows) // n, 1),  # noqa: E731
                                            contrast.repeat(len(rows) // n, 1))
    patcher = HeadPatcher(smollm2, batch, head)
    edges = side_edges(patcher.graph, head)
    picked = [edges["key"][patcher.graph.senders.index("M20")], edges["query"][patcher.graph.senders.index("L19H2")],
              edges["query"][0], edges["key"][patcher.graph.senders.index("L8H1")]]
    effects = patcher.effects(picked, measure, [edges["query"] + edges["key"]])
    clean, _ = cache_run(smollm2, ids)
    corrupt, _ = cache_run(smollm2, batch.corrupt_ids)
    x, shape = clean[("attn_in", 23)], clean["emb"].shape
    with torch.no_grad():
        base = measure(hand_row(smollm2, head, x, x))
        for i, edge in enumerate(picked):
            sent = [contribution(smollm2, run, edge.sender, shape) for run in (corrupt, clean)]
            delta = sent[0] - sent[1]
            x_q, x_k = (x + delta, x) if edge.kind == "q" else (x, x + delta)
            reference = (measure(hand_row(smollm2, head, x_q, x_k)) - base).numpy()
            np.testing.assert_allclose(effects[:, i], reference, atol=5e-5, err_msg=str(edge))
        with eager_attention(smollm2.model):
            own = smollm2.model(input_ids=batch.corrupt_ids, output_attentions=True, use_cache=False).attentions[23]
    np.testing.assert_allclose(effects[:, -1], (measure(own[:, 3, -1].float()) - base).numpy(), atol=5e-5)
    assert np.abs(effects[:, 0]).max() > 0.02 and smollm2.model.config._attn_implementation != "eager"
