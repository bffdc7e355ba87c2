"""trace_circuit end to end on a tiny GQA model: the held-out split, verified effects, rankings, baselines, storage."""

from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from cortexmap.circuits.curves import faithfulness_curves
from cortexmap.circuits.faithfulness import cmd, cpr, rank_edges
from cortexmap.circuits.interchange import read_mib_graph
from cortexmap.circuits.judge import pick_circuit
from cortexmap.circuits.patching import PathPatcher, edge_effects
from cortexmap.circuits.run import DEFAULT_FRACTIONS, default_verify, trace_circuit
from cortexmap.circuits.store import write_circuit
from cortexmap.circuits.ungrouped import per_head_kv
from cortexmap.errors import CortexmapError
from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, CIRCUIT_PROMPTS, MANIFEST, SCHEMA_VERSION
from cortexmap.tasks.core import EncodedBatch, logit_diff
from tests.circuits.tiny_circuits import circuit_handle, task_batch

FRACTIONS = (0.05, 0.2, 0.5, 1.0)
BOS = 1


def rows_of(batch: EncodedBatch, prompts: list[int]) -> EncodedBatch:
    """The batch's rows of the given pair indices, sliced by hand."""
    at = [batch.indices.index(p) for p in prompts]
    return EncodedBatch(batch.input_ids[at], batch.corrupt_ids[at], batch.target_ids[at], batch.foil_ids[at], prompts)


def one_thread(fn):  # noqa: ANN001, ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before conftest's per-test one-thread fixture
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def traced():
    handle, batch = circuit_handle("llama_gqa"), task_batch(batch=8)
    return handle, batch, one_thread(lambda: trace_circuit(handle, [batch], verify=6, fractions=FRACTIONS, n_random=3,
                                                           steps=2))


@pytest.fixture(scope="module")
def traced_mib():
    handle, batch = circuit_handle("llama_gqa"), task_batch(batch=8)
    handle.tokenizer = types.SimpleNamespace(bos_token_id=BOS)
    return handle, batch, one_thread(lambda: trace_circuit(handle, [batch], protocol="mib", verify=6,
                                                           fractions=FRACTIONS, n_random=2, steps=2))


def test_prompts_are_split_into_discovery_and_heldout(traced):
    _, batch, result = traced
    args = result.arguments
    assert (args["n_discovery"], args["n_heldout"], args["n_prompts"]) == (4, 4, 8) and args["judged_on"] == "heldout"
    found = set(result.prompts["prompt"])
    held = set(result.curves.loc[result.curves["split"] == "heldout", "prompt"])
    assert found == set(result.curves.loc[result.curves["split"] == "discovery", "prompt"])
    assert found | held == set(batch.indices) and not found & held
    again = trace_circuit(circuit_handle("llama_gqa"), [batch], screen="eap", rankings=["eap"], verify=0,
                          fractions=FRACTIONS, n_random=0, in_sample=False, seed=0)
    assert set(again.curves["prompt"]) == held and set(again.curves["split"]) == {"heldout"}
    other = trace_circuit(circuit_handle("llama_gqa"), [batch], screen="eap", rankings=["eap"], verify=0,
                          fractions=FRACTIONS, n_random=0, in_sample=False, seed=3)
    assert set(other.curves["prompt"]) != held  # the split is seeded


def test_verified_effects_are_exact_on_the_discovery_prompts(traced):
    handle, batch, result = traced
    exact = result.edges[result.edges["method"] == "exact"]
    assert len(exact) == 6 and set(exact.index) == set(rank_edges(result.edges["score"].to_numpy())[:6])
    discovery = rows_of(batch, sorted(set(result.prompts["prompt"])))
    reference = edge_effects(handle, discovery, exact.index.to_numpy())
    np.testing.assert_allclose(exact["effect"], reference["effect"], atol=1e-6)
    np.testing.assert_allclose(exact[["ci_low", "ci_high"]], reference[["ci_low", "ci_high"]], atol=1e-6)
    estimated = result.edges[result.edges["method"] == "estimated"]
    assert estimated["ci_low"].isna().all() and (estimated["effect"] == estimated["score"]).all()
    # the verified ranking is the screen's scores with the exact effects in place of the verified edges'
    np.testing.assert_allclose(result.rankings["verified"], result.edges["effect"])
    assert list(result.edges.sort_values("rank").index) == list(rank_edges(result.edges["effect"].to_numpy()))


