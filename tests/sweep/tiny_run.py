"""A tiny saved model directory plus a JSONL task it can run: end-to-end sweeps in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

NAMES = ["anna", "bert", "carl", "dora", "emil", "fred", "gina", "hugo", "ines", "jack"]
WORDS = ["when", "and", "went", "to", "the", "store", "gave", "a", "drink"]


def make_model_dir(root: Path, arch_config: tf.PretrainedConfig | None = None) -> Path:
    """Save a tiny random llama and a word-level tokenizer over the task vocabulary."""
    vocab = {w: i for i, w in enumerate(["[UNK]"] + WORDS + NAMES)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    config = arch_config or tf.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)  # the same tiny model whatever ran before
    model = tf.AutoModelForCausalLM.from_config(config)
    path = root / "tiny-model"
    model.save_pretrained(path)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def make_task_file(root: Path, n: int = 12, seed: int = 0, corrupt: bool = True) -> Path:
    """IOI-shaped pairs over the tiny vocabulary, with same-length corrupt prompts."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b, c = rng.sample(NAMES, 3)
        prompt = f"when {a} and {b} went to the store {b} gave a drink to"
        row = {"prompt": prompt, "target": f" {a}", "foil": f" {b}", "level": "pragmatic"}
        if corrupt:
            row["corrupt"] = f"when {a} and {b} went to the store {a} gave a drink to"
        lines.append(json.dumps(row))
    path = root / "ioi_tiny.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_multi_token_file(root: Path, n: int = 12, seed: int = 0) -> Path:
    """IOI-shaped pairs whose target is two names, and whose corrupt prompts are a word longer or shorter."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        a, b, c = rng.sample(NAMES, 3)
        prompt = f"when {a} and {b} went to the store {b} gave a drink to"
        corrupt = (f"when {a} and {b} went to the store {a} {c} gave a drink to" if i % 3 == 0 else
                   f"when {a} and {b} went to store {a} gave a drink to" if i % 3 == 1 else
                   f"when {a} and {b} went to the store {a} gave a drink to")
        lines.append(json.dumps({"prompt": prompt, "target": f" {a} and {c}", "foil": f" {b}", "corrupt": corrupt}))
    path = root / "ioi_multi.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
