"""Joint interventions on head pairs equal an independent computation with full hooked forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cortexmap
from cortexmap.errors import InterventionError
from cortexmap.interventions import patching
from cortexmap.interventions.context import derangement
from cortexmap.sweep.compute import clean_metrics, exact_matrix, prepare
from cortexmap.sweep.pairs import PAIR_TABLE_COLUMNS, measure_pairs
from tests.sweep.test_compute import make_batches, metric_of
from tests.tiny import tiny_handle

HEADS = [(0, 1), (0, 3), (2, 2)]  # a same-layer pair and two cross-layer pairs


def _means(handle, batches):  # noqa: ANN001, ANN202
    """Mean head output over every token of every prompt, from the public capture API."""
    zs = [cortexmap.head_outputs(handle, b.input_ids) for b in batches]
    count = sum(b.input_ids.numel() for b in batches)
    return {l: sum(z[l].sum((0, 1), keepdim=True) for z in zs) / count for l in zs[0]}


def _reference(handle, batches, heads, kind, seed):  # noqa: ANN001, ANN202
    """Metric per prompt with ``heads`` intervened on together, one hooked full forward per batch."""
    means = _means(handle, batches) if kind == "mean" else None
    out = {}
    for b in batches:
        if kind == "patch":
            values = metric_of(handle, b, patch=list(heads), source=b.corrupt_ids)
        elif kind == "mean":
            values = metric_of(handle, b, mean_ablate=list(heads), reference=means)
        elif kind == "zero":
            values = metric_of(handle, b, ablate=list(heads))
        else:  # resample: each head's layer draws its own derangement (seed + layer), as patches from permuted prompts
            specs = [patching([h], source=b.input_ids[derangement(len(b.indices), seed + h[0])]) for h in heads]
            with torch.no_grad(), cortexmap.intervene(handle, *specs):
                logits = handle.model(input_ids=b.input_ids, use_cache=False).logits[:, -1].float()
            values = (logits.gather(1, b.target_ids[:, None]) - logits.gather(1, b.foil_ids[:, None]))[:, 0].numpy()
        out.update(zip(b.indices, values))
    return out


@pytest.mark.parametrize("kind", ["patch", "mean", "resample", "zero"])
@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2"])
def test_pairs_equal_hooked_forward_passes(arch: str, kind: str) -> None:
    handle = tiny_handle(arch)
    batches = make_batches(seed=5)
    prepared = prepare(handle, batches, need_corrupt=kind == "patch")
    table = measure_pairs(handle, prepared, "toy", HEADS, kind, rows_per_pass=8, seed=7)  # 8 rows: several passes
    assert tuple(table.columns) == PAIR_TABLE_COLUMNS
    assert len(table) == 3 * 7 and (table["intervention"] == kind).all()
    clean = {i: v for b in batches for i, v in zip(b.indices, metric_of(handle, b))}
    assert np.allclose(table["clean"], [clean[p] for p in table["prompt"]], atol=1e-5)
    singles = {h: _reference(handle, batches, [h], kind, seed=7) for h in HEADS}
    for (a, b), rows in table.groupby(["head_a", "head_b"], sort=False):
        ha, hb = (tuple(map(int, x[1:].split("H"))) for x in (a, b))
        joint = _reference(handle, batches, [ha, hb], kind, seed=7)
        prompts = rows["prompt"].to_numpy()
        assert np.allclose(rows["effect_ab"], [joint[p] - clean[p] for p in prompts], atol=1e-5)
        assert np.allclose(rows["effect_a"], [singles[ha][p] - clean[p] for p in prompts], atol=1e-5)
        assert np.allclose(rows["effect_b"], [singles[hb][p] - clean[p] for p in prompts], atol=1e-5)
        # a joint intervention is measured, not summed: in a nonlinear model it departs from the sum
        assert np.abs(rows["effect_ab"] - rows["effect_a"] - rows["effect_b"]).max() > 1e-6


@pytest.mark.parametrize("kind", ["patch", "mean"])
def test_single_effects_equal_the_sweep(kind: str) -> None:
    """``effect_a`` is the map's per-prompt effect of that head under the same intervention."""
    handle = tiny_handle("llama")
    prepared = prepare(handle, make_batches(seed=2), need_corrupt=kind == "patch")
    table = measure_pairs(handle, prepared, "toy", [(1, 0), (2, 3)], kind)
    sweep = exact_matrix(handle, prepared, kind) - clean_metrics(prepared)[:, None]
    assert np.allclose(table["effect_a"], sweep[table["prompt"], 1 * handle.n_heads + 0], atol=1e-5)
    assert np.allclose(table["effect_b"], sweep[table["prompt"], 2 * handle.n_heads + 3], atol=1e-5)


def test_refuses_bad_requests() -> None:
    handle = tiny_handle("llama")
    prepared = prepare(handle, make_batches(), need_corrupt=False)
    with pytest.raises(InterventionError, match="two distinct heads"):
        measure_pairs(handle, prepared, "toy", [(0, 1), (0, 1)], "mean")
    with pytest.raises(InterventionError, match="need_corrupt"):
        measure_pairs(handle, prepared, "toy", [(0, 1), (1, 1)], "patch")
    with pytest.raises(InterventionError, match="unknown pair intervention"):
        measure_pairs(handle, prepared, "toy", [(0, 1), (1, 1)], "amplify")
    with pytest.raises(InterventionError, match="does not exist"):
        measure_pairs(handle, prepared, "toy", [(0, 1), (9, 1)], "mean")


@pytest.mark.parametrize("kind", ["patch", "mean", "resample"])
def test_pairs_of_padded_multi_token_batches_agree_with_the_exact_sweep(kind: str) -> None:
    """Single-head rows of the pair table equal the sweep, which tests/sweep/test_answers.py checks by weight edits."""
    from tests.sweep.test_answers import make_items
    from cortexmap.tasks.encoding import pack

    handle = tiny_handle("gemma3_text")
    batches = prepare(handle, pack(make_items("sets", seed=5), "log_mass_diff", 0, pad=True), kind == "patch")
    table = measure_pairs(handle, batches, "demo", HEADS, kind, seed=3)
    sweep = exact_matrix(handle, batches, kind, heads=HEADS, seed=3) - clean_metrics(batches)[:, None]
    for (a, b), rows in table.groupby(["head_a", "head_b"], sort=False):
        for name, head in (("effect_a", a), ("effect_b", b)):
            layer, h = (int(x) for x in head[1:].split("H"))
            np.testing.assert_allclose(rows[name], sweep[rows["prompt"], layer * handle.n_heads + h], atol=1e-5)
