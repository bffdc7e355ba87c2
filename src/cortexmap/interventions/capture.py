"""Record head outputs: the out-projection input of chosen layers, as ``[batch, seq, n_heads, d_head]``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from cortexmap.errors import InterventionError


def to_ids(handle: Any, inputs: Any) -> torch.Tensor:
    """Token ids ``[batch, seq]`` on the model's device from a string, equal-length strings or ids.

    Raises:
        InterventionError: strings of different token lengths (cortexmap never pads).
    """
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs[None]
        return ids.to(handle.device)
    if isinstance(inputs, dict):
        return to_ids(handle, inputs["input_ids"])
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    encoded = [handle.tokenizer(t, return_tensors="pt")["input_ids"][0] for t in texts]
    lengths = {len(e) for e in encoded}
    if len(lengths) != 1:
        raise InterventionError(
            f"prompts tokenize to different lengths {sorted(lengths)}; give prompts of one length "
            "(cortexmap does not pad) or pass them one at a time"
        )
    return torch.stack(encoded).to(handle.device)


@contextmanager
def recording(handle: Any, layers: Sequence[int] | None = None, detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Context manager collecting each forward's head outputs into the yielded dict (layer -> z)."""
    store: dict[int, torch.Tensor] = {}
    hooks = []

    def make(layer: int):  # noqa: ANN202
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            z = args[0] if args else next(iter(kwargs.values()))
            b, s, w = z.shape
            z = z.view(b, s, handle.n_heads, w // handle.n_heads)
            store[layer] = z.detach() if detach else z

        return hook

    try:
        for layer in range(handle.n_layers) if layers is None else layers:
            hooks.append(handle.out_proj(layer).register_forward_pre_hook(make(layer), with_kwargs=True))
        yield store
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def head_outputs(handle: Any, inputs: Any, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Run the model once and return ``{layer: z [batch, seq, n_heads, d_head]}``."""
    ids = to_ids(handle, inputs)
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
    texts = [reference] if isinstance(reference, str) else reference
    if isinstance(texts, torch.Tensor) or per_position:
        outs = head_outputs(handle, texts, layers)
        return {l: (z.mean(0, keepdim=True) if per_position else z.mean((0, 1), keepdim=True)) for l, z in outs.items()}
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for text in texts:
        for layer, z in head_outputs(handle, text, layers).items():
            sums[layer] = sums.get(layer, 0) + z.sum((0, 1), keepdim=True)
        count += int(to_ids(handle, text).numel())
    if count == 0:
        raise InterventionError("mean ablation needs at least one reference prompt")
    return {layer: s / count for layer, s in sums.items()}
