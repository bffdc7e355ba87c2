"""``intervene``: a context manager that applies head interventions around any forward or ``generate``.

Example::

    with cortexmap.intervene(model, ablate=[(3, 4)], amplify={(12, 3): 0.5}):
        text = model.generate("The capital of France is")

    # Two patches, each from its own source, in one block:
    with cortexmap.intervene(model, patching("L5H1", source=a), patching("L9H0", source=b)):
        logits = model(base)

``__enter__`` registers one pre-hook per edited layer and keeps the handles; ``__exit__`` removes
exactly those, also on error. Nested ``with`` blocks compose (edits apply in entry order).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import torch

from cortexmap.errors import InterventionError
from cortexmap.heads import HeadId, HeadLike, as_head, as_heads
from cortexmap.interventions.capture import head_outputs, mean_head_outputs
from cortexmap.interventions.edit import LayerEdit, register_edits
from cortexmap.interventions.specs import HeadIntervention


class Intervention:
    """Edits on a model's heads, active inside a ``with`` block. Build it with :func:`intervene`."""

    def __init__(self, handle: Any, edits: dict[int, LayerEdit], specs: list[HeadIntervention]) -> None:
        self.handle = handle
        self.edits = edits
        self.specs = specs
        self._hooks: list[Any] = []

    def __enter__(self) -> "Intervention":
        if self._hooks:
            raise InterventionError("this intervention is already active; nest a new intervene(...) instead")
        self._hooks = register_edits(self.handle, self.edits)
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def to_dict(self) -> dict[str, Any]:
        return {"interventions": [s.to_dict() for s in self.specs]}


