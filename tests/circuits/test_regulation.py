"""The edge regulator test: its per-prompt changes against hooked forwards, its edge and layer-matched baseline
choices, its statistics and their calibration when every head's change depends on its layer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import cortexmap
from cortexmap.analysis.findings import ci
from cortexmap.analysis.regulation import Regulation, regulation_finding, regulation_record, regulation_test
from cortexmap.circuits.graph import Edge, node_layer
from cortexmap.circuits.regulation import baseline_heads, decision_batches, measure_regulation
from cortexmap.errors import CortexmapError
from cortexmap.heads import HeadId
from cortexmap.interventions import head_outputs, intervene
from tests.circuits.test_patching import independent_metric
from tests.sweep.tiny_run import make_model_dir

# matched pairs of equal token length (word-level tokenizer): the easy prompts lead with neutral words
EASY = ["the store the store when anna went to", "carl gave a drink to", "a drink a drink when dora went to the store"]
DEMANDING = ["when anna and bert went to bert gave", "when carl and dora gave",
             "when emil and fred went to the store fred gave"]


@pytest.fixture(scope="module")
def handle(tmp_path_factory):  # noqa: ANN001, ANN201
    return cortexmap.load_model(str(make_model_dir(tmp_path_factory.mktemp("regulation"))))


@pytest.fixture(scope="module")
def measured(handle):  # noqa: ANN001, ANN201
    return measure_regulation(handle, EASY, DEMANDING, "L1H0", n_random=3, n_edges=4, seed=0)


def _edge(name: str) -> Edge:
    sender, rest = name.split(" -> ")
    receiver, kind = rest.rsplit(".", 1)
    return Edge(sender, receiver, kind)


def _pooled_means(handle) -> dict[int, torch.Tensor]:  # noqa: ANN001
    """Every head's mean output over every token of both sides, prompt by prompt (independent of the library's)."""
    total, count = 0, 0
    for text in EASY + DEMANDING:
        with torch.no_grad():
            z = head_outputs(handle, text)
        total = {l: v.sum((0, 1), keepdim=True) + (total[l] if count else 0) for l, v in z.items()}
        count += next(iter(z.values())).shape[1]
    return {l: v / count for l, v in total.items()}


@pytest.mark.parametrize("ablation", ["mean", "zero"])
def test_changes_equal_hooked_forwards(handle, measured, ablation):  # noqa: ANN001
    result = measured if ablation == "mean" else measure_regulation(handle, EASY, DEMANDING, "L1H0", n_random=3,
                                                                       n_edges=4, seed=0, ablation="zero")
    assert set(result.prompts["ablation"]) == {ablation} and result.arguments["ablation"] == ablation
    edges = [_edge(name) for name in result.edges]
    rows = result.prompts.set_index(["head", "side", "pair"])
    means = _pooled_means(handle)
    for side, prompts in (("easy", EASY), ("demanding", DEMANDING)):
        for pair, text in enumerate(prompts):
            (batch,) = decision_batches(handle, [text])
            intact = np.array([independent_metric(handle, batch, e, "zero") for e in edges])[:, 0]
            intact_effects = intact - _clean(handle, batch)
            for head in set(result.prompts["head"]):
                edit = (intervene(handle, ablate=[head]) if ablation == "zero"
                        else intervene(handle, mean_ablate=[head], reference=means))
                with edit:
                    ablated = np.array([independent_metric(handle, batch, e, "zero") for e in edges])[:, 0]
                    ablated_effects = ablated - _clean(handle, batch)
                row = rows.loc[(head, side, pair)]
                # this random model's edge effects are ~1e-4 logits: the bar sits well below them
                assert row["change"] == pytest.approx(np.abs(ablated_effects - intact_effects).sum(), abs=1e-6)
                assert row["scale"] == pytest.approx(np.abs(intact_effects).sum(), abs=1e-6)
    candidate = result.prompts[result.prompts["role"] == "candidate"]
    assert (candidate["change"] > 0.01 * candidate["scale"]).all()  # ablating it does move the edges


def _clean(handle, batch) -> float:  # noqa: ANN001
    from cortexmap.tasks.core import logit_diff

    logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[:, -1].detach().float()
    return float(logit_diff(logits, batch.target_ids, batch.foil_ids)[0])


def test_edges_and_baseline_heads_follow_the_rules(measured):  # noqa: ANN001
    edges = [_edge(name) for name in measured.edges]
    assert len(edges) == 4
    assert all(e.kind in ("q", "k") and node_layer(e.receiver, 3) > 1 and e.sender != "L1H0" for e in edges)
    roles = measured.prompts.groupby("head")["role"].first()
    assert roles["L1H0"] == "candidate" and (roles.drop("L1H0") == "baseline").all() and len(roles) >= 4
    touched = {e.sender for e in edges} | {e.receiver for e in edges if "H" in e.receiver}
    touched |= {f"L{e.receiver[1]}H{h}" for e in edges if "KV" in e.receiver for h in (2 * int(e.receiver[-1]),
                                                                                      2 * int(e.receiver[-1]) + 1)}
    baselines = [HeadId.parse(h) for h in roles.drop("L1H0").index]
    assert not touched & {str(h) for h in baselines}  # 4 heads in 2 KV groups: group g holds heads 2g, 2g+1
    assert all(h.layer <= 1 for h in baselines)  # never above the candidate
    own = {f"L1H{h}" for h in (1, 2, 3)} - touched
    if any(h.layer == 0 for h in baselines):  # a lower layer only once the candidate's own is used up
        assert own <= {str(h) for h in baselines}
    assert measured.prompts.groupby(["head", "side"]).size().eq(3).all()


def test_baseline_heads_are_matched_in_layer():
    graph = SimpleNamespace(n_heads=4, n_layers=6, n_kv_heads=4)
    drawn = baseline_heads(graph, HeadId(3, 1), [], 5, seed=0)
    assert {h for h in drawn if h.layer == 3} == {HeadId(3, 0), HeadId(3, 2), HeadId(3, 3)}
    assert [h.layer for h in drawn].count(2) == 2 and len(drawn) == 5
    bumped = baseline_heads(graph, HeadId(3, 1), [], 4, seed=0)  # one more head needed: layer 2 gives two
    assert len(bumped) == 5 and [h.layer for h in bumped].count(2) == 2
    assert len(baseline_heads(graph, HeadId(0, 1), [], 19, seed=0)) == 3  # nothing below layer 0
    skip = [Edge("L3H0", "L5H1", "q"), Edge("L2H0", "L4H0", "k")]
    assert not {HeadId(3, 0), HeadId(2, 0)} & set(baseline_heads(graph, HeadId(3, 1), skip, 8, seed=1))
    assert baseline_heads(graph, HeadId(3, 1), [], 5, seed=0) == drawn  # seeded


def test_write_regulation_replaces_a_candidate_and_condition(measured, tmp_path):  # noqa: ANN001
    import dataclasses
    import json

    from cortexmap.circuits.store import write_regulation
    from cortexmap.results.layout import MANIFEST, REGULATION, SCHEMA_VERSION

    (tmp_path / MANIFEST).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "model": {"spec": "tiny"}}))
    other = dataclasses.replace(measured, prompts=measured.prompts.assign(condition="length"),
                                arguments={**measured.arguments, "condition": "length"})
    for result in (measured, other, measured):
        write_regulation(tmp_path, result)
    table = pd.read_parquet(tmp_path / REGULATION)
    n = len(measured.prompts)
    assert table.groupby("condition").size().to_dict() == {"custom": n, "length": n}
    assert set(json.loads((tmp_path / MANIFEST).read_text())["regulation"]) == {"L1H0:custom", "L1H0:length"}


def test_decisions_are_the_models_top_two(handle):  # noqa: ANN001
    (batch,) = decision_batches(handle, [EASY[1]])
    logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[0, -1]
    assert [int(batch.target_ids[0]), int(batch.foil_ids[0])] == logits.topk(2).indices.tolist()


def test_unmatched_sides_and_a_last_layer_head_are_refused(handle):  # noqa: ANN001
    with pytest.raises(CortexmapError, match="matched pairs"):
        measure_regulation(handle, EASY, DEMANDING[:2], "L1H0")
    with pytest.raises(CortexmapError, match="equal token length"):
        measure_regulation(handle, EASY, ["when anna went"] + DEMANDING[1:], "L1H0")
    with pytest.raises(CortexmapError, match="unknown ablation"):
        measure_regulation(handle, EASY, DEMANDING, "L1H0", ablation="resample")
    with pytest.raises(CortexmapError, match="no query or key edge lies above L2H0"):
        measure_regulation(handle, EASY, DEMANDING, "L2H0", n_random=0, n_edges=2)


def _table(heads: list[HeadId], change: np.ndarray, scale: np.ndarray, ablation: str = "mean") -> pd.DataFrame:
    """A regulation table from ``change [heads, 2 sides, pairs]`` and ``scale [2 sides, pairs]``; head 0: the candidate."""
    n_heads, _, n_pairs = change.shape
    head = np.repeat([str(h) for h in heads], 2 * n_pairs)
    side = np.tile(np.repeat(["easy", "demanding"], n_pairs), n_heads)
    return pd.DataFrame({"candidate": str(heads[0]), "condition": "reasoning", "head": head,
                         "role": np.where(head == str(heads[0]), "candidate", "baseline"), "side": side,
                         "pair": np.tile(np.arange(n_pairs), 2 * n_heads), "change": change.ravel(),
                         "scale": np.tile(scale.ravel(), n_heads), "n_edges": 16, "ablation": ablation})


def planted_regulation_table(candidate_gain: float, n_random: int = 19, n_pairs: int = 24, seed: int = 0,
                             ablation: str = "mean") -> pd.DataFrame:
    """Relative change 0.2 on both sides for every head; the candidate's demanding side gains ``candidate_gain``.

    The candidate is L5H0 of a model with 9 heads per layer; its baseline heads are drawn as
    :func:`~cortexmap.circuits.regulation.baseline_heads` draws them (its layer, then the ones below).
    """
    rng = np.random.default_rng(seed)
    candidate = HeadId(5, 0)
    heads = [candidate] + baseline_heads(SimpleNamespace(n_heads=9), candidate, [], n_random, seed)
    scale = rng.uniform(1, 2, (2, n_pairs))
    rate = np.full((len(heads), 2, 1), 0.2)
    rate[0, 1] += candidate_gain
    change = scale[None] * np.clip(rate + rng.normal(0, 0.05, (len(heads), 2, n_pairs)), 0, None)
    return _table(heads, change, scale, ablation)


def test_a_planted_regulator_is_supported_and_a_plain_head_is_not():
    strong = regulation_test(planted_regulation_table(0.15), n_boot=500)
    assert strong["verdict"] == "supported" and strong["p_random"] == pytest.approx(1 / 20)
    assert strong["n_same_layer"] == 8 and strong["baseline_layers"] == [3, 4, 5] and strong["n_ranked"] == 19
    assert strong["ci_low"] > 0 and strong["ci_low"] <= strong["diff"] <= strong["ci_high"]
    assert strong["diff"] == pytest.approx(strong["demanding"] - strong["easy"])
    assert strong["diff"] == pytest.approx(strong["heads"]["L5H0"])
    same = [v for h, v in strong["heads"].items() if h.startswith("L5H") and h != "L5H0"]
    assert strong["baseline_mean"] == pytest.approx(np.mean(same)) and abs(strong["baseline_mean"]) < 0.05
    assert strong["excess"] == pytest.approx(strong["diff"] - strong["baseline_mean"]) and strong["excess_ci_low"] > 0
    plain = regulation_test(planted_regulation_table(0.0), n_boot=500)
    assert plain["verdict"] == "not supported"
    finding = regulation_finding(strong)
    assert finding.kind == "regulation" and finding.head == "L5H0" and finding.verdict == "supported"
    assert finding.baseline == strong["baseline_mean"] and "random heads matched in layer" in finding.text
    assert "mean ablation (counterfactual)" in finding.text and "equal token length" in finding.text
    assert ci(strong["excess_ci_low"], strong["excess_ci_high"], 3) in finding.text
    assert f"p = {strong['p_random']:.3f}" in finding.text


def test_zero_ablation_is_called_off_distribution():
    finding = regulation_finding(regulation_test(planted_regulation_table(0.15, ablation="zero"), n_boot=100))
    assert "zero ablation (off-distribution)" in finding.text and finding.stats["ablation"] == "zero"
    old = planted_regulation_table(0.15).drop(columns="ablation")  # tables written before the column: zero
    assert regulation_test(old, n_boot=100)["ablation"] == "zero"


def test_too_few_layer_matched_heads_are_underpowered():
    few = regulation_test(planted_regulation_table(0.3, n_random=5), n_boot=200)
    assert few["ci_low"] > 0 and few["p_random"] == pytest.approx(1 / 6) and few["p_smallest"] == pytest.approx(1 / 6)
    assert few["verdict"] == "underpowered" and "smallest possible 0.167" in regulation_finding(few).text
    none = regulation_test(planted_regulation_table(0.3, n_random=0), n_boot=200)
    assert none["p_random"] is None and none["verdict"] == "underpowered"
    assert regulation_finding(none).baseline == 0.0


def test_the_record_states_every_test_and_round_trips():
    from cortexmap.analysis.records import from_dict, to_dict

    table = pd.concat([planted_regulation_table(0.15), planted_regulation_table(0.0, seed=1).assign(condition="length")])
    view = SimpleNamespace(table=lambda name: table if name == "regulation" else None, n_boot=200, seed=3)
    from cortexmap.analysis.regulation import regulation_analysis

    record = regulation_analysis(view)
    assert [(t.candidate, t.condition) for t in record.tests] == [("L5H0", "length"), ("L5H0", "reasoning")]
    assert record.tests[1] == regulation_record(table[table["condition"] == "reasoning"], n_boot=200, seed=3)
    assert [f.verdict for f in record.findings()] == ["not supported", "supported"]
    assert from_dict(Regulation, to_dict(record)).findings() == record.findings()
    empty = SimpleNamespace(table=lambda name: None, n_boot=10, seed=0)
    assert regulation_analysis(empty).findings() == []


def _layer_null(rng: np.random.Generator, candidate: HeadId, heads: list[HeadId], kind: str,
                n_pairs: int = 16) -> np.ndarray:
    """``change [heads, 2, pairs] / scale`` with no regulator: a head's change depends on its layer alone.

    The edges lie above the candidate's layer, so heads above it barely move them, and the nearer
    a head sits below them the more it does (``exp(-distance / 3)``). ``scale``: the demanding
    side's edges move 1.2 times more under every ablation; ``shift``: its relative change is
    larger by ``0.05 exp(-distance / 3)``. Heads differ by a random effect per side.
    """
    distance = np.array([candidate.layer - h.layer for h in heads], dtype=float)[:, None, None]
    reach = np.where(distance >= 0, np.exp(-np.clip(distance, 0, None) / 3), 0.05)
    u = rng.normal(0, 0.1, (len(heads), 2, 1))
    eps = rng.normal(0, 0.3, (len(heads), 2, n_pairs))
    if kind == "scale":
        return 0.2 * reach * np.array([1.0, 1.2])[None, :, None] * np.exp(u + eps)
    bonus = np.concatenate([np.zeros_like(reach), 0.05 * reach], axis=1)
    return np.clip(0.2 * reach + bonus + 0.02 * u + 0.02 * eps, 0, None)


@pytest.mark.parametrize("kind", ["scale", "shift"])
def test_the_rank_p_is_calibrated_when_every_heads_change_depends_on_its_layer(kind):
    """FPR at 5% over 240 null data sets (9 heads per layer, as SmolLM2): layer-matched <= 7%; whole-model > 10%."""
    rng = np.random.default_rng(11 if kind == "scale" else 12)
    graph = SimpleNamespace(n_heads=9)
    matched, whole = [], []
    for i in range(240):
        layer = int(rng.integers(2, 30))
        candidate = HeadId(layer, int(rng.integers(0, 9)))
        heads = [candidate] + baseline_heads(graph, candidate, [], 19, seed=i)
        scale = rng.uniform(1, 2, (2, 16))
        test = regulation_record(_table(heads, scale[None] * _layer_null(rng, candidate, heads, kind), scale),
                                 n_boot=100, seed=i)
        matched.append(test.p_random <= 0.05)
        # the old design: 19 heads from anywhere in the model (30 layers), ranked by their raw difference
        pool = [HeadId(l, h) for l in range(30) for h in range(9) if HeadId(l, h) != candidate]
        anywhere = [candidate] + [pool[j] for j in rng.choice(len(pool), 19, replace=False)]
        change = scale[None] * _layer_null(rng, candidate, anywhere, kind)
        rel = change.sum(2) / scale.sum(1)[None]
        diff = rel[:, 1] - rel[:, 0]
        whole.append((1 + (diff[1:] >= diff[0]).sum()) / 20 <= 0.05)
    assert np.mean(matched) <= 0.07
    assert np.mean(whole) > 0.10
