"""Why the model errs: the stratified margin-adjusted screen against OLS and a plain permutation loop, its calibration
on nulls that fool the naive contrast (effects proportional to the margin; templates that differ in accuracy and
level), its interval's coverage and power, the flip tests, and the record."""

from __future__ import annotations

from types import SimpleNamespace

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, ttest_ind

from cortexmap.analysis.findings import KINDS, VERDICTS, ci, num
from cortexmap.analysis.mistakes import (
    MIN_WRONG,
    Errors,
    edge_rows,
    error_analysis,
    errors_of_rows,
    flip_candidates,
    flip_tests,
    head_rows,
    margin_step,
    permute_within,
    enough_prompts,
    usable,
)
from cortexmap.errors import CortexmapError
from cortexmap.stats import bh_q, clopper_pearson

N_SETS = 250  # simulated data sets per calibration test: tells a 5% from a 10% false-positive rate


def simulate(rng: np.random.Generator, null: str, n_units: int = 6, step: float = 0.0,
             design: tuple[tuple[int, int], ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task's ``(effects [prompts, units], clean, template)`` under a null that fools the naive contrast.

    ``margin``: every unit's effect is proportional to the clean margin (no intercept), three
    templates of similar accuracy. ``template``: template 0 mostly wrong, template 2 all right, every
    unit's effect level differs by template, plus a margin slope. ``step`` is added to unit 0 on
    wrong prompts. ``design`` overrides the templates' ``(n_right, n_wrong)``.
    """
    if design is None:
        design = ((8, 6), (10, 4), (9, 5)) if null == "margin" else ((4, 10), (10, 4), (14, 0))
    clean, template = [], []
    for v, (n_right, n_wrong) in enumerate(design):
        clean += list(-rng.gamma(2, 0.6, n_wrong)) + list(rng.gamma(2, 1.0, n_right))
        template += [v] * (n_right + n_wrong)
    clean, template = np.array(clean), np.array(template)
    slope = rng.normal(-0.4, 0.2, n_units)
    level = rng.normal(0, 1.0, (len(design), n_units)) if null == "template" else np.zeros((len(design), n_units))
    noise = rng.normal(0, 0.3, (len(clean), n_units))
    effects = clean[:, None] * slope[None] + level[template] + noise
    effects[:, 0] += step * (clean <= 0)
    return effects, clean, template


def as_rows(sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Simulated data sets as screen input, one task each (``sim0``, ``sim1``, ...)."""
    frames = []
    for i, (effects, clean, template) in enumerate(sets):
        n, u = effects.shape
        frames.append(pd.DataFrame({"kind": "head", "task": f"sim{i}", "intervention": "patch",
                                    "prompt": np.repeat(np.arange(n), u), "variant": np.repeat(template, u),
                                    "templated": True, "unit": np.tile([f"L{k}H0" for k in range(u)], n),
                                    "effect": effects.ravel(), "clean": np.repeat(clean, u)}))
    return pd.concat(frames, ignore_index=True)


def naive_rejects(effects: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """The old contrast: wrong vs right pooled over templates, no margin adjustment (Welch t-test, p < 0.05)."""
    return ttest_ind(effects[clean <= 0], effects[clean > 0], equal_var=False).pvalue < 0.05


def test_margin_step_equals_ols_and_a_plain_freedman_lane_loop():
    rng = np.random.default_rng(0)
    effects, clean, template = simulate(rng, "template", n_units=3, design=((5, 7), (8, 4)))
    effects[:, 1] += 1.5 * (clean <= 0)
    out = margin_step(effects, clean, template, n_perm=3000, seed=1)
    # independent: lstsq on the full design, classical standard error
    onehot = np.eye(2)[template]
    X = np.hstack([onehot, onehot * clean[:, None], (clean <= 0)[:, None]])
    beta, rss, *_ = np.linalg.lstsq(X, effects, rcond=None)
    df = len(clean) - X.shape[1]
    se = np.sqrt(rss / df * np.linalg.inv(X.T @ X)[-1, -1])
    np.testing.assert_allclose(out["step"], beta[-1], atol=1e-10)
    np.testing.assert_allclose(out["se"], se, atol=1e-10)
    assert int(out["df"]) == df
    # independent: Freedman-Lane as a loop of refits, residuals of the reduced model permuted within template
    Z = X[:, :-1]
    fitted = Z @ np.linalg.lstsq(Z, effects, rcond=None)[0]
    resid = effects - fitted
    loop_rng = np.random.default_rng(9)
    t_null = []
    for _ in range(3000):
        perm = np.arange(len(clean))
        for v in (0, 1):
            members = np.flatnonzero(template == v)
            perm[members] = loop_rng.permutation(members)
        star = fitted + resid[perm]
        b, r, *_ = np.linalg.lstsq(X, star, rcond=None)
        t_null.append(b[-1] / np.sqrt(r / df * np.linalg.inv(X.T @ X)[-1, -1]))
    t_null = np.abs(np.array(t_null))
    p_loop = (1 + (t_null >= np.abs(beta[-1] / se)).sum(0)) / 3001
    np.testing.assert_allclose(out["p_value"], p_loop, atol=0.02)
    assert out["p_value"][1] < 0.01 and out["ci_low"][1] > 0
    assert (out["ci_low"] <= out["step"]).all() and (out["step"] <= out["ci_high"]).all()


def test_permute_within_moves_units_only_inside_their_stratum():
    strata = np.array([0, 0, 1, 1, 1, 2])
    perms = permute_within(strata, 50, np.random.default_rng(0))
    assert (np.sort(perms, axis=1) == np.arange(6)).all()
    assert (strata[perms] == strata[None]).all()


def test_margin_step_refuses_what_it_cannot_separate():
    clean = np.array([2.0, 2.0, 2.0, -1.0, -1.0, -1.0])  # one margin per group: the step is the slope
    assert margin_step(np.zeros((6, 1)), clean, np.zeros(6)) is None
    with pytest.raises(CortexmapError, match="NaN"):
        margin_step(np.full((6, 1), np.nan), np.arange(6.0) - 2, np.zeros(6))


def shipped_screen(sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_perm: int = 200) -> list[dict | None]:
    """The screen as :func:`screen` runs it on each data set (usable templates, the size rule, the step test)."""
    out = []
    for i, (effects, clean, template) in enumerate(sets):
        use = usable(clean, template)
        out.append(margin_step(effects[use], clean[use], template[use], n_perm=n_perm, seed=i)
                   if enough_prompts(clean, template) else None)
    return out


@pytest.mark.parametrize("null", ["margin", "template"])
def test_calibration_on_nulls_that_fool_the_naive_contrast(null):
    """No unit steps on wrong prompts within template; the naive contrast rejects most units, the screen 5%."""
    rng = np.random.default_rng(12 if null == "margin" else 13)
    sets = [simulate(rng, null) for _ in range(N_SETS)]
    naive = np.mean([naive_rejects(e, c) for e, c, _ in sets])
    assert naive > 0.5, naive  # the null breaks the naive assumption
    results = shipped_screen(sets)
    assert all(r is not None for r in results)
    p = np.stack([r["p_value"] for r in results])  # [sets, units]
    assert (p < 0.05).mean() <= 0.07, (p < 0.05).mean()
    family = np.mean([(bh_q(row) < 0.05).any() for row in p])  # BH over one data set's units
    assert family <= 0.07, family


def test_interval_covers_the_planted_step_at_the_smallest_tested_sizes():
    rng = np.random.default_rng(4)
    sets = [simulate(rng, "template", n_units=4, step=0.5, design=((3, 3), (2, 2))) for _ in range(N_SETS)]
    results = shipped_screen(sets)
    truth = np.array([0.5, 0.0, 0.0, 0.0])
    covered = np.stack([(r["ci_low"] <= truth) & (truth <= r["ci_high"]) for r in results])
    assert covered.mean() >= 0.93, covered.mean(0)


def test_a_head_that_vanishes_on_wrong_prompts_within_templates_is_found():
    rng = np.random.default_rng(5)
    sets = []
    for _ in range(40):
        effects, clean, template = simulate(rng, "template")
        effects[:, 0] = rng.normal(0, 0.3, len(clean)) - 1.0 * (clean > 0)  # carries the answer on right prompts only
        sets.append((effects, clean, template))
    results = shipped_screen(sets, n_perm=1000)
    q = np.stack([bh_q(r["p_value"]) for r in results])  # BH over one data set's units
    assert (q[:, 0] < 0.05).mean() >= 0.8, (q[:, 0] < 0.05).mean()  # 80% power at a step of 1 (noise sd 0.3) ...
    assert np.median([r["mde"][0] for r in results]) < 1.0  # ... which the stated detectable step agrees with
    assert (q[:, 1:] < 0.05).mean() <= 0.05
    errors = errors_of_rows(as_rows(sets[:3]), n_perm=1000, seed=0)  # the record finds it too
    found = errors.contrasts[errors.contrasts["unit"] == "L0H0"]
    assert (found["q_value"] < 0.05).all() and (found["effect"] > 0.5).all()


def past_tense_like(seed: int = 0) -> pd.DataFrame:
    """SmolLM2's past_tense: template 1 has 8 wrong and 1 right prompt, templates 0 and 2 are all right."""
    rng = np.random.default_rng(seed)
    design = ((9, 0), (1, 8), (14, 0))
    effects, clean, template = simulate(rng, "template", design=design)
    return as_rows([(effects, clean, template)]).assign(task="past_tense")


def test_past_tense_is_underpowered_with_its_counts_not_tested():
    errors = errors_of_rows(past_tense_like(), n_perm=100)
    (task,) = errors.tasks.to_dict("records")
    assert (task["status"], task["n_usable"], task["n_right"], task["n_wrong"]) == ("underpowered", 0, 0, 0)
    assert errors.contrasts.empty and errors.underpowered == ["head past_tense (right/wrong by template 0: 9/0, 1: 1/8, 2: 14/0)"]
    by_template = errors.groups.set_index("variant")
    assert list(by_template["n_wrong"]) == [0, 8, 0] and list(by_template["n_right"]) == [9, 1, 14]
    (finding,) = errors.findings()
    assert (finding.kind, finding.verdict, finding.task) == ("errs", "underpowered", "past_tense")
    assert "1: 1/8" in finding.text and finding.stats["min_wrong"] == MIN_WRONG and finding.effect is None


def planted_error_effects(n_prompts: int, n_wrong: int, planted: float, seed: int = 0,
                          heads: tuple[tuple[int, int], ...] = ((1, 0),)) -> pd.DataFrame:
    """Three heads on one task, margins spread within each group; ``heads`` carry the answer on right prompts only."""
    rng = np.random.default_rng(seed)
    clean = np.where(np.arange(n_prompts) < n_wrong, -rng.uniform(0.2, 2.0, n_prompts), rng.uniform(0.2, 3.0, n_prompts))
    rows = []
    for layer, head in [(0, 0), (1, 0), (1, 1)]:
        effect = 0.2 * clean + rng.normal(0, 0.3, n_prompts)
        if (layer, head) in heads:
            effect -= planted * (clean > 0)
        rows.append(pd.DataFrame({"task": "t", "intervention": "zero", "alpha": np.nan, "method": "exact",
                                  "layer": layer, "head": head, "prompt": np.arange(n_prompts), "effect": effect,
                                  "clean": clean}))
    return pd.concat(rows, ignore_index=True)


def test_head_rows_carry_the_template_or_say_it_is_unknown():
    table = planted_error_effects(24, 8, planted=1.5)
    rows, reason = head_rows(table, "zero")
    assert reason is None and not rows["templated"].any() and (rows["variant"] == 0).all()
    rows, _ = head_rows(table.assign(variant=table["prompt"] % 2), ["zero", "patch"])
    assert rows["templated"].all() and set(rows["variant"]) == {0, 1} and set(rows["unit"]) == {"L0H0", "L1H0", "L1H1"}
    rows, reason = head_rows(table.drop(columns="clean"), "zero")
    assert rows is None and "re-run cortexmap map" in reason
    prompts = pd.DataFrame({"task": "t", "sender": "L0H1", "receiver": "L2KV0", "kind": "k", "prompt": [0, 1],
                            "effect": [0.1, 0.2], "clean": [1.0, -1.0]})
    edges = edge_rows(prompts)
    assert list(edges["unit"]) == ["L0H1 -> L2KV0.k"] * 2 and not edges["templated"].any()


def test_q_values_run_over_every_task_and_unit_together():
    one = head_rows(planted_error_effects(24, 8, planted=1.5), "zero")[0]
    two = head_rows(planted_error_effects(30, 9, planted=0.0, seed=3), "zero")[0].assign(task="u")
    errors = errors_of_rows(pd.concat([one, two]), n_perm=1000, seed=0)
    c = errors.contrasts
    np.testing.assert_allclose(c["q_value"], bh_q(c["p_value"].to_numpy()))
    assert len(c) == 6 and "6 screen tests" in errors.notes[0]
    alone = errors_of_rows(one, n_perm=1000, seed=0).contrasts  # a task's p-values do not depend on the others
    np.testing.assert_allclose(c[c["task"] == "t"]["p_value"], alone["p_value"])


def flips_table(n_wrong: int = 8, cand_flips: int = 8, ctrl_flips: int = 0, head: str = "L3H1",
                task: str = "t", unaligned: int = 0) -> pd.DataFrame:
    """A flips table: one candidate, one control, two sources per wrong prompt, ``unaligned`` unmeasured prompts."""
    rows = []
    for w in range(n_wrong + unaligned):
        measured = w < n_wrong
        for role, head_id, k in (("candidate", head, cand_flips), ("control", "L3H4", ctrl_flips)):
            for s in ((100, 101) if measured else (-1,)):
                patched = (0.5 if w < k else -0.8) if measured else np.nan
                rows.append({"task": task, "variant": w % 2, "head_id": head_id, "layer": 3,
                             "head": int(head_id[-1]), "role": role, "control_of": head, "wrong": w, "source": s,
                             "aligned": 2 if measured else 0, "unaligned": 0, "clean": -1.0, "patched": patched})
    return pd.DataFrame(rows)


def test_flip_tests_state_rates_intervals_and_the_paired_test():
    table = pd.concat([flips_table(), flips_table(cand_flips=3, ctrl_flips=3, head="L3H2", unaligned=2),
                       flips_table(n_wrong=3, head="L3H0", task="s")])
    tests = flip_tests(table, n_boot=200).set_index(["task", "head"])
    strong = tests.loc[("t", "L3H1")]
    assert (strong["flips"], strong["n_wrong"], strong["n_pairs"], strong["control_flips"]) == (8, 8, 16, 0)
    assert strong["p_value"] == pytest.approx(binomtest(8, 8, 0.5, alternative="greater").pvalue)
    assert (strong["ci_low"], strong["ci_high"]) == pytest.approx(clopper_pearson(8, 8))
    assert strong["change"] == pytest.approx(1.5) and strong["verdict"] == "flips"
    same = tests.loc[("t", "L3H2")]
    assert same["verdict"] == "no flip" and same["p_value"] == 1.0 and same["n_unaligned"] == 2
    assert tests.loc[("s", "L3H0"), "verdict"] == "underpowered"
    np.testing.assert_allclose(tests["q_value"].dropna(), bh_q(tests["p_value"].dropna().to_numpy()))


def test_the_record_round_trips_and_states_every_errs_kind():
    one = head_rows(planted_error_effects(24, 8, planted=1.5, heads=((1, 0), (1, 1))), "zero")[0]
    plain = planted_error_effects(24, 8, planted=0.0, seed=5)
    edges = edge_rows(plain[plain["layer"] == 0].assign(sender="L0H1", receiver="L2KV0", kind="k"))
    errors = errors_of_rows(pd.concat([one, edges]), flips_table(), n_perm=1000, n_boot=200)
    findings = errors.findings()
    kinds = [f.kind for f in findings]
    assert kinds[0] == "errs" and {"errs", "errs_unit", "errs_flip"} <= set(kinds) <= set(KINDS)
    assert all(f.verdict in VERDICTS for f in findings)
    head_headline = next(f for f in findings if f.kind == "errs" and f.subject.startswith("head"))
    assert head_headline.verdict == "differs" and head_headline.effect > 0 and head_headline.ci_low > 0
    edge_headline = next(f for f in findings if f.kind == "errs" and f.subject.startswith("edge"))
    assert edge_headline.verdict == "no difference" and "templates unknown" in edge_headline.text
    assert edge_headline.stats["mde"] > 0 and "80% power" in edge_headline.text
    flip = next(f for f in findings if f.kind == "errs_flip")
    assert (flip.head, flip.verdict, flip.effect, flip.baseline) == ("L3H1", "flips", 1.0, 0.0)
    back = Errors.from_dict(errors.to_dict())
    assert [f.text for f in back.findings()] == [f.text for f in findings]


def test_flip_candidates_take_critical_heads_then_flagged_ones_capped():
    grid = pd.DataFrame({"layer": [0, 0, 1, 1]}, index=pd.Index(["L0H0", "L0H1", "L1H0", "L1H1"], name="head_id"))
    view = SimpleNamespace(tasks=("t", "u"), grid=grid, weight=np.array([[0.1, 0], [0.5, 0], [0.0, 0], [0.3, 0]]),
                           important=np.array([[True, False], [True, False], [False, False], [True, False]]))
    errors = errors_of_rows(head_rows(planted_error_effects(24, 8, planted=1.5), "zero")[0], n_perm=500)
    errors = Errors(groups=pd.concat([errors.groups, errors.groups.assign(task="u", n_wrong=0)]),
                    tasks=errors.tasks, contrasts=errors.contrasts)
    got = flip_candidates(view, errors, cap=3, critical=2)
    assert got == {"t": ["L0H1", "L1H1", "L1H0"]}  # two critical by weight, then the flagged head; u has no wrong prompt


def test_a_planted_head_is_flagged_and_a_thin_task_is_underpowered_not_tested():
    errors = errors_of_rows(head_rows(planted_error_effects(24, 8, planted=1.5), "zero")[0], seed=0)
    assert errors.contrasts.set_index("unit").loc["L1H0", "q_value"] < 0.05
    t = errors.tasks.iloc[0]
    assert (t["n_right"], t["n_wrong"], t["status"]) == (16, 8, "tested")
    thin = errors_of_rows(head_rows(planted_error_effects(20, 2, planted=1.0), "zero")[0])
    assert thin.underpowered == ["head t (right/wrong by template 0: 18/2)"] and thin.contrasts.empty


def test_error_analysis_reads_a_view_under_its_claim_interventions(banded):  # noqa: ANN001
    from cortexmap.analysis.view import build_view

    from .conftest import N_HEADS, N_LAYERS

    effects, prompt_effects = banded
    rng = np.random.default_rng(0)
    n = int(prompt_effects["prompt"].max()) + 1
    margin = np.where(np.arange(n) % 4 == 0, -rng.uniform(0.2, 2, n), rng.uniform(0.2, 3, n))  # a quarter wrong
    table = prompt_effects.assign(clean=margin[prompt_effects["prompt"]], variant=prompt_effects["prompt"] % 3)
    view = build_view(effects, (N_LAYERS, N_HEADS), tables={"prompt_effects": table}, n_boot=50)
    errors = error_analysis(view, n_perm=100)
    assert set(errors.tasks["task"]) == set(view.tasks) and (errors.tasks["status"] == "tested").all()
    assert set(errors.contrasts["intervention"]) == set(view.interventions)
    assert (errors.tasks["n_usable"] == 3).all() and errors.tasks["templated"].all()
    old = error_analysis(build_view(effects, (N_LAYERS, N_HEADS), tables={"prompt_effects": table.drop(columns="clean")}))
    assert old.tasks.empty and "re-run cortexmap map" in old.notes[0]


def test_findings_state_every_number_they_carry_as_strict_json():
    one = head_rows(planted_error_effects(24, 8, planted=1.5, heads=((1, 0), (1, 1))), "zero")[0]
    flips = pd.concat([flips_table(), flips_table(n_wrong=3, head="L3H0"), flips_table(task="solo")])
    errors = errors_of_rows(pd.concat([one, past_tense_like()]), flips, n_perm=500, n_boot=100)
    findings = errors.findings()
    assert [f.kind for f in findings].count("errs") == 3  # t, past_tense, and solo (flips only)
    for i, f in enumerate(findings):
        json.dumps(f.to_dict(), allow_nan=False)
        if f.parent:
            assert next(g for g in reversed(findings[:i]) if g.parent is None).kind == "errs"
        if f.head is not None:
            assert f.head in f.text
        if f.verdict in ("underpowered", "not evaluated"):
            assert f.verdict in f.text or f.kind == "errs_flip"
        if f.effect is None:
            assert (f.ci_low, f.ci_high, f.baseline) == (None, None, None)
            continue
        intervals = 1 + sum(k.endswith("_ci_low") for k in f.stats)
        assert f.text.count("95% CI") == intervals and ci(f.ci_low, f.ci_high) in f.text
        assert num(f.effect) in f.text and f.baseline is not None and f.baseline_label
    solo = next(f for f in findings if f.kind == "errs" and f.task == "solo")
    assert solo.verdict == "not evaluated"
    thin = next(f for f in findings if f.kind == "errs_flip" and f.head == "L3H0")
    assert thin.verdict == "underpowered" and thin.p_value is None
