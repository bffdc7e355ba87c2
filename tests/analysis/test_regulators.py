"""Tests of cortexmap.analysis.regulators: a planted regulator is found against its own layer and contrasted; the
candidate rule and the condition contrast keep their false-positive rate under nulls that break their naive
assumptions (influence decaying with depth; influence growing with prompt length)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis.records import from_dict, to_dict
from cortexmap.analysis.regulators import (
    Regulators,
    condition_contrasts,
    default_condition_pairs,
    influence_matrix,
    regulator_analysis,
    regulator_scores,
)
from cortexmap.errors import ResultsError

from .conftest import N_HEADS, N_LAYERS
from .synthetic import make_influence


def test_planted_regulator_ranks_first(influence: pd.DataFrame) -> None:
    scores = regulator_scores(influence, n_boot=200, seed=0)
    top = scores.iloc[0]
    assert top["head_id"] == "L1H2"
    assert top["breadth"] == 1.0
    assert top["candidate"] and top["p_top"] > 0.99
    assert top["ci_low"] > scores.iloc[1]["ci_high"]
    assert scores["candidate"].sum() == 1
    # every source head except last-layer ones, which have no later heads
    assert len(scores) == (N_LAYERS - 1) * N_HEADS
    # its baseline is the other heads of layer 1, computed independently
    peers = scores[(scores["layer"] == 1) & (scores["head_id"] != "L1H2")]["score"]
    assert top["n_peers"] == N_HEADS - 1
    assert top["baseline_p95"] == pytest.approx(np.percentile(peers, 95))
    assert top["baseline_median"] == pytest.approx(np.median(peers))
    # ranked first of 8 on each of its 2 x 12 prompts: p = 8**-24, times the heads
    assert top["p_value"] == pytest.approx(min(1.0, 8.0 ** -24 * len(scores)))


def _decaying(n_layers: int, n_heads: int, n_prompts: int, rng: np.random.Generator, *, decay: float = 0.6,
              shared: float = 0.6, regulator: tuple[int, int] | None = None, condition: str = "screen") -> pd.DataFrame:
    """Influence that decays with the source's depth; no head differs from its layer unless ``regulator`` is planted.

    ``out_change`` of (source, target) on a prompt = ``0.5 exp(-decay * source_layer - 0.2 * distance)``
    times a pair effect shared by the heads of the source's layer, times ``exp(u + e)``: ``u`` is
    shared by every target of one source on one prompt (sd ``shared``), ``e`` is per pair (sd 0.4).
    A planted regulator triples its influence.
    """
    pairs = np.array([(sl, sh, tl, th) for sl in range(n_layers) for sh in range(n_heads)
                      for tl in range(sl + 1, n_layers) for th in range(n_heads)])
    base = 0.5 * np.exp(-decay * pairs[:, 0] - 0.2 * (pairs[:, 2] - pairs[:, 0]))
    shared_by_layer = rng.normal(0, 0.5, (n_layers, n_layers * n_heads))  # [source layer, target]
    base = base * np.exp(shared_by_layer[pairs[:, 0], pairs[:, 2] * n_heads + pairs[:, 3]])
    if regulator is not None:
        base = base * np.where((pairs[:, 0] == regulator[0]) & (pairs[:, 1] == regulator[1]), 3.0, 1.0)
    source = pairs[:, 0] * n_heads + pairs[:, 1]
    values = base[None] * np.exp(rng.normal(0, shared, (n_prompts, n_layers * n_heads))[:, source]
                                 + rng.normal(0, 0.4, (n_prompts, len(pairs))))
    return pd.DataFrame({"condition": condition, "prompt": np.repeat(np.arange(n_prompts), len(pairs)),
                         "source_layer": np.tile(pairs[:, 0], n_prompts), "source_head": np.tile(pairs[:, 1], n_prompts),
                         "target_layer": np.tile(pairs[:, 2], n_prompts), "target_head": np.tile(pairs[:, 3], n_prompts),
                         "out_change": values.ravel(), "attn_kl": values.ravel()})


def test_candidate_rule_is_calibrated_when_influence_decays_with_depth() -> None:
    """200 null data sets (6 layers x 6 heads, 8 prompts): any candidate in <= 7% of them.

    Early heads move every later head more by position alone, and a source's targets move together
    on a prompt; the head that moves later heads most is a layer-0 head in most data sets, so a
    baseline of all heads would crown it.
    """
    rng = np.random.default_rng(0)
    flagged, layer0_top = 0, 0
    for i in range(200):
        scores = regulator_scores(_decaying(6, 6, 8, rng), condition="screen", n_boot=100, seed=i)
        flagged += bool(scores["candidate"].any())
        layer0_top += int(scores.loc[scores["strength"].idxmax(), "layer"] == 0)
    assert flagged / 200 <= 0.07
    assert layer0_top / 200 >= 0.9


def test_a_regulator_below_stronger_early_heads_is_found() -> None:
    rng = np.random.default_rng(1)
    scores = regulator_scores(_decaying(6, 6, 12, rng, regulator=(3, 2)), condition="screen", n_boot=200, seed=0)
    assert scores.loc[scores["candidate"], "head_id"].tolist() == ["L3H2"]
    regulator = scores.set_index("head_id").loc["L3H2"]
    assert (scores.loc[scores["layer"] == 0, "strength"] > regulator["strength"]).all()  # early heads move more


def test_condition_contrast_separates_regulator_from_null(influence: pd.DataFrame) -> None:
    contrasts = condition_contrasts(influence, n_boot=300, n_perm=500, seed=0).set_index("head_id")
    assert contrasts["condition_a"].iloc[0] == "reasoning:multi_step"
    assert contrasts["condition_b"].iloc[0] == "reasoning:easy"
    assert contrasts["paired"].all()  # both conditions hold prompts 0..11: matched pairs
    reg = contrasts.loc["L1H2"]
    assert reg["diff"] > 0 and reg["ci_low"] > 0 and reg["p_value"] < 0.01
    null_head = contrasts.loc["L3H5"]
    assert null_head["ci_low"] <= 0 <= null_head["ci_high"]
    others = contrasts.drop(index="L1H2")
    assert ((others["ci_low"] > 0) | (others["ci_high"] < 0)).mean() <= 0.1
    assert (others["q_value"] < 0.05).sum() <= 1


def test_unmatched_conditions_are_contrasted_unpaired(influence: pd.DataFrame) -> None:
    shifted = influence.copy()
    easy = shifted["condition"] == "reasoning:easy"
    shifted.loc[easy, "prompt"] += 100
    contrasts = condition_contrasts(shifted, n_boot=50, n_perm=100, seed=0)
    assert not contrasts["paired"].any()
    with pytest.raises(ResultsError, match="not matched"):
        condition_contrasts(shifted, paired=True, n_boot=10, n_perm=10)


def _length_null(rng: np.random.Generator, n_pairs: int, matched: bool) -> pd.DataFrame:
    """No head depends on the condition; every head's influence grows with the prompt's token length.

    Matched: the two prompts of a pair have one length (10-40 tokens); unmatched: the demanding
    prompt is 12 tokens longer, as the old reasoning sets were.
    """
    n_layers, n_heads = 3, 3
    pairs = np.array([(sl, sh, tl, th) for sl in range(n_layers) for sh in range(n_heads)
                      for tl in range(sl + 1, n_layers) for th in range(n_heads)])
    base = np.exp(rng.normal(-3, 0.5, len(pairs)))
    length = rng.integers(10, 41, n_pairs).astype(float)
    frames = []
    for condition, extra in (("reasoning:easy", 0), ("reasoning:multi_step", 0 if matched else 12)):
        tokens = length + extra
        source = pairs[:, 0] * n_heads + pairs[:, 1]
        shared = rng.normal(0, 0.3, (n_pairs, n_layers * n_heads))[:, source]
        values = base[None] * (tokens[:, None] / 20) * np.exp(shared + rng.normal(0, 0.3, (n_pairs, len(pairs))))
        frames.append(pd.DataFrame({
            "condition": condition, "prompt": np.repeat(np.arange(n_pairs), len(pairs)),
            "source_layer": np.tile(pairs[:, 0], n_pairs), "source_head": np.tile(pairs[:, 1], n_pairs),
            "target_layer": np.tile(pairs[:, 2], n_pairs), "target_head": np.tile(pairs[:, 3], n_pairs),
            "out_change": values.ravel(), "attn_kl": values.ravel(), "n_tokens": np.repeat(tokens, len(pairs))}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("matched", [True, False])
def test_contrast_is_calibrated_when_influence_depends_on_length_and_lengths_are_matched(matched: bool) -> None:
    """200 null data sets each: with matched lengths p <= 0.05 in <= 7% of them; unmatched, in most.

    The threshold sits at the typical influence (``noise_floor``), so breadth is not 0 for most heads
    (a degenerate score would make the test look conservative for the wrong reason).
    """
    rng = np.random.default_rng(3 if matched else 4)
    rejects = []
    for i in range(200):
        frame = condition_contrasts(_length_null(rng, 12, matched), noise_floor=0.06, n_boot=1, n_perm=199, seed=i)
        rejects.append(frame["p_value"].to_numpy() <= 0.05)
        if i == 0:
            row = frame.iloc[0]
            assert row["paired"] and (row["tokens_a"] == row["tokens_b"]) == matched
    rejects = np.array(rejects)  # [data sets, heads]
    if matched:
        assert rejects[:, 0].mean() <= 0.07 and rejects.mean() <= 0.07
    else:
        assert rejects[:, 0].mean() >= 0.5  # the old unmatched design reads length as demand


def test_no_regulator_no_candidate() -> None:
    influence = make_influence(6, 4, regulator=None, n_prompts=12, seed=5)
    scores = regulator_scores(influence, n_boot=100)
    assert scores["candidate"].sum() == 0
    contrasts = condition_contrasts(influence, n_boot=100, n_perm=300)
    assert (contrasts["q_value"] < 0.05).sum() == 0


def test_noise_floor_sets_threshold(influence: pd.DataFrame) -> None:
    scores = regulator_scores(influence, noise_floor=10.0, n_boot=10)
    assert (scores["breadth"] == 0).all() and (scores["threshold"] == 10.0).all()


def test_influence_matrix_means(influence: pd.DataFrame) -> None:
    matrix = influence_matrix(influence, condition="reasoning:easy")
    row = matrix[(matrix["source_id"] == "L1H2") & (matrix["target_id"] == "L2H0")].iloc[0]
    raw = influence.query("condition == 'reasoning:easy' and source_layer == 1 and source_head == 2 "
                          "and target_layer == 2 and target_head == 0")
    assert row["out_change"] == pytest.approx(raw["out_change"].mean())
    assert row["n_prompts"] == 12


def test_condition_pairs_table() -> None:
    pairs = default_condition_pairs(["all", "reasoning:easy", "reasoning:multi_step", "ambiguity:ambiguous",
                                     "ambiguity:clear", "length:long", "length:short", "style:a", "style:b"])
    assert set(pairs) == {("reasoning:multi_step", "reasoning:easy"), ("ambiguity:ambiguous", "ambiguity:clear"),
                          ("length:long", "length:short"), ("style:b", "style:a")}


def test_bad_influence_is_refused(influence: pd.DataFrame) -> None:
    bad = influence.copy()
    bad.loc[bad.index[0], "target_layer"] = bad.loc[bad.index[0], "source_layer"]
    with pytest.raises(ResultsError, match="later"):
        regulator_scores(bad)
    with pytest.raises(ResultsError, match="condition"):
        regulator_scores(influence, condition="nope")
    with pytest.raises(ResultsError, match="metric"):
        regulator_scores(influence, metric="loss")


def _view(table: pd.DataFrame | None) -> SimpleNamespace:
    return SimpleNamespace(table=lambda name: table if name == "influence" else None, n_boot=100, seed=0)


def test_the_record_states_the_screen_and_the_contrasts() -> None:
    screen = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), strength={"screen": 0.4}, n_prompts=6, seed=2)
    measured = make_influence(N_LAYERS, N_HEADS, regulator=(1, 2), n_prompts=8, seed=3)
    keep = measured["source_layer"].eq(1) & measured["source_head"].isin([2, 3])
    table = pd.concat([screen, measured[keep]], ignore_index=True).assign(ablation="mean")
    record = regulator_analysis(_view(table), n_perm=200)
    assert record.scored_on == "screen" and record.ablation == "mean" and record.n_sources == (N_LAYERS - 1) * N_HEADS
    assert record.scores.equals(regulator_scores(screen.assign(ablation="mean"), condition="screen", n_boot=100, seed=4))
    assert set(record.contrasts["head_id"]) == {"L1H2", "L1H3"}
    findings = record.findings()
    regulator = next(f for f in findings if f.kind == "regulator")
    assert (regulator.head, regulator.verdict) == ("L1H2", "candidate") and regulator.ci_low > regulator.baseline
    assert "mean ablation" in regulator.text and "other heads of layer 1" in regulator.text
    contrast = next(f for f in findings if f.kind == "contrast" and f.head == "L1H2")
    assert contrast.verdict == "differs" and "matched pairs" in contrast.text
    assert from_dict(Regulators, to_dict(record)).findings() == findings


def test_the_record_says_when_it_could_not_find_a_candidate() -> None:
    few = make_influence(6, 4, regulator=None, strength={"screen": 0.0}, n_prompts=2, seed=1)
    record = regulator_analysis(_view(few))
    (finding,) = record.findings()
    assert finding.verdict == "underpowered" and "smallest possible p" in finding.text
    assert "zero ablation, off-distribution" in finding.text  # a table without the column was zero-ablated
    none = regulator_analysis(_view(None)).findings()
    assert [f.kind for f in none] == ["not_evaluated"] and "--regulators" in none[0].text
