"""What each sender writes to the residual stream: recorded from one forward pass, and differenced.

Conventions fixed here:

* ``emb`` writes the first block's input ``[batch, seq, d_model]``: the token embeddings plus
  whatever the model adds before the first block (positions, Gemma's scaling).
* Head ``(l, h)`` writes ``z[:, :, h] @ W_O[:, h].T``: its output through its own slice of the
  output projection, **without the projection's bias**. The bias (like every other term that does
  not depend on the input) is identical in the clean, corrupt and mean runs, so it is no sender:
  it stays in every receiver's input and never enters a ``source - clean`` difference. Heads are
  recorded as ``z [batch, seq, n_heads, d_head]`` and projected when a difference is needed.
* ``A{l}`` (sandwich blocks) writes the post-attention norm's output, the layer's whole attention term.
* ``M{l}`` writes the MLP module's output (on sandwich blocks its post-norm's output).
* **Mean** ablation replaces a sender's output by its mean over the batch's prompts, position by
  position (``[1, seq, ...]``; the prompts of a batch share one length).
* A **store** holds ``source - current`` per sender in residual space, as chunks in sender order
  (:attr:`Graph.sender_groups <cortexmap.circuits.graph.Graph.sender_groups>`, one chunk per group):
  emb ``[1, rows, seq * d_model]``, then per layer its heads ``[n_heads, rows, seq * d_model]``,
  ``A{l}`` on sandwich blocks and its MLP, ``[1, rows, seq * d_model]`` each.
  The sender axis comes first so that a receiver's weights contract with a chunk by one matmul.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cortexmap.circuits.layout import Layout
from cortexmap.errors import InterventionError
from cortexmap.models.hooks import register_head_hooks

ABLATIONS: tuple[str, ...] = ("corrupt", "mean", "zero")


@dataclass
class Contributions:
    """Every sender's output in one run (or their batch means).

    Attributes:
        emb: ``[batch, seq, d_model]``.
        z: per layer, head outputs ``[batch, seq, n_heads, d_head]``.
        mlp: per layer, ``[batch, seq, d_model]``.
        last_logits: ``[batch, vocab]`` of the run (None for means).
        attn: per layer, the normalized attention output ``[batch, seq, d_model]`` (sandwich blocks; else empty).
    """

    emb: torch.Tensor
    z: list[torch.Tensor]
    mlp: list[torch.Tensor]
    last_logits: torch.Tensor | None = None
    attn: list[torch.Tensor] = field(default_factory=list)

    def _each(self, fn: Any) -> "Contributions":
        return Contributions(fn(self.emb), [fn(z) for z in self.z], [fn(m) for m in self.mlp],
                             attn=[fn(a) for a in self.attn])

    def mean(self) -> "Contributions":
        """Per-position means over the batch, ``[1, seq, ...]``."""
        return self._each(lambda x: x.mean(0, keepdim=True))

    def zeros(self) -> "Contributions":
        """Zeros of the per-position shapes, ``[1, seq, ...]``: a patched edge carries nothing."""
        return self._each(lambda x: torch.zeros_like(x[:1]))

    def output(self, kind: str, layer: int) -> torch.Tensor:
        """The residual-space output of sender group ``kind`` (``"emb"``, ``"attn"``, ``"mlp"``) of ``layer``."""
        return self.emb if kind == "emb" else (self.attn if kind == "attn" else self.mlp)[layer]


def hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden-state argument of a block or norm call (first positional, or ``hidden_states``)."""
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def record_contributions(layout: Layout, input_ids: torch.Tensor) -> Contributions:
    """Run the model once on ``input_ids [batch, seq]`` and record every sender's output."""
    handle = layout.handle
    batch, seq = input_ids.shape
    found: dict[str, Any] = {"z": {}, "mlp": {}, "attn": {}}

    def emb_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        found["emb"] = hidden_arg(args, kwargs).detach().clone()

    def z_store(layer: int):  # noqa: ANN202
        def store(z: torch.Tensor) -> None:  # [batch, seq, n_heads, d_head]
            found["z"][layer] = z.detach().clone()

        return store

    def output_store(kind: str, layer: int):  # noqa: ANN202
        def store(module: Any, args: tuple[Any, ...], out: Any) -> None:
            out = out[0] if isinstance(out, tuple) else out
            found[kind][layer] = out.detach().reshape(batch, seq, -1).clone()  # OPT's fc2 sees [batch * seq, d]

        return store

    hooks = [layout.first_block.register_forward_pre_hook(emb_hook, with_kwargs=True)]
    try:
        hooks += register_head_hooks(handle, {layer: z_store(layer) for layer in range(handle.n_layers)})
        for layer, b in enumerate(layout.blocks):
            hooks.append(b.mlp_out.register_forward_hook(output_store("mlp", layer)))
            if b.attn_out is not None:
                hooks.append(b.attn_out.register_forward_hook(output_store("attn", layer)))
        out = handle.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    n = handle.n_layers
    return Contributions(found["emb"], [found["z"][l] for l in range(n)], [found["mlp"][l] for l in range(n)],
                         out.logits[:, -1].detach(), [found["attn"][l] for l in sorted(found["attn"])])


