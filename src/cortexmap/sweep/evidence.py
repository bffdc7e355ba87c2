"""Evidence for role names: where each head attends from the decision position and what it writes there.

A role from the literature (name mover, copy suppression, induction, successor, ...) is defined by
more than ablation harm: by *where the head attends* from the position that decides, by *what its
OV circuit writes* and by its *direct effect on the logits*. :func:`measure_evidence` measures these
for every head at once, from one eager forward pass per batch of a task's clean prompts, and
returns the long ``evidence.parquet`` table (columns :data:`EVIDENCE_COLUMNS`) that
:mod:`cortexmap.analysis.roles` reads.

Conventions fixed here:

* **Decision position**: the last prompt position (where the sweep's metric is read, and where the
  first token of every answer is predicted). Attention statistics are rows of the model's own
  ``output_attentions`` (eager attention) at that query.
* **Answers**: a pair's target and foil tokens are the *first* tokens of its answers; for an answer
  set, of every target and every foil. The logit direction is the mean unembedding of the target
  tokens minus that of the foil tokens (for a one-token pair, ``W_U[target] - W_U[foil]``: the
  logit difference); a prompt whose target and foil first tokens are the same (``" New York"`` vs
  ``" New Delhi"``) has no direction and no ``dla`` / ``ov_target``.
* **A head's write** is its output through its own slice of the output projection, *without the
  projection's bias* (the convention of :mod:`cortexmap.circuits.senders`), computed by calling the
  projection module on the head's slice alone, so Conv1D, Linear and any stored layout agree.
* **Frozen norms**: a write is projected to the logits through the final norm with its scale
  frozen at the clean run's value at the query position (and, in sandwich blocks such as Gemma 2/3,
  first through the post-attention norm at its clean scale), then through the unembedding; norm
  biases are constants, not writes. Frozen at these scales, every norm is linear, so the writes of
  all components (embeddings, head writes, biases, MLPs) add up to the clean logits (Gemma's final
  logit soft-capping is left out: logits are read before it).
* **OV from a key**: "what the head writes if it attended only to key ``j``" is measured exactly:
  extra query positions are appended to the prompt, each with its attention mask row forced onto
  one key. Attention is causal, so the prompt's own positions (and every value vector) are those of
  the clean run; the appended rows' head outputs are the value vectors at ``j`` of every head and
  layer, in the same pass.
* **Normalisation**: ``dla`` and ``ov_target`` are divided by ``|mean clean logit difference|`` of
  the task, the scale ``effect_normalized`` uses, so they read as shares of the clean margin.
* **Statistics** (``stat``), each a per-prompt value averaged over the prompts that have it, with a
  95% bootstrap interval over those prompts (:func:`cortexmap.stats.bootstrap_cis`) and their count
  ``n``:

  ==========================  ======================================================================
  task stats                  (source ``task``, name = the task)
  ==========================  ======================================================================
  attn_target / attn_foil     attention from the last position to the positions holding a
                              target's (foil's) token; prompts without one are left out
  attn_target_minus_foil      the paired difference, on prompts holding both
  attn_cue                    attention to the pair's cue positions (the union over its cues), on
                              tasks whose pairs carry cues (``Pair.cue``,
                              :func:`~cortexmap.tasks.core.cue_positions`); prompts whose cue is
                              not found are left out
  dla                         direct logit attribution of the head's write at the last position to
                              the logit direction (``logit(target) - logit(foil)`` for a pair)
  ov_target                   the same projection of what the head would write had it attended only
                              to the target's last occurrence before the last position: > 0 copies
                              the target (name mover), < 0 suppresses it (copy suppression)
  ==========================  ======================================================================

  ==========================  ======================================================================
  probe stats                 (source ``probe``, on :mod:`cortexmap.tasks.probes`' own prompts)
  ==========================  ======================================================================
  copy (induction)            per prompt, the share of induction keys (the token after the earlier
                              occurrence) whose token is in the top :data:`COPY_TOP` of the full
                              vocabulary when the head's OV output from that key is unembedded
                              (Wang et al. 2023's copy score); :data:`COPY_KEYS` keys per prompt
  succession (successor)      per prompt, the share of list members whose OV output ranks the next
                              member highest among the list's members (Gould et al. 2023)
  ==========================  ======================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from cortexmap.errors import CortexmapError, UnsupportedArchitectureError
from cortexmap.heads import HeadId
from cortexmap.models.hooks import eager_attention, register_head_hooks
from cortexmap.stats import bootstrap_cis
from cortexmap.tasks.core import answer_ids, cue_positions, prompt_ids
from cortexmap.tasks.probes import INPUTS, PROBES, ProbeBatch

log = logging.getLogger(__name__)

EVIDENCE_COLUMNS = ["model", "source", "name", "layer", "head", "head_id", "stat", "value", "ci_low", "ci_high", "n"]
TASK_STATS = ("attn_target", "attn_foil", "attn_target_minus_foil", "attn_cue", "dla", "ov_target")
PROBE_STATS = {"induction": "copy", "successor": "succession"}
COPY_TOP = 5
COPY_KEYS = 5
_PROBE_MARGIN = 1e3  # probe input scale for reading a norm's gain: K / sqrt(K^2 + eps) = 1 to ~1e-12


# ---------------------------------------------------------------- norms at a frozen scale


@dataclass(frozen=True)
class FrozenNorm:
    """The linear part of a LayerNorm / RMSNorm with its scale frozen at clean inputs.

    ``apply(c) = center(c) * gain * scale`` per row; ``norm(x) = apply(x) + bias`` on the clean rows.

    Attributes:
        center: whether the norm subtracts the mean (LayerNorm) or not (RMSNorm).
        gain: ``[d]`` the effective elementwise gain (Gemma's ``1 + weight`` included).
        scale: ``[rows]`` the clean inputs' ``1 / sqrt(var + eps)`` (or ``1 / rms``).
        bias: ``[d]`` the norm's output on a zero input.
    """

    center: bool
    gain: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor

    def apply(self, c: torch.Tensor) -> torch.Tensor:
        """``c [rows, ..., d]`` (row axis first, matching ``scale``) through the frozen norm, bias left out."""
        if self.center:
            c = c - c.mean(-1, keepdim=True)
        return c * self.gain * self.scale.view(-1, *([1] * (c.dim() - 1)))


def _call(module: Any, x: torch.Tensor) -> torch.Tensor:
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None else x.dtype
    return module(x.to(dtype)).float()


@torch.no_grad()
def freeze_norm(module: Any, clean: torch.Tensor, what: str = "norm") -> FrozenNorm:
    """Read a norm module as :class:`FrozenNorm` at the clean inputs ``clean [rows, d]``.

    The module is probed, not parsed: its output on zeros is the bias, on a large constant vector
    it tells centering (LayerNorm maps it to the bias) from RMS scaling, on a large alternating
    vector (mean 0, variance 1) it gives the gain; the scale of each clean row is the least-squares
    factor between the norm's output and ``center(x) * gain``, and the result must reproduce the
    module's output on the clean rows.

    Raises:
        UnsupportedArchitectureError: the module is not a LayerNorm / RMSNorm at a frozen scale (or
            centers an odd width, which the alternating probe cannot read).
    """
    x = clean.float()
    d = x.shape[-1]
    device = x.device
    bias = _call(module, torch.zeros(1, d, device=device))[0]
    big = _call(module, torch.full((1, d), _PROBE_MARGIN, device=device))[0] - bias
    center = bool(big.abs().max() <= 1e-3 * max(1.0, float(bias.abs().max())))
    if center and d % 2:
        raise UnsupportedArchitectureError(f"{what} centers a residual of odd width {d}; evidence reads norm gains "
                                           "with an alternating probe and needs an even width")
    if center:
        sign = torch.ones(d, device=device)
        sign[1::2] = -1.0
        gain = (_call(module, _PROBE_MARGIN * sign[None])[0] - bias) * sign
    else:
        gain = big  # rms(K * 1) = K: the output is the gain times K / sqrt(K^2 + eps), 1 to ~1e-12
    shaped = (x - x.mean(-1, keepdim=True) if center else x) * gain
    out = _call(module, x) - bias
    scale = (out * shaped).sum(-1) / (shaped * shaped).sum(-1).clamp_min(1e-30)
    error = (shaped * scale[:, None] - out).abs().max()
    param = next(module.parameters(), None)
    tolerance = 1e-4 if param is None or param.dtype == torch.float32 else 3e-2
    if float(error) > tolerance * max(1.0, float(out.abs().max())):
        raise UnsupportedArchitectureError(
            f"{what} ({type(module).__name__}) is neither a LayerNorm nor an RMSNorm at a frozen scale; "
            "evidence cannot project head writes through it"
        )
    return FrozenNorm(center, gain, scale, bias)


# ---------------------------------------------------------------- one forward pass


@dataclass
class _Pass:
    """What one forward pass recorded (appended query positions included)."""

    seq: int  # prompt length; positions >= seq are the appended forced queries
    z: dict[int, torch.Tensor]  # layer -> [b, seq + m, n_heads, d_head]
    final_in: list[torch.Tensor]  # inputs of final_modules()[:-1], each [b, seq + m, d]
    post_in: dict[int, torch.Tensor]  # sandwich blocks: layer -> post-attention norm input [b, seq + m, d]
    last_attn: torch.Tensor | None  # [b, n_layers, n_heads, seq]: attention of the last prompt position


def _post_attention_norm(handle: Any, layer: int) -> Any:
    """The norm applied to the attention output before it joins the residual (sandwich blocks), or None."""
    block = handle.geometry.block
    if block is None or block.residual != "sandwich":
        return None
    name = getattr(block, "post_attn_norm", None) or "post_attention_layernorm"
    module = getattr(handle.blocks()[layer], name, None)
    if module is None:
        raise UnsupportedArchitectureError(
            f"{handle.model_type} is described as a sandwich block but layer {layer} has no {name}; "
            "fix its geometry row"
        )
    return module


def _check_residual(handle: Any) -> None:
    block = handle.geometry.block
    if block is not None and block.pre_norm_flag and not getattr(handle.model.config, block.pre_norm_flag, True):
        raise UnsupportedArchitectureError(
            f"{handle.model_type} with {block.pre_norm_flag}=False normalizes the residual after each add, so a "
            "head's write does not reach the logits unchanged; evidence needs a pre-norm model"
        )


def _force_hook(seq: int, keys: torch.Tensor) -> Callable[..., Any]:
    """Attention pre-hook: appended query ``seq + t`` of row ``i`` attends to key ``keys[i, t]`` only."""
    done: dict[int, torch.Tensor] = {}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 4:
            raise CortexmapError("the model passed no 4-D attention mask to its attention modules; "
                                 "evidence needs eager attention with an explicit mask")
        if id(mask) not in done:  # layers of one attention type share their mask
            b, m = keys.shape
            new = mask.expand(b, *mask.shape[1:]).clone()
            allowed = torch.zeros(b, m, new.shape[-1], dtype=torch.bool, device=new.device)
            allowed[torch.arange(b)[:, None], torch.arange(m)[None, :], keys.to(new.device)] = True
            if new.dtype == torch.bool:
                new[:, :, seq:seq + m, :] = allowed[:, None]
            else:
                blocked = torch.finfo(new.dtype).min
                new[:, :, seq:seq + m, :] = torch.where(allowed[:, None], 0.0, blocked).to(new.dtype)
            done[id(mask)] = new
        return args, {**kwargs, "attention_mask": done[id(mask)]}

    return hook


@torch.no_grad()
def _forward(handle: Any, input_ids: torch.Tensor, keys: torch.Tensor | None, attention: bool) -> _Pass:
    """One eager pass over ``input_ids [b, seq]`` plus one appended query per column of ``keys [b, m]``."""
    ids = input_ids.to(handle.device)
    b, seq = ids.shape
    m = 0 if keys is None else keys.shape[1]
    if m:
        ids = torch.cat([ids, ids[:, -1:].expand(b, m)], dim=1)  # the appended tokens only query
    z: dict[int, torch.Tensor] = {}
    chain = handle.final_modules()[:-1]
    post_in: dict[int, torch.Tensor] = {}

    def store(target: dict, key: Any):  # noqa: ANN202
        def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            target[key] = (args[0] if args else kwargs["hidden_states"]).detach()

        return pre

    def keep_z(layer: int):  # noqa: ANN202
        def read(heads: torch.Tensor) -> None:  # [b, seq + m, n_heads, d_head]
            z[layer] = heads.detach()

        return read

    hooks = []
    slots: dict[int, torch.Tensor] = {}
    force = _force_hook(seq, keys) if m else None
    try:
        hooks += register_head_hooks(handle, {layer: keep_z(layer) for layer in range(handle.n_layers)})
        for index, module in enumerate(chain):
            hooks.append(module.register_forward_pre_hook(store(slots, index), with_kwargs=True))
        for layer in range(handle.n_layers):
            post = _post_attention_norm(handle, layer)
            if post is not None:
                hooks.append(post.register_forward_pre_hook(store(post_in, layer), with_kwargs=True))
            if force is not None:
                hooks.append(handle.attention(layer).register_forward_pre_hook(force, with_kwargs=True))
        with eager_attention(handle):
            out = handle.model(input_ids=ids, use_cache=False, output_attentions=attention, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    final_in = [slots[i].reshape(b, seq + m, -1) for i in range(len(chain))]
    last_attn = None
    if attention:
        if not out.attentions:
            raise CortexmapError("the model returned no attention weights; evidence needs eager attention")
        last_attn = torch.stack([a[:, :, seq - 1, :seq].float() for a in out.attentions], dim=1)
    return _Pass(seq, z, final_in, post_in, last_attn)


# ---------------------------------------------------------------- projecting head writes


@torch.no_grad()
def head_writes(handle: Any, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Each head's write to the residual stream: ``z [rows, n_heads, d_head] -> [rows, n_heads, d_model]``.

    The output projection is called on inputs holding one head's slice each, minus its output on
    zeros (its bias), so the projection's own layout (Linear, GPT-2's Conv1D) is used as stored.
    """
    module = handle.out_proj(layer)
    rows, n_heads, d_head = z.shape
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device)
    alone = (z[:, None, :, :] * eye[None, :, :, None]).reshape(rows, n_heads, n_heads * d_head)
    zero = torch.zeros(1, 1, n_heads * d_head, dtype=z.dtype, device=z.device)
    return _call(module, alone) - _call(module, zero)


