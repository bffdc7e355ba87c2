"""Previous-token and induction roles on SmolLM2 against scores computed from HF's own attention weights.

The independent path: one eager forward pass with ``output_attentions=True`` and per-head
scores written as plain loops over positions, with none of cortexmap's probe code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cortexmap.analysis.roles import assign_roles
from cortexmap.tasks.probes import repeated_random_tokens, run_probes

RUN_SMALL = Path(__file__).parents[1] / "data" / "run_small"
N, LENGTH, SEED = 6, 20, 11


def _independent_scores(model, ids: torch.Tensor, prefix: int) -> dict[str, np.ndarray]:
    """``{probe: [n_layers, n_heads]}`` mean scores from ``output_attentions`` by explicit loops."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(previous)
    seq = ids.shape[1]
    prev = np.zeros((len(attentions), attentions[0].shape[1]))
    induction = np.zeros_like(prev)
    for layer, pattern in enumerate(attentions):
        a = pattern.double().numpy()  # [n, heads, q, k]
        for b in range(ids.shape[0]):
            # previous token: every query q >= 2 attends to q - 1 (key 0 is left to the sink probe)
            prev[layer] += np.mean([a[b, :, q, q - 1] for q in range(2, seq)], axis=0) / ids.shape[0]
            # induction: a query in the second copy attends to the token after its first occurrence
            second = range(prefix + LENGTH, seq)
            induction[layer] += np.mean([a[b, :, q, q - LENGTH + 1] for q in second], axis=0) / ids.shape[0]
    return {"previous_token": prev, "induction": induction}


@pytest.mark.slow
def test_probe_roles_agree_with_output_attentions(smollm2):
    patterns = run_probes(smollm2, probes=["previous_token", "induction"], n=N, seed=SEED)
    ids = repeated_random_tokens(smollm2.tokenizer, N, length=LENGTH, seed=SEED).input_ids
    prefix = ids.shape[1] - 2 * LENGTH
    independent = _independent_scores(smollm2.model, ids, prefix)
    effects = pd.read_parquet(RUN_SMALL / "effects.parquet")
    roles = assign_roles(effects, patterns)

    for probe, scores in independent.items():
        ours = patterns[patterns["probe"] == probe].sort_values(["layer", "head"])["score"].to_numpy()
        np.testing.assert_allclose(ours, scores.reshape(-1), atol=1e-4)

        rows = roles[roles["role"] == probe]
        assert len(rows), f"no {probe} head found on SmolLM2"
        threshold = float(rows["baseline"].iloc[0])
        ci_low = patterns[patterns["probe"] == probe].sort_values(["layer", "head"])["ci_low"].to_numpy()
        clear = (scores.reshape(-1) > threshold) & (ci_low > np.median(scores))
        expected = {f"L{flat // scores.shape[1]}H{flat % scores.shape[1]}" for flat in np.flatnonzero(clear)}
        assert set(rows["head_id"]) == expected
        best = np.unravel_index(np.argmax(scores), scores.shape)
        assert f"L{best[0]}H{best[1]}" in set(rows["head_id"])
        assert (scores.reshape(-1)[[l * scores.shape[1] + h for l, h in zip(rows["layer"], rows["head"])]] >= 0.5).all()