def source_contributions(layout: Layout, input_ids: torch.Tensor, corrupt_ids: torch.Tensor | None,
                         ablation: str, clean: Contributions | None = None) -> Contributions:
    """The source run an ablated edge carries: the corrupt prompts' run, the clean batch mean, or zeros.

    Args:
        layout: the model's hook points.
        input_ids: the clean prompts ``[batch, seq]``.
        corrupt_ids: the corrupt prompts, same shape (needed for ``"corrupt"``).
        ablation: ``"corrupt"``, ``"mean"`` or ``"zero"`` (the edge carries nothing: the sender's
            direct contribution to the receiver is removed; needs no other prompts of the same length).
        clean: the clean run's contributions, if already recorded (saves a pass for ``"mean"`` / ``"zero"``).

    Raises:
        InterventionError: an unknown ablation, or ``"corrupt"`` without corrupt prompts of the
            clean prompts' shape.
    """
    if ablation in ("mean", "zero"):
        recorded = clean if clean is not None else record_contributions(layout, input_ids)
        return recorded.mean() if ablation == "mean" else recorded.zeros()
    if ablation != "corrupt":
        raise InterventionError(f"unknown ablation {ablation!r}: use one of {', '.join(ABLATIONS)}")
    if corrupt_ids is None:
        raise InterventionError("corrupt ablation needs corrupt prompts, and this batch has none; use ablation='mean'")
    if tuple(corrupt_ids.shape) != tuple(input_ids.shape):
        raise InterventionError(
            f"corrupt prompts have shape {tuple(corrupt_ids.shape)} but clean ones {tuple(input_ids.shape)}; "
            "path patching needs pairs of one token length"
        )
    return record_contributions(layout, corrupt_ids)


def head_chunk(layout: Layout, layer: int, dz: torch.Tensor) -> torch.Tensor:
    """Residual-space differences of layer ``layer``'s heads.

    ``dz [rows, seq, H, d_head]`` (z differences) -> chunk ``[H, rows, seq * d_model]``.
    """
    per_head = torch.einsum("bshd,Dhd->hbsD", dz, layout.out_weight(layer).to(dz.dtype))
    return per_head.reshape(per_head.shape[0], per_head.shape[1], -1)


def residual_chunk(diff: torch.Tensor) -> torch.Tensor:
    """``[rows, seq, d]`` -> one sender's chunk ``[1, rows, seq * d]``."""
    return diff.reshape(1, diff.shape[0], -1)


@torch.no_grad()
def difference_store(layout: Layout, source: Contributions, current: Contributions,
                     compact: bool = False) -> list[torch.Tensor]:
    """``source - current`` for every sender, as store chunks (see the module docstring).

    ``compact``: keep each layer's head differences as z differences ``[rows, seq, H, d_head]``
    (``d_model / (H * d_head)``, typically ``1 / H``, of the residual-space chunk), for a reader
    that projects them with :func:`head_chunk` when it needs them.
    """
    chunks = []
    for group in layout.graph.sender_groups:
        if group.kind == "heads":
            dz = source.z[group.layer] - current.z[group.layer]
            chunks.append(dz if compact else head_chunk(layout, group.layer, dz))
        else:
            kind, layer = group.kind, group.layer
            chunks.append(residual_chunk(source.output(kind, layer) - current.output(kind, layer)))
    return chunks
