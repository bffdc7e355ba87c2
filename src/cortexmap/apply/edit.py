"""Head editing with the weights baked in: scale or zero heads' output-projection columns.

``edit_model(handle, amplify={"L3H5": 0.5}, ablate=["L2H1"])`` returns a copy in which head
``L3H5``'s output is multiplied by ``1 + 0.5`` and ``L2H1``'s by ``0``, the same convention as
:func:`cortexmap.intervene`. The edit is linear in the head output, so it is exact as a weight
edit: the head's ``d_head`` input columns of the output projection (rows of GPT-2's ``Conv1D``
``c_proj``) are scaled. Shapes do not change, so :func:`~cortexmap.apply.save_model` writes a
directory plain ``transformers.AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import torch

from cortexmap.errors import CortexmapError
from cortexmap.heads import HeadId, HeadLike, as_head, as_heads
from cortexmap.interventions import HeadIntervention
from cortexmap.models import ModelHandle, wrap_model

log = logging.getLogger(__name__)


def head_factors(handle: ModelHandle, amplify: Mapping[Any, float] | None = None,
                 ablate: Iterable[HeadLike] | None = None, specs: Sequence[HeadIntervention] = ()) -> dict[HeadId, float]:
    """The multiplicative factor of every edited head (``1 + alpha``, or ``0`` when ablated).

    Raises:
        UnknownHeadError: a head outside the model.
        CortexmapError: a spec other than ``zero`` / ``amplify`` (not a fixed weight scale).
    """
    factors: dict[HeadId, float] = {}
    pairs = [(h, float(a)) for h, a in (amplify or {}).items()]
    for spec in specs:
        if spec.kind not in ("zero", "amplify"):
            raise CortexmapError(f"a {spec.kind!r} intervention cannot be baked into weights; edit with zero or amplify")
        pairs += [(h, -1.0 if spec.kind == "zero" else spec.alpha) for h in spec.heads]
    for head, alpha in pairs:
        key = handle.head(as_head(head))
        factors[key] = factors.get(key, 1.0) * (1.0 + alpha)
    for head in as_heads(list(ablate or [])):
        factors[handle.head(head)] = 0.0
    return factors


def edit_model(handle: ModelHandle, *specs: HeadIntervention, amplify: Mapping[Any, float] | None = None,
               ablate: Iterable[HeadLike] | None = None) -> ModelHandle:
    """Return a copy of the model with head amplifications and ablations baked into its weights.

    Args:
        handle: the model (left untouched).
        *specs: ``zero`` / ``amplify`` :class:`~cortexmap.interventions.HeadIntervention` objects (an edit plan).
        amplify: ``{head: alpha}``: the head's output is scaled by ``1 + alpha``.
        ablate: heads whose output is zeroed.

    Returns:
        A new :class:`~cortexmap.models.ModelHandle`; its forward equals the original under
        ``cortexmap.intervene(handle, amplify=amplify, ablate=ablate)``.

    Raises:
        UnknownHeadError: a head outside the model.
        CortexmapError: nothing to edit, or the model is pruned.
    """
    factors = head_factors(handle, amplify, ablate, specs)
    if not factors:
        raise CortexmapError("nothing to edit: give amplify={head: alpha} and/or ablate=[heads]")
    if getattr(handle.model.config, "cortexmap_pruning", None):
        raise CortexmapError("edit the unpruned model, then prune the edited copy (pruned layers have other head counts)")
    model = copy.deepcopy(handle.model)
    edited = wrap_model(model, handle.tokenizer, spec=f"{handle.spec}+edited", model_hash="")
    d = handle.d_head
    with torch.no_grad():
        for head, factor in sorted(factors.items()):
            weight = edited.out_proj(head.layer).weight
            span = slice(head.head * d, (head.head + 1) * d)
            if handle.geometry.out_proj_is_conv1d:  # Conv1D weight is [in, out]
                weight[span, :] *= factor
            else:  # Linear weight is [out, in]
                weight[:, span] *= factor
    log.info("baked %d head edits into the weights", len(factors))
    return edited


def _ids(handle: ModelHandle, prompt: str) -> torch.Tensor:
    if handle.tokenizer is None:
        raise CortexmapError("compare_generations needs a model with a tokenizer")
    return handle.tokenizer(prompt, return_tensors="pt")["input_ids"].to(handle.device)


@torch.no_grad()
def greedy_continuation(handle: ModelHandle, prompt: str | torch.Tensor, max_new_tokens: int = 32) -> torch.Tensor:
    """Greedy-decoded new token ids ``[n_new]`` after ``prompt`` (text or ids ``[1, seq]``)."""
    ids = prompt if isinstance(prompt, torch.Tensor) else _ids(handle, prompt)
    ids = ids if ids.dim() == 2 else ids[None]
    pad = getattr(handle.tokenizer, "eos_token_id", None) if handle.tokenizer is not None else None
    out = handle.model.generate(input_ids=ids.to(handle.device), attention_mask=torch.ones_like(ids),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return out[0, ids.shape[1]:].cpu()


def compare_generations(before: ModelHandle, after: ModelHandle, prompts: Sequence[str | torch.Tensor],
                        max_new_tokens: int = 32) -> pd.DataFrame:
    """Greedy continuations of each prompt by two models, side by side.

    Args:
        before: e.g. the original model.
        after: e.g. an edited or pruned copy.
        prompts: texts (needs tokenizers) or token ids.
        max_new_tokens: length of each continuation.

    Returns:
        One row per prompt: ``prompt, before, after, same, first_diff`` (index of the first
        differing new token, -1 when equal; texts are decoded when a tokenizer exists).
    """
    rows = []
    for prompt in prompts:
        a = greedy_continuation(before, prompt, max_new_tokens)
        b = greedy_continuation(after, prompt, max_new_tokens)
        n = min(len(a), len(b))
        diff = (a[:n] != b[:n]).nonzero()
        first = int(diff[0]) if len(diff) else (-1 if len(a) == len(b) else n)
        rows.append({"prompt": prompt if isinstance(prompt, str) else str(prompt.tolist()),
                     "before": _text(before, a), "after": _text(after, b), "same": first == -1, "first_diff": first})
    return pd.DataFrame(rows, columns=["prompt", "before", "after", "same", "first_diff"])


def _text(handle: ModelHandle, ids: torch.Tensor) -> str:
    if handle.tokenizer is None:
        return " ".join(str(i) for i in ids.tolist())
    return handle.tokenizer.decode(ids, skip_special_tokens=True)
