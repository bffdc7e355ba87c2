"""trace_circuit end to end on a tiny GQA model: verified effects are edge_effects', rankings, baselines, storage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cortexmap.circuits.faithfulness import rank_edges
from cortexmap.circuits.patching import edge_effects
from cortexmap.circuits.run import DEFAULT_FRACTIONS, default_verify, trace_circuit
from cortexmap.circuits.store import write_circuit
from cortexmap.errors import CortexmapError
from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, CIRCUIT_PROMPTS, MANIFEST, SCHEMA_VERSION
from cortexmap.tasks.core import logit_diff
from tests.circuits.tiny_circuits import circuit_handle, task_batch

FRACTIONS = (0.05, 0.2, 0.5, 1.0)


@pytest.fixture(scope="module")
def traced():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before conftest's per-test one-thread fixture
    try:
        handle, batch = circuit_handle("llama_gqa"), task_batch(batch=6)
        return handle, batch, trace_circuit(handle, [batch], verify=6, fractions=FRACTIONS, n_random=2, steps=3)
    finally:
        torch.set_num_threads(before)


def test_verified_effects_are_the_exact_edge_effects(traced):
    handle, batch, result = traced
    exact = result.edges[result.edges["method"] == "exact"]
    assert len(exact) == 6
    # the verified edges are the screen's top 6 by |score|
    assert set(exact.index) == set(rank_edges(result.edges["score"].to_numpy())[:6])
    reference = edge_effects(handle, batch, exact.index.to_numpy())
    np.testing.assert_allclose(exact["effect"], reference["effect"], atol=1e-6)
    np.testing.assert_allclose(exact[["ci_low", "ci_high"]], reference[["ci_low", "ci_high"]], atol=1e-6)
    assert (exact["sender"].to_numpy() == reference["sender"].to_numpy()).all()
    estimated = result.edges[result.edges["method"] == "estimated"]
    assert estimated["ci_low"].isna().all() and (estimated["effect"] == estimated["score"]).all()
    # the verified ranking puts the verified edges first, by |exact effect|
    first = result.edges.sort_values("rank").head(6)
    assert list(first.index) == list(exact["effect"].abs().sort_values(ascending=False, kind="stable").index)


def test_curves_summary_and_circuit_heads(traced):
    _, _, result = traced
    summary = result.summary
    assert list(summary["method"]) == ["verified", "eap", "eap-ig", "random", "random"]
    assert {"cpr", "cpr_low", "cpr_high", "cmd", "smallest", "smallest_n_edges", "smallest_n_edges_low"} <= set(summary)
    curves = result.curves
    at_full = curves[(curves["fraction"] == 1.0) & (curves["method"] != "full")]
    assert set(at_full["method"]) == {"verified", "eap", "eap-ig", "random"}
    np.testing.assert_allclose(at_full["faithfulness"], 1.0)
    assert set(curves["prompt"]) == set(range(6))
    assert result.circuit_method == "verified"  # it reaches 80% on this model and grid
    row = summary[summary["method"] == result.circuit_method].iloc[0]
    assert result.edges["in_circuit"].sum() == row["smallest_n_edges"]
    kept = result.edges[result.edges["in_circuit"]]
    nodes = (set(kept["sender"]) | set(kept["receiver"])) - {"emb", "logits"}
    assert set(result.top_heads["node"]) == nodes
    senders_to_logits = set(kept.loc[kept["receiver"] == "logits", "sender"])
    assert set(result.end_heads) == {n for n in senders_to_logits if "H" in n}
    into_logits = kept[kept["receiver"] == "logits"].set_index("sender")["rank"]
    assert result.end_heads == sorted(result.end_heads, key=lambda n: into_logits[n])


def test_prompt_rows_are_the_verified_effects_per_prompt(traced):
    handle, batch, result = traced
    exact = result.edges[result.edges["method"] == "exact"].set_index(["sender", "receiver", "kind"])
    prompts = result.prompts
    assert len(prompts) == 6 * len(batch) and set(prompts["prompt"]) == set(range(len(batch)))
    means = prompts.groupby(["sender", "receiver", "kind"])["effect"].mean()
    np.testing.assert_allclose(means.reindex(exact.index), exact["effect"], atol=1e-6)
    with torch.no_grad():
        logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[:, -1].float()
    clean = logit_diff(logits, batch.target_ids, batch.foil_ids).numpy()
    for _, rows in prompts.groupby(["sender", "receiver", "kind"]):
        np.testing.assert_allclose(rows.sort_values("prompt")["clean"], clean, atol=1e-5)


def test_default_verification_reaches_past_the_smallest_circuit():
    assert default_verify(70651, DEFAULT_FRACTIONS) == 140  # SmolLM2: the 0.1% circuit keeps 70 edges
    assert default_verify(1000, (0.01, 1.0)) == 32
    handle, batch = circuit_handle("llama"), task_batch(batch=3)
    result = trace_circuit(handle, [batch], screen="eap", fractions=(0.05, 1.0), n_random=0, steps=1)
    n_smallest = int(0.05 * result.arguments["n_edges"])
    assert result.arguments["verify"] == max(32, 2 * n_smallest) > n_smallest
    assert (result.edges["method"] == "exact").sum() == result.arguments["verify"]


def test_two_length_groups_concatenate_prompts():
    handle = circuit_handle("llama")
    a, b = task_batch(batch=3, seq=7), task_batch(batch=3, seq=5, seed=4)
    b.indices = [3, 4, 5]
    result = trace_circuit(handle, [a, b], screen="eap", verify=3, fractions=(0.1, 1.0), n_random=1, steps=2)
    assert result.arguments["n_prompts"] == 6
    assert set(result.curves["prompt"]) == set(range(6))
    assert "random" in set(result.summary["method"])


@pytest.mark.parametrize("kwargs,message", [
    ({"screen": "acdc"}, "unknown screen"),
    ({"fractions": (1.0,)}, "at least two circuit sizes"),
    ({"fractions": (0.5, 0.1)}, "must increase"),
    ({"ablation": "zero"}, "unknown ablation"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(CortexmapError, match=message):
        trace_circuit(None, [], **kwargs)


def test_write_circuit_replaces_a_task_and_records_the_manifest(traced, tmp_path):
    _, _, result = traced
    (tmp_path / MANIFEST).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "model": {"spec": "tiny"}}))
    write_circuit(tmp_path, "a", result)
    write_circuit(tmp_path, "b", result)
    write_circuit(tmp_path, "a", result)
    edges = pd.read_parquet(tmp_path / CIRCUIT)
    assert edges.groupby("task").size().to_dict() == {"a": len(result.edges), "b": len(result.edges)}
    assert {"task", "sender", "receiver", "kind", "score", "effect", "ci_low", "ci_high", "method",
            "model", "ablation", "screen"} <= set(edges)
    curves = pd.read_parquet(tmp_path / CIRCUIT_CURVES)
    assert set(curves["task"]) == {"a", "b"} and "faithfulness" in curves
    prompts = pd.read_parquet(tmp_path / CIRCUIT_PROMPTS)
    assert prompts.groupby("task").size().to_dict() == {"a": len(result.prompts), "b": len(result.prompts)}
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    entry = manifest["circuits"]["a"]
    assert entry["arguments"]["verify"] == 6 and "total_s" in entry["timings"]
    assert [row["method"] for row in entry["summary"]][:3] == ["verified", "eap", "eap-ig"]


def test_the_circuit_is_the_smallest_over_rankings_verified_first_on_ties():
    from cortexmap.circuits.run import _pick_circuit

    def summary(sizes):  # noqa: ANN001, ANN202
        return pd.DataFrame({"method": ["verified", "eap", "eap-ig", "random"], "smallest_n_edges": sizes})

    assert _pick_circuit(summary([100, 50, 100, 10])) == ("eap", 50)  # random never counts
    assert _pick_circuit(summary([50, 50, 20, -1])) == ("eap-ig", 20)
    assert _pick_circuit(summary([50, 50, 50, -1])) == ("verified", 50)
    assert _pick_circuit(summary([-1, -1, -1, 5])) == (None, 0)
