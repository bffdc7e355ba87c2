"""A character-level stand-in tokenizer for tiny models (vocabulary of tests/tiny.py)."""

from __future__ import annotations

from typing import Any

import torch

from tests.tiny import VOCAB


class CharTokenizer:
    """Maps each character to an id in ``[1, VOCAB)``; enough for corpus chunking and generation."""

    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None) -> dict[str, Any]:
        ids = [ord(c) % (VOCAB - 1) + 1 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return "".join(chr(96 + int(i) % 26) for i in ids)

    def save_pretrained(self, path: Any) -> None:
        """Nothing to save; transformers reloads the directory without a tokenizer."""
