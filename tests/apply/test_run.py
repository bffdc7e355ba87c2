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
from tests.tiny import tiny_handle


@pytest.fixture
def tiny_spec(monkeypatch):  # noqa: ANN001, ANN201
    def fake_load(spec, device="cpu"):  # noqa: ANN001, ANN202
        handle = tiny_handle("llama_gqa")
        handle.tokenizer, handle.spec = CharTokenizer(), spec
        return handle

    monkeypatch.setattr(run, "load_model", fake_load)
    return "tiny-llama-gqa"


def test_run_prune_writes_curve_plot_manifest_and_loadable_models(tiny_spec, tmp_path):  # noqa: ANN001
    curve = run.run_prune(tiny_spec, fractions=[0.25, 0.5], replace=["zero", "mean"], heal=1, out_dir=tmp_path,
                          n_chunks=2, seq_len=16, importance_chunks=2, heal_methods=["random"])
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
    curve = run.run_prune(tiny_spec, run_dir=sweep, fractions=[0.25], replace=["zero"], out_dir=tmp_path / "out",
                          methods=(), n_chunks=2, seq_len=16, save_models=False)
    assert curve["method"].tolist() == ["none", "atlas"]
    importance = pd.read_parquet(tmp_path / "out" / "importance.parquet")
    assert importance.sort_values("importance")["head_id"].head(3).tolist() == ["L0H0", "L0H1", "L0H2"]
    (sweep / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(cortexmap.CortexmapError, match="schema 99"):
        run.run_prune(tiny_spec, run_dir=sweep, out_dir=tmp_path / "out2", methods=())


def test_run_edit_and_run_monitor(tiny_spec, tmp_path):  # noqa: ANN001
    generations = run.run_edit(tiny_spec, amplify={"L1H1": 4.0}, ablate=["L0H0"], out_dir=tmp_path / "edit",
                               prompts=["abc", "hello"], max_new_tokens=4)
    assert len(generations) == 2 and (tmp_path / "edit" / "generations.parquet").exists()
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "edit" / "model")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    frame = run.run_monitor(tiny_spec, ["L0H1", "L2H2"], "some prompt", max_new_tokens=3,
                            thresholds={"norm": (None, 0.0)}, out_dir=tmp_path / "mon")
    assert len(frame) == 6 and (frame["flag"] == "norm>0").all()
    assert pd.read_parquet(tmp_path / "mon" / "monitor.parquet")["norm"].tolist() == frame["norm"].tolist()
