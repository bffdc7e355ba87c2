"""Pruning curves and healing on tiny models, checked against ablation and direct loss computations."""

from __future__ import annotations

import pytest
import torch

import cortexmap
from cortexmap.apply import (
    attention_params, gradient_scorer, head_importance, heal, heldout_loss, layer_order_importance, prune_heads,
    pruning_curve, random_importance, select_heads,
)
from cortexmap.heads import HeadId
from cortexmap.apply.heal import distillation_loss
from tests.tiny import random_ids, tiny_handle


def ablated_loss(handle, ids, heads):  # noqa: ANN001, ANN201
    with torch.no_grad(), cortexmap.intervene(handle, ablate=heads):
        return float(handle.model(input_ids=ids, labels=ids, use_cache=False).loss)


def test_heldout_loss_is_the_mean_token_cross_entropy():
    handle, ids = tiny_handle("gpt2"), random_ids(batch=5, seq=9)
    with torch.no_grad():
        expected = float(handle.model(input_ids=ids, labels=ids).loss)
    assert heldout_loss(handle, ids, batch_size=2) == pytest.approx(expected, rel=1e-6)


def test_curve_rows_match_ablation_and_measured_parameters():
    handle = tiny_handle("llama_gqa")
    text, train = random_ids(batch=4, seq=12, seed=2), random_ids(batch=20, seq=12, seed=3)
    table = random_importance(handle, seed=1)
    calls = []

    def scorer(pruned, means):  # noqa: ANN001, ANN202
        calls.append((list(pruned), means is None))
        return layer_order_importance(handle)

    curve = pruning_curve(handle, {"random": table, "iter": scorer}, fractions=[0.5, 0.25], replace=["zero", "mean"],
                          text=text, train_text=train)
    assert len(curve) == 1 + 2 * 2 * 2
    base = curve[curve["method"] == "none"].iloc[0]
    assert base["heldout_loss"] == pytest.approx(heldout_loss(handle, text), rel=1e-9)
    row = curve[(curve["method"] == "random") & (curve["replace"] == "zero") & (curve["fraction"] == 0.5)].iloc[0]
    heads = select_heads(table, 6)
    assert row["heads_pruned"] == 6
    assert row["heldout_loss"] == pytest.approx(ablated_loss(handle, text, heads), rel=1e-5)
    assert row["loss_delta_pct"] == pytest.approx(100 * (row["heldout_loss"] / base["heldout_loss"] - 1), rel=1e-9)
    pruned = prune_heads(handle, heads)
    assert row["total_params_removed"] == handle.n_params - pruned.n_params
    assert row["attn_params_removed_frac"] == pytest.approx(
        (attention_params(handle) - attention_params(pruned)) / attention_params(handle))
    # The scorer was re-run after each step with the heads pruned so far (3 heads at 25%, then 6 at 50%).
    assert [len(p) for p, _ in calls] == [0, 3, 0, 3] and [zero for _, zero in calls] == [True, True, False, False]


def test_gradient_scorer_matches_the_replacement_mode_and_iterates_on_request():
    handle, chunks = tiny_handle("llama"), random_ids(batch=2, seq=8, seed=6)
    means = {l: torch.randn(1, 1, 4, 8) for l in range(3)}
    once, again = gradient_scorer(handle, chunks, iterative=False), gradient_scorer(handle, chunks)
    assert once([], None).equals(head_importance(handle, chunks))
    assert once([], means).equals(head_importance(handle, chunks, means=means))
    assert not once([], means).equals(once([], None))
    assert once([HeadId(0, 0)], None)["importance"].notna().all()  # one-shot: pruned heads are not re-scored
    assert again([HeadId(0, 0)], None).equals(head_importance(handle, chunks, pruned=[HeadId(0, 0)]))


def test_distillation_loss_is_the_mean_token_kl_from_the_teacher():
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    p, log_q = teacher.softmax(-1), student.log_softmax(-1)
    expected = (p * (p.log() - log_q)).sum(-1).mean()
    assert float(distillation_loss(student, teacher)) == pytest.approx(float(expected), rel=1e-5)


def test_heal_moves_the_pruned_model_towards_the_teacher():
    handle = tiny_handle("llama")
    train = random_ids(batch=8, seq=12, seed=5)
    pruned = prune_heads(handle, ["L0H0", "L1H1", "L1H2", "L2H3"])
    teacher_before = {n: p.clone() for n, p in handle.model.named_parameters()}

    def kl() -> float:
        with torch.no_grad():
            return float(distillation_loss(pruned.model(input_ids=train).logits, handle.model(input_ids=train).logits))

    before = kl()
    losses = heal(pruned, handle, train, steps=12, batch_size=4, lr=1e-3)
    assert len(losses) == 12 and kl() < 0.5 * before
    assert all(torch.equal(p, teacher_before[n]) for n, p in handle.model.named_parameters())
    same = prune_heads(handle, [])
    assert heal(same, handle, train, steps=1)[0] == pytest.approx(0.0, abs=1e-6)


def test_curve_with_healing_adds_healed_rows_only_where_asked():
    handle = tiny_handle("opt")
    text, train = random_ids(batch=2, seq=10, seed=2), random_ids(batch=8, seq=10, seed=3)
    curve = pruning_curve(handle, {"a": random_importance(handle), "b": layer_order_importance(handle)}, fractions=[0.25],
                          replace=["zero", "mean"], heal_steps=2, heal_methods=["a/mean", "b"], text=text,
                          train_text=train, task_score=lambda h: float(h.n_params))
    healed = curve[curve["healed"]]
    assert sorted(zip(healed["method"], healed["replace"])) == [("a", "mean"), ("b", "mean"), ("b", "zero")]
    assert (curve["task_score"] <= handle.n_params).all() and curve["task_score"].nunique() > 1
