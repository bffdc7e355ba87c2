"""Multi-token answers, answer sets, padded batches and corrupt prompts of another length, exactly.

The sweep's numbers (padded batches, rows tiled per head, prefix reuse, logits at the reads only)
are compared with an independent computation: one sequence at a time, unpadded, through a copy of
the model whose head is edited *in the weights* (its output-projection columns zeroed, or
scaled), with what replaces it added to the projection's output (``W_head @ z``: the mean, or the
source run's output at the aligned position, recorded from separate runs of the unedited model
with a plain hook). Metrics are recomputed here from ``log_softmax`` of full logits.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from cortexmap.interventions.context import derangement
from cortexmap.sweep.compute import attribution_matrix, clean_metrics, exact_matrix, prepare
from cortexmap.tasks.encoding import PairIds, pack
from tests.tiny import VOCAB, tiny_handle

ATOL = 1e-5
HEADS = [(0, 1), (1, 2), (2, 3), (2, 0)]
PAD = 0


def _ids(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=g).tolist()


def make_items(kind: str, seed: int = 0) -> list[PairIds]:
    """Six prompts of 5 to 9 tokens with corrupt prompts sharing their first two and last two tokens.

    ``kind``: ``pairs`` (multi-token target and foil), ``sets`` (targets and foils of one to three
    tokens, some sharing a first token) or ``single`` (one-token answers; padded only by the corrupt
    prompts of other lengths). Two prompts have corrupt prompts of their own length.
    """
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, (length, delta) in enumerate([(5, 2), (9, -3), (7, 0), (6, 1), (9, 0), (5, -1)]):
        prompt = _ids(g, length)
        middle = _ids(g, length - 4 + delta)
        corrupt = prompt[:2] + middle + prompt[-2:]
        if kind == "pairs":
            targets, foils = [_ids(g, 1 + i % 3)], [_ids(g, 1 + (i + 1) % 3)]
        elif kind == "sets":
            stem = _ids(g, 1)
            targets = [stem + _ids(g, 1), _ids(g, 1), _ids(g, 3)][: 1 + i % 3]
            foils = [stem + _ids(g, 2), _ids(g, 1)][: 1 + (i + 1) % 2]
        else:
            targets, foils = [_ids(g, 1)], [_ids(g, 1)]
        items.append(PairIds(i, prompt, targets, foils, corrupt))
    return items


# ------------------------------------------------------------------ the independent computation


def _slice(handle, layer: int, head: int) -> torch.Tensor:  # noqa: ANN001
    """``W_head``: ``[d_model, d_head]``, the head's columns of the output projection."""
    proj, d = handle.out_proj(layer), handle.d_head
    w = proj.weight[head * d:(head + 1) * d, :].T if handle.geometry.out_proj_is_conv1d else proj.weight[:, head * d:(head + 1) * d]
    return w.detach()


_EDITED: dict[tuple[int, int, int, float], tuple[object, object]] = {}


def _edited(handle, layer: int, head: int, factor: float):  # noqa: ANN001, ANN202
    """A copy of the model with the head's output-projection columns multiplied by ``factor`` (kept for reuse)."""
    key = (id(handle), layer, head, factor)
    if key not in _EDITED:
        _EDITED.clear()  # one handle at a time
        _EDITED[key] = _edit(handle, layer, head, factor)
    return _EDITED[key]


def _edit(handle, layer: int, head: int, factor: float):  # noqa: ANN001, ANN202
    model = copy.deepcopy(handle.model)
    proj = getattr(getattr(_resolve(model, handle.geometry.layers)[layer], handle.geometry.attn), handle.geometry.out_proj)
    d = handle.d_head
    with torch.no_grad():
        if handle.geometry.out_proj_is_conv1d:
            proj.weight[head * d:(head + 1) * d, :] *= factor
        else:
            proj.weight[:, head * d:(head + 1) * d] *= factor
    return model, proj


def _resolve(root, dotted: str):  # noqa: ANN001, ANN202
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def head_z(handle, ids: list[int], layer: int, head: int) -> torch.Tensor:  # noqa: ANN001
    """``[seq, d_head]``: the head's output on one unpadded sequence, read by a plain pre-hook."""
    store = {}
    d = handle.d_head
    def read(module, args) -> None:  # noqa: ANN001
        store["z"] = args[0][0, :, head * d:(head + 1) * d].detach().clone()

    hook = handle.out_proj(layer).register_forward_pre_hook(read)
    try:
        with torch.no_grad():
            handle.model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        hook.remove()
    return store["z"]


