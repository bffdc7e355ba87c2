"""Monitored norms and entropies during cached generation equal full-sequence recomputations."""

from __future__ import annotations

import pytest
import torch

import cortexmap
from cortexmap.apply import monitor
from cortexmap.interventions import head_outputs
from tests.tiny import random_ids, tiny_handle

HEADS = ["L0H1", "L2H3", "L2H0"]


def test_generation_records_match_independent_computations(arch):  # noqa: ANN001
    handle, prompt = tiny_handle(arch), random_ids(batch=1, seq=6)
    handle.model.set_attn_implementation("sdpa")
    with monitor(handle, HEADS) as rec:
        generated = handle.model.generate(input_ids=prompt, max_new_tokens=5, do_sample=False)
    assert handle.model.config._attn_implementation == "sdpa"  # restored
    frame = rec.frame(generated)
    assert len(frame) == 5 * len(HEADS) and sorted(frame["step"].unique()) == [0, 1, 2, 3, 4]
    new_tokens = generated[0, prompt.shape[1]:].tolist()
    assert frame.groupby("step")["token_id"].first().tolist() == new_tokens

    # Independent: one uncached pass over the whole sequence; step i is read at position prompt_len - 1 + i.
    handle.model.set_attn_implementation("eager")
    full = generated[:, :-1]
    z = head_outputs(handle, full)
    with torch.no_grad():
        attentions = handle.model(input_ids=full, output_attentions=True, use_cache=False).attentions
    for row in frame.itertuples():
        pos = prompt.shape[1] - 1 + row.step
        assert row.norm == pytest.approx(z[row.layer][0, pos, row.head].norm().item(), abs=1e-5)
        p = attentions[row.layer][0, row.head, pos]
        assert row.entropy == pytest.approx(-(p[p > 0] * p[p > 0].log()).sum().item(), abs=1e-5)


def test_thresholds_flag_values_outside_the_range():
    handle, prompt = tiny_handle("llama"), random_ids(batch=1)
    with monitor(handle, ["L1H1"]) as rec:
        generated = handle.model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    values = rec.frame(generated)
    cut = float(values["entropy"].median())
    with monitor(handle, ["L1H1"], thresholds={"entropy": (cut, None), "norm": (None, 1e9)}) as rec:
        handle.model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    flagged = rec.frame(generated)
    low = flagged["entropy"] < cut
    assert low.any() and (flagged.loc[low, "flag"] == f"entropy<{cut:g}").all()
    assert (flagged.loc[~low, "flag"] == "").all()
    assert len(rec.flags(generated)) == int(low.sum())


def test_monitor_removes_its_hooks_on_error_and_checks_input():
    handle = tiny_handle("gpt2")
    proj, attn = handle.out_proj(0), handle.attention(0)
    with pytest.raises(RuntimeError):
        with monitor(handle, ["L0H0"]):
            raise RuntimeError("boom")
    assert not proj._forward_pre_hooks and not attn._forward_hooks and not handle.model._forward_pre_hooks
    with pytest.raises(cortexmap.CortexmapError, match="unknown monitor threshold"):
        monitor(handle, ["L0H0"], thresholds={"loudness": (0, 1)})
    with pytest.raises(cortexmap.CortexmapError, match="L5H0 does not exist"):
        monitor(handle, ["L5H0"])
