"""The dense view of a pruned model: same function as the compact model, original head ids, mappable."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cortexmap
from cortexmap.apply import load_pruned, prune_heads, save_model, save_pruned
from cortexmap.cli import app
from cortexmap.errors import ModelLoadError
from tests.sweep.tiny_run import make_model_dir, make_task_file
from tests.tiny import random_ids, tiny_handle

# Layer 1 loses every head; layer 2 a whole GQA group (heads 0, 1); layer 0 one head (uneven groups).
HEADS = ["L0H1", "L1H0", "L1H1", "L1H2", "L1H3", "L2H0", "L2H1"]


def logits(model, ids):  # noqa: ANN001, ANN201
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("replace", ["zero", "mean"])
def test_dense_view_of_a_pruned_object_computes_the_pruned_function(arch, replace):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    reference = random_ids(batch=4, seq=9, seed=7)
    pruned = prune_heads(handle, HEADS, replace=replace, reference=reference if replace == "mean" else None)
    dense = cortexmap.load_model(pruned.model)
    assert dense.model is not pruned.model and dense.n_heads == handle.n_heads
    assert [str(h) for h in dense.pruned_heads] == sorted(HEADS)
    assert torch.allclose(logits(dense.model, ids), logits(pruned.model, ids), atol=1e-5)
    # Independent: the unpruned model with the pruned heads ablated (as pruning promises), then one more
    # surviving head ablated in both.
    kwargs = {"ablate": HEADS} if replace == "zero" else {"mean_ablate": HEADS, "reference": reference}
    with cortexmap.intervene(handle, **kwargs), cortexmap.intervene(handle, ablate=["L0H2"]):
        expected = logits(handle.model, ids)
    with cortexmap.intervene(dense, ablate=["L0H2"]):
        assert torch.allclose(logits(dense.model, ids), expected, atol=1e-4)
    with cortexmap.intervene(dense, ablate=HEADS):  # a pruned head has nothing left to ablate
        gone = logits(dense.model, ids)
    assert torch.allclose(gone, logits(dense.model, ids), atol=1e-6)


def test_pruned_directory_loads_as_its_dense_view(arch, tmp_path):  # noqa: ANN001
    handle, ids = tiny_handle(arch), random_ids()
    path = save_pruned(prune_heads(handle, HEADS, replace="mean", reference=random_ids(seed=9)), tmp_path / "pruned")
    dense = cortexmap.load_model(str(path), dtype="float32")
    assert dense.spec == str(path) and len(dense.model_hash) == 64 and dense.n_heads == handle.n_heads
    assert torch.allclose(logits(dense.model, ids), logits(load_pruned(path).model, ids), atol=1e-5)


def test_a_dense_view_describes_its_pruning_and_refuses_to_be_resaved(tmp_path):  # noqa: ANN001
    path = save_pruned(prune_heads(tiny_handle("llama_gqa"), HEADS), tmp_path / "pruned")
    dense, compact = cortexmap.load_model(path), load_pruned(path)
    facts = dense.describe()
    assert facts["pruned_heads"] == sorted(HEADS) and facts["n_params_pruned"] == compact.n_params
    again = cortexmap.load_model(dense.model)  # already dense: wrapped, not rebuilt
    assert again.model is dense.model and again.pruned_heads == dense.pruned_heads
    for save in (save_pruned, save_model):
        with pytest.raises(ModelLoadError, match="dense view of a pruned model"):
            save(dense, tmp_path / "again")
    with pytest.raises(cortexmap.CortexmapError, match=r"holds 3 of 4 heads: a compact pruned model.*load_model"):
        cortexmap.intervene(compact, ablate=["L0H0"]).__enter__()
    with pytest.raises(ModelLoadError, match="device_map"):
        cortexmap.load_model(str(path), device="auto")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="damaged pruned model directory"):
        cortexmap.load_model(path)


def test_cli_info_and_map_work_on_a_pruned_directory(tmp_path):  # noqa: ANN001
    original = make_model_dir(tmp_path)
    tasks = make_task_file(tmp_path)
    pruned = save_pruned(prune_heads(cortexmap.load_model(str(original)), ["L0H1", "L2H0", "L2H1"]), tmp_path / "p")
    runner = CliRunner()
    info = runner.invoke(app, ["info", str(pruned)])
    assert info.exit_code == 0, info.output
    assert "pruned_heads" in info.output and "3 of 12" in info.output
    run = tmp_path / "run"
    mapped = runner.invoke(app, ["map", "--model", str(pruned), "--task-file", str(tasks), "--interventions", "zero",
                                 "--method", "exact", "--no-probes", "--device", "cpu", "--out", str(run)])
    assert mapped.exit_code == 0, mapped.output
    effects = pd.read_parquet(run / "effects.parquet")
    assert len(effects) == 12  # the original grid, with the original head ids
    gone = effects["head_id"].isin(["L0H1", "L2H0", "L2H1"])
    assert (effects.loc[gone, "effect"].abs() < 1e-5).all()
    assert (effects.loc[~gone, "effect"].abs() > 1e-5).any()
