"""ModelHandle as a TransformerLens user calls it: handle(...), to_tokens, generate, load_model(model)."""

from __future__ import annotations

import pytest
import torch

import cortexmap
from cortexmap.errors import CortexmapError, ModelLoadError
from tests.tiny import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    tokenizer = char_tokenizer()
    tokenizer.eos_token = "[UNK]"
    return tokenizer


@pytest.fixture()
def pair(tok):  # noqa: ANN001, ANN201
    """A tiny model held by the user and a handle loaded from that object."""
    model = tiny_model("llama_gqa")
    return model, cortexmap.load_model(model, tokenizer=tok)


def direct_logits(model, tok, text: str) -> torch.Tensor:  # noqa: ANN001
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_load_model_wraps_a_model_object_without_moving_it(pair, tok):  # noqa: ANN001
    model, handle = pair
    assert handle.model is model and handle.tokenizer is tok and handle.dtype == torch.float32
    assert (handle.n_layers, handle.n_heads, handle.n_kv_heads) == (3, 4, 2)
    half = cortexmap.load_model(tiny_model("gpt2"), dtype="bfloat16")
    assert half.dtype == torch.bfloat16 and half.tokenizer is None
    with pytest.raises(ModelLoadError, match="spec string or a Hugging Face causal LM"):
        cortexmap.load_model(object())


def test_calling_the_handle_equals_calling_the_hf_model(pair, tok):  # noqa: ANN001
    model, handle = pair
    with torch.no_grad():
        logits = handle("abcde")
        batch = handle(["abcde", "edcba"])
        from_ids = handle(tok("abcde", return_tensors="pt")["input_ids"][0])  # 1-D ids get a batch axis
    assert logits.shape == (1, 5, model.config.vocab_size)
    assert torch.equal(logits, direct_logits(model, tok, "abcde"))
    assert torch.allclose(batch[1:], direct_logits(model, tok, "edcba"), atol=1e-6)
    assert torch.equal(from_ids, logits)


def test_to_tokens_follows_the_tokenizer_and_never_pads(pair, tok):  # noqa: ANN001
    _, handle = pair
    ids = handle.to_tokens(["abc", "cba"])
    assert ids.tolist() == [tok("abc")["input_ids"], tok("cba")["input_ids"]]
    with pytest.raises(CortexmapError, match=r"different lengths \[2, 3\].*does not pad"):
        handle.to_tokens(["ab", "abc"])
    with pytest.raises(CortexmapError, match="different lengths"):
        handle(["ab", "abc"])
    bare = cortexmap.load_model(tiny_model("gpt2"))
    with pytest.raises(CortexmapError, match="no tokenizer"):
        bare.to_tokens("abc")


def test_to_tokens_prepends_bos_only_where_the_tokenizer_does(tmp_path):  # noqa: ANN001
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "a": 1, "b": 2, "[UNK]": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    with_bos = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>")
    handle = cortexmap.load_model(tiny_model("llama"), tokenizer=with_bos)
    assert handle.to_tokens("ab").tolist() == [[0, 1, 2]]
    assert handle.to_tokens("ab", add_special_tokens=False).tolist() == [[1, 2]]


def test_generate_is_greedy_and_returns_the_continuation(pair, tok):  # noqa: ANN001
    model, handle = pair
    text = handle.generate("abc", max_new_tokens=4)
    ids = tok("abc", return_tensors="pt")["input_ids"]
    expected = ids
    with torch.no_grad():  # independent greedy loop over full forwards
        for _ in range(4):
            nxt = model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, nxt], dim=1)
    assert text == tok.decode(expected[0, 3:], skip_special_tokens=True)
    assert handle.generate(["abc", "ab"], max_new_tokens=4) == [text, handle.generate("ab", max_new_tokens=4)]


def test_interventions_apply_inside_call_and_generate(pair, tok):  # noqa: ANN001
    model, handle = pair
    with torch.no_grad():
        clean = handle("abcdefgh")
    clean_text = handle.generate("abcd", max_new_tokens=8)
    heads = handle.heads()
    with cortexmap.intervene(handle, ablate=heads):
        with torch.no_grad():
            ablated = handle("abcdefgh")
        ablated_text = handle.generate("abcd", max_new_tokens=8)
    assert not torch.allclose(clean, ablated, atol=1e-4)
    # Independent: the model with every out-projection zeroed computes what the hooked call did.
    saved = {layer: handle.out_proj(layer).weight.detach().clone() for layer in range(handle.n_layers)}
    with torch.no_grad():
        for layer in saved:
            handle.out_proj(layer).weight.zero_()
    try:
        assert torch.allclose(direct_logits(model, tok, "abcdefgh"), ablated, atol=1e-5)
        assert handle.generate("abcd", max_new_tokens=8) == ablated_text
    finally:
        with torch.no_grad():
            for layer, weight in saved.items():
                handle.out_proj(layer).weight.copy_(weight)
    assert handle.generate("abcd", max_new_tokens=8) == clean_text  # hooks gone after the block
