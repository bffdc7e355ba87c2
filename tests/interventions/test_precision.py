"""The seed's architectures (GPT-2, Pythia/GPT-NeoX, LLaMA-2) in bf16: exact within a stated tolerance.

bf16 keeps 8 bits of mantissa, so two mathematically equal computations that round in a
different order differ by a few bf16 ulps of the logits' scale. Tolerance: 2e-2 absolute on
logits of magnitude ~1 (about 4 ulps); fp32 is held to 1e-5 elsewhere.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import cortexmap
from cortexmap.sweep.compute import exact_matrix, prepare
from tests.sweep.test_compute import make_batches
from tests.tiny import random_ids, tiny_handle

BF16_ATOL = 2e-2
SEED_ARCHS = ["gpt2", "gpt_neox", "llama_gqa"]


@pytest.mark.parametrize("arch", SEED_ARCHS)
def test_bf16_zero_ablation_matches_weight_edit(arch):  # noqa: ANN001
    handle = tiny_handle(arch, dtype=torch.bfloat16)
    ids = random_ids()
    edited = copy.deepcopy(handle.model)
    clone = cortexmap.wrap_model(edited)
    d = handle.d_head
    with torch.no_grad():
        proj = clone.out_proj(1)
        if handle.geometry.out_proj_is_conv1d:
            proj.weight[2 * d:3 * d, :] = 0
        else:
            proj.weight[:, 2 * d:3 * d] = 0
        with cortexmap.intervene(handle, ablate=["L1H2"]):
            hooked = handle.model(input_ids=ids, use_cache=False).logits.float()
        reference = edited(input_ids=ids, use_cache=False).logits.float()
    assert (hooked - reference).abs().max() <= BF16_ATOL


@pytest.mark.parametrize("arch", SEED_ARCHS)
def test_bf16_batched_sweep_matches_fp32_sweep(arch):  # noqa: ANN001
    fp32, bf16 = tiny_handle(arch), tiny_handle(arch, dtype=torch.bfloat16)
    batches = make_batches()
    exact32 = exact_matrix(fp32, prepare(fp32, batches, False), "zero")
    exact16 = exact_matrix(bf16, prepare(bf16, batches, False), "zero")
    assert np.abs(exact32 - exact16).max() <= 5 * BF16_ATOL  # bf16 weights vs fp32 weights: a looser bound
    assert np.corrcoef(exact32.ravel(), exact16.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("arch", SEED_ARCHS)
def test_bf16_batched_sweep_matches_the_bf16_hooked_loop(arch):  # noqa: ANN001
    from tests.sweep.test_compute import reference_matrix

    handle = tiny_handle(arch, dtype=torch.bfloat16)
    batches = make_batches()
    fast = exact_matrix(handle, prepare(handle, batches, False), "zero")
    slow = reference_matrix(handle, batches, "zero")
    assert np.abs(fast - slow).max() <= BF16_ATOL
