"""Monitor chosen heads while a model generates: output norm and attention entropy per token.

Example::

    with monitor(model, heads=["L3H5", "L12H1"], thresholds={"entropy": (0.5, None)}) as rec:
        out = model.model.generate(input_ids=ids, max_new_tokens=20, do_sample=False)
    frame = rec.frame(out)      # step, row, token_id, token, head_id, layer, head, norm, entropy, flag

One *step* is one forward call. During cached generation the first step runs the prompt and
later steps one token each; step ``i`` is the forward that produced generated token ``i``, and
every value is read at its newest position (the last prompt token for step 0):

* ``norm``: L2 norm of the head's output ``z`` (its ``d_head`` slice of the out-projection input);
* ``entropy``: entropy (nats) of the head's attention distribution over keys.

Attention weights exist only with eager attention, so the monitor switches the model to
``eager`` for the ``with`` block (``model.set_attn_implementation``) and restores it afterwards.
``thresholds`` ``{"norm": (lo, hi), "entropy": (lo, hi)}`` (either bound may be ``None``) flag
values outside the range: ``flag`` is e.g. ``"entropy<0.5"``, or ``""``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import pandas as pd
import torch

from cortexmap.errors import InterventionError
from cortexmap.heads import HeadId, HeadLike, as_heads
from cortexmap.models import ModelHandle
from cortexmap.models.hooks import eager_attention, register_head_hooks

log = logging.getLogger(__name__)

METRICS = ("norm", "entropy")
COLUMNS = ["step", "row", "token_id", "token", "head_id", "layer", "head", "norm", "entropy", "flag"]


def _check_thresholds(thresholds: Mapping[str, Any] | None) -> dict[str, tuple[float | None, float | None]]:
    checked: dict[str, tuple[float | None, float | None]] = {}
    for name, bounds in (thresholds or {}).items():
        if name not in METRICS:
            raise InterventionError(f"unknown monitor threshold {name!r}: use 'norm' and/or 'entropy'")
        try:
            lo, hi = bounds
        except (TypeError, ValueError):
            raise InterventionError(f"threshold {name!r} must be a (low, high) pair, e.g. (0.5, None)") from None
        checked[name] = (None if lo is None else float(lo), None if hi is None else float(hi))
    return checked


class Monitor:
    """Records head norms and attention entropies per forward step; build it with :func:`monitor`."""

    def __init__(self, handle: ModelHandle, heads: list[HeadId],
                 thresholds: dict[str, tuple[float | None, float | None]]) -> None:
        self.handle = handle
        self.heads = heads
        self.thresholds = thresholds
        self.step = -1
        self.inputs: list[torch.Tensor] = []  # input ids of each step  # [batch, seq]
        self._norms: dict[tuple[int, int], torch.Tensor] = {}  # (step, layer) -> [batch, n_heads]
        self._entropies: dict[tuple[int, int], torch.Tensor] = {}
        self._hooks: list[Any] = []
        self._eager: Any = None  # the eager_attention switch while active

    def __enter__(self) -> "Monitor":
        if self._hooks:
            raise InterventionError("this monitor is already active; build a new one with monitor(...)")
        model = self.handle.model
        self._eager = eager_attention(model)
        self._eager.__enter__()
        try:
            self._hooks.append(model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
            layers = sorted({h.layer for h in self.heads})
            self._hooks += register_head_hooks(self.handle, {layer: self._on_z(layer) for layer in layers})
            for layer in layers:
                self._hooks.append(self.handle.attention(layer).register_forward_hook(self._on_attention(layer)))
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._eager is not None:
            self._eager.__exit__(None, None, None)
            self._eager = None

    def _on_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.step += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.inputs.append(ids.detach().cpu() if isinstance(ids, torch.Tensor) else torch.zeros(0, 0, dtype=torch.long))

    def _on_z(self, layer: int) -> Any:
        def read(z: torch.Tensor) -> None:  # [batch, seq, n_heads, d_head]
            last = z[:, -1].detach().float()  # [batch, n_heads, d_head]
            self._norms[(self.step, layer)] = last.norm(dim=-1).cpu()

        return read

    def _on_attention(self, layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise InterventionError(
                    f"layer {layer} returned no attention weights; the monitor needs eager attention "
                    "(load the model with attn_implementation='eager')"
                )
            p = weights[:, :, -1].detach().float()  # [batch, n_heads, keys]
            self._entropies[(self.step, layer)] = torch.special.entr(p).sum(-1).cpu()

        return hook

    def _flag(self, values: dict[str, float]) -> str:
        reasons = []
        for name, (lo, hi) in self.thresholds.items():
            if lo is not None and values[name] < lo:
                reasons.append(f"{name}<{lo:g}")
            if hi is not None and values[name] > hi:
                reasons.append(f"{name}>{hi:g}")
        return ",".join(reasons)

    def _token(self, step: int, row: int, sequences: torch.Tensor | None) -> int:
        """The token step ``step`` produced: the next step's input, or the generated sequence."""
        if step + 1 < len(self.inputs) and self.inputs[step + 1].shape[1] == 1:
            return int(self.inputs[step + 1][row, -1])
        if sequences is not None:
            prompt = self.inputs[0].shape[1]
            if prompt + step < sequences.shape[1]:
                return int(sequences[row, prompt + step])
        return -1

    def frame(self, sequences: torch.Tensor | None = None) -> pd.DataFrame:
        """The records as a tidy DataFrame (one row per step, batch row and head).

        Args:
            sequences: the ``generate`` output ``[batch, prompt + new]``; it names the token of the
                last step (otherwise ``token_id`` is -1 there).

        Returns:
            Columns ``step, row, token_id, token, head_id, layer, head, norm, entropy, flag``.
        """
        tokenizer = self.handle.tokenizer
        rows = []
        for (step, layer), norms in sorted(self._norms.items()):
            entropies = self._entropies.get((step, layer))
            for row in range(norms.shape[0]):
                token_id = self._token(step, row, sequences)
                token = tokenizer.decode([token_id]) if tokenizer is not None and token_id >= 0 else ""
                for head in (h for h in self.heads if h.layer == layer):
                    values = {"norm": float(norms[row, head.head]),
                              "entropy": float(entropies[row, head.head]) if entropies is not None else float("nan")}
                    rows.append({"step": step, "row": row, "token_id": token_id, "token": token, "head_id": str(head),
                                 "layer": layer, "head": head.head, **values, "flag": self._flag(values)})
        return pd.DataFrame(rows, columns=COLUMNS)

    def flags(self, sequences: torch.Tensor | None = None) -> pd.DataFrame:
        """Only the flagged rows of :meth:`frame`."""
        frame = self.frame(sequences)
        return frame[frame["flag"] != ""].reset_index(drop=True)


def monitor(handle: ModelHandle, heads: Iterable[HeadLike], thresholds: Mapping[str, Any] | None = None) -> Monitor:
    """Build a context manager recording per-token norms and attention entropies of ``heads``.

    Args:
        handle: the model (any forward or ``generate`` inside the ``with`` block is recorded).
        heads: the heads to watch.
        thresholds: ``{"norm": (lo, hi), "entropy": (lo, hi)}``; ``None`` bounds are open.

    Returns:
        A :class:`Monitor`; after the block, ``rec.frame(generated)`` gives the records.

    Raises:
        UnknownHeadError: a head outside the model.
        InterventionError: no heads, or malformed thresholds.
    """
    chosen = [handle.head(h) for h in as_heads(list(heads) if not isinstance(heads, str) else heads)]
    if not chosen:
        raise InterventionError("monitor needs at least one head, e.g. heads=['L3H5']")
    if getattr(handle.model.config, "cortexmap_pruning", None):
        raise InterventionError("monitoring a pruned model is not supported: monitor the original or an edited copy")
    return Monitor(handle, chosen, _check_thresholds(thresholds))
