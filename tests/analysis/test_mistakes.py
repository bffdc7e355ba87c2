"""Why the model errs: the right/wrong contrast against scipy's permutation test, planted heads found, nulls not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import permutation_test

from cortexmap.analysis.mistakes import edge_rows, error_contrasts, error_summary, group_contrast, head_rows
from cortexmap.analysis.summary import list_findings
from cortexmap.errors import CortexmapError


def test_group_contrast_matches_an_independent_permutation_test():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 3))
    b = np.zeros(30, dtype=bool)
    b[[1, 4, 7, 8, 15, 20, 22, 29]] = True
    x[b, 1] += 0.9
    out = group_contrast(x, b, n_boot=2000, n_perm=4000, seed=1)
    np.testing.assert_allclose(out["diff"], x[b].mean(0) - x[~b].mean(0))
    for col in range(3):
        ref = permutation_test((x[b, col], x[~b, col]), lambda u, v: u.mean() - v.mean(), permutation_type="independent",
                               n_resamples=4000, alternative="two-sided", random_state=0)
        assert abs(out["p_value"][col] - ref.pvalue) < 0.03, col
    assert out["ci_low"][1] > 0 and out["p_value"][1] < 0.01
    assert (out["ci_low"] <= out["diff"]).all() and (out["diff"] <= out["ci_high"]).all()


@pytest.mark.parametrize("labels", [np.zeros(5, bool), np.ones(5, bool)])
def test_group_contrast_needs_both_groups(labels):
    with pytest.raises(CortexmapError, match="both groups need rows"):
        group_contrast(np.zeros((5, 2)), labels)


def planted_error_effects(n_prompts: int, n_wrong: int, planted: float, seed: int = 0,
                          heads: tuple[tuple[int, int], ...] = ((1, 0),)) -> pd.DataFrame:
    """Three heads on one task; ``heads`` carry the answer on right prompts only (by ``planted``)."""
    rng = np.random.default_rng(seed)
    clean = np.where(np.arange(n_prompts) < n_wrong, -0.5, 2.0) + rng.normal(0, 0.1, n_prompts)
    rows = []
    for layer, head in [(0, 0), (1, 0), (1, 1)]:
        effect = rng.normal(0, 0.3, n_prompts)
        if (layer, head) in heads:
            effect -= planted * (clean > 0)
        rows.append(pd.DataFrame({"task": "t", "intervention": "zero", "alpha": np.nan, "method": "exact",
                                  "layer": layer, "head": head, "prompt": np.arange(n_prompts), "effect": effect,
                                  "clean": clean}))
    return pd.concat(rows, ignore_index=True)


def _findings(errors: list[dict]) -> list:
    empty = {"bands": {"hypothesis": {"verdict": "not evaluated", "hypothesis": "h", "note": "n", "level_order": {}},
                       "level_depths": [], "segmentation": []},
             "groups": {"silhouette": None, "groups": [], "stability": {}},
             "roles": {"table": [], "evaluated": {}}, "specialization": {"mean": None}, "adaptivity": [],
             "regulators": None, "redundancy": None, "not_evaluated": [], "errors": errors}
    return [f for f in list_findings(empty) if f.kind in ("errs", "errs_unit")]


def test_the_head_that_fails_on_wrong_prompts_is_found():
    rows, reason = head_rows(planted_error_effects(24, 8, planted=1.5), "zero")
    assert reason is None
    contrasts, thin = error_contrasts(rows, n_perm=2000, seed=0)
    assert thin == []
    by_head = contrasts.set_index("unit")
    assert by_head.loc["L1H0", "q_value"] < 0.05 and by_head.loc["L1H0", "ci_low"] > 0  # weaker on wrong prompts
    assert (by_head.drop("L1H0")["q_value"] >= 0.05).all()
    assert (by_head["n_right"] == 16).all() and (by_head["n_wrong"] == 8).all()
    (finding,) = _findings(error_summary(contrasts, "head"))
    assert (finding.kind, finding.verdict, finding.head, finding.task) == ("errs", "differs", "L1H0", "t")
    assert finding.ci_low > 0 and "16 right, 8 wrong" in finding.text and "q = " in finding.text


def test_no_difference_is_stated_with_the_closest_unit():
    contrasts, _ = error_contrasts(head_rows(planted_error_effects(24, 8, planted=0.0, seed=5), "zero")[0], seed=0)
    (finding,) = _findings(error_summary(contrasts, "head"))
    assert finding.verdict == "no difference" and "no head's effect differs" in finding.text
    assert finding.ci_low <= finding.effect <= finding.ci_high and finding.p_value is not None


def test_too_few_wrong_prompts_and_old_runs_are_not_evaluated():
    contrasts, thin = error_contrasts(head_rows(planted_error_effects(20, 2, planted=1.0), "zero")[0])
    assert contrasts.empty and thin == ["t (18 right / 2 wrong)"]
    rows, reason = head_rows(planted_error_effects(20, 5, planted=1.0).drop(columns="clean"), "zero")
    assert rows is None and "re-run cortexmap map" in reason


def test_edges_are_named_sender_receiver_kind():
    prompts = pd.DataFrame({"task": "t", "sender": "L0H1", "receiver": "L2KV0", "kind": "k", "prompt": [0, 1],
                            "effect": [0.1, 0.2], "clean": [1.0, -1.0]})
    assert list(edge_rows(prompts)["unit"]) == ["L0H1 -> L2KV0.k"] * 2


def test_build_atlas_states_why_the_model_errs(banded):  # noqa: ANN001
    from cortexmap.analysis import AtlasOptions, build_atlas

    from .conftest import N_HEADS, N_LAYERS

    effects, prompt_effects = banded
    _, old = build_atlas(effects, shape=(N_LAYERS, N_HEADS), prompt_effects=prompt_effects,
                         options=AtlasOptions(n_boot=50, n_perm=50))
    assert old["errors"] == [] and any("lack the per-prompt clean metric" in n for n in old["not_evaluated"])
    wrong = prompt_effects["prompt"] < 10  # the model gets the first 10 prompts of every task wrong
    split = prompt_effects.assign(clean=np.where(wrong, -1.0, 2.0))
    _, findings = build_atlas(effects, shape=(N_LAYERS, N_HEADS), prompt_effects=split,
                              options=AtlasOptions(n_boot=50, n_perm=50))
    assert {e["task"] for e in findings["errors"]} == set(effects["task"])
    assert all((e["n_right"], e["n_wrong"], e["kind"]) == (30, 10, "head") for e in findings["errors"])
    kinds = [f["kind"] for f in findings["finding_list"]]
    assert kinds.count("errs") == effects["task"].nunique()
