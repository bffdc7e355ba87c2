"""Fixtures for the task battery: byte-level BPE tokenizers trained on the task data and a tiny
random Llama handle (the bundled tokenizers' fixture is in tests/models/conftest.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def _strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [str(node)] if node is not None else []


def task_corpus() -> list[str]:
    """Lines covering every word of the task data, alone and with a leading space."""
    data = resources.files("cortexmap.tasks") / "data"
    words: set[str] = set()
    lines: list[str] = []
    for path in data.iterdir():
        if not path.name.endswith(".yaml"):
            continue
        for text in _strings(yaml.safe_load(path.read_text(encoding="utf-8"))):
            plain = re.sub(r"\{[^}]*\}", " ", text)
            lines.append(plain)
            words.update(re.findall(r"[A-Za-z']+|[^\sA-Za-z0-9]", plain))
    words.update(w.capitalize() for w in list(words))
    for word in sorted(words):
        lines += [f"{word} {word} {word}"] * 3
    numbers = [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)]
    lines += [f"{n} {n}" for n in numbers] * 3 + [f"in the year {c}{y:02d}" for c in range(13, 19) for y in range(100)]
    return lines


def make_bpe_tokenizer(split_digits: bool, bos: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer whose vocabulary holds every task word as one token.

    Args:
        split_digits: one token per digit (SmolLM2 / Gemma style) instead of GPT-2 style merges.
        bos: add ``<s>`` before every encoded text (default special tokens).
    """
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=6000, min_frequency=1, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(task_corpus(), trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def bpe_digits() -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit tokens and a BOS token."""
    return make_bpe_tokenizer(split_digits=True, bos=True)


@pytest.fixture(scope="session")
def bpe_gpt2() -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE: merged digits, no BOS."""
    return make_bpe_tokenizer(split_digits=False, bos=False)


@pytest.fixture(scope="session", params=["bpe_digits", "bpe_gpt2"])
def bpe(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    """Both test tokenizers in turn."""
    return request.getfixturevalue(request.param)


@dataclass
class TinyHandle:
    """The minimal model handle the task functions need."""

    model: Any
    tokenizer: Any
    n_layers: int
    n_heads: int
    device: torch.device
    spec: str = "tiny-llama"


@pytest.fixture(scope="session")
def tiny(bpe_digits: PreTrainedTokenizerFast) -> TinyHandle:
    """A random 2-layer Llama with grouped-query attention (4 heads, 2 kv heads), in sdpa mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(bpe_digits), max_position_embeddings=256,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    return TinyHandle(model, bpe_digits, 2, 4, torch.device("cpu"))
