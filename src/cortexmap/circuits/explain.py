"""One decision of a model: which edges and heads carried ``target`` over ``foil`` on one prompt.

:func:`explain_decision` compares the prompt with a corrupt prompt of the same token length whose
answer is the foil. Without one it swaps the target and foil words in the prompt ("When Mary and
John ..., John gave a drink to" becomes "When John and Mary ..., Mary gave a drink to"), the usual
IOI corruption; a prompt containing neither word needs an explicit corrupt prompt.

Every edge is scored with the screen (EAP-IG by default) on that one pair, and the top ``verify``
edges are then measured exactly with path patching (patch the edge alone from the corrupt run,
everything else clean). Their effects are single-prompt numbers, so there are no intervals; ``share``
is the effect over the whole clean-to-corrupt change of the metric (1: patching that edge alone
flips the decision as far as the corrupt prompt does).

:meth:`Explanation.figure` draws the verified edges as the report's circuit view does (layers left
to right, width = |effect|, hover = numbers) and :meth:`Explanation.save` writes that drawing;
both load :mod:`cortexmap.report` on first use, which holds all drawing code (and no torch).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cortexmap.circuits.attribution import edge_scores
from cortexmap.circuits.graph import Graph, node_layer
from cortexmap.circuits.patching import PathPatcher
from cortexmap.errors import TaskError
from cortexmap.tasks.core import (
    DROP_LENGTH,
    DROP_SAME,
    DROP_TARGET,
    EncodedBatch,
    Pair,
    check_pair,
    logit_diff,
    prompt_ids,
    single_token,
)


@dataclass
class Explanation:
    """The edges and heads behind one decision.

    Attributes:
        pair: the pair as run (answers' leading spaces may be folded into the prompts).
        clean: target - foil logit difference on the prompt.
        corrupt: the same on the corrupt prompt.
        edges: the verified edges, strongest first: ``sender, receiver, kind, score`` (screen),
            ``effect`` (exact, patched - clean), ``share`` (effect / (corrupt - clean)), ``method``.
        heads: per node on a verified edge (heads, KV groups, MLPs): ``node, layer, effect_out``
            (sum of its outgoing verified edges' effects), ``effect_in`` (incoming), ``n_edges``.
        graph: the model's edge graph (its layers, heads and KV groups place the nodes when drawn).
        screen: the screen that scored the edges (``"eap"`` or ``"eap-ig"``).
        timings: seconds per stage.
    """

    pair: Pair
    clean: float
    corrupt: float
    edges: pd.DataFrame
    heads: pd.DataFrame
    graph: Graph
    screen: str
    timings: dict[str, float] = field(default_factory=dict)

    def figure(self) -> Any:
        """The verified edges drawn on the layer x head grid.

        Returns:
            A plotly ``Figure``: every verified edge, width proportional to |effect|, orange where
            patching it lowers the target - foil difference and blue where it raises it; hovering an
            edge gives its screen score, exact effect and share of the flip.
        """
        from cortexmap.report.circuits import decision_graph

        title = (f"logit({self.pair.target!r}) − logit({self.pair.foil!r}): {self.clean:+.2f} on the prompt, "
                 f"{self.corrupt:+.2f} on the corrupt one; width = |exact effect|")
        return decision_graph(self.edges, self.heads, self.graph.n_layers, self.graph.n_heads,
                              self.graph.n_kv_heads, screen=self.screen, title=title)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`figure` atomically: ``.html`` self-contained and interactive, ``.svg``/``.png``/``.pdf`` static.

        Args:
            path: the file to write; its suffix picks the format.

        Returns:
            ``path``.

        Raises:
            CortexmapError: another suffix, or a static format without kaleido and Chromium.
        """
        from cortexmap.report.export import write_figure

        return write_figure(self.figure(), path)


def swap_answers(prompt: str, target: str, foil: str) -> str | None:
    """The prompt with the target and foil words swapped, or None when it contains neither."""
    a, b = target.strip(), foil.strip()
    if not a or not b or a == b:
        return None
    pattern = re.compile(rf"\b({re.escape(a)}|{re.escape(b)})\b")
    swapped = pattern.sub(lambda m: b if m.group(0) == a else a, prompt)
    return None if swapped == prompt else swapped


def _pair(tokenizer: Any, prompt: str, target: str, foil: str, corrupt: str | None) -> Pair:
    if corrupt is None:
        corrupt = swap_answers(prompt, target, foil)
        if corrupt is None:
            raise TaskError(f"the prompt contains neither {target.strip()!r} nor {foil.strip()!r} to swap; pass "
                            "--corrupt with a prompt of the same token length whose answer is the foil")
    pair, reason = check_pair(Pair(prompt, target, foil, corrupt), tokenizer, one_token=True)
    if pair is not None:
        return pair
    if reason == DROP_SAME:
        raise TaskError(f"target {target!r} and foil {foil!r} are the same token; pick two different answers")
    if reason == DROP_LENGTH:
        n, m = len(prompt_ids(tokenizer, prompt)), len(prompt_ids(tokenizer, corrupt))
        raise TaskError(f"the corrupt prompt is {m} tokens and the prompt {n}; path patching needs the same "
                        f"length: change words one for one (e.g. swap names)")
    which, text = ("target", target) if reason == DROP_TARGET else ("foil", foil)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise TaskError(f"the {which} {text!r} is {n} tokens for this model; give a single-token {which} "
                    "(often with a leading space, e.g. ' Mary'): edge circuits need one, and multi-token answers "
                    "are measured head by head by cortexmap map --task-file")


def _heads(edges: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    for edge in edges.itertuples():
        for node, key in ((edge.sender, "effect_out"), (edge.receiver, "effect_in")):
            if node in ("emb", "logits"):
                continue
            row = rows.setdefault(node, {"node": node, "layer": node_layer(node, n_layers), "effect_out": 0.0,
                                         "effect_in": 0.0, "n_edges": 0})
            row[key] += float(edge.effect)
            row["n_edges"] += 1
    out = pd.DataFrame(list(rows.values()), columns=["node", "layer", "effect_out", "effect_in", "n_edges"])
    weight = out["effect_out"].abs() + out["effect_in"].abs()
    return out.iloc[np.argsort(-weight.to_numpy(), kind="stable")].reset_index(drop=True)


def explain_decision(handle: Any, prompt: str, target: str, foil: str, corrupt: str | None = None, *,
                     screen: str = "eap-ig", steps: int = 5, verify: int = 16) -> Explanation:
    """Which edges and heads carried ``target`` over ``foil`` on ``prompt`` (see the module docstring).

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` with a tokenizer, of a supported architecture.
        prompt: the clean prompt.
        target: the answer the model should give (one token, e.g. ``" Mary"``).
        foil: the competing answer (one token).
        corrupt: a prompt of the same token length whose answer is ``foil`` (default: the prompt
            with target and foil words swapped).
        screen: ``"eap"`` or ``"eap-ig"``.
        steps: integration points of EAP-IG.
        verify: edges to measure exactly.

    Returns:
        The :class:`Explanation`.

    Raises:
        TaskError: an answer that is not one token, equal answers, no corrupt prompt to be had, or
            a corrupt prompt of another token length.
    """
    if handle.tokenizer is None:
        raise TaskError("this model has no tokenizer; load it from a spec or directory that has one")
    if verify < 1:
        raise TaskError(f"verify must be at least 1, got {verify}")
    tok = handle.tokenizer
    pair = _pair(tok, prompt, target, foil, corrupt)
    ids = torch.tensor([prompt_ids(tok, pair.prompt)])
    batch = EncodedBatch(ids, torch.tensor([prompt_ids(tok, pair.corrupt)]),
                         torch.tensor([single_token(tok, pair.target)]),
                         torch.tensor([single_token(tok, pair.foil)]), [0])
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    scores = edge_scores(handle, batch, screen, steps)[0]
    timings[f"{screen}_s"] = round(time.perf_counter() - tic, 3)
    tic = time.perf_counter()
    patcher = PathPatcher(handle, batch)
    top = np.argsort(-np.abs(scores), kind="stable")[:verify]
    effects = patcher.edge_effects(top)[0]
    with torch.no_grad():
        logits = handle.model(input_ids=batch.corrupt_ids.to(handle.device), use_cache=False).logits[:, -1]
    corrupt_metric = float(logit_diff(logits.float(), batch.target_ids.to(handle.device),
                                      batch.foil_ids.to(handle.device))[0])
    timings["verify_s"] = round(time.perf_counter() - tic, 3)
    clean = float(patcher.clean_metric[0])
    picked = [patcher.graph.edges[i] for i in top]
    gap = corrupt_metric - clean
    edges = pd.DataFrame({"sender": [e.sender for e in picked], "receiver": [e.receiver for e in picked],
                          "kind": [e.kind for e in picked], "score": scores[top].astype(float), "effect": effects,
                          "share": effects / gap if gap else np.nan, "method": "exact"})
    edges = edges.iloc[np.argsort(-np.abs(effects), kind="stable")].reset_index(drop=True)
    return Explanation(pair, clean, corrupt_metric, edges, _heads(edges, patcher.graph.n_layers), patcher.graph,
                       screen, timings)