def test_heldout_curves_are_the_circuits_on_the_heldout_prompts(traced):
    handle, batch, result = traced
    held = rows_of(batch, sorted(set(result.curves.loc[result.curves["split"] == "heldout", "prompt"])))
    n_edges = result.arguments["n_edges"]
    kept = np.zeros(n_edges, dtype=bool)
    size = int(0.05 * n_edges)
    kept[rank_edges(result.rankings["eap-ig"])[:size]] = True
    expected = PathPatcher(handle, held).circuits([kept])[0]
    rows = result.curves[(result.curves["split"] == "heldout") & (result.curves["method"] == "eap-ig")
                         & (result.curves["fraction"] == 0.05)].sort_values("prompt")
    assert (rows["n_edges"] == size).all() and (rows["order"] == "absolute").all()
    np.testing.assert_allclose(rows["metric"], expected, atol=1e-6)


def test_summary_random_spread_and_paired_differences(traced):
    _, _, result = traced
    summary = result.summary
    assert list(summary["split"]) == ["heldout"] * 4 + ["discovery"] * 4
    assert list(summary["method"][:4]) == ["verified", "eap", "eap-ig", "random"]
    stats = result.curve_stats
    for split in ("heldout", "discovery"):
        draws = stats[(stats["split"] == split) & (stats["method"] == "random")]["cpr"].to_numpy()
        row = summary[(summary["split"] == split) & (summary["method"] == "random")].iloc[0]
        assert row["n_draws"] == 3 == len(draws)
        np.testing.assert_allclose([row["cpr"], row["cpr_sd"], row["cpr_min"], row["cpr_max"]],
                                   [draws.mean(), draws.std(ddof=1), draws.min(), draws.max()])
        ranked = summary[(summary["split"] == split) & (summary["method"] == "eap")].iloc[0]
        per_curve = stats[(stats["split"] == split) & (stats["method"] == "eap")].iloc[0]
        assert ranked["cpr"] == pytest.approx(per_curve["cpr"]) and ranked["cmd"] == pytest.approx(per_curve["cmd"])
    diffs = result.differences
    row = diffs[(diffs["split"] == "heldout") & (diffs["a"] == "verified") & (diffs["b"] == "random")
                & (diffs["measure"] == "cpr")].iloc[0]
    held = summary[summary["split"] == "heldout"].set_index("method")
    assert row["difference"] == pytest.approx(held.loc["verified", "cpr"] - held.loc["random", "cpr"])
    assert row["low"] <= row["difference"] <= row["high"]
    pairs = diffs[(diffs["split"] == "heldout") & (diffs["measure"] == "cpr")][["a", "b"]].apply(tuple, axis=1)
    assert list(pairs) == [("verified", "eap"), ("verified", "eap-ig"), ("verified", "random"), ("eap", "eap-ig"),
                           ("eap", "random"), ("eap-ig", "random")]


def test_the_circuit_and_its_heads(traced):
    _, _, result = traced
    held = result.summary[result.summary["split"] == "heldout"]
    method, size, split = pick_circuit(result.summary)
    assert (result.circuit_method, split) == (method, "heldout")
    assert result.edges["in_circuit"].sum() == size == held.set_index("method").loc[method, "smallest_n_edges"]
    assert size == held[held["method"] != "random"]["smallest_n_edges"].replace(-1, np.inf).min()
    kept = result.edges[result.edges["in_circuit"]]
    assert set(result.top_heads["node"]) == (set(kept["sender"]) | set(kept["receiver"])) - {"emb", "logits"}
    assert set(result.end_heads) == {n for n in kept.loc[kept["receiver"] == "logits", "sender"] if "H" in n}
    counts = result.arguments["circuit_edges"]
    k_or_v = kept["kind"].isin(["k", "v"]).sum()
    assert counts["per_kv_group"] == size and counts["per_query_head"] == size + k_or_v  # groups of two heads
    at_full = result.curves[(result.curves["fraction"] == 1.0) & (result.curves["method"] != "full")]
    np.testing.assert_allclose(at_full["faithfulness"], 1.0)


