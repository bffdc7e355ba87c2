"""``cortexmap.check``: every tiny architecture passes, and each invariant fails when its assumption is broken.

Each breaking test changes one thing on a tiny model (the output projection's input order, a
KV-group fact, the attention mask, the intervention hooks) and asserts that the check names the
invariant that assumption underlies.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import cortexmap
from cortexmap.checks import check
from cortexmap.checks.report import InvariantResult
from cortexmap.models import ModelHandle
from tests.tiny import tiny_handle


def failed(report) -> set[str]:  # noqa: ANN001
    return {r.name for r in report.failures}


def test_every_tiny_architecture_passes_and_measures_its_invariants(arch):  # noqa: ANN001
    report = check(tiny_handle(arch), record=False)
    assert report.passed, report.failure_line()
    outcomes = {r.name: r.outcome for r in report.results}
    gated = [r for r in report.results if r.gate]
    assert len(gated) == 11 and outcomes["attribution_sign"] in ("reported", "not checked")
    unchecked = {name for name, o in outcomes.items() if o == "not checked"}
    assert unchecked <= {"head_values"}, unchecked  # only fused q/k/v models lack a value projection to read
    assert ("head_values" in unchecked) == (arch in ("gpt2", "gpt_neox"))
    assert outcomes["hooks_noop"] == "pass" and report.results[0].tolerance == 0.0  # bit-identical, not "close"


def test_fast_subset_is_the_gate_map_runs():  # noqa: D103
    report = check(tiny_handle("llama_gqa"), "fast", record=False)
    assert report.passed and [r.name for r in report.results] == [
        "hooks_noop", "identity", "geometry", "weight_edit", "projection_sum"]


class PermutedInput(torch.nn.Linear):
    """An output projection that reverses the order of the head blocks of its input before applying the weight:
    its input is not the heads concatenated in order, so a head's slice is not that head's columns' input."""

    n_heads = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        blocks = x.view(*x.shape[:-1], self.n_heads, -1).flip(-2)
        return super().forward(blocks.reshape(x.shape))


def test_output_projection_whose_input_is_not_the_concatenated_heads_fails():  # noqa: D103
    handle = tiny_handle("llama")
    old = handle.out_proj(1)
    new = PermutedInput(old.in_features, old.out_features, bias=old.bias is not None)
    new.load_state_dict(old.state_dict())
    handle.attention(1).o_proj = new
    report = check(handle, record=False)
    assert failed(report) == {"weight_edit", "projection_sum"}
    assert "weight_edit" in report.failure_line() and "\n" not in report.failure_line()


def test_heads_concatenated_out_of_order_fail_head_values():
    """The attention concatenates its heads in reverse order before the projection: every edit still matches the
    weights of the slot it edits, but slot h holds another head's output, so probes would read the wrong head."""
    handle = tiny_handle("llama_gqa")

    def reverse(module, args):  # noqa: ANN001, ANN202
        x = args[0]
        return (x.view(*x.shape[:-1], handle.n_heads, -1).flip(-2).reshape(x.shape),)

    handle.out_proj(2).register_forward_pre_hook(reverse)
    report = check(handle, record=False)
    assert failed(report) == {"head_values"}
    assert "L2" in report.failures[0].detail


def test_wrong_kv_group_fact_fails_the_geometry_invariant():  # noqa: D103
    good = tiny_handle("llama_gqa")
    wrong = ModelHandle(good.model, None, "tiny-wrong-kv", replace(good.geometry, n_kv_heads="num_attention_heads"))
    assert wrong.n_kv_heads == 4 and good.n_kv_heads == 2
    report = check(wrong, record=False)
    assert "geometry" in failed(report)
    line = next(r for r in report.failures if r.name == "geometry").detail
    assert "key width" in line and "query heads per KV head" in line


@pytest.mark.parametrize("arch, dropped", [("opt", ("attention_mask",)), ("llama", ("attention_mask", "position_ids"))])
def test_forward_that_ignores_the_attention_mask_fails_padding(arch, dropped):  # noqa: ANN001
    """OPT reads padding from the mask alone; llama-family models in transformers also recover it from restarting
    position ids (packed-sequence detection), so there a forward ignores padding only when it drops both."""
    handle = tiny_handle(arch)
    forward = handle.model.forward

    def no_mask(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        for name in dropped:
            kwargs.pop(name, None)
        return forward(*args, **kwargs)

    handle.model.forward = no_mask
    report = check(handle, record=False)
    assert failed(report) == {"padding"}
    assert "left padding" in report.failures[0].detail


def test_intervention_hook_silently_not_applied_fails(monkeypatch):  # noqa: ANN001, D103
    handle = tiny_handle("qwen2")
    monkeypatch.setattr("cortexmap.interventions.context.register_edits", lambda handle, edits: [])
    report = check(handle, record=False)
    assert {"weight_edit", "exact_sweep"} <= failed(report)
    assert "not applied" in next(r for r in report.failures if r.name == "weight_edit").detail


def test_a_nan_deviation_fails_rather_than_passes():  # noqa: D103
    from cortexmap.checks.report import measured

    assert measured("x", "claim", float("nan"), 1e-5).passed is False
    assert InvariantResult("x", "c", 0.5, 0.1, False, gate=False).failed is False  # reported rows never fail


def test_weight_edit_restores_the_weights():  # noqa: D103
    handle = tiny_handle("gpt2")
    before = {k: v.clone() for k, v in handle.model.state_dict().items()}
    check(handle, record=False)
    after = handle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_report_is_recorded_and_read_back_for_info(tmp_path, monkeypatch):  # noqa: ANN001, D103
    from cortexmap.checks import last_record

    monkeypatch.setenv("CORTEXMAP_CACHE", str(tmp_path))
    handle = cortexmap.wrap_model(tiny_handle("mistral").model, spec="tiny-mistral", model_hash="ab" * 32)
    assert last_record(handle.model_hash, "float32") is None
    report = check(handle, "fast")
    record = last_record(handle.model_hash, "float32")
    assert record["status"] == "passed" and record["subset"] == "fast" and record["checked_at"] == report.checked_at
    assert last_record(handle.model_hash, "bfloat16") is None  # a check holds for the dtype it ran in


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_bundled_models_pass(name, request):  # noqa: ANN001, D103
    report = check(request.getfixturevalue(name), record=False)
    assert report.passed, report.failure_line()
    assert all(r.outcome != "not checked" for r in report.results)
