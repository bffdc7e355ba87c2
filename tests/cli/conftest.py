"""Fixtures of the CLI tests: tiny saved models, a task file, and finished run directories.

``tiny`` is a random 3-layer llama saved with a word-level tokenizer over an IOI-shaped JSONL
task (tests/sweep/tiny_run.py); ``word_model`` is a random 2-layer llama whose word-level
tokenizer holds every word of the built-in battery, so ``tasks check`` finds usable pairs.
``small_run`` (a copy of tests/data/run_small) and ``rich_runs`` come from tests/report/conftest.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.report.conftest import rich_runs, small_run  # noqa: F401  (shared run fixtures)
from tests.sweep.tiny_run import make_model_dir, make_task_file
from tests.tasks.conftest import task_corpus


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(model directory, task file with corrupt prompts, task file without)``."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)  # the same random weights whichever test asks first
    return make_model_dir(root), make_task_file(root), make_task_file(root / "..", corrupt=False)


@pytest.fixture(scope="session")
def word_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random llama whose tokenizer has one token per word (and punctuation mark) of the battery."""
    words = sorted({w for line in task_corpus() for w in re.findall(r"[A-Za-z']+|[0-9]+|[^\sA-Za-z0-9]", line)})
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path_factory.mktemp("word") / "word-model"
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path

