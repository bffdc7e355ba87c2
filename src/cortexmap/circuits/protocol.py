"""How a task's circuit is judged: cortexmap's protocol or MIB's, and the split of prompts into discovery and held-out.

A :class:`Protocol` names every choice that changes a circuit benchmark's numbers. Two exist:

* ``"cortexmap"``: key and value inputs counted and selected per KV group (the graph of
  :mod:`~cortexmap.circuits.graph`: 70,651 edges on SmolLM2-135M), prompts as the tokenizer
  encodes them (no BOS added where it adds none), every ranking by ``|score|`` for both CPR and CMD.
* ``"mib"``: MIB's circuit-localization protocol, each choice checked in its code
  (hannamw/MIB-circuit-track at ``b759df3`` with its EAP-IG submodule at ``7af394a``):

  - key and value inputs per *query* head (``ungroup_grouped_query_attention=True`` in
    ``run_attribution.py`` / ``run_evaluation.py``; :mod:`~cortexmap.circuits.ungrouped`):
    123,211 edges on SmolLM2-135M;
  - a BOS token prepended to every prompt (``tokenize_plus`` in EAP-IG ``src/eap/utils.py`` calls
    ``model.to_tokens(..., prepend_bos=True)``; a prompt that already starts with BOS keeps one);
  - scores in MIB's sign: the attribution metric is ``logit_diff(..., loss=True)``, i.e. minus the
    logit difference (``run_attribution.py``, ``MIB_circuit_track/metrics.py``), times ``corrupt
    - clean`` activations (``make_hooks_and_matrices``), so an edge carrying the clean answer scores
    *positive*; cortexmap's scores estimate ``patched - clean`` and are negative there
    (``sign = -1`` converts);
  - CPR from circuits ranked by the *signed* score and CMD from circuits ranked by ``|score|``
    (``print_results.py`` reads CPR from the ``abs-False`` results and CMD from ``abs-True``;
    ``run_evaluation.py --absolute`` is off by default);
  - the 10-point grid ``0.1% .. 100%`` (``percentages`` in ``MIB_circuit_track/evaluation.py``);
  - EAP-IG = EAP-IG-inputs with 5 steps (``--ig-steps`` default of ``run_attribution.py``;
    :mod:`~cortexmap.circuits.attribution`), corrupt patching only.

  MIB also prunes the top-n edges to a connected graph before evaluating (``Graph.prune``);
  with corrupt patching that never changes the metric (:func:`~cortexmap.circuits.interchange.prune`),
  so curves are evaluated on the top-n edges as they are and only reported counts are pruned.

**Held-out split** (:func:`split_batches`): a seeded permutation of the task's prompts puts
``round(heldout * n)`` of them (at least one, and at least one left) in the held-out part; the
screen and the exact verification see only the discovery part, the faithfulness curves, CPR/CMD
and the choice of "the circuit" are computed on the held-out part (MIB evaluates on a split its
circuits were not found on: ``--split validation`` against attribution on ``train``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cortexmap.circuits.faithfulness import MIB_FRACTIONS
from cortexmap.errors import CortexmapError
from cortexmap.tasks.core import EncodedBatch

MIB_IG_STEPS = 5
ORDERS: tuple[str, ...] = ("absolute", "signed")


@dataclass(frozen=True)
class Protocol:
    """The choices that make circuit numbers comparable (see the module docstring).

    Attributes:
        name: ``"cortexmap"`` or ``"mib"``.
        fractions: the default circuit-size grid (fractions of the protocol's edges).
        per_head_kv: key/value edges counted and selected per query head (else per KV group).
        bos: prepend the tokenizer's BOS token to prompts that do not start with it.
        sign: factor turning cortexmap's scores (estimates of patched - clean) into the protocol's.
        cpr_order: ranking whose curve gives CPR: ``"absolute"`` (by ``|score|``) or ``"signed"``.
        cmd_order: ranking whose curve gives CMD.
    """

    name: str
    fractions: tuple[float, ...]
    per_head_kv: bool
    bos: bool
    sign: float
    cpr_order: str
    cmd_order: str

    @property
    def orders(self) -> tuple[str, ...]:
        """The rankings' orders this protocol evaluates, ``"absolute"`` first."""
        return tuple(o for o in ORDERS if o in (self.cpr_order, self.cmd_order))

    @property
    def kv_counting(self) -> str:
        """``"per query head"`` or ``"per KV group"``."""
        return "per query head" if self.per_head_kv else "per KV group"


PROTOCOLS: dict[str, Protocol] = {
    "cortexmap": Protocol("cortexmap", MIB_FRACTIONS, per_head_kv=False, bos=False, sign=1.0,
                          cpr_order="absolute", cmd_order="absolute"),
    "mib": Protocol("mib", MIB_FRACTIONS, per_head_kv=True, bos=True, sign=-1.0,
                    cpr_order="signed", cmd_order="absolute"),
}


def protocol_named(name: str | Protocol) -> Protocol:
    """The :class:`Protocol` called ``name`` (a Protocol passes through).

    Raises:
        CortexmapError: an unknown name.
    """
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise CortexmapError(f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def order_scores(scores: np.ndarray, protocol: Protocol, order: str) -> np.ndarray:
    """Scores whose descending order is the protocol's ranking: ``|score|``, or the signed score in its sign."""
    values = np.asarray(scores, dtype=np.float64)
    return np.abs(values) if order == "absolute" else protocol.sign * values


def with_bos(batches: Sequence[EncodedBatch], bos_id: int | None) -> list[EncodedBatch]:
    """Batches whose clean and corrupt prompts start with ``bos_id`` (prepended where missing).

    Raises:
        CortexmapError: ``bos_id`` is None (the tokenizer has no BOS token).
    """
    if bos_id is None:
        raise CortexmapError("MIB's protocol prepends a BOS token, and this model's tokenizer has none; "
                             "use protocol cortexmap")
    out = []
    for b in batches:
        if bool((b.input_ids[:, 0] == bos_id).all()) and (b.corrupt_ids is None or bool((b.corrupt_ids[:, 0] == bos_id).all())):
            out.append(b)
            continue
        column = torch.full((len(b), 1), int(bos_id), dtype=b.input_ids.dtype)
        corrupt = None if b.corrupt_ids is None else torch.cat([column, b.corrupt_ids], 1)
        out.append(EncodedBatch(torch.cat([column, b.input_ids], 1), corrupt, b.target_ids, b.foil_ids, list(b.indices)))
    return out


def _rows(batch: EncodedBatch, keep: np.ndarray) -> EncodedBatch:
    index = torch.as_tensor(np.flatnonzero(keep), dtype=torch.long)
    corrupt = None if batch.corrupt_ids is None else batch.corrupt_ids[index]
    return EncodedBatch(batch.input_ids[index], corrupt, batch.target_ids[index], batch.foil_ids[index],
                        [batch.indices[i] for i in index.tolist()])


def split_batches(batches: Sequence[EncodedBatch], heldout: float, seed: int = 0
                  ) -> tuple[list[EncodedBatch], list[EncodedBatch]]:
    """Split a task's prompts into a discovery part and a held-out part, by a seeded permutation.

    Args:
        batches: the task's equal-length batches (prompts named by ``indices``).
        heldout: share of the prompts held out, in ``[0, 1)``; 0 holds none out (the held-out part
            is empty and everything is judged in sample).
        seed: seed of the permutation.

    Returns:
        ``(discovery, heldout)`` batches, each keeping its prompts in task order; a batch with no
        prompt in a part is left out of it.

    Raises:
        CortexmapError: ``heldout`` outside ``[0, 1)``, or fewer than two prompts to split.
    """
    if not 0.0 <= heldout < 1.0:
        raise CortexmapError(f"heldout must be a share of the prompts in [0, 1), got {heldout}")
    n = sum(len(b) for b in batches)
    if heldout == 0.0:
        return list(batches), []
    if n < 2:
        raise CortexmapError(f"holding prompts out needs at least two prompts, got {n}; add prompts or use heldout=0")
    n_out = min(n - 1, max(1, int(round(heldout * n))))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_out]] = True
    discovery, out, start = [], [], 0
    for b in batches:
        mine = held[start:start + len(b)]
        start += len(b)
        if (~mine).any():
            discovery.append(_rows(b, ~mine))
        if mine.any():
            out.append(_rows(b, mine))
    return discovery, out
