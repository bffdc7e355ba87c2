"""Why a head attends where it does: each upstream sender's exact effect on its attention, query side and key side.

:func:`explain_attention` measures, for one query head and a set of key positions, every sender
writing before the head's layer (emb, the heads and MLPs of earlier layers) twice: patched into
the head's query only, and into its KV group's key only (:mod:`~cortexmap.circuits.attention`
defines both, the metric and the EAP screen). Per prompt, then as means over prompts with 95%
bootstrap intervals (prompts resampled). The baseline is the clean metric; the whole change to
explain is the metric with *every* sender patched on both sides, which is the head's attention
on the source residual (for corrupt ablation: the corrupt run's pattern at the clean positions).

Key positions (``key`` and ``contrast``): an int is a position (negative: from the end), a
string a token (every position whose token reads as it, leading spaces ignored). The default,
where every prompt has its answers among its tokens: the target answer's positions
against the foil answer's (for IOI: the indirect object against both mentions of the subject).
Otherwise: the key position the head attends most on the clean prompt, the first token excluded
(most heads park attention there), with no contrast. The query position defaults to the last.

Mean ablation replaces a sender by its mean over the prompts of one token length; prompts alone
in their length are dropped (the mean would be the prompt itself) and counted in ``arguments``.

Cost: per batch, the clean and source forward passes, then ``2 U + 3`` re-runs of one layer's
attention over the batch (``U`` senders) and one backward through it for the screen. SmolLM2-135M,
L23H3 (``U = 231``), 16 IOI prompts: about 16 s on one CPU thread.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from cortexmap.circuits.attention import METRICS, SIDES, HeadPatcher, attention_metric, side_edges
from cortexmap.circuits.graph import Graph, node_layer
from cortexmap.circuits.layout import circuit_layout
from cortexmap.errors import CortexmapError, TaskError
from cortexmap.heads import HeadLike
from cortexmap.models.hooks import eager_attention
from cortexmap.stats import bootstrap_cis
from cortexmap.tasks.core import EncodedBatch, Pair, Task, encode_one_position, prompt_ids


@dataclass(frozen=True)
class _Rule:
    """A key rule of the default: the target's or the foil's token, or the most attended position."""

    label: str


TARGET, FOIL, MOST = _Rule("target token"), _Rule("foil token"), _Rule("most attended position, first token excluded")
Key = int | str | None


@dataclass
class AttentionExplanation:
    """What moves one head's attention: per sender and side, the exact effect and the EAP screen.

    Attributes:
        head: the query head, ``"L{l}H{h}"``.
        metric: ``"weight"`` or ``"log-weight"`` (:mod:`~cortexmap.circuits.attention`).
        key: how the key positions were chosen, in words.
        contrast: how the contrast positions were chosen, or None.
        senders: one row per (sender, side), largest ``|effect|`` first: ``sender, sender_layer,
            side`` (``query`` / ``key``), ``receiver, kind`` (the edge patched), ``effect`` (mean of
            patched - clean over prompts), ``ci_low, ci_high`` (95% bootstrap), ``share`` (effect
            over the ``both`` total), ``eap`` (mean screen estimate), ``n_prompts``, ``method``
            (``"exact"``).
        totals: one row per ``side`` in ``query, key, both`` (every sender patched on that side):
            ``effect, ci_low, ci_high, eap`` (the sum of the side's screen estimates).
        prompts: one row per prompt: ``prompt`` (its pair index), ``clean`` (metric), ``source``
            (metric with every sender patched on both sides), ``key`` and ``contrast`` (positions,
            ``"3,9"``; None: no contrast) and ``key_tokens`` / ``contrast_tokens`` (with a tokenizer).
        per_prompt: one row per (prompt, sender, side): ``effect, eap``.
        clean: mean clean metric with ``clean_low`` / ``clean_high``, its 95% interval.
        screen_spearman: rank correlation of ``eap`` and ``effect`` over the rows of ``senders``.
        graph: the model's edge graph (it places the nodes when drawn).
        arguments: what was asked (JSON-ready).
        timings: seconds per stage.
    """

    head: str
    metric: str
    key: str
    contrast: str | None
    senders: pd.DataFrame
    totals: pd.DataFrame
    prompts: pd.DataFrame
    per_prompt: pd.DataFrame
    clean: float
    clean_low: float
    clean_high: float
    screen_spearman: float
    graph: Graph
    arguments: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def describe_metric(self) -> str:
        """The metric in words, e.g. ``A(target token) - A(foil token)``."""
        term = (lambda what: f"log A({what})") if self.metric == "log-weight" else (lambda what: f"A({what})")
        text = term(self.key)
        return text if self.contrast is None else f"{text} - {term(self.contrast)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the head, metric, key positions, clean interval, the screen's Spearman, ``totals``,
        ``senders`` and ``prompts`` as lists of records, ``arguments`` and ``timings`` (no per-prompt rows,
        no graph)."""
        records = lambda frame: json.loads(frame.to_json(orient="records"))  # noqa: E731  (NaN -> null)
        return {"head": self.head, "metric": self.metric, "described": self.describe_metric(), "key": self.key,
                "contrast": self.contrast, "clean": self.clean, "clean_low": self.clean_low,
                "clean_high": self.clean_high, "screen_spearman": self.screen_spearman,
                "totals": records(self.totals), "senders": records(self.senders), "prompts": records(self.prompts),
                "arguments": self.arguments, "timings": self.timings}

    def figure(self, top: int = 24) -> Any:
        """The ``top`` senders by ``|effect|`` drawn as edges into the head's query and its KV group's key.

        Returns:
            A plotly ``Figure`` (:func:`cortexmap.report.circuits.attention_graph`).
        """
        from cortexmap.report.circuits import attention_graph

        both = self.totals.set_index("side").loc["both"]
        key_node = self.senders.loc[self.senders["side"] == "key", "receiver"].iloc[0]
        title = (f"{self.head}: {self.describe_metric()} = {self.clean:+.3f} clean, {self.clean + both.effect:+.3f} "
                 f"with every sender patched ({self.arguments.get('ablation')})<br>edges into {self.head}: query "
                 f"side, into {key_node}: key side; width = |exact effect|")
        return attention_graph(self.senders.head(top), self.head, self.graph.n_layers, self.graph.n_heads,
                               self.graph.n_kv_heads, title=title)

    def save(self, path: str | Path, top: int = 24) -> Path:
        """Write :meth:`figure` atomically: ``.html`` self-contained, ``.svg``/``.png``/``.pdf`` static.

        Raises:
            CortexmapError: another suffix, or a static format without kaleido and Chromium.
        """
        from cortexmap.report.export import write_figure

        return write_figure(self.figure(top), path)


def _encode(handle: Any, prompts: Task | Pair | str | Sequence[EncodedBatch], corrupt: str | None,
            max_batch: int | None) -> tuple[list[EncodedBatch], bool]:
    """Batches of the input, and whether their target / foil ids are real answers."""
    if isinstance(prompts, (Task, Pair, str)) and handle.tokenizer is None:
        raise TaskError("this model has no tokenizer; pass encoded batches instead of prompts")
    tok = handle.tokenizer
    if isinstance(prompts, Task):
        if not prompts.pairs:
            raise TaskError(f"task {prompts.name!r} has no pairs")
        return encode_one_position(prompts, tok, max_batch)[0], True  # one-token answers, equal lengths
    if isinstance(prompts, Pair):
        from cortexmap.circuits.explain import _pair

        pair = _pair(tok, prompts.prompt, prompts.target, prompts.foil, prompts.corrupt or corrupt)
        return encode_one_position(Task("prompt", "custom", "one pair", [pair]), tok)[0], True
    if isinstance(prompts, str):
        ids = prompt_ids(tok, prompts)
        other = None
        if corrupt is not None:
            other = prompt_ids(tok, corrupt)
            if len(other) != len(ids):
                raise TaskError(f"the corrupt prompt is {len(other)} tokens and the prompt {len(ids)}; path patching "
                                "needs the same length: change words one for one (e.g. swap names)")
            other = torch.tensor([other])
        none = torch.tensor([-1])
        return [EncodedBatch(torch.tensor([ids]), other, none, none, [0])], False
    batches = list(prompts)
    if not batches:
        raise TaskError("no prompts given; pass a task, a pair, a prompt or encoded batches")
    return batches, True


def _token_text(tok: Any, token: int) -> str:
    return tok.decode([token]).strip()


def _positions(batch: EncodedBatch, rule: Key | _Rule, query: int, tok: Any, clean_rows: torch.Tensor) -> torch.Tensor:
    """``[batch, seq]`` bool key positions of one rule (module docstring), at or before the query."""
    ids = batch.input_ids
    n, seq = ids.shape
    allowed = torch.arange(seq) <= query
    if rule == MOST:
        rows = clean_rows.detach().cpu().float().clone()
        if query > 0:
            rows[:, 0] = -1.0
        rows[:, ~allowed] = -1.0
        return torch.nn.functional.one_hot(rows.argmax(-1), seq).bool()
    if rule in (TARGET, FOIL):
        answer = batch.target_ids if rule == TARGET else batch.foil_ids
        return (ids == answer[:, None]) & allowed
    if isinstance(rule, int):
        index = rule + seq if rule < 0 else rule
        if not 0 <= index <= query:
            raise TaskError(f"key position {rule} is not at or before the query position {query} of prompts of "
                            f"{seq} tokens; give a position the query can attend to")
        return torch.nn.functional.one_hot(torch.full((n,), index), seq).bool()
    if tok is None:
        raise TaskError(f"key {rule!r} is a token, and this model has no tokenizer; give a position instead")
    want = rule.strip()
    texts = [[_token_text(tok, int(t)) for t in row] for row in ids]
    mask = torch.tensor([[t == want for t in row] for row in texts]) & allowed
    missing = (~mask.any(1)).nonzero().flatten().tolist()
    if missing:
        first = batch.indices[missing[0]]
        raise TaskError(f"token {rule!r} is not among the tokens up to the query of prompt {first}: "
                        f"{' | '.join(texts[missing[0]])}; give one of them or a position")
    return mask


def _default_rules(batches: list[EncodedBatch], answers: bool, query: int) -> tuple[_Rule, _Rule | None]:
    """Target against foil where every prompt holds both answers before the query, else the most attended."""
    def holds(batch: EncodedBatch, answer: torch.Tensor) -> bool:
        q = query + batch.input_ids.shape[1] if query < 0 else query
        return bool((batch.input_ids[:, :q + 1] == answer[:, None]).any(1).all())

    if answers and all(holds(b, b.target_ids) and holds(b, b.foil_ids) for b in batches):
        return TARGET, FOIL
    return MOST, None


def _describe(rule: Key | _Rule) -> str | None:
    if rule is None or isinstance(rule, _Rule):
        return None if rule is None else rule.label
    return f"position {rule}" if isinstance(rule, int) else f"token {rule!r}"


def _where(tok: Any, ids: torch.Tensor, masks: list[torch.Tensor | None], row: int) -> dict[str, Any]:
    """One prompt's key and contrast positions (``"1,9"``) and, with a tokenizer, their tokens (``"' Mary'"``)."""
    out: dict[str, Any] = {}
    for name, mask in zip(("key", "contrast"), masks):
        where = [] if mask is None else mask[row].nonzero().flatten().tolist()
        out[name] = ",".join(map(str, where)) or None
        out[f"{name}_tokens"] = None if tok is None or not where else " ".join(repr(tok.decode([int(ids[p])]))
                                                                                 for p in where)
    return out


def _check(metric: str, ablation: str, key: Key, contrast: Key, n_boot: int) -> None:
    if metric not in METRICS:
        raise CortexmapError(f"unknown attention metric {metric!r}: use one of {', '.join(METRICS)}")
    if ablation not in ("corrupt", "mean"):
        raise CortexmapError(f"unknown ablation {ablation!r}: use corrupt or mean")
    if contrast is not None and key is None:
        raise CortexmapError("a contrast needs a key: give key as well (a token or a position)")
    if n_boot < 1:
        raise CortexmapError(f"n_boot must be at least 1, got {n_boot}")


def _explain_batch(handle: Any, layout: Any, head: Any, batch: EncodedBatch, edges: dict[str, list[Any]],
                   key: Key | _Rule, contrast: Key | _Rule | None, query: int, ablation: str, metric: str,
                   rows_per_pass: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One batch's per-prompt effects ``[n, 2U + 3]``, EAP scores ``[n, 2U]`` and prompt rows."""
    patcher = HeadPatcher(handle, batch, head, ablation, query, layout)
    masks = [None if r is None else _positions(batch, r, patcher.query, handle.tokenizer, patcher.clean_rows)
             .to(patcher.x.device) for r in (key, contrast)]
    n = len(batch)

    def measure(att: torch.Tensor) -> torch.Tensor:  # rows tiled per batch
        tile = lambda m: None if m is None else m.repeat(att.shape[0] // n, 1)  # noqa: E731
        return attention_metric(att, tile(masks[0]), tile(masks[1]), metric)

    both = edges["query"] + edges["key"]
    clean = measure(patcher.clean_rows).cpu().numpy()
    effect = patcher.effects(both, measure, [edges["query"], edges["key"], both], rows_per_pass)
    rows = [{"prompt": int(p), "clean": float(clean[j]), "source": float(clean[j] + effect[j, -1]),
             **_where(handle.tokenizer, batch.input_ids[j], masks, j)} for j, p in enumerate(batch.indices)]
    return effect, patcher.eap(both, measure), rows


def explain_attention(handle: Any, prompts: Task | Pair | str | Sequence[EncodedBatch], head: HeadLike, *,
                      key: Key = None, contrast: Key = None, query: int = -1, corrupt: str | None = None,
                      ablation: str = "corrupt", metric: str = "weight", max_batch: int | None = None,
                      rows_per_pass: int = 512, n_boot: int = 1000, seed: int = 0,
                      progress: Callable[[str], None] | None = None) -> AttentionExplanation:
    """Which upstream senders make ``head`` attend to ``key`` (over ``contrast``), on its query side and key side.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` of a supported architecture.
        prompts: a task, one pair (its corrupt prompt defaults to the answers swapped), one prompt
            (then give ``corrupt`` for corrupt ablation) or equal-length encoded batches.
        head: the receiving query head (``"L23H3"``, ``HeadId`` or ``(layer, head)``).
        key: key positions: a position, a token, or None for the default (module docstring).
        contrast: positions whose metric is subtracted (a position or a token), or None.
        query: the query position (default: the last).
        corrupt: the corrupt prompt of a single prompt.
        ablation: ``"corrupt"`` or ``"mean"``: what a patched edge carries.
        metric: ``"weight"`` or ``"log-weight"``.
        max_batch: prompts per batch (None: a whole length group).
        rows_per_pass: prompt rows per attention call.
        n_boot: bootstrap resamples of the prompts.
        seed: seed of the resampling.
        progress: called with a line per batch.

    Returns:
        The :class:`AttentionExplanation`.

    Raises:
        TaskError: prompts that do not fit the model, a key that is not in a prompt or lies after the query.
        CortexmapError: an unknown metric or ablation, a contrast without a key, or no prompts left.
        UnsupportedArchitectureError: see :mod:`cortexmap.circuits.layout`.
        UnknownHeadError: a head outside the model.
    """
    _check(metric, ablation, key, contrast, n_boot)
    target = handle.head(head)
    layout = circuit_layout(handle)
    tic = time.perf_counter()
    batches, answers = _encode(handle, prompts, corrupt, max_batch)
    if ablation == "corrupt" and any(b.corrupt_ids is None for b in batches):
        raise TaskError("corrupt ablation needs a corrupt prompt of the same token length for every prompt: give "
                        "corrupt (CLI: --corrupt), a target and foil to swap, or use mean ablation over a task")
    dropped = 0
    if ablation == "mean":
        dropped = sum(len(b) for b in batches if len(b) < 2)
        batches = [b for b in batches if len(b) >= 2]
        if not batches:
            raise CortexmapError("mean ablation needs at least two prompts of one token length (the mean of one "
                                 "prompt is the prompt itself); give more prompts or use corrupt ablation")
    if key is None:
        key, contrast = _default_rules(batches, answers, query)
    edges = side_edges(layout.graph, target)
    effects, scores, rows = [], [], []  # per batch; rows per prompt
    with eager_attention(handle.model):  # once for every batch, not per attention call
        for i, batch in enumerate(batches):
            effect, score, batch_rows = _explain_batch(handle, layout, target, batch, edges, key, contrast, query,
                                                       ablation, metric, rows_per_pass)
            effects.append(effect)
            scores.append(score)
            rows += batch_rows
            if progress:
                progress(f"batch {i + 1}/{len(batches)} done: {len(batch)} prompts of {batch.input_ids.shape[1]} "
                         "tokens")
    per = np.concatenate(effects)
    eap = np.concatenate(scores)
    if not np.isfinite(per).all() or not np.isfinite(eap).all():
        raise CortexmapError("the metric is not finite on some prompt (an attention weight of zero under "
                             "log-weight); use metric='weight'")
    order = np.argsort([r["prompt"] for r in rows], kind="stable")
    per, eap = per[order], eap[order]
    prompts_frame = pd.DataFrame([rows[i] for i in order])
    return _assemble(target, edges, per, eap, prompts_frame, layout.graph, {
        "head": str(target), "metric": metric, "ablation": ablation, "query": query, "key": _describe(key),
        "contrast": _describe(contrast), "n_prompts": len(per), "n_dropped": dropped, "n_boot": n_boot,
        "seed": seed}, n_boot, seed, time.perf_counter() - tic)


def _assemble(head: Any, edges: dict[str, list[Any]], per: np.ndarray, eap: np.ndarray, prompts: pd.DataFrame,
              graph: Graph, arguments: dict[str, Any], n_boot: int, seed: int, seconds: float) -> AttentionExplanation:
    """The record from per-prompt effects ``[n, 2U + 3]`` (single edges, then query, key, both) and EAP ``[n, 2U]``."""
    n_single = eap.shape[1]
    low, high = bootstrap_cis(per, n_boot=n_boot, seed=seed)
    mean = per.mean(0)
    total = mean[-1]
    share = mean / total if total else np.full_like(mean, np.nan)
    rows = [{"sender": e.sender, "sender_layer": node_layer(e.sender, graph.n_layers), "side": side,
             "receiver": e.receiver, "kind": e.kind} for side in SIDES for e in edges[side]]
    senders = pd.DataFrame(rows).assign(effect=mean[:n_single], ci_low=low[:n_single], ci_high=high[:n_single],
                                        share=share[:n_single], eap=eap.mean(0), n_prompts=len(per), method="exact")
    senders = senders.iloc[np.argsort(-np.abs(mean[:n_single]), kind="stable")].reset_index(drop=True)
    half = n_single // 2
    side_eap = [eap[:, :half].sum(1).mean(), eap[:, half:].sum(1).mean(), eap.sum(1).mean()]
    totals = pd.DataFrame({"side": ["query", "key", "both"], "effect": mean[n_single:], "ci_low": low[n_single:],
                           "ci_high": high[n_single:], "eap": side_eap})
    per_prompt = pd.DataFrame({
        "prompt": np.repeat(prompts["prompt"].to_numpy(), n_single),
        "sender": np.tile([r["sender"] for r in rows], len(per)),
        "side": np.tile([r["side"] for r in rows], len(per)),
        "effect": per[:, :n_single].ravel(), "eap": eap.ravel()})
    clean_low, clean_high = bootstrap_cis(prompts[["clean"]].to_numpy(), n_boot=n_boot, seed=seed)
    rho = spearmanr(senders["eap"], senders["effect"]).statistic if n_single > 2 else float("nan")
    return AttentionExplanation(str(head), arguments["metric"], arguments["key"], arguments["contrast"], senders,
                                totals, prompts, per_prompt, float(prompts["clean"].mean()), float(clean_low[0]),
                                float(clean_high[0]), float(rho), graph, arguments, {"total_s": round(seconds, 3)})
