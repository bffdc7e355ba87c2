"""Head importance: gradients against finite differences, atlas aggregation, baselines and selection."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import cortexmap
from cortexmap.apply import (
    head_importance, importance_from_effects, layer_order_importance, random_importance, select_heads,
)
from cortexmap.heads import HeadId
from cortexmap.interventions import mean_head_outputs
from tests.tiny import random_ids, tiny_handle


def cross_entropy(handle, ids):  # noqa: ANN001, ANN201
    """The LM loss in the model's dtype (transformers' own loss upcasts only to float32)."""
    logits = handle.model(input_ids=ids, use_cache=False).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


def lm_loss(handle, ids, **intervention):  # noqa: ANN001, ANN003, ANN201
    with torch.no_grad(), cortexmap.intervene(handle, **intervention):
        return cross_entropy(handle, ids)


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa"])
def test_gradient_importance_equals_finite_differences(arch):  # noqa: ANN001
    handle = tiny_handle(arch, dtype=torch.float64)
    ids = random_ids(batch=2, seq=8, seed=4)
    table = head_importance(handle, ids, batch_size=2, normalize=False)
    eps = 1e-2  # eager attention takes its softmax in float32: smaller steps measure rounding noise
    for head in [HeadId(0, 1), HeadId(2, 3)]:
        # d loss / d m at m = 1, where the head's output is scaled by m = 1 + alpha.
        slope = (lm_loss(handle, ids, amplify={head: eps}) - lm_loss(handle, ids, amplify={head: -eps})) / (2 * eps)
        got = table.loc[table["head_id"] == str(head), "importance"].item()
        assert got == pytest.approx(abs(slope), rel=1e-3)


def test_mean_importance_is_the_derivative_towards_the_mean():
    handle = tiny_handle("llama", dtype=torch.float64)
    ids, reference = random_ids(batch=2, seq=8, seed=4), random_ids(batch=3, seed=5)
    means = mean_head_outputs(handle, reference)
    table = head_importance(handle, ids, batch_size=2, normalize=False, means=means)
    head = HeadId(1, 2)
    # The head's output is m z + (1 - m) mean; differentiate the loss in m at m = 1 numerically.
    t = 1e-2
    slope = (_mixed_loss(handle, ids, head, means, 1 + t) - _mixed_loss(handle, ids, head, means, 1 - t)) / (2 * t)
    assert table.loc[table["head_id"] == str(head), "importance"].item() == pytest.approx(abs(slope), rel=1e-3)


def _mixed_loss(handle, ids, head, means, m):  # noqa: ANN001, ANN201
    d = handle.d_head
    mean = means[head.layer][0, 0, head.head]

    def hook(module, args):  # noqa: ANN001, ANN202
        z = args[0].clone()
        span = slice(head.head * d, (head.head + 1) * d)
        z[..., span] = m * z[..., span] + (1 - m) * mean
        return (z,)

    h = handle.out_proj(head.layer).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return cross_entropy(handle, ids)
    finally:
        h.remove()


def test_normalised_importance_has_unit_norm_per_layer_and_pruned_heads_are_nan():
    handle = tiny_handle("opt")
    table = head_importance(handle, random_ids(batch=2, seq=8), pruned=["L1H0"])
    assert table["importance"].isna().sum() == 1
    norms = table.dropna().groupby("layer")["importance"].apply(lambda s: (s ** 2).sum() ** 0.5)
    assert norms.round(6).tolist() == [1.0, 1.0, 1.0]
    assert HeadId(1, 0) not in select_heads(table, 11)


def test_atlas_importance_averages_absolute_effects_over_tasks():
    rows = []
    for task, sign in [("a", 1), ("b", -1)]:
        for layer in range(2):
            for head in range(2):
                for intervention, scale in [("zero", 1.0), ("mean", 3.0), ("patch", 100.0)]:
                    rows.append({"task": task, "layer": layer, "head": head, "intervention": intervention,
                                 "method": "exact", "effect_normalized": sign * scale * (layer * 2 + head)})
    table = importance_from_effects(pd.DataFrame(rows))
    assert table["importance"].tolist() == [0.0, 2.0, 4.0, 6.0]  # mean of |1x| and |3x|; patch ignored
    assert select_heads(table, 2) == [HeadId(0, 0), HeadId(0, 1)]
    wider = importance_from_effects(pd.DataFrame(rows), shape=(3, 2))
    assert wider["importance"].isna().tolist() == [False] * 4 + [True] * 2  # unmeasured heads are never pruned
    with pytest.raises(cortexmap.CortexmapError, match="lacks columns"):
        importance_from_effects(pd.DataFrame({"layer": [0]}))


def test_atlas_importance_of_a_verified_attribution_run_covers_every_head():
    """attribution+verify: every head has an attribution row, the verified ones an exact row too."""
    rows = [{"task": "a", "layer": l, "head": h, "intervention": "zero", "method": "attribution",
             "effect_normalized": -(l * 2 + h + 1.0)} for l in range(2) for h in range(2)]
    rows.append({"task": "a", "layer": 1, "head": 1, "intervention": "zero", "method": "exact",
                 "effect_normalized": -0.5})
    table = importance_from_effects(pd.DataFrame(rows))
    assert table["importance"].tolist() == [1.0, 2.0, 3.0, 0.5]  # L1H1 takes its exact value
    assert select_heads(table, 4)[0] == HeadId(1, 1)


def test_baselines_are_deterministic_orders():
    handle = tiny_handle("llama")
    assert random_importance(handle, seed=3).equals(random_importance(handle, seed=3))
    assert not random_importance(handle, seed=3).equals(random_importance(handle, seed=4))
    assert [str(h) for h in select_heads(layer_order_importance(handle, "last"), 5)] == ["L2H0", "L2H1", "L2H2", "L2H3", "L1H0"]
    assert [str(h) for h in select_heads(layer_order_importance(handle, "first"), 2)] == ["L0H0", "L0H1"]
    with pytest.raises(cortexmap.CortexmapError, match="only 12 are left"):
        select_heads(layer_order_importance(handle), 13)
