"""A task's metric: one number per prompt from the logits at a few (row, position) reads.

Every task scores a prompt by comparing its right answers (targets) with its wrong ones (foils).
An answer is a *continuation* of the prompt, one or more tokens. Its score is the teacher-forced
log-probability of the continuation, ``log P(c | prompt) = sum_j log softmax(logits_j)[c_j]``, read
at positions ``P - 1 .. P + len(c) - 2`` of the sequence ``prompt + c[:-1]`` (``P`` prompt tokens).

The metrics (:data:`METRICS`):

* ``logit_diff``: ``logit[t] - logit[f]`` at the last prompt position, for a pair whose target and
  foil are one token each. It *is* ``logprob_diff`` for such a pair: ``log softmax`` subtracts the
  same normaliser from both logits of one position, so the difference of log-probabilities equals
  the difference of logits. It is computed from the raw logits so that single-token numbers do not
  move.
* ``logprob_diff``: ``log P(target) - log P(foil)``, each the sum over its tokens. The sum runs over
  log-probabilities, not logits, because the logits of a position are only defined up to an
  additive constant (softmax ignores it) and that constant differs from one position to the next:
  the second token of the target is read in another context than the second token of the foil,
  and a pair's answers may have different numbers of tokens, so summed logits would add constants
  that do not cancel. Summed log-probabilities are the model's log-likelihood of each answer.
* ``prob_diff``: ``sum_{t in targets} P(t) - sum_{f in foils} P(f)``, the probability mass of the
  right answers minus that of the wrong ones (Hanna et al. 2023's greater-than metric), in [-1, 1].
* ``log_mass_diff``: ``log sum_t P(t) - log sum_f P(f)``, the same masses on a log scale (for
  one target and one foil, ``logprob_diff``).

Accuracy is top-1 among the candidates: a prompt is right when its most probable candidate is a
target (for a pair: ``metric > 0``). The metric's *chance level* is its value for a model
indifferent among the candidates (the same total mass spread evenly over them): 0 for the
differences of a pair, ``(P_T + P_F) (n_T - n_F) / (n_T + n_F)`` for ``prob_diff`` and
``log(n_T / n_F)`` for ``log_mass_diff`` (``n_T``, ``n_F``: the set sizes).

Shapes: ``logits`` is ``[k, n_reads, vocab]`` (``k`` copies of the batch, e.g. one per head
intervention); every result is ``[k, n_prompts]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METRICS: dict[str, str] = {
    "logit_diff": "logit(target) - logit(foil) at the last prompt position (single-token answers)",
    "logprob_diff": "log P(target) - log P(foil), each answer's teacher-forced sum of token log-probabilities",
    "prob_diff": "P(targets) - P(foils): the probability mass of the right answers minus the wrong ones'",
    "log_mass_diff": "log P(targets) - log P(foils): the log of each set's summed probability",
}
SET_METRICS: tuple[str, ...] = ("prob_diff", "log_mass_diff")
PAIR_METRICS: tuple[str, ...] = ("logit_diff", "logprob_diff")


@dataclass(frozen=True)
class Readout:
    """Where a batch's metric is read and how it is combined.

    Attributes:
        metric: one of :data:`METRICS`.
        rows: ``[n_reads]`` batch row of each read.
        positions: ``[n_reads]`` position of each read in its row.
        token_read: ``[n_tokens]`` the read each answer token is scored at.
        token_id: ``[n_tokens]`` the token's id.
        token_cand: ``[n_tokens]`` the candidate answer the token belongs to.
        targets: ``[n_prompts, m]`` candidate indices of each prompt's targets (-1: none).
        foils: ``[n_prompts, m]`` candidate indices of each prompt's foils (-1: none).
        n_cands: number of candidates.
    """

    metric: str
    rows: torch.Tensor
    positions: torch.Tensor
    token_read: torch.Tensor
    token_id: torch.Tensor
    token_cand: torch.Tensor
    targets: torch.Tensor
    foils: torch.Tensor
    n_cands: int

    @property
    def n_prompts(self) -> int:
        return int(self.targets.shape[0])

    @property
    def n_reads(self) -> int:
        return int(self.rows.shape[0])

    def candidate_scores(self, logits: torch.Tensor, *, log_probs: bool = False) -> torch.Tensor:
        """``[k, n_cands]`` per candidate: its raw logit (``logit_diff``, one token each) or its log-probability.

        Args:
            logits: ``[k, n_reads, vocab]``.
            log_probs: log-probabilities even for ``logit_diff``.
        """
        logits = logits.float()
        device = logits.device
        read, token = self.token_read.to(device), self.token_id.to(device)
        picked = logits[:, read, token]  # [k, n_tokens]
        if self.metric == "logit_diff" and not log_probs:
            return picked  # one token per candidate, in candidate order
        picked = picked - torch.logsumexp(logits, dim=-1)[:, read]
        out = picked.new_zeros(picked.shape[0], self.n_cands)
        return out.index_add_(1, self.token_cand.to(device), picked)

    def _sides(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt, the targets' and foils' scores ``[k, n_prompts, m]`` (-inf where a prompt has fewer)."""
        out = []
        for table in (self.targets, self.foils):
            table = table.to(scores.device)
            picked = scores[:, table.clamp_min(0)]
            out.append(picked.masked_fill(table < 0, -math.inf))
        return out[0], out[1]

    def metric_of(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric per prompt, ``[k, n_prompts]``, from ``[k, n_reads, vocab]`` logits."""
        t, f = self._sides(self.candidate_scores(logits))
        if self.metric in PAIR_METRICS:
            return t[..., 0] - f[..., 0]
        if self.metric == "prob_diff":
            return t.exp().sum(-1) - f.exp().sum(-1)
        return torch.logsumexp(t, -1) - torch.logsumexp(f, -1)

    def correct(self, logits: torch.Tensor) -> torch.Tensor:
        """``[k, n_prompts]`` whether the most probable candidate is a target (top-1 among the candidates)."""
        t, f = self._sides(self.candidate_scores(logits))
        return t.amax(-1) > f.amax(-1)

    def masses(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([k, n_prompts], [k, n_prompts])``: the total probability of the targets and of the foils."""
        t, f = self._sides(self.candidate_scores(logits, log_probs=True))
        return t.exp().sum(-1), f.exp().sum(-1)

    def set_sizes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n_prompts], [n_prompts])`` the number of targets and of foils of each prompt."""
        return (self.targets >= 0).sum(-1), (self.foils >= 0).sum(-1)

    def chance_accuracy(self) -> torch.Tensor:
        """``[n_prompts]`` the accuracy of a uniform guess among the candidates."""
        n_t, n_f = self.set_sizes()
        return n_t.double() / (n_t + n_f).double()

    def chance_metric(self, logits: torch.Tensor) -> torch.Tensor:
        """``[k, n_prompts]`` the metric of a model indifferent among the candidates (module docstring)."""
        n_t, n_f = (n.to(logits.device).double() for n in self.set_sizes())
        k = logits.shape[0]
        if self.metric == "prob_diff":
            p_t, p_f = self.masses(logits)
            return ((p_t + p_f).double() * (n_t - n_f) / (n_t + n_f)).float()
        if self.metric == "log_mass_diff":
            return torch.log(n_t / n_f).float().expand(k, -1)
        return torch.zeros(k, self.n_prompts, device=logits.device)


def pair_readout(n_prompts: int, target_ids: torch.Tensor, foil_ids: torch.Tensor, last: int) -> Readout:
    """The ``logit_diff`` readout of one-token pairs: row ``i`` is prompt ``i``, read at position ``last``."""
    rows = torch.arange(n_prompts)
    return Readout(
        metric="logit_diff", rows=rows, positions=torch.full((n_prompts,), last),
        token_read=rows.repeat_interleave(2), token_id=torch.stack([target_ids.cpu(), foil_ids.cpu()], 1).reshape(-1),
        token_cand=torch.arange(2 * n_prompts), targets=(2 * rows)[:, None], foils=(2 * rows + 1)[:, None],
        n_cands=2 * n_prompts,
    )
