"""Tiny random-weight causal LMs, one per supported architecture (hidden 32, 2-3 layers, 4 heads)."""

from __future__ import annotations

import torch
import transformers as tf

from cortexmap.models import wrap_model

VOCAB = 97


def _config(arch: str):  # noqa: ANN202
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if arch == "gpt_neox":  # Pythia: rotary, parallel attention + MLP
        return tf.GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True)
    if arch == "llama":
        return tf.LlamaConfig(**common, num_key_value_heads=4)
    if arch == "llama_gqa":  # SmolLM2 / LLaMA-2-70B style grouped-query attention
        return tf.LlamaConfig(**common, num_key_value_heads=2)
    if arch == "mistral":
        return tf.MistralConfig(**common, num_key_value_heads=2, sliding_window=8)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, num_key_value_heads=2)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=8, sliding_window=4,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if arch == "opt":
        return tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            ffn_dim=64, max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0)
    raise KeyError(arch)


ARCHS = ["gpt2", "gpt_neox", "llama", "llama_gqa", "mistral", "qwen2", "gemma3_text", "opt"]


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):  # noqa: ANN201
    return model_from_config(_config(arch), seed, dtype)


def model_from_config(config, seed: int = 0, dtype: torch.dtype = torch.float32):  # noqa: ANN001, ANN201
    """A seeded random model of ``config`` with eager attention and non-zero biases."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random init leaves biases at zero; give them values so bias handling is exercised too.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.02)
    return model.eval()


def tiny_handle(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32):  # noqa: ANN201
    return wrap_model(tiny_model(arch, seed, dtype), None, spec=f"tiny-{arch}")


def random_ids(batch: int = 3, seq: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def char_tokenizer():  # noqa: ANN201
    """A fast tokenizer of single letters, so a saved tiny model directory loads like any model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(97 + i): i for i in range(26)} | {"[UNK]": 26}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok)
