"""Healing: a short distillation fine-tune of a pruned model towards the unpruned one.

The student (pruned copy) is trained for a few AdamW steps to match the teacher's next-token
distribution on training text: the loss is ``KL(teacher || student)`` per token, averaged over
tokens. Small enough for a CPU (default 30 steps of 4 x 128 tokens at ``lr = 1e-4``). Dropout
stays off (the model stays in eval mode), so a seeded run is reproducible.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch.nn import functional as F

from cortexmap.errors import CortexmapError
from cortexmap.models import ModelHandle

log = logging.getLogger(__name__)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``KL(teacher || student)``; logits ``[batch, seq, vocab]``."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab), dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab), dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def heal(student: ModelHandle, teacher: ModelHandle, chunks: torch.Tensor, steps: int = 30, batch_size: int = 4,
         lr: float = 1e-4, weight_decay: float = 0.0, seed: int = 0,
         progress: Callable[[str], None] | None = None) -> list[float]:
    """Fine-tune ``student`` in place to match ``teacher``'s logits on ``chunks``.

    Args:
        student: the pruned model (its weights change).
        teacher: the unpruned model (unchanged).
        chunks: training token ids ``[n, seq]`` (e.g. ``token_chunks(tok, "train").ids``).
        steps: optimizer steps.
        batch_size: chunks per step, drawn in a seeded random order (cycling).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: order of the chunks.
        progress: called with a line per step.

    Returns:
        The distillation loss of each step.

    Raises:
        CortexmapError: no steps or no chunks.
    """
    if steps < 1 or chunks.shape[0] < 1:
        raise CortexmapError("healing needs at least one step and one chunk of training text")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(chunks.shape[0], generator=gen)
    params = [p for p in student.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    position = 0
    for step in range(steps):
        rows = torch.cat([order, order])[position:position + batch_size]
        position = (position + batch_size) % chunks.shape[0]
        ids = chunks[rows].to(student.device)
        with torch.no_grad():
            target = teacher.model(input_ids=ids.to(teacher.device), use_cache=False).logits.to(student.device)
        loss = distillation_loss(student.model(input_ids=ids, use_cache=False).logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(f"heal step {step + 1}/{steps}: KL {losses[-1]:.4f}")
    optimizer.zero_grad(set_to_none=True)
    log.info("healed %d steps: KL %.4f -> %.4f", steps, losses[0], losses[-1])
    return losses
