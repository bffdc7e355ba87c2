"""The CLI-facing functions write complete, reloadable output directories (tiny model, char tokenizer)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import transformers as tf

import cortexmap
import cortexmap.apply.run as run
from cortexmap.apply import load_pruned, pruning_result
from tests.apply.chars import CharTokenizer
from tests.tiny import random_ids, tiny_handle


@pytest.fixture
def tiny_spec(monkeypatch):  # noqa: ANN001, ANN201
    def fake_load(spec, device="cpu"):  # noqa: ANN001, ANN202
        handle = tiny_handle("llama_gqa")
        handle.tokenizer, handle.spec = CharTokenizer(), spec
        return handle

    monkeypatch.setattr(run, "load_model", fake_load)
    return "tiny-llama-gqa"


def test_run_prune_writes_curve_plot_manifest_and_loadable_models(tiny_spec, tmp_path):  # noqa: ANN001
    options = run.PruneOptions(fractions=[0.25, 0.5], replace=["zero", "mean"], heal=1, n_chunks=2, seq_len=16,
                               importance_chunks=2, heal_methods=["random"])
    curve = run.run_prune(tiny_spec, options, out_dir=tmp_path)
    for name in ["curve.parquet", "curve.png", "manifest.json", "importance.parquet"]:
        assert (tmp_path / name).stat().st_size > 0
    assert pd.read_parquet(tmp_path / "curve.parquet").equals(curve)
    assert set(curve["method"]) == {"none", "gradient", "random", "layer"}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["corpus"]["heldout"]["sha256"]
    assert len(manifest["saved_models"]) == 2
    best = manifest["best"]
    rows = curve[(curve["method"] == best["method"]) & (curve["replace"] == best["replace"]) & ~curve["healed"]]
    assert rows["heldout_loss"].mean() == curve[~curve["healed"] & (curve["method"] != "none")].groupby(
        ["method", "replace"])["heldout_loss"].mean().min()
    model = load_pruned(manifest["saved_models"][-1])
    result = pruning_result(model)
    assert model.n_params == result.total_params_after and len(result.heads) == 6


def test_run_prune_takes_atlas_importance_from_a_sweep_run(tiny_spec, tmp_path):  # noqa: ANN001
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rows = [{"model": tiny_spec, "task": "t", "layer": l, "head": h, "intervention": "zero", "method": "exact",
             "effect_normalized": float(l * 4 + h)} for l in range(3) for h in range(4)]
    pd.DataFrame(rows).to_parquet(sweep / "effects.parquet")
    (sweep / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    options = run.PruneOptions(fractions=[0.25], replace=["zero"], methods=(), n_chunks=2, seq_len=16,
                               save_models=False)
    curve = run.run_prune(tiny_spec, options, run_dir=sweep, out_dir=tmp_path / "out")
    assert curve["method"].tolist() == ["none", "atlas"]
    importance = pd.read_parquet(tmp_path / "out" / "importance.parquet")
    assert importance.sort_values("importance")["head_id"].head(3).tolist() == ["L0H0", "L0H1", "L0H2"]
    (sweep / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(cortexmap.CortexmapError, match="schema 99"):
        run.run_prune(tiny_spec, run.PruneOptions(methods=()), run_dir=sweep, out_dir=tmp_path / "out2")


def _scaled_heads_logits(factors: dict[tuple[int, int], float], ids: torch.Tensor) -> torch.Tensor:
    """Logits of a fresh unedited tiny model with head outputs scaled by plain pre-hooks on ``o_proj``.

    The independent computation of an edit: no cortexmap code, just each head's ``d_head`` slice
    of the output projection's input multiplied by its factor.
    """
    model = tiny_handle("llama_gqa").model
    d_head = model.config.hidden_size // model.config.num_attention_heads
    hooks = []
    for layer in sorted({l for l, _ in factors}):
        def scale(module, args, layer=layer):  # noqa: ANN001, ANN202
            z = args[0].clone()  # [batch, seq, n_heads * d_head]
            for (l, h), factor in factors.items():
                if l == layer:
                    z[..., h * d_head:(h + 1) * d_head] *= factor
            return (z, *args[1:])
        hooks.append(model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(scale))
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    finally:
        for hook in hooks:
            hook.remove()


def test_run_edit_saves_the_edited_weights(tiny_spec, tmp_path):  # noqa: ANN001
    generations = run.run_edit(tiny_spec, amplify={"L1H1": 4.0}, ablate=["L0H0"], out_dir=tmp_path / "edit",
                               prompts=["abc", "hello"], max_new_tokens=4)
    assert generations["prompt"].tolist() == ["abc", "hello"]
    assert pd.read_parquet(tmp_path / "edit" / "generations.parquet").equals(generations)
    saved = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "edit" / "model")
    ids = random_ids()
    with torch.no_grad():
        logits = saved(input_ids=ids, use_cache=False).logits
    # amplify alpha scales a head's output by 1 + alpha; ablate zeroes it
    expected = _scaled_heads_logits({(1, 1): 5.0, (0, 0): 0.0}, ids)
    unedited = _scaled_heads_logits({}, ids)
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    assert (logits - unedited).abs().max() > 1e-2
    factors = json.loads((tmp_path / "edit" / "manifest.json").read_text())["factors"]
    assert factors == {"L0H0": 0.0, "L1H1": 5.0}


def test_run_monitor_flags_exactly_the_values_outside_the_thresholds(tiny_spec, tmp_path):  # noqa: ANN001
    heads = ["L0H1", "L2H2"]
    plain = run.run_monitor(tiny_spec, heads, "some prompt", max_new_tokens=3)
    assert len(plain) == 6 and (plain["flag"] == "").all()
    # Thresholds from the data: the median norm and the median entropy, so each flags some rows and not others.
    norm_hi, entropy_lo = float(plain["norm"].median()), float(plain["entropy"].median())
    frame = run.run_monitor(tiny_spec, heads, "some prompt", max_new_tokens=3,
                            thresholds={"norm": (None, norm_hi), "entropy": (entropy_lo, None)},
                            out_dir=tmp_path / "mon")
    assert frame[["step", "head_id", "norm", "entropy"]].equals(plain[["step", "head_id", "norm", "entropy"]])
    high, low = frame["norm"] > norm_hi, frame["entropy"] < entropy_lo
    assert 0 < high.sum() < len(frame) and 0 < low.sum() < len(frame)
    for row, is_high, is_low in zip(frame.itertuples(), high, low):
        expected = [f"norm>{norm_hi:g}"] * is_high + [f"entropy<{entropy_lo:g}"] * is_low
        assert row.flag == ",".join(expected), (row.norm, row.entropy, row.flag)
    saved = pd.read_parquet(tmp_path / "mon" / "monitor.parquet")
    assert saved["norm"].tolist() == frame["norm"].tolist() and saved["flag"].tolist() == frame["flag"].tolist()
