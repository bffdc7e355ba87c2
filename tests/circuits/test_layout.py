"""Which architectures circuits support, and the one-line refusals for the others."""

from __future__ import annotations

import pytest

from cortexmap.circuits import attribute_edges, circuit_metric
from cortexmap.circuits.layout import circuit_layout, unsupported_reason
from cortexmap.errors import UnsupportedArchitectureError
from cortexmap.models import wrap_model
from tests.circuits.tiny_circuits import SUPPORTED, UNSUPPORTED, circuit_handle, task_batch
from tests.tiny import ARCHS, tiny_model


@pytest.mark.parametrize("arch", SUPPORTED)
def test_supported_architectures_resolve_every_hook_point(arch):  # noqa: ANN001
    handle = circuit_handle(arch)
    assert unsupported_reason(handle) is None
    layout = circuit_layout(handle)
    assert len(layout.blocks) == handle.n_layers
    assert layout.out_weight(0).shape == (handle.model.config.hidden_size, handle.n_heads, handle.d_head)


@pytest.mark.parametrize("arch,why", [("gpt2", "fused"), ("gpt_neox", "fused"), ("gemma3_text", "normalizes")])
def test_unsupported_architectures_raise_one_line(arch, why):  # noqa: ANN001
    assert arch in UNSUPPORTED and arch in ARCHS
    handle = circuit_handle(arch)
    for call in (lambda: circuit_layout(handle), lambda: circuit_metric(handle, task_batch(), []),
                 lambda: attribute_edges(handle, task_batch(), "eap")):
        with pytest.raises(UnsupportedArchitectureError, match=why) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and message.startswith(handle.model_type)


def test_post_norm_opt_is_refused():
    model = tiny_model("opt")
    model.config.do_layer_norm_before = False  # the row's pre_norm_flag: OPT-350m's post-norm order
    with pytest.raises(UnsupportedArchitectureError, match="post-norm"):
        circuit_layout(wrap_model(model, spec="tiny-opt-post-norm"))
