"""Tests of cortexmap.analysis.roles: planted roles are found and random heads get none."""

from __future__ import annotations

import pandas as pd

from cortexmap.analysis.roles import assign_roles, closest_candidates, evaluated_roles, role_evidence

from .conftest import N_HEADS, N_LAYERS
from .synthetic import make_effects

PLANTED = {(9, 1): {"ioi": -0.6}, (9, 2): {"ioi": -0.4}, (3, 3): {"article_agreement": -0.5},
           (10, 0): {"arithmetic": -0.5, "greater_than": -0.4}, (5, 5): {"sva_across_pp": -0.5},
           (7, 7): {"ioi": 0.5}}  # (7, 7) helps ioi when ablated: large, but not in the harmful direction


def test_planted_roles_found_and_only_those(patterns: pd.DataFrame) -> None:
    effects, _ = make_effects(N_LAYERS, N_HEADS, PLANTED, seed=3)
    roles = assign_roles(effects, patterns)
    found = set(zip(roles["head_id"], roles["role"]))
    expected = {("L9H1", "ioi_name_mover"), ("L9H2", "ioi_name_mover"), ("L3H3", "article_noun"),
                ("L10H0", "arithmetic"), ("L5H5", "subject_verb_agreement"), ("L5H1", "induction"),
                ("L6H2", "induction"), ("L1H0", "previous_token")}
    assert found == expected
    task_rows = roles[roles["kind"] == "task"]
    assert (task_rows["effect_or_score"] < -task_rows["baseline"]).all()
    assert (task_rows["ci_high"] < 0).all() and (task_rows["percentile"] >= 95).all()
    l10 = roles[roles["head_id"] == "L10H0"]
    assert set(l10["evidence"]) == {"arithmetic", "greater_than"}


def test_null_heads_get_no_role(null_effects: pd.DataFrame) -> None:
    from .synthetic import make_patterns

    roles = assign_roles(null_effects, make_patterns(N_LAYERS, N_HEADS, {}, seed=2))
    assert roles.empty


def test_plain_interval_rule_is_looser(null_effects: pd.DataFrame) -> None:
    strict = assign_roles(null_effects, None)
    loose = assign_roles(null_effects, None, familywise=False)
    assert len(loose) >= len(strict) == 0
    # even the loose rule is bounded by the percentile baseline: at most 5% of heads per task
    per_task = loose.groupby("evidence").size()
    assert per_task.empty or per_task.max() <= 0.05 * N_LAYERS * N_HEADS + 1


def test_missing_tasks_mean_not_evaluated(patterns: pd.DataFrame) -> None:
    effects, _ = make_effects(N_LAYERS, N_HEADS, PLANTED, seed=3)
    evidence = evaluated_roles(effects, patterns)
    assert evidence["number_date"] == []
    assert evidence["subject_verb_agreement"] == ["subject_verb_agreement", "sva_across_pp"]
    assert evaluated_roles(effects, None)["induction"] == []


def test_roles_are_a_table(patterns: pd.DataFrame) -> None:
    effects, _ = make_effects(N_LAYERS, N_HEADS, PLANTED, seed=3)
    roles = assign_roles(effects, None, role_tasks={"backup_name_mover": ("io*",)}, role_probes={})
    assert set(roles["role"]) == {"backup_name_mover"}
    assert set(roles["head_id"]) == {"L9H1", "L9H2"}


def test_closest_candidate_names_the_nearest_miss(patterns: pd.DataFrame) -> None:
    planted = {**PLANTED, (4, 4): {"capitals": -0.05}}  # harmful but far below the bar
    effects, _ = make_effects(N_LAYERS, N_HEADS, planted, seed=3)
    evidence = role_evidence(effects, patterns)
    assert evidence["passed"].sum() == len(assign_roles(effects, patterns))
    closest = closest_candidates(evidence).set_index("role")
    # roles some head passes are not listed; roles no head passes are
    assert not {"ioi_name_mover", "article_noun", "induction"} & set(closest.index)
    assert {"fact_retrieval", "attention_sink"} <= set(closest.index)
    sink = patterns[patterns["probe"] == "sink"].loc[lambda d: d["score"].idxmax()]
    assert (closest.loc["attention_sink", "layer"], closest.loc["attention_sink", "head"]) == (sink["layer"], sink["head"])
    # computed independently from the effects table: the most harmful normalized effect on the role's tasks
    zero = effects[effects["intervention"] == "zero"]
    facts = zero[zero["task"].isin(["capitals", "landmarks", "two_hop"])]
    worst = facts.loc[facts["effect_normalized"].idxmin()]
    row = closest.loc["fact_retrieval"]
    assert (row["layer"], row["head"], row["evidence"]) == (worst["layer"], worst["head"], worst["task"])
    assert row["effect_or_score"] == worst["effect_normalized"]
    assert row["ci_low"] <= row["effect_or_score"] <= row["ci_high"]
