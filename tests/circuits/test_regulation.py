"""The edge regulator test: its per-prompt changes against hooked forwards, its edge and baseline choices, its statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cortexmap
from cortexmap.analysis.regulation import regulation_test
from cortexmap.analysis.summary import regulation_finding
from cortexmap.circuits.graph import Edge, node_layer
from cortexmap.circuits.regulation import decision_batches, measure_regulation
from cortexmap.errors import CortexmapError
from cortexmap.interventions import intervene
from tests.circuits.test_patching import independent_metric
from tests.sweep.tiny_run import make_model_dir

EASY = ["when anna and bert went to the store", "carl gave a drink to", "when dora went to the store"]
DEMANDING = ["when anna and bert went to the store bert gave a drink to", "when carl and dora went to the store carl gave",
             "when emil and fred went to the store fred gave a drink to gina"]


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


def test_changes_equal_hooked_forwards(handle, measured):  # noqa: ANN001
    edges = [_edge(name) for name in measured.edges]
    rows = measured.prompts.set_index(["head", "side", "pair"])
    for side, prompts in (("easy", EASY), ("demanding", DEMANDING)):
        for pair, text in enumerate(prompts):
            (batch,) = decision_batches(handle, [text])
            intact = np.array([independent_metric(handle, batch, e, "zero") for e in edges])[:, 0]
            intact_effects = intact - _clean(handle, batch)
            for head in set(measured.prompts["head"]):
                with intervene(handle, ablate=[head]):
                    ablated = np.array([independent_metric(handle, batch, e, "zero") for e in edges])[:, 0]
                    ablated_effects = ablated - _clean(handle, batch)
                row = rows.loc[(head, side, pair)]
                # this random model's edge effects are ~1e-4 logits: the bar sits well below them
                assert row["change"] == pytest.approx(np.abs(ablated_effects - intact_effects).sum(), abs=1e-6)
                assert row["scale"] == pytest.approx(np.abs(intact_effects).sum(), abs=1e-6)
    candidate = measured.prompts[measured.prompts["role"] == "candidate"]
    assert (candidate["change"] > 0.1 * candidate["scale"]).all()  # ablating it does move the edges


def _clean(handle, batch) -> float:  # noqa: ANN001
    from cortexmap.tasks.core import logit_diff

    logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[:, -1].detach().float()
    return float(logit_diff(logits, batch.target_ids, batch.foil_ids)[0])


def test_edges_and_baseline_heads_follow_the_rules(measured):  # noqa: ANN001
    edges = [_edge(name) for name in measured.edges]
    assert len(edges) == 4
    assert all(e.kind in ("q", "k") and node_layer(e.receiver, 3) > 1 and e.sender != "L1H0" for e in edges)
    roles = measured.prompts.groupby("head")["role"].first()
    assert roles["L1H0"] == "candidate" and (roles.drop("L1H0") == "baseline").all() and len(roles) == 4
    touched = {e.sender for e in edges} | {e.receiver for e in edges if "H" in e.receiver}
    touched |= {f"L{e.receiver[1]}H{h}" for e in edges if "KV" in e.receiver for h in (2 * int(e.receiver[-1]),
                                                                                      2 * int(e.receiver[-1]) + 1)}
    assert not touched & set(roles.drop("L1H0").index)  # 4 heads in 2 KV groups: group g holds heads 2g, 2g+1
    assert measured.prompts.groupby(["head", "side"]).size().eq(3).all()


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
    assert table.groupby("condition").size().to_dict() == {"custom": len(measured.prompts), "length": len(measured.prompts)}
    assert set(json.loads((tmp_path / MANIFEST).read_text())["regulation"]) == {"L1H0:custom", "L1H0:length"}


def test_decisions_are_the_models_top_two(handle):  # noqa: ANN001
    (batch,) = decision_batches(handle, [EASY[1]])
    logits = handle.model(input_ids=batch.input_ids, use_cache=False).logits[0, -1]
    assert [int(batch.target_ids[0]), int(batch.foil_ids[0])] == logits.topk(2).indices.tolist()


def test_unmatched_sides_and_a_last_layer_head_are_refused(handle):  # noqa: ANN001
    with pytest.raises(CortexmapError, match="matched pairs"):
        measure_regulation(handle, EASY, DEMANDING[:2], "L1H0")
    with pytest.raises(CortexmapError, match="no query or key edge lies above L2H0"):
        measure_regulation(handle, EASY, DEMANDING, "L2H0", n_random=0, n_edges=2)


def planted_regulation_table(candidate_gain: float, n_random: int = 19, n_pairs: int = 24, seed: int = 0) -> pd.DataFrame:
    """Relative change 0.2 on both sides for every head; the candidate's demanding side gains ``candidate_gain``."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_random + 1):
        head = "L5H0" if k == 0 else f"L{k % 5}H{k}"
        for side in ("easy", "demanding"):
            scale = rng.uniform(1, 2, n_pairs)
            rate = 0.2 + (candidate_gain if (k == 0 and side == "demanding") else 0.0)
            change = scale * np.clip(rate + rng.normal(0, 0.05, n_pairs), 0, None)
            rows.append(pd.DataFrame({"candidate": "L5H0", "condition": "reasoning", "head": head,
                                      "role": "candidate" if k == 0 else "baseline", "side": side,
                                      "pair": np.arange(n_pairs), "change": change, "scale": scale, "n_edges": 16}))
    return pd.concat(rows, ignore_index=True)


def test_a_planted_regulator_is_supported_and_a_plain_head_is_not():
    strong = regulation_test(planted_regulation_table(0.15), n_boot=500)
    assert strong["verdict"] == "supported" and strong["p_random"] == pytest.approx(1 / 20)
    assert strong["ci_low"] > 0 and strong["ci_low"] <= strong["diff"] <= strong["ci_high"]
    assert strong["diff"] == pytest.approx(strong["demanding"] - strong["easy"])
    assert abs(strong["baseline_mean"]) < 0.05
    plain = regulation_test(planted_regulation_table(0.0), n_boot=500)
    assert plain["verdict"] == "not supported"
    finding = regulation_finding(strong)
    assert finding.kind == "regulation" and finding.head == "L5H0" and "supported" in finding.text
    assert finding.baseline == strong["baseline_mean"] and "random heads" in finding.text


def test_too_few_baseline_heads_cannot_support():
    few = regulation_test(planted_regulation_table(0.3, n_random=5), n_boot=200)
    assert few["ci_low"] > 0 and few["p_random"] == pytest.approx(1 / 6) and few["verdict"] == "not supported"