def test_mib_protocol_counts_per_head_prepends_bos_and_ranks_cpr_signed(traced_mib):
    handle, batch, result = traced_mib
    args = result.arguments
    assert args["n_edges"] == args["n_edges_per_query_head"] == 262 and args["n_edges_per_kv_group"] == 190
    assert len(result.edges) == 262 and set(result.edges["receiver"]) >= {"L2KV3"}
    held_ids = sorted(set(result.curves.loc[result.curves["split"] == "heldout", "prompt"]))
    plain = rows_of(batch, held_ids)
    with_bos = EncodedBatch(torch.cat([torch.full((len(plain), 1), BOS), plain.input_ids], 1),
                            torch.cat([torch.full((len(plain), 1), BOS), plain.corrupt_ids], 1),
                            plain.target_ids, plain.foil_ids, plain.indices)
    with torch.no_grad():
        logits = handle.model(input_ids=with_bos.input_ids).logits[:, -1]
    full = result.curves[(result.curves["split"] == "heldout") & (result.curves["method"] == "full")].sort_values("prompt")
    np.testing.assert_allclose(full["metric"], logit_diff(logits, plain.target_ids, plain.foil_ids).numpy(), atol=1e-5)
    # the signed order ranks by MIB's sign, minus cortexmap's: edges carrying the clean answer first
    n = int(0.05 * 262)
    kept = np.zeros(262, dtype=bool)
    kept[np.argsort(result.rankings["eap-ig"], kind="stable")[:n]] = True  # most negative patched - clean first
    with per_head_kv(handle) as view:
        expected = PathPatcher(view, with_bos).circuits([kept])[0]
    rows = result.curves[(result.curves["split"] == "heldout") & (result.curves["method"] == "eap-ig")
                         & (result.curves["order"] == "signed") & (result.curves["fraction"] == 0.05)]
    np.testing.assert_allclose(rows.sort_values("prompt")["metric"], expected, atol=1e-6)
    # CPR from the signed curve, CMD from the absolute one
    table = result.curves[(result.curves["split"] == "heldout") & (result.curves["method"] == "eap-ig")]
    faith = lambda order: table[table["order"] == order].groupby("fraction")["faithfulness"].first().to_numpy()
    row = result.summary[(result.summary["split"] == "heldout") & (result.summary["method"] == "eap-ig")].iloc[0]
    assert (row["cpr_order"], row["cmd_order"]) == ("signed", "absolute")
    assert row["cpr"] == pytest.approx(cpr(FRACTIONS, faith("signed")))
    assert row["cmd"] == pytest.approx(cmd(FRACTIONS, faith("absolute")))


def test_an_exported_graph_reimported_gives_the_same_curves(traced_mib, tmp_path):
    handle, batch, result = traced_mib
    path = result.export(tmp_path / "ioi.json", d_model=32, ranking="eap-ig")
    shape, scores, in_graph, _ = read_mib_graph(path, result.graph)
    assert shape == result.graph
    np.testing.assert_allclose(scores, result.rankings["eap-ig"], rtol=0, atol=0)
    assert in_graph.sum() == result.arguments["circuit_edges"]["per_query_head_pruned"]
    held = result.curves[result.curves["split"] == "heldout"]
    plain = rows_of(batch, sorted(set(held["prompt"])))
    bos = torch.full((len(plain), 1), BOS)
    again = EncodedBatch(torch.cat([bos, plain.input_ids], 1), torch.cat([bos, plain.corrupt_ids], 1),
                         plain.target_ids, plain.foil_ids, plain.indices)
    with per_head_kv(handle) as view:
        curves = faithfulness_curves(view, again, {"imported": scores}, fractions=FRACTIONS[:-1],
                                     orders=("absolute", "signed"), sign=-1.0, n_random=0)
    mine = curves[curves["method"] == "imported"].sort_values(["order", "fraction", "prompt"])
    theirs = held[(held["method"] == "eap-ig") & (held["fraction"] < 1)].sort_values(["order", "fraction", "prompt"])
    np.testing.assert_allclose(mine["metric"].to_numpy(), theirs["metric"].to_numpy(), atol=1e-6)
    imported = trace_circuit(handle, [batch], protocol="mib", rankings=["eap"], screen="eap", verify=0,
                             fractions=FRACTIONS, n_random=0, steps=1, imported={"imported": scores})
    assert "imported" in set(imported.summary["method"])
    with pytest.raises(CortexmapError, match="262 scores for 190 edges"):
        trace_circuit(handle, [batch], rankings=["eap"], screen="eap", fractions=FRACTIONS, imported={"x": scores})


def test_default_verification_reaches_past_the_smallest_circuit():
    assert default_verify(70651, DEFAULT_FRACTIONS) == 140  # SmolLM2: the 0.1% circuit keeps 70 edges
    assert default_verify(123211, DEFAULT_FRACTIONS) == 246  # per query head, as MIB counts
    assert default_verify(1000, (0.01, 1.0)) == 32
    handle, batch = circuit_handle("llama"), task_batch(batch=4)
    result = trace_circuit(handle, [batch], rankings=["eap"], screen="eap", fractions=(0.05, 1.0), n_random=0, steps=1)
    n_smallest = int(0.05 * result.arguments["n_edges"])
    assert result.arguments["verify"] == max(32, 2 * n_smallest) > n_smallest
    assert (result.edges["method"] == "exact").sum() == result.arguments["verify"]


