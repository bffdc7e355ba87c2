"""The check's own prompts and the measuring helpers every invariant shares.

The prompts are a few ordinary English sentences, tokenized by the model's tokenizer and cut to
the shortest one's length so they form one batch (a model without a tokenizer gets seeded random
token ids). Each has a counterfactual twin that differs in one token past the middle, so patching
exercises the engine's shared-prefix path, and a target / foil token for a logit difference: the
clean run's top token and the corrupt run's (or the clean runner-up when they agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cortexmap.checks.report import tolerance_for

PROMPTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is Paris, and the capital of Italy is",
    "The keys to the old wooden cabinet in the hall were",
    "After the meeting ended, the manager thanked everyone and then",
)
MIN_TOKENS = 8


@dataclass
class CheckInputs:
    """Token ids and answers the invariants run on.

    Attributes:
        ids: ``[n, seq]`` prompts of one length.
        corrupt: ``[n, seq]`` the same with one token changed at ``changed``.
        changed: the position where ``corrupt`` differs (positions before it are shared).
        target, foil: ``[n]`` answer tokens of the logit difference.
        tolerance: the relative tolerance of the model's dtype.
    """

    ids: torch.Tensor
    corrupt: torch.Tensor
    changed: int
    target: torch.Tensor
    foil: torch.Tensor
    tolerance: float


def _token_ids(handle: Any, n: int, seed: int) -> torch.Tensor:
    tokenizer = handle.tokenizer
    if tokenizer is not None:
        rows = [list(tokenizer(p)["input_ids"]) for p in PROMPTS[:n]]
        length = min(len(r) for r in rows)
        if length >= MIN_TOKENS:
            return torch.tensor([r[:length] for r in rows])
    vocab = int(handle.model.get_input_embeddings().weight.shape[0])
    return torch.randint(1, vocab, (n, 12), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def check_inputs(handle: Any, n: int = 3, seed: int = 0) -> CheckInputs:
    """The check's prompts on ``handle``'s device, their twins and answers (see the module docstring)."""
    ids = _token_ids(handle, n, seed).to(handle.device)
    changed = ids.shape[1] // 2 + 1
    corrupt = ids.clone()
    corrupt[:, changed] = ids.roll(1, 0)[:, changed]  # another prompt's token at that position
    same = corrupt[:, changed] == ids[:, changed]
    corrupt[same, changed] = (ids[same, changed] + 1) % handle.model.get_input_embeddings().weight.shape[0]
    clean = plain_logits(handle, ids)[:, -1].float()
    bad = plain_logits(handle, corrupt)[:, -1].float()
    target = clean.argmax(-1)
    foil = bad.argmax(-1)
    runner_up = clean.topk(2, -1).indices[:, 1]
    foil = torch.where(foil == target, runner_up, foil)
    return CheckInputs(ids, corrupt, changed, target.cpu(), foil.cpu(), tolerance_for(handle.dtype))


@torch.no_grad()
def plain_logits(handle: Any, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` of one forward of the Hugging Face model (whatever hooks are registered)."""
    return handle.model(input_ids=ids, use_cache=False, **kwargs).logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``: the deviation of ``a`` from the reference ``b`` on the reference's scale."""
    a, b = a.double(), b.double()
    scale = b.abs().max().clamp_min(1e-12)
    return float(((a - b).abs().max() / scale).item())
