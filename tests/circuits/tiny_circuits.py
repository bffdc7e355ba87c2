"""Tiny random models for circuit tests: every shared tiny config plus qwen3, gemma, gemma2 and a
sequential GPT-NeoX, weights scaled up.

At the default init (std 0.02) a 32-wide model is nearly linear in its inputs: attention is almost
uniform, the MLP barely leaves the linear part of its activation, and every first-order estimate
looks exact. Scaling every matrix by ``SCALE`` makes attention patterns and MLPs nonlinear, so
exactness tests compare effects of order 0.1-1 and the EAP tests see real second-order terms.
"""

from __future__ import annotations

import torch
import transformers as tf

from cortexmap.models import wrap_model
from cortexmap.tasks.core import EncodedBatch
from tests.tiny import ARCHS, VOCAB, model_from_config, random_ids, tiny_model

SCALE = 4.0
EXTRA = ["qwen3", "gemma", "gemma2", "gpt_neox_sequential"]
SUPPORTED = ARCHS + EXTRA  # every tiny architecture: fused q/k/v, parallel, sandwich and GQA included
FUSED = ["gpt2", "gpt_neox", "gpt_neox_sequential"]
SANDWICH = ["gemma2", "gemma3_text"]


def _extra_model(arch: str, seed: int, dtype: torch.dtype):  # noqa: ANN202
    common = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 64}
    config = {"qwen3": lambda: tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=8),
              "gemma": lambda: tf.GemmaConfig(**common, num_key_value_heads=1, head_dim=8),
              "gemma2": lambda: tf.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=4),
              "gpt_neox_sequential": lambda: tf.GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=False),
              }[arch]()
    return model_from_config(config, seed, dtype)


def circuit_handle(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, scale: float = SCALE):  # noqa: ANN201
    model = _extra_model(arch, seed, dtype) if arch in EXTRA else tiny_model(arch, seed, dtype)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(scale)
    return wrap_model(model, None, spec=f"tiny-{arch}")


def task_batch(batch: int = 4, seq: int = 7, seed: int = 1, positions: tuple[int, ...] = (2, 4)) -> EncodedBatch:
    """Random clean prompts; corrupt prompts differ at ``positions``; random target and foil tokens."""
    ids = random_ids(batch, seq, seed)
    corrupt = ids.clone()
    other = random_ids(batch, seq, seed + 100)
    for p in positions:
        corrupt[:, p] = other[:, p]
    answers = random_ids(batch, 2, seed + 200)
    return EncodedBatch(ids, corrupt, answers[:, 0], answers[:, 1], list(range(batch)))