def test_two_length_groups_and_judging_in_sample():
    handle = circuit_handle("llama")
    a, b = task_batch(batch=3, seq=7), task_batch(batch=3, seq=5, seed=4)
    b.indices = [3, 4, 5]
    result = trace_circuit(handle, [a, b], rankings=["eap"], screen="eap", verify=3, fractions=(0.1, 1.0),
                           n_random=1, steps=2, heldout=0.0)
    assert result.arguments["n_prompts"] == 6 and result.arguments["judged_on"] == "discovery"
    assert set(result.curves["prompt"]) == set(range(6)) and set(result.curves["split"]) == {"discovery"}
    assert "random" in set(result.summary["method"])


@pytest.mark.parametrize("kwargs,message", [
    ({"screen": "acdc"}, "unknown screen"),
    ({"screen": "eap", "rankings": ["eap-ig"]}, "must be one of the rankings"),
    ({"fractions": (1.0,)}, "at least two circuit sizes"),
    ({"fractions": (0.5, 0.1)}, "must increase"),
    ({"ablation": "zero"}, "unknown ablation"),
    ({"ablation": "mean", "rankings": ["eap", "eap-ig"]}, "needs corrupt ablation"),
    ({"protocol": "mib", "ablation": "mean"}, "MIB's protocol patches edges from corrupt prompts"),
    ({"protocol": "acdc"}, "unknown protocol"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(CortexmapError, match=message):
        trace_circuit(None, [], **kwargs)


def test_split_and_bos_errors():
    handle, batch = circuit_handle("llama"), task_batch(batch=1)
    with pytest.raises(CortexmapError, match="at least two prompts"):
        trace_circuit(handle, [batch], rankings=["eap"], screen="eap", fractions=FRACTIONS)
    with pytest.raises(CortexmapError, match="in \\[0, 1\\)"):
        trace_circuit(handle, [task_batch()], rankings=["eap"], screen="eap", fractions=FRACTIONS, heldout=1.0)
    with pytest.raises(CortexmapError, match="BOS token"):
        trace_circuit(handle, [task_batch()], protocol="mib", fractions=FRACTIONS)


def test_write_circuit_keeps_each_protocol_and_records_the_manifest(traced, traced_mib, tmp_path):
    result, mib = traced[2], traced_mib[2]
    (tmp_path / MANIFEST).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "model": {"spec": "tiny"}}))
    for task, res in (("a", result), ("b", result), ("a", mib), ("a", result)):
        write_circuit(tmp_path, task, res)
    edges = pd.read_parquet(tmp_path / CIRCUIT)
    assert edges.groupby(["task", "protocol"]).size().to_dict() == {
        ("a", "cortexmap"): len(result.edges), ("a", "mib"): len(mib.edges), ("b", "cortexmap"): len(result.edges)}
    curves = pd.read_parquet(tmp_path / CIRCUIT_CURVES)
    assert {"split", "order", "faithfulness", "protocol"} <= set(curves) and set(curves["task"]) == {"a", "b"}
    prompts = pd.read_parquet(tmp_path / CIRCUIT_PROMPTS)
    assert prompts.groupby("task").size().to_dict() == {"a": len(result.prompts) + len(mib.prompts),
                                                       "b": len(result.prompts)}
    circuits = json.loads((tmp_path / MANIFEST).read_text())["circuits"]
    assert set(circuits) == {"a", "b", "a@mib"} and circuits["a@mib"]["protocol"] == "mib"
    entry = circuits["a"]
    assert entry["arguments"]["n_heldout"] == 4 and "total_s" in entry["timings"]
    assert [row["method"] for row in entry["summary"]] == ["verified", "eap", "eap-ig", "random"]
    assert len(entry["summary_in_sample"]) == 4 and {row["measure"] for row in entry["differences"]} == {
        "cpr", "cmd", "faithfulness"}


def test_the_circuit_is_the_smallest_over_rankings_first_listed_on_ties():
    def summary(sizes, split="heldout"):  # noqa: ANN001, ANN202
        return pd.DataFrame({"split": split, "method": ["verified", "eap", "eap-ig", "random"],
                             "smallest_n_edges": sizes})

    assert pick_circuit(summary([100, 50, 100, 10])) == ("eap", 50, "heldout")  # random never counts
    assert pick_circuit(summary([50, 50, 20, -1])) == ("eap-ig", 20, "heldout")
    assert pick_circuit(summary([50, 50, 50, -1])) == ("verified", 50, "heldout")
    assert pick_circuit(summary([-1, -1, -1, 5])) == (None, 0, "heldout")
    both = pd.concat([summary([-1, -1, -1, 5]), summary([10, 20, 30, 5], "discovery")])
    assert pick_circuit(both) == (None, 0, "heldout")  # judged on held-out prompts, never in sample
    assert pick_circuit(summary([10, 20, 30, 5], "discovery")) == ("verified", 10, "discovery")