def log_probs(model, prompt: list[int], answer: list[int], shift=None) -> tuple[float, float]:  # noqa: ANN001
    """``(log P(answer | prompt), raw logit of its first token)`` from one unpadded forward of ``prompt + answer[:-1]``."""
    ids = torch.tensor([prompt + answer[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    p = len(prompt)
    return sum(float(lp[p - 1 + j, t]) for j, t in enumerate(answer)), float(logits[p - 1, answer[0]])


def combine(metric: str, targets: list[tuple[float, float]], foils: list[tuple[float, float]]) -> float:
    if metric == "logit_diff":
        return targets[0][1] - foils[0][1]
    if metric == "logprob_diff":
        return targets[0][0] - foils[0][0]
    if metric == "prob_diff":
        return sum(math.exp(t) for t, _ in targets) - sum(math.exp(f) for f, _ in foils)
    return math.log(sum(math.exp(t) for t, _ in targets)) - math.log(sum(math.exp(f) for f, _ in foils))


def aligned_source(prompt: list[int], corrupt: list[int], position: int) -> int:
    """The corrupt position standing for ``position`` of ``prompt + continuation``, by hand (-1: none)."""
    if len(prompt) == len(corrupt):
        return position
    a = 0
    while a < min(len(prompt), len(corrupt)) and prompt[a] == corrupt[a]:
        a += 1
    b = 0
    while b < min(len(prompt), len(corrupt)) - a and prompt[-1 - b] == corrupt[-1 - b]:
        b += 1
    if position < a:
        return position
    if position >= len(prompt) - b:
        return position - len(prompt) + len(corrupt)
    return -1


def reference(handle, item: PairIds, metric: str, kind: str, layer: int, head: int, *, alpha: float = 0.0,  # noqa: ANN001
              mean: torch.Tensor | None = None, source: list[int] | None = None) -> float:
    """The metric of one pair with one head intervened on, one unpadded sequence per answer."""
    factor = 1.0 + alpha if kind == "amplify" else 0.0 if kind in ("zero", "mean", "patch", "resample") else 1.0
    model, proj = _edited(handle, layer, head, factor)
    w = _slice(handle, layer, head)
    scores = []
    for answer in item.targets + item.foils:
        seq = item.prompt + answer[:-1]
        hook = None
        if kind == "mean":
            hook = proj.register_forward_hook(lambda m, i, o: o + w @ mean)
        elif kind in ("patch", "resample"):
            clean = head_z(handle, seq, layer, head)
            src = head_z(handle, source + answer[:-1], layer, head)
            rows = []
            for pos in range(len(seq)):
                at = aligned_source(item.prompt, source, pos)
                rows.append(src[at] if at >= 0 else clean[pos])
            shift = torch.stack(rows) @ w.T  # [seq, d_model]
            hook = proj.register_forward_hook(lambda m, i, o: o + shift[None])
        try:
            scores.append(log_probs(model, item.prompt, answer))
        finally:
            if hook is not None:
                hook.remove()
    n_t = len(item.targets)
    return combine(metric, scores[:n_t], scores[n_t:])


def reference_mean(handle, items: list[PairIds], layer: int, head: int) -> torch.Tensor:  # noqa: ANN001
    """The head's mean output over every prompt token of every prompt, prompts run one by one."""
    zs = [head_z(handle, it.prompt, layer, head) for it in items]
    return torch.cat(zs).mean(0)


def partners(batches, items: list[PairIds], seed: int) -> dict[int, int | None]:  # noqa: ANN001
    """Resample partners by the documented rule: a derangement within each prompt length of a batch."""
    out: dict[int, int | None] = {}
    for b in batches:
        groups: dict[int, list[int]] = {}
        for index in b.indices:
            groups.setdefault(len(items[index].prompt), []).append(index)
        for members in groups.values():
            if len(members) < 2:
                out[members[0]] = None
                continue
            order = derangement(len(members), seed)
            out.update({m: members[int(order[j])] for j, m in enumerate(members)})
    return out


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind,alpha", [("zero", 0.0), ("amplify", 0.6), ("mean", 0.0), ("patch", 0.0), ("resample", 0.0)])
@pytest.mark.parametrize("answers,metric", [("pairs", "logprob_diff"), ("sets", "prob_diff"), ("sets", "log_mass_diff"),
                                            ("single", "logit_diff")])
def test_the_sweep_equals_one_sequence_at_a_time_with_the_head_edited_in_the_weights(arch, kind, alpha, answers, metric):
    """Every architecture (Gemma-3's sliding windows of 4 tokens and GQA included), every metric, every intervention."""
    handle = tiny_handle(arch)
    items = make_items(answers, seed=1)
    batches = pack(items, metric, PAD, max_batch=4, pad=True)
    assert any(b.lengths is not None for b in batches)  # padded rows really are in play
    prepared = prepare(handle, batches, need_corrupt=kind == "patch")
    fast = exact_matrix(handle, prepared, kind, alpha, rows_per_pass=12, heads=HEADS, seed=7)
    clean = clean_metrics(prepared)
    compared = 0
    for layer, head in HEADS:
        mean = reference_mean(handle, items, layer, head) if kind == "mean" else None
        for item in items:
            source = item.corrupt
            if kind == "resample":
                partner = partners(batches, items, 7 + layer)[item.index]
                if partner is None:
                    assert np.isnan(fast[item.index, layer * handle.n_heads + head])
                    continue
                source = items[partner].prompt
            want = reference(handle, item, metric, kind, layer, head, alpha=alpha, mean=mean, source=source)
            got = fast[item.index, layer * handle.n_heads + head]
            assert abs(got - want) < ATOL, (item.index, layer, head, got, want)
            compared += 1
    assert compared >= 3 * len(HEADS)
    for item in items:  # the clean metric too
        want = reference(handle, item, metric, "none", 0, 0)
        assert abs(clean[item.index] - want) < ATOL


@pytest.mark.parametrize("answers,metric", [("pairs", "logprob_diff"), ("sets", "prob_diff"), ("single", "logit_diff")])
@pytest.mark.parametrize("kind", ["zero", "mean", "patch"])
def test_a_padded_batch_equals_the_same_prompts_one_by_one(arch, answers, metric, kind):
    handle = tiny_handle(arch)
    items = make_items(answers, seed=2)
    together = prepare(handle, pack(items, metric, PAD, pad=True), need_corrupt=kind == "patch")
    alone = [prepare(handle, pack([replace(item, index=0)], metric, PAD, pad=True), need_corrupt=kind == "patch")[0]
             for item in items]
    assert len(together) == 1 and together[0].lengths is not None
    assert np.allclose(clean_metrics(together), np.concatenate([clean_metrics([b]) for b in alone]), atol=ATOL)
    means = None
    if kind == "mean":  # one mean for both runs: the task's, over every prompt
        from cortexmap.sweep.compute import task_means

        means = task_means(together)
    batch = exact_matrix(handle, together, kind, rows_per_pass=64, means=means)
    for item, b in zip(items, alone):
        one = exact_matrix(handle, [b], kind, rows_per_pass=64, means=means)[0]
        assert np.allclose(batch[item.index], one, atol=ATOL), np.abs(batch[item.index] - one).max()


def test_patching_past_a_shared_prefix_over_padded_rows_takes_the_suffix_path():
    handle = tiny_handle("gemma3_text")
    items = make_items("pairs", seed=3)
    prepared = prepare(handle, pack(items, "logprob_diff", PAD, pad=True), need_corrupt=True)
    assert prepared[0].suffix is not None and prepared[0].suffix.prefix == 2  # every corrupt keeps the first two tokens
    assert prepared[0].patch_positions is not None and not bool(prepared[0].patch_positions.all())


def test_unpadded_one_token_batches_are_the_fast_path_they_were():
    """Equal lengths and one-token answers: no padding, no readout rows, the old layout and numbers."""
    items = [PairIds(i, [5, 6, 7 + i], [[3]], [[4]], [5, 9, 7 + i]) for i in range(3)]
    (batch,) = pack(items, "logit_diff", PAD)
    assert batch.lengths is None and batch.source_map is None and batch.row_prompt is None and batch.reads() is None
    assert batch.target_ids.tolist() == [3, 3, 3] and batch.foil_ids.tolist() == [4, 4, 4]


def test_attribution_over_padded_multi_token_rows_is_first_order_exact():
    handle = tiny_handle("llama_gqa")
    prepared = prepare(handle, pack(make_items("pairs", seed=4), "logprob_diff", PAD, pad=True), need_corrupt=True)
    alpha = 1e-3
    clean = clean_metrics(prepared)[:, None]
    exact = exact_matrix(handle, prepared, "amplify", alpha)
    approx = attribution_matrix(handle, prepared, "amplify", alpha)
    assert np.allclose(approx - clean, exact - clean, atol=1e-4, rtol=1e-2)
    assert np.isfinite(attribution_matrix(handle, prepared, "patch")).all()
