"""Interventions that carry their own inputs compose in one ``intervene`` call (checked by hand-written hooks)."""

from __future__ import annotations

import pytest
import torch

import cortexmap
from cortexmap.errors import InterventionError
from cortexmap.interventions import ablation, amplification, patching
from tests.tiny import random_ids, tiny_handle

ATOL = 1e-5


def logits(handle, ids):  # noqa: ANN001, ANN201
    with torch.no_grad():
        return handle.model(input_ids=ids, use_cache=False).logits


def raw_z(handle, ids, layer: int) -> torch.Tensor:  # noqa: ANN001
    """The out-projection input of ``layer`` on ``ids``, read with a plain torch hook: ``[b, s, width]``."""
    seen = {}
    hook = handle.out_proj(layer).register_forward_pre_hook(lambda m, a: seen.setdefault("z", a[0].detach().clone()))
    try:
        logits(handle, ids)
    finally:
        hook.remove()
    return seen["z"]


def with_slices(handle, ids, replacements: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    """Logits with head ``(layer, head)``'s slice of the out-projection input set by hand."""
    d, hooks = handle.d_head, []

    def make(layer: int):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            z = args[0].clone()
            for (lay, head), value in replacements.items():
                if lay == layer:
                    z[..., head * d:(head + 1) * d] = value
            return (z,)

        return hook

    for layer in sorted({lay for lay, _ in replacements}):
        hooks.append(handle.out_proj(layer).register_forward_pre_hook(make(layer)))
    try:
        return logits(handle, ids)
    finally:
        for h in hooks:
            h.remove()


def test_two_patches_from_different_sources_compose_in_one_block(arch):  # noqa: ANN001
    handle = tiny_handle(arch)
    base, a, b = random_ids(seed=1), random_ids(seed=2), random_ids(seed=3)
    d = handle.d_head
    expected = with_slices(handle, base, {
        (0, 1): raw_z(handle, a, 0)[..., 1 * d:2 * d],
        (2, 3): raw_z(handle, b, 2)[..., 3 * d:4 * d],
        (2, 0): raw_z(handle, b, 2)[..., 0:d],
    })
    with cortexmap.intervene(handle, patching("L0H1", source=a), patching(["L2H3", "L2H0"], source=b)):
        hooked = logits(handle, base)
    assert torch.allclose(hooked, expected, atol=ATOL)
    with cortexmap.intervene(handle, patching("L0H1", source=a)):
        only_a = logits(handle, base)
    assert not torch.allclose(hooked, only_a, atol=1e-4)  # the second source mattered


def test_a_spec_keeps_its_own_inputs_and_the_keywords_fill_the_rest():
    handle = tiny_handle("llama_gqa")
    base, a, b = random_ids(seed=1), random_ids(seed=2), random_ids(seed=3)
    with cortexmap.intervene(handle, patching("L1H0", source=a), patch=["L2H1"], source=b):
        mixed = logits(handle, base)
    outer = cortexmap.intervene(handle, patching("L1H0", source=a))
    inner = cortexmap.intervene(handle, patch=["L2H1"], source=b)  # built outside: its source run is clean
    with outer, inner:
        nested = logits(handle, base)
    assert torch.allclose(mixed, nested, atol=ATOL)
    ref_a, ref_b = random_ids(batch=4, seq=5, seed=4), random_ids(batch=4, seq=9, seed=5)
    one = cortexmap.intervene(handle, ablation("L0H0", "mean", reference=ref_a), ablation("L2H2", "mean", reference=ref_b))
    first = cortexmap.intervene(handle, mean_ablate=["L0H0"], reference=ref_a)
    second = cortexmap.intervene(handle, mean_ablate=["L2H2"], reference=ref_b)
    with one:
        together = logits(handle, base)
    with first, second:
        apart = logits(handle, base)
    assert torch.allclose(together, apart, atol=ATOL)


def test_sources_of_incompatible_rows_fail_with_one_line():
    handle = tiny_handle("llama")
    with pytest.raises(InterventionError, match="have 2 and 3 rows"):
        cortexmap.intervene(handle, patching("L1H0", source=random_ids(batch=2)), patching("L1H1", source=random_ids(batch=3)))
    with pytest.raises(InterventionError, match="needs a source"):
        patching("L1H0", source=None)


@pytest.mark.parametrize("factor", [2.0, 0.25, -1.5])
def test_amplification_multiplies_the_head_output_by_its_factor(arch, factor):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    d = handle.d_head
    expected = with_slices(handle, ids, {(1, 2): raw_z(handle, ids, 1)[..., 2 * d:3 * d] * factor})
    with cortexmap.intervene(handle, amplification("L1H2", factor=factor)):
        by_factor = logits(handle, ids)
    with cortexmap.intervene(handle, amplify={"L1H2": factor - 1.0}):
        by_alpha = logits(handle, ids)
    assert torch.allclose(by_factor, expected, atol=ATOL)
    assert torch.allclose(by_alpha, by_factor, atol=1e-6)


def test_factor_two_is_alpha_one_and_factor_one_is_the_model_bit_for_bit():
    handle, ids = tiny_handle("qwen2"), random_ids()
    assert amplification("L0H0", factor=2.0) == amplification("L0H0", alpha=1.0)
    with cortexmap.intervene(handle, amplification(["L0H0", "L2H3"], factor=1.0)):
        same = logits(handle, ids)
    assert torch.equal(same, logits(handle, ids))
    for bad in ({}, {"alpha": 1.0, "factor": 2.0}):
        with pytest.raises(InterventionError, match="either alpha"):
            amplification("L0H0", **bad)


def test_inputs_travel_in_the_spec_dict():
    ids = random_ids(batch=2, seq=4)
    for spec in (patching("L1H0", source=ids), patching("L1H0", source=["a b", "c d"]),
                 ablation("L0H1", "resample", reference="x y", seed=3), amplification("L2H2", factor=3.0)):
        data = spec.to_dict()
        back = type(spec).from_dict(data)
        assert back == spec and back.to_dict() == data
    assert patching("L1H0", source=ids).to_dict()["source"] == {"input_ids": ids.tolist()}
    assert "reference" not in ablation("L0H1", "mean", reference={0: torch.zeros(1, 1, 4, 8)}).to_dict()


def test_mean_reference_may_be_a_tokenizer_output():
    from tests.tiny import char_tokenizer

    handle = cortexmap.load_model(tiny_handle("llama").model, tokenizer=char_tokenizer())
    encoded = handle.tokenizer(["abcd", "dcba"], return_tensors="pt")
    base = random_ids(seed=1)
    with cortexmap.intervene(handle, mean_ablate=["L1H1"], reference=encoded):
        from_encoding = logits(handle, base)
    with cortexmap.intervene(handle, mean_ablate=["L1H1"], reference=encoded["input_ids"]):
        from_ids = logits(handle, base)
    assert torch.equal(from_encoding, from_ids)
