"""Which architectures circuits support, where fused q/k/v slices sit, and the one-line refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cortexmap.circuits import attribute_edges, circuit_metric
from cortexmap.circuits.graph import Graph
from cortexmap.circuits.layout import circuit_layout, unsupported_reason
from cortexmap.errors import UnsupportedArchitectureError
from cortexmap.models import wrap_model
from tests.circuits.test_patching import receiver_columns
from tests.circuits.tiny_circuits import FUSED, SANDWICH, SUPPORTED, circuit_handle, task_batch
from tests.tiny import ARCHS, tiny_model


@pytest.mark.parametrize("arch", SUPPORTED)
def test_supported_architectures_resolve_every_hook_point(arch):  # noqa: ANN001
    handle = circuit_handle(arch)
    assert unsupported_reason(handle) is None
    layout = circuit_layout(handle)
    assert len(layout.blocks) == handle.n_layers
    assert layout.out_weight(0).shape == (handle.model.config.hidden_size, handle.n_heads, handle.d_head)
    assert (layout.blocks[0].attn_out is not None) == (arch in SANDWICH)
    expected = {"gpt_neox": "parallel", **dict.fromkeys(SANDWICH, "sandwich")}.get(arch, "pre_norm")
    assert layout.graph.residual == expected
    projections = layout.projections(0)
    assert len(projections) == (1 if arch in FUSED else 3)
    assert sum(len(p.columns) for p in projections) == layout.graph.n_attention_receivers


def test_every_tiny_architecture_is_supported():
    assert set(ARCHS) <= set(SUPPORTED)


@torch.no_grad()
def _probe(handle, kind: str, slot: int):  # noqa: ANN001, ANN202
    """Shift ``kind``'s columns of ``slot`` in layer 0's fused output; return which heads' z, which
    positions' z and which heads' attention weights moved.

    Queries are shifted at the last position, keys and values at position 0 (which every query sees).
    """
    attn = getattr(handle.blocks()[0], handle.geometry.attn)
    fused, columns = getattr(attn, handle.geometry.qkv_fused), receiver_columns(handle, kind, slot)
    ids = task_batch().input_ids
    position = ids.shape[1] - 1 if kind == "q" else 0

    def shift(module, args, out):  # noqa: ANN001, ANN202
        out = out.clone()
        out[:, position, columns] += 3.0
        return out

    def run(edit: bool):  # noqa: ANN202
        found = {}
        hooks = [handle.out_proj(0).register_forward_pre_hook(lambda m, a: found.setdefault("z", a[0].clone()))]
        if edit:
            hooks.append(fused.register_forward_hook(shift))
        try:
            weights = handle.model(input_ids=ids, output_attentions=True).attentions[0]  # [b, H, s, s]
        finally:
            for hook in hooks:
                hook.remove()
        return found["z"].reshape(*ids.shape, handle.n_heads, -1), weights  # z [b, s, H, d]

    (z0, w0), (z1, w1) = run(False), run(True)
    moved = lambda x, dims: {int(i) for i in (x.abs().amax(dims) > 1e-6).nonzero()}  # noqa: E731
    return moved(z1 - z0, (0, 1, 3)), moved(z1 - z0, (0, 2, 3)), moved(w1 - w0, (0, 2, 3))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_fused_columns_are_where_the_model_reads_them(arch):  # noqa: ANN001
    """The test's column map (written from transformers' code) is what the model reads, and the layout's equals it."""
    handle = circuit_handle(arch)
    layout = circuit_layout(handle)
    seq = task_batch().input_ids.shape[1]
    for slot in range(handle.n_heads):
        heads, positions, attended = _probe(handle, "q", slot)
        assert heads == {slot} and positions == {seq - 1} and attended == {slot}
        heads, positions, attended = _probe(handle, "k", slot)
        assert heads == {slot} and attended == {slot} and len(positions) > 1
        heads, positions, attended = _probe(handle, "v", slot)
        assert heads == {slot} and attended == set() and positions == set(range(seq))
        for kind in "qkv":
            assert torch.equal(layout.columns(kind)[slot].cpu(), receiver_columns(handle, kind, slot))


def test_post_norm_opt_is_refused():
    model = tiny_model("opt")
    model.config.do_layer_norm_before = False  # the row's pre_norm_flag: OPT-350m's post-norm order
    handle = wrap_model(model, spec="tiny-opt-post-norm")
    for call in (lambda: circuit_layout(handle), lambda: circuit_metric(handle, task_batch(), []),
                 lambda: attribute_edges(handle, task_batch(), "eap"), lambda: Graph.for_model(handle)):
        with pytest.raises(UnsupportedArchitectureError, match="post") as info:
            call()
        message = str(info.value)
        assert "\n" not in message and message.startswith("opt")


def test_a_row_without_block_layout_is_refused():
    handle = circuit_handle("llama")
    handle.geometry = replace(handle.geometry, block=None)
    with pytest.raises(UnsupportedArchitectureError, match="no block layout"):
        circuit_layout(handle)