class _Builder:
    """Accumulates per-layer edits for a handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.edits: dict[int, LayerEdit] = {}

    def _edit(self, layer: int) -> LayerEdit:
        if layer not in self.edits:
            n = self.handle.n_heads
            self.edits[layer] = LayerEdit(scale=torch.ones(1, n, device=self.handle.device))
        return self.edits[layer]

    def scale(self, head: HeadId, factor: float) -> None:
        self._edit(head.layer).scale[:, head.head] *= factor

    def replace(self, head: HeadId, values: torch.Tensor) -> None:
        """``values``: ``[rows, seq or 1, d_head]`` for this head."""
        edit = self._edit(head.layer)
        n, d = self.handle.n_heads, self.handle.d_head
        rows, seq = values.shape[0], values.shape[1]
        if edit.replace is None:
            edit.replace = torch.zeros(rows, seq, n, d, device=values.device, dtype=values.dtype)
            edit.replace_mask = torch.zeros(1, n, dtype=torch.bool, device=values.device)
        elif edit.replace.shape[:2] != (rows, seq):
            for have, new, what in ((edit.replace.shape[0], rows, "rows"), (edit.replace.shape[1], seq, "positions")):
                if 1 not in (have, new) and have != new:
                    raise InterventionError(
                        f"replacement activations of layer {head.layer} have {have} and {new} {what}: "
                        "sources and references in one intervene call must agree (or have one row / position)"
                    )
            edit.replace = edit.replace.expand(max(rows, edit.replace.shape[0]), max(seq, edit.replace.shape[1]), n, d).clone()
        edit.replace[:, :, head.head] = values
        edit.replace_mask[:, head.head] = True


def intervene(
    handle: Any,
    *specs: HeadIntervention,
    ablate: Iterable[HeadLike] | None = None,
    amplify: Mapping[Any, float] | None = None,
    mean_ablate: Iterable[HeadLike] | None = None,
    resample: Iterable[HeadLike] | None = None,
    patch: Iterable[HeadLike] | None = None,
    source: Any = None,
    reference: Any = None,
    per_position: bool = False,
    positions: Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
) -> Intervention:
    """Build a context manager that intervenes on attention heads.

    Every forward pass inside the ``with`` block sees the edits: ``handle(...)``,
    ``handle.generate(...)``, ``handle.model(...)`` alike.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.
        *specs: :class:`HeadIntervention` objects, each with its own ``source`` / ``reference``
            (build them with :func:`ablation`, :func:`amplification`, :func:`patching`); two
            patches from different sources compose here.
        ablate: heads to zero-ablate.
        amplify: ``{head: alpha}``: multiply each head's output by ``1 + alpha`` (``0`` leaves it,
            ``-1`` zero-ablates, ``1`` doubles; :func:`amplification` takes ``factor=`` too).
        mean_ablate: heads replaced by their mean output over ``reference`` prompts.
        resample: heads replaced by their output on a random ``reference`` prompt (seeded); the
            reference prompts must tokenize to the length of the inputs the model is run on.
        patch: heads whose output is taken from the ``source`` prompt(s) (activation patching);
            ``source`` must tokenize to the same length as the input (one row, or one per batch row).
        source: prompt(s) or token ids for ``patch``, and for specs without their own source.
        reference: prompt(s) or token ids for ``mean_ablate`` / ``resample`` (and specs without
            their own), or a precomputed ``{layer: mean z}`` dict from :func:`mean_head_outputs`.
        per_position: mean ablation with the per-position mean (reference of one length).
        positions: restrict every edit to these token positions of each forward.
        seed: seed of resample ablation (for specs without their own).

    Returns:
        An :class:`Intervention`; use it in a ``with`` block. Replacement activations (patch,
        mean, resample) are computed here, once, by running the model as it is at this call.
        Within one call a replaced head takes its replacement (a scale on it does not apply);
        nested ``with`` blocks apply in entry order.

    Raises:
        UnknownHeadError: a head outside the model.
        InterventionError: a missing source/reference or mismatched lengths.
    """
    all_specs = [_with_defaults(s, source, reference) for s in specs]
    all_specs += [HeadIntervention("zero", tuple(as_heads(ablate)))] if ablate else []
    all_specs += [HeadIntervention("amplify", (as_head(h),), alpha=float(a)) for h, a in (amplify or {}).items()]
    all_specs += [HeadIntervention("mean", tuple(as_heads(mean_ablate)), per_position=per_position,
                                   reference=reference)] if mean_ablate else []
    all_specs += [HeadIntervention("resample", tuple(as_heads(resample)), reference=reference)] if resample else []
    all_specs += [HeadIntervention("patch", tuple(as_heads(patch)), source=source)] if patch else []
    builder = _Builder(handle)
    for spec in all_specs:
        heads = [handle.head(h) for h in spec.heads]
        if spec.kind in ("zero", "amplify"):
            for h in heads:
                builder.scale(h, 0.0 if spec.kind == "zero" else spec.factor)
            continue
        values = _replacement_values(handle, spec, sorted({h.layer for h in heads}), seed)
        for h in heads:
            builder.replace(h, values[h.layer][:, :, h.head])
    if positions is not None:
        for edit in builder.edits.values():
            edit.positions = positions
    return Intervention(handle, builder.edits, all_specs)


def _with_defaults(spec: HeadIntervention, source: Any, reference: Any) -> HeadIntervention:
    """``spec``, taking ``intervene``'s source / reference when it carries none of its own."""
    if spec.kind == "patch" and spec.source is None and source is not None:
        return replace(spec, source=source)
    if spec.kind in ("mean", "resample") and spec.reference is None and reference is not None:
        return replace(spec, reference=reference)
    return spec


def _replacement_values(handle: Any, spec: HeadIntervention, layers: list[int], seed: int) -> dict[int, torch.Tensor]:
    """Head outputs replacing those of ``spec.heads``: ``{layer: [rows, seq or 1, n_heads, d_head]}``."""
    if spec.kind == "patch":
        if spec.source is None:
            raise InterventionError("activation patching needs source=... prompts to take head outputs from")
        return head_outputs(handle, spec.source, layers)
    reference = spec.reference
    if reference is None:
        raise InterventionError(f"{spec.kind} ablation needs reference=... prompts (or precomputed means)")
    if spec.kind == "mean":
        if isinstance(reference, Mapping) and "input_ids" not in reference:  # precomputed {layer: mean z}
            return reference
        return mean_head_outputs(handle, reference, layers, per_position=spec.per_position)
    outs = head_outputs(handle, reference, layers)
    rows = next(iter(outs.values())).shape[0]
    if rows < 2:
        raise InterventionError("resample ablation needs at least two reference prompts")
    order = derangement(rows, seed if spec.seed is None else spec.seed)
    return {layer: z[order] for layer, z in outs.items()}


def derangement(rows: int, seed: int) -> torch.Tensor:
    """A seeded random cyclic derangement of ``range(rows)`` (``rows >= 2``): no row maps to itself.

    Resample ablation gives row ``i`` the activations of row ``order[i]``, another prompt's.
    """
    perm = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    order = torch.empty_like(perm)
    order[perm] = perm.roll(-1)
    return order
