"""Record head outputs: the out-projection input of chosen layers, as ``[batch, seq, n_heads, d_head]``.

Inputs are anything :meth:`ModelHandle.to_tokens <cortexmap.models.ModelHandle.to_tokens>`
takes: a prompt, prompts of one token length, or token ids (cortexmap never pads).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch

from cortexmap.errors import InterventionError
from cortexmap.models.hooks import head_hooks


@contextmanager
def recording(handle: Any, layers: Sequence[int] | None = None, detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Context manager collecting each forward's head outputs into the yielded dict (layer -> z)."""
    store: dict[int, torch.Tensor] = {}

    def make(layer: int):  # noqa: ANN202
        def read(z: torch.Tensor) -> None:  # [batch, seq, n_heads, d_head]
            store[layer] = z.detach() if detach else z

        return read

    with head_hooks(handle, {layer: make(layer) for layer in (range(handle.n_layers) if layers is None else layers)}):
        yield store


@torch.no_grad()
def head_outputs(handle: Any, inputs: Any, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Run the model once and return ``{layer: z [batch, seq, n_heads, d_head]}``."""
    ids = handle.to_tokens(inputs)
    with recording(handle, layers) as store:
        handle.model(input_ids=ids, use_cache=False)
    return dict(store)


@torch.no_grad()
def mean_head_outputs(
    handle: Any, reference: Any, layers: Sequence[int] | None = None, per_position: bool = False
) -> dict[int, torch.Tensor]:
    """Mean head output over reference prompts: ``{layer: [1, seq or 1, n_heads, d_head]}``.

    Prompts of different lengths are run one at a time; ``per_position`` needs one length.
    """
    if isinstance(reference, Mapping):  # a tokenizer output
        reference = reference["input_ids"]
    texts = [reference] if isinstance(reference, str) else reference
    if isinstance(texts, torch.Tensor) or per_position:
        outs = head_outputs(handle, texts, layers)
        return {l: (z.mean(0, keepdim=True) if per_position else z.mean((0, 1), keepdim=True)) for l, z in outs.items()}
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for text in texts:
        ids = handle.to_tokens(text)
        for layer, z in head_outputs(handle, ids, layers).items():
            sums[layer] = sums.get(layer, 0) + z.sum((0, 1), keepdim=True)
        count += int(ids.numel())
    if count == 0:
        raise InterventionError("mean ablation needs at least one reference prompt")
    return {layer: s / count for layer, s in sums.items()}
