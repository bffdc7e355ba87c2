"""The head-output pre-hook and the eager-attention switch, each defined once in models/hooks.py."""

from __future__ import annotations

import pytest
import torch

from cortexmap.models import eager_attention, head_hooks, register_head_hooks
from tests.tiny import random_ids, tiny_handle


def test_head_hooks_read_the_per_head_view_of_the_out_projection_input():
    handle, ids = tiny_handle("gpt2"), random_ids()
    flat = {}
    raw = handle.out_proj(1).register_forward_pre_hook(lambda m, a: flat.setdefault("z", a[0].detach().clone()))
    seen = {}
    try:
        with head_hooks(handle, {1: lambda z: seen.setdefault("z", z.detach().clone())}), torch.no_grad():
            handle.model(input_ids=ids)
    finally:
        raw.remove()
    b, s, w = flat["z"].shape
    assert seen["z"].shape == (b, s, handle.n_heads, handle.d_head)
    assert torch.equal(seen["z"][:, :, 2], flat["z"][..., 2 * handle.d_head:3 * handle.d_head])


def test_a_returned_tensor_replaces_the_input_positionally_and_by_keyword():
    handle = tiny_handle("llama")
    proj = handle.out_proj(0)
    hooks = register_head_hooks(handle, {0: lambda z: z * 0})
    try:
        x = torch.randn(2, 3, handle.n_heads * handle.d_head)
        with torch.no_grad():
            assert torch.equal(proj(x), proj.bias.expand(2, 3, -1) if proj.bias is not None else torch.zeros(2, 3, proj.out_features))
            assert torch.equal(proj(input=x), proj(x))
    finally:
        for h in hooks:
            h.remove()
    assert not proj._forward_pre_hooks


def test_failed_registration_leaves_no_hook():
    handle = tiny_handle("llama")
    with pytest.raises(IndexError):
        register_head_hooks(handle, {0: lambda z: None, 99: lambda z: None})
    assert not handle.out_proj(0)._forward_pre_hooks


@pytest.mark.parametrize("start", ["sdpa", "eager"])
def test_eager_attention_switches_and_restores_on_error_too(start):
    handle = tiny_handle("llama")
    handle.model.set_attn_implementation(start)
    with pytest.raises(RuntimeError):
        with eager_attention(handle):
            assert handle.model.config._attn_implementation == "eager"
            raise RuntimeError("boom")
    assert handle.model.config._attn_implementation == start
    with eager_attention(handle.model):  # a Hugging Face model works as well as a handle
        out = handle.model(input_ids=random_ids(), output_attentions=True)
        handle.model.set_attn_implementation("sdpa")  # whatever happens inside, the entry state comes back
    assert out.attentions[0] is not None and handle.model.config._attn_implementation == start