class _Readout:
    """Projects head writes at chosen query positions through the frozen post-attention and final norms."""

    def __init__(self, handle: Any, run: _Pass, rows: torch.Tensor, query: torch.Tensor) -> None:
        """``rows [N]`` batch row and ``query [N]`` query position of each projected write."""
        self.handle = handle
        chain = handle.final_modules()[:-1]
        self.maps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for module, x in zip(chain, run.final_in):
            if isinstance(module, torch.nn.Linear):
                self.maps.append(lambda c, mod=module: _call(mod, c) - _call(mod, torch.zeros_like(c[:1])))
            else:
                frozen = freeze_norm(module, x[rows, query], "the final norm")
                self.maps.append(frozen.apply)
        self.post = {layer: freeze_norm(_post_attention_norm(handle, layer), x[rows, query],
                                        f"the post-attention norm of layer {layer}")
                     for layer, x in run.post_in.items()}
        self.unembed = handle.final_modules()[-1].weight  # [vocab, d_out]

    def project(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """``z [N, n_heads, d_head]`` -> the writes in the unembedding's input space ``[N, n_heads, d_out]``."""
        out = head_writes(self.handle, layer, z.float())
        if layer in self.post:
            out = self.post[layer].apply(out)
        for step in self.maps:
            out = step(out)
        return out


def _sets(ids: torch.Tensor) -> torch.Tensor:
    """Answer token ids as ``[b, m]`` (-1 where a prompt has fewer): a ``[b]`` tensor is one per prompt."""
    return ids[:, None] if ids.dim() == 1 else ids


def _direction(handle: Any, target_ids: torch.Tensor, foil_ids: torch.Tensor) -> torch.Tensor:
    """``[b, d_out]`` the mean unembedding of each prompt's target tokens minus its foil tokens'."""
    weight = handle.final_modules()[-1].weight.float()
    device = weight.device

    def mean(sets: torch.Tensor) -> torch.Tensor:
        sets = _sets(sets).to(device)
        mask = (sets >= 0).float()[..., None]
        return (weight[sets.clamp_min(0)] * mask).sum(1) / mask.sum(1)

    return mean(target_ids) - mean(foil_ids)


def _bias_diff(bias: torch.Tensor, target_ids: torch.Tensor, foil_ids: torch.Tensor) -> torch.Tensor:
    def mean(sets: torch.Tensor) -> torch.Tensor:
        sets = _sets(sets).to(bias.device)
        mask = (sets >= 0).float()
        return (bias.float()[sets.clamp_min(0)] * mask).sum(1) / mask.sum(1)

    return mean(target_ids) - mean(foil_ids)


@torch.no_grad()
def _clean_logit_diff(handle: Any, run: _Pass, target_ids: torch.Tensor, foil_ids: torch.Tensor) -> torch.Tensor:
    """``[b]`` clean logit along the direction (``logit(target) - logit(foil)``) at the last prompt position.

    Read before any soft-capping.
    """
    chain = handle.final_modules()
    hidden = run.final_in[0][:, run.seq - 1] if run.final_in else None
    if hidden is None:  # no module before the unembedding: its input is the residual itself
        raise CortexmapError("evidence needs the final norm's input; this model has no module before its unembedding")
    for module in chain[:-1]:
        hidden = _call(module, hidden)
    unembed = chain[-1]
    logits_diff = (hidden * _direction(handle, target_ids, foil_ids)).sum(-1)
    bias = getattr(unembed, "bias", None)
    if bias is not None:
        logits_diff = logits_diff + _bias_diff(bias, target_ids, foil_ids).to(logits_diff.device)
    return logits_diff


# ---------------------------------------------------------------- task evidence


def _last_before(mask: torch.Tensor, end: int) -> torch.Tensor:
    """``[b]`` the last position ``< end`` where ``mask [b, seq]`` holds, -1 where none."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    hits = mask & (pos < end)
    return torch.where(hits, pos, torch.full_like(pos, -1)).amax(-1)


@torch.no_grad()
def prompt_evidence(handle: Any, input_ids: torch.Tensor, target_ids: torch.Tensor, foil_ids: torch.Tensor,
                    cue_mask: torch.Tensor | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-prompt task statistics of every head on one batch of equal-length prompts.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle`.
        input_ids: ``[b, seq]`` clean prompts.
        target_ids: ``[b]`` target token ids, or ``[b, m]`` the first tokens of each prompt's
            targets (-1 where it has fewer).
        foil_ids: ``[b]`` or ``[b, m]`` foil token ids, likewise.
        cue_mask: ``[b, seq]`` cue positions (None: no ``attn_cue``).

    Returns:
        ``stat -> (values [b, n_layers, n_heads], counted [b])`` for the statistics of the module
        docstring, ``dla`` and ``ov_target`` in logit units (not yet normalised), plus ``"clean"``:
        ``(clean logit difference [b], all True)``.
    """
    _check_residual(handle)
    ids = input_ids.to(handle.device)
    b, seq = ids.shape
    targets, foils = _sets(target_ids).to(ids.device), _sets(foil_ids).to(ids.device)
    target_at = ((ids[:, :, None] == targets[:, None, :]) & (targets >= 0)[:, None, :]).any(-1)
    foil_at = ((ids[:, :, None] == foils[:, None, :]) & (foils >= 0)[:, None, :]).any(-1)
    key = _last_before(target_at, seq - 1)  # the target's last occurrence before the decision position
    has_key = key >= 0
    run = _forward(handle, ids, key.clamp_min(0)[:, None] if has_key.any() else None, attention=True)
    attn = run.last_attn  # [b, L, H, seq]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def put(name: str, values: torch.Tensor, counted: torch.Tensor) -> None:
        out[name] = (values.float().cpu().numpy(), counted.cpu().numpy().astype(bool))

    def mass(mask: torch.Tensor) -> torch.Tensor:
        return (attn * mask[:, None, None, :].to(attn.dtype)).sum(-1)

    has_target, has_foil = target_at.any(-1), foil_at.any(-1)
    put("attn_target", mass(target_at), has_target)
    put("attn_foil", mass(foil_at), has_foil)
    put("attn_target_minus_foil", mass(target_at) - mass(foil_at), has_target & has_foil)
    if cue_mask is not None:
        cues = cue_mask.to(ids.device).bool()
        put("attn_cue", mass(cues), cues.any(-1))
    rows = torch.arange(b, device=ids.device)
    readout = _Readout(handle, run, rows, torch.full((b,), seq - 1, device=ids.device))
    direction = _direction(handle, target_ids, foil_ids)[:, None, :]  # [b, 1, d_out]
    aimed = direction.abs().sum((1, 2)) > 0  # target and foil tokens differ
    dla, ov = [], []
    for layer in range(handle.n_layers):
        dla.append((readout.project(layer, run.z[layer][:, seq - 1]) * direction).sum(-1))
        if run.z[layer].shape[1] > seq:  # the appended query attended to the target's position only
            ov.append((readout.project(layer, run.z[layer][:, seq]) * direction).sum(-1))
    put("dla", torch.stack(dla, 1), aimed)
    if ov:
        put("ov_target", torch.stack(ov, 1), has_key & aimed)
    else:
        put("ov_target", torch.zeros(b, handle.n_layers, handle.n_heads), has_key & aimed)
    put("clean", _clean_logit_diff(handle, run, target_ids, foil_ids), aimed)
    return out


def _cue_mask(tokenizer: Any, task: Any, indices: Sequence[int], seq: int) -> torch.Tensor | None:
    """``[b, seq]`` cue positions of the batch's pairs, or None when the task's pairs carry no cue."""
    if not any(p.cue for p in task.pairs):
        return None
    mask = torch.zeros(len(indices), seq, dtype=torch.bool)
    for row, index in enumerate(indices):
        pair = task.pairs[index]
        for cue in pair.cue:
            for position in cue_positions(tokenizer, pair.prompt, cue):
                if 0 <= position < seq:
                    mask[row, position] = True
    return mask


def _prompt_batches(task: Any, tokenizer: Any,
                    batch_size: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Equal-length batches of the prompts alone: ``(indices, input_ids [b, seq], targets [b, m], foils [b, m])``.

    ``targets`` / ``foils`` hold the first token of each prompt's answers (-1 where it has fewer).
    """
    by_length: dict[int, list[int]] = {}
    ids = [prompt_ids(tokenizer, p.prompt) for p in task.pairs]
    for index, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(index)

    def firsts(answers: list[tuple[str, ...]]) -> torch.Tensor:
        tokens = [list(dict.fromkeys(answer_ids(tokenizer, a)[0] for a in group)) for group in answers]
        out = torch.full((len(tokens), max(map(len, tokens))), -1, dtype=torch.long)
        for i, t in enumerate(tokens):
            out[i, :len(t)] = torch.tensor(t)
        return out

    batches = []
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            pairs = [task.pairs[i] for i in chunk]
            batches.append((chunk, torch.tensor([ids[i] for i in chunk]), firsts([p.targets for p in pairs]),
                            firsts([p.foils for p in pairs])))
    return batches


def task_evidence(handle: Any, task: Any, *, batch_size: int = 32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-prompt statistics of one task: ``stat -> (values [n_prompts, n_layers, n_heads], counted [n_prompts])``.

    ``dla`` and ``ov_target`` are divided by ``|mean clean logit difference|`` of the task (along
    each prompt's direction, over the prompts that have one).
    """
    n = len(task.pairs)
    collected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for indices, input_ids, targets, foils in _prompt_batches(task, handle.tokenizer, batch_size):
        cues = _cue_mask(handle.tokenizer, task, indices, input_ids.shape[1])
        found = prompt_evidence(handle, input_ids, targets, foils, cues)
        for stat, (values, counted) in found.items():
            if stat not in collected:
                collected[stat] = (np.zeros((n, *values.shape[1:])), np.zeros(n, dtype=bool))
            collected[stat][0][indices] = values
            collected[stat][1][indices] = counted
    clean, aimed = collected.pop("clean")
    scale = abs(float(np.mean(clean[aimed]))) if aimed.any() else 0.0
    for stat in ("dla", "ov_target"):
        values, counted = collected[stat]
        collected[stat] = (values / scale if scale else values * np.nan, counted & bool(scale))
    return collected


# ---------------------------------------------------------------- probe evidence


def induction_keys(input_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per prompt, the ``(query, key)`` pairs of the induction probe: key = the position after the
    latest earlier occurrence of the query's token, before the query (:func:`~cortexmap.tasks.probes.induction_score`)."""
    pairs = []
    for row in input_ids.tolist():
        seen: dict[int, int] = {}
        found, keys = [], set()
        for q, token in enumerate(row):
            if token in seen and seen[token] + 1 < q and seen[token] + 1 not in keys:
                found.append((q, seen[token] + 1))
                keys.add(seen[token] + 1)
            seen[token] = q
        pairs.append(found)
    return pairs


def _spread(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, k).round().astype(int)]


@torch.no_grad()
def _ov_logit_vectors(handle: Any, input_ids: torch.Tensor, pairs: list[list[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Unembedding-space OV outputs from each ``(query, key)``: ``[N, n_layers, n_heads, d_out]``.

    Returns the vectors, the key tokens ``[N]`` and each vector's prompt index.
    """
    m = max(len(p) for p in pairs)
    keys = torch.tensor([[k for _, k in p] + [0] * (m - len(p)) for p in pairs], dtype=torch.long)
    run = _forward(handle, input_ids, keys, attention=False)
    rows = torch.tensor([i for i, p in enumerate(pairs) for _ in p], dtype=torch.long, device=handle.device)
    slot = torch.tensor([t for p in pairs for t in range(len(p))], dtype=torch.long, device=handle.device)
    query = torch.tensor([q for p in pairs for q, _ in p], dtype=torch.long, device=handle.device)
    readout = _Readout(handle, run, rows, query)
    vectors = torch.stack([readout.project(layer, run.z[layer][rows, run.seq + slot])
                           for layer in range(handle.n_layers)], dim=1)
    tokens = input_ids.to(handle.device)[rows, torch.tensor([k for p in pairs for _, k in p], device=handle.device)]
    return vectors, tokens, rows.tolist()


def _in_top(vectors: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor, top: int, seed: int,
            chunks: Sequence[int] = (1024, 4096)) -> torch.Tensor:
    """``[N]`` whether ``tokens[i]`` is among the ``top`` highest logits of ``vectors[i] @ weight.T``.

    Exact: the vocabulary is visited in seeded random chunks and a vector leaves as soon as ``top``
    other tokens beat its token (most heads' OV output does not favour the key's token, so few
    vectors see the whole vocabulary).
    """
    weight = weight.float()
    vocab = weight.shape[0]
    order = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed)).to(weight.device)
    own = (vectors * weight[tokens]).sum(-1)
    count = torch.zeros(len(vectors), dtype=torch.long, device=vectors.device)
    alive = torch.arange(len(vectors), device=vectors.device)
    start = 0
    sizes = list(chunks) + [vocab]
    for size in sizes:
        if start >= vocab or not len(alive):
            break
        part = order[start:start + size]
        start += size
        step = max(1, 16_000_000 // len(part))  # rows x chunk logits held at once
        for lo in range(0, len(alive), step):
            idx = alive[lo:lo + step]
            scores = vectors[idx] @ weight[part].T  # [rows, chunk]
            beats = (scores > own[idx, None]) & (part[None, :] != tokens[idx, None])
            count[idx] += beats.sum(-1)
        alive = alive[count[alive] < top]
    return count < top


@torch.no_grad()
def copy_scores(handle: Any, batch: ProbeBatch, *, keys_per_prompt: int = COPY_KEYS, top: int = COPY_TOP,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Induction copy score per prompt: ``(values [n, n_layers, n_heads], counted [n])`` (module docstring)."""
    _check_residual(handle)
    pairs = [_spread(p, keys_per_prompt) for p in induction_keys(batch.input_ids)]
    counted = np.array([bool(p) for p in pairs])
    values = np.zeros((len(pairs), handle.n_layers, handle.n_heads))
    if not counted.any():
        return values, counted
    keep = [i for i, p in enumerate(pairs) if p]
    vectors, tokens, owner = _ov_logit_vectors(handle, batch.input_ids[keep], [pairs[i] for i in keep])
    n_vec, n_layers, n_heads, width = vectors.shape
    flat = vectors.reshape(-1, width)
    hit = _in_top(flat, tokens.repeat_interleave(n_layers * n_heads), handle.final_modules()[-1].weight, top, seed)
    hit = hit.reshape(n_vec, n_layers, n_heads).float().cpu().numpy()
    owner_arr = np.asarray(owner)
    for j, i in enumerate(keep):
        values[i] = hit[owner_arr == j].mean(0)
    return values, counted


@torch.no_grad()
def succession_scores(handle: Any, batch: ProbeBatch) -> tuple[np.ndarray, np.ndarray]:
    """Succession score per prompt: ``(values [n, n_layers, n_heads], counted [n])`` (module docstring)."""
    _check_residual(handle)
    if batch.members is None:
        raise CortexmapError("succession scores need ordinal-list prompts with member positions")
    members = batch.members.tolist()
    pairs = [[(mem[i + 1], mem[i]) for i in range(len(mem) - 1)] for mem in members]
    vectors, _, owner = _ov_logit_vectors(handle, batch.input_ids, pairs)  # [N, L, H, d]
    weight = handle.final_modules()[-1].weight.float()
    ids = batch.input_ids.to(weight.device)
    member_tokens = ids[torch.arange(len(members))[:, None], batch.members.to(weight.device)]  # [n, m]
    owner_t = torch.tensor(owner, device=weight.device)
    step = torch.tensor([i for mem in members for i in range(len(mem) - 1)], device=weight.device)
    options = weight[member_tokens[owner_t]]  # [N, m, d]
    logits = torch.einsum("nlhd,nmd->nlhm", vectors, options)
    success = (logits.argmax(-1) == (step + 1)[:, None, None]).float().cpu().numpy()
    values = np.zeros((len(members), handle.n_layers, handle.n_heads))
    owner_arr = np.asarray(owner)
    for i in range(len(members)):
        values[i] = success[owner_arr == i].mean(0)
    return values, np.ones(len(members), dtype=bool)


PROBE_SCORES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "induction": lambda handle, batch, seed: copy_scores(handle, batch, seed=seed),
    "successor": lambda handle, batch, seed: succession_scores(handle, batch),
}


# ---------------------------------------------------------------- the table


def evidence_rows(model: str, source: str, name: str, per_prompt: dict[str, tuple[np.ndarray, np.ndarray]],
                  seed: int = 0) -> pd.DataFrame:
    """Summarise per-prompt statistics into :data:`EVIDENCE_COLUMNS` rows (mean, bootstrap 95% CI, n).

    A statistic no prompt counted gets rows with NaN values and ``n = 0``.
    """
    frames = []
    for stat, (values, counted) in per_prompt.items():
        n_prompts, n_layers, n_heads = values.shape
        kept = values[counted].reshape(int(counted.sum()), n_layers * n_heads)
        if len(kept):
            mean = kept.mean(0)
            low, high = bootstrap_cis(kept, seed=seed)
        else:
            mean = low = high = np.full(n_layers * n_heads, np.nan)
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        frames.append(pd.DataFrame({
            "model": model, "source": source, "name": name, "layer": layer, "head": head,
            "head_id": [str(HeadId(int(a), int(b))) for a, b in zip(layer, head)], "stat": stat,
            "value": mean, "ci_low": low, "ci_high": high, "n": int(len(kept)),
        }))
    if not frames:
        return pd.DataFrame(columns=EVIDENCE_COLUMNS)
    return pd.concat(frames, ignore_index=True).loc[:, EVIDENCE_COLUMNS]


def measure_evidence(handle: Any, tasks: Sequence[Any], *, probe_prompts: int = 32, seed: int = 0,
                     batch_size: int = 32, probes: Sequence[str] = tuple(PROBE_STATS),
                     progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Attention, OV and direct-logit evidence of every head on each task and on the probes.

    Args:
        handle: a :class:`~cortexmap.models.ModelHandle` with a tokenizer.
        tasks: built tasks (:func:`~cortexmap.tasks.build_task`) for this handle's tokenizer.
        probe_prompts: prompts per probe (the probes' own generators, seeded like
            :func:`~cortexmap.tasks.probes.run_probes` so they are the same prompts).
        seed: seed of the probe prompts, the vocabulary order of the copy score and the bootstrap.
        batch_size: prompts per forward pass.
        probes: which probe statistics (keys of :data:`PROBE_STATS`); ``()`` for none.
        progress: called with a short note per task or probe.

    Returns:
        The long table of the module docstring (columns :data:`EVIDENCE_COLUMNS`).

    Raises:
        UnsupportedArchitectureError: a norm that is neither a LayerNorm nor an RMSNorm, or a
            post-norm model.
        TaskError: a task that does not fit the tokenizer.
    """
    if handle.tokenizer is None:
        raise CortexmapError(f"{handle.spec} has no tokenizer: evidence needs one to encode tasks and probe prompts")
    frames = []
    model = str(handle.spec)
    for task in tasks:
        if progress:
            progress(f"evidence · {task.name}")
        log.debug("evidence on %s (%d prompts)", task.name, len(task.pairs))
        frames.append(evidence_rows(model, "task", task.name, task_evidence(handle, task, batch_size=batch_size), seed))
    for name in probes:
        if name not in PROBE_STATS:
            raise CortexmapError(f"no evidence statistic for probe {name!r}; valid: {', '.join(PROBE_STATS)}")
        if progress:
            progress(f"evidence · {name} probe")
        batch = INPUTS[PROBES[name].inputs](handle.tokenizer, probe_prompts, seed)
        values, counted = [], []
        for start in range(0, probe_prompts, batch_size):
            part = ProbeBatch(batch.input_ids[start:start + batch_size],
                              None if batch.members is None else batch.members[start:start + batch_size])
            v, c = PROBE_SCORES[name](handle, part, seed)
            values.append(v)
            counted.append(c)
        per_prompt = {PROBE_STATS[name]: (np.concatenate(values), np.concatenate(counted))}
        frames.append(evidence_rows(model, "probe", name, per_prompt, seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EVIDENCE_COLUMNS)
