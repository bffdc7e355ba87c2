"""End-to-end sweeps on a tiny saved model: schema, resume rules, attribution, screen, Ray = local.

The command-line side of a sweep (``cortexmap map``: kill-and-resume, bad arguments) is tested in
tests/cli/test_map.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cortexmap.errors import CortexmapError
from cortexmap.results import load_results
from cortexmap.sweep import SweepConfig, run_sweep
from tests.sweep.tiny_run import make_model_dir, make_task_file

EFFECT_COLUMNS = ["model", "task", "level", "intervention", "alpha", "method", "layer", "head", "head_id",
                  "n_prompts", "clean", "intervened", "effect", "effect_normalized", "ci_low", "ci_high"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("tiny")
    return make_model_dir(root), make_task_file(root), make_task_file(root / "..", corrupt=False)


def config(model: Path, task_file: Path, **kw) -> SweepConfig:  # noqa: ANN003
    base = dict(model=str(model), task_file=str(task_file),
                interventions=["zero", "mean", "resample", "patch", "amplify:0.5"], method="exact", probes=False)
    return SweepConfig(**{**base, **kw})


def test_sweep_writes_the_documented_schema(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    result = run_sweep(config(model, tasks), tmp_path / "run")
    effects = pd.read_parquet(tmp_path / "run" / "effects.parquet")
    assert list(effects.columns) == EFFECT_COLUMNS
    assert set(effects["intervention"]) == {"zero", "mean", "resample", "patch", "amplify"}
    assert len(effects) == 5 * 3 * 4 and (effects["ci_low"] <= effects["ci_high"]).all()
    amp = effects[effects.intervention == "amplify"]
    assert (amp["alpha"] == 0.5).all() and effects[effects.intervention == "zero"]["alpha"].isna().all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for key in ("schema_version", "versions", "model", "seed", "arguments", "timings", "tasks"):
        assert key in manifest
    assert manifest["model"]["hash"] and manifest["complete"]
    assert load_results(tmp_path / "run").effects.equals(result.effects)
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "run" / "effects.parquet"), split="train")
    assert ds.num_rows == len(effects)


def test_an_existing_run_needs_resume(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    root = tmp_path / "run"
    run_sweep(config(model, tasks, interventions=["zero"]), root)
    with pytest.raises(CortexmapError, match=re.escape(f"{root} already holds a run; pass --resume to continue it")):
        run_sweep(config(model, tasks, interventions=["zero"]), root)
    with pytest.raises(CortexmapError, match=re.escape(f"{root} holds a run with other arguments; resume it with")):
        run_sweep(config(model, tasks, interventions=["mean"]), root, resume=True)
    assert run_sweep(config(model, tasks, interventions=["zero"]), root, resume=True).manifest["complete"]


def test_attribution_with_verification_records_the_rank_correlation(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    result = run_sweep(config(model, tasks, interventions=["zero"], method="attribution", verify=6), tmp_path / "run")
    info = next(iter(result.manifest["attribution"].values()))
    assert set(result.effects["method"]) == {"attribution", "exact"}
    attribution = result.effects[result.effects["method"] == "attribution"]
    exact = result.effects[result.effects["method"] == "exact"]
    assert len(attribution) == 12 and len(exact) == 6 == info["verified_heads"]
    # the verified heads are the attribution's top 6 by |effect|
    top = attribution.reindex(attribution["effect"].abs().sort_values(ascending=False).index).head(6)
    assert set(zip(exact["layer"], exact["head"])) == set(zip(top["layer"], top["head"]))
    # the recorded correlation is Spearman's rho of the two methods' effects on those heads
    pairs = top.merge(exact, on=["layer", "head"], suffixes=("_attr", "_exact"))
    ranks = pairs[["effect_attr", "effect_exact"]].rank()
    rho = float(np.corrcoef(ranks["effect_attr"], ranks["effect_exact"])[0, 1])
    assert info["spearman"] == pytest.approx(rho, abs=1e-9)
    assert info["max_abs_error"] == pytest.approx((pairs["effect_attr"] - pairs["effect_exact"]).abs().max(), abs=1e-12)


@pytest.mark.ray
def test_ray_backend_equals_local(tiny, tmp_path):  # noqa: ANN001
    pytest.importorskip("ray")
    model, tasks, _ = tiny
    local = run_sweep(config(model, tasks, interventions=["zero", "patch"]), tmp_path / "local")
    remote = run_sweep(config(model, tasks, interventions=["zero", "patch"], backend="ray", n_workers=2),
                       tmp_path / "ray")
    key = ["intervention", "layer", "head"]
    a = local.effects.sort_values(key).reset_index(drop=True)
    b = remote.effects.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=1e-5)  # float32 passes of other sizes
    stats = remote.manifest["ray"]
    assert stats["workers"] == 2 and 0 < stats["busy_fraction"] <= 1.05
    # Screen units run whole on the workers, several in flight: the same numbers as in this process.
    screen = dict(interventions=["zero", "mean"], method="screen", screen_prompts=2, max_verify=4, audit=2)
    local = run_sweep(config(model, tasks, **screen), tmp_path / "local-screen")
    remote = run_sweep(config(model, tasks, backend="ray", n_workers=2, **screen), tmp_path / "ray-screen")
    key = ["intervention", "method", "layer", "head"]
    pd.testing.assert_frame_equal(local.effects.sort_values(key).reset_index(drop=True),
                                  remote.effects.sort_values(key).reset_index(drop=True), check_exact=False, atol=1e-6, rtol=0)
    assert remote.manifest["audit"] == local.manifest["audit"]


def test_exact_units_are_cut_into_blocks_of_equal_cost():
    from cortexmap.sweep.ray_backend import balanced_blocks

    heads = [(l, h) for l in range(30) for h in range(9)]
    blocks = balanced_blocks(heads, 30, 4)
    assert sorted(h for b in blocks for h in b) == heads and len(blocks) == 4
    costs = [sum(30 - l for l, _ in b) for b in blocks]
    assert max(costs) - min(costs) <= 2 * 30  # within two heads' cost of each other
    assert balanced_blocks(heads[:3], 30, 8) == [[h] for h in heads[:3]]


def test_screen_verifies_in_screen_order_audits_the_rest_and_matches_exact(tiny, tmp_path):  # noqa: ANN001
    """Screen rows cover every head on a subsample, the refined heads on more; exact rows equal an all-exact run's.

    A task's interventions are verified jointly: the same heads, the refined ones first in the
    order of their best rank under either intervention, each measured exactly under both.
    """
    model, tasks, _ = tiny
    run = run_sweep(config(model, tasks, interventions=["zero", "mean"], method="screen", screen_prompts=2,
                           refine_heads=5, refine_prompts=3, max_verify=4, audit=3, measure_all_if_none=False),
                    tmp_path / "screen")
    full = run_sweep(config(model, tasks, interventions=["zero", "mean"]), tmp_path / "exact")
    screen = run.effects[(run.effects["method"] == "screen") & (run.effects["intervention"] == "zero")]
    exact = run.effects[run.effects["method"] == "exact"]
    assert len(screen) == 12 and sorted(screen["n_prompts"]) == [2] * 7 + [5] * 5
    assert len(exact) == 2 * (4 + 3) and (exact["n_prompts"] == 12).all()
    # Both reuse the screen's prompts (mean ablation's replacement is the mean over every prompt, in the screen too).
    # Every per-prompt number, screen or exact, is the all-exact run's number for that head and prompt.
    keys = ["intervention", "layer", "head", "prompt"]
    mine = run.prompt_effects().merge(full.prompt_effects()[keys + ["effect"]], on=keys, suffixes=("", "_full"))
    assert len(mine) == len(run.prompt_effects()) and np.allclose(mine["effect"], mine["effect_full"], atol=1e-5)
    merged = exact.merge(full.effects, on=["intervention", "layer", "head"], suffixes=("", "_full"))
    assert len(merged) == len(exact) and np.allclose(merged["effect"], merged["effect_full"], atol=1e-6)
    both = run.effects[(run.effects["method"] == "screen") & (run.effects["n_prompts"] == 5)]
    size = both.pivot_table(index=["layer", "head"], columns="intervention", values="effect_normalized").abs()
    ranks = size.rank(ascending=False, method="first")
    interleaved = sorted(size.index, key=lambda h: (ranks.loc[h].min(), ranks.loc[h].max()))
    by_iv = exact.groupby("intervention").apply(lambda g: set(zip(g["layer"], g["head"])), include_groups=False)
    assert by_iv["zero"] == by_iv["mean"]  # jointly verified: the same heads under each
    assert set(interleaved[:4]) <= by_iv["zero"]  # the refined heads' interleaved top 4 were verified
    record = next(iter(run.manifest["verification"].values()))
    assert record["verified"] == 4 and record["audit_audited"] == 3 and record["stopped"] == "budget"
    assert run.manifest["method"] == "screen" and run.manifest["audit"]["audited"] == 6
    assert run.manifest["audit"]["ci_low"] <= run.manifest["audit"]["rate"] <= run.manifest["audit"]["ci_high"]
    # With the default rule, a unit whose verified heads are all unimportant gets every head measured.
    null = run_sweep(config(model, tasks, interventions=["zero"], method="screen", screen_prompts=2, max_verify=4,
                            audit=3), tmp_path / "null")
    record = next(iter(null.manifest["verification"].values()))
    prompts = full.prompt_effects()
    zero = prompts[prompts["intervention"] == "zero"].groupby(["layer", "head"])["effect"]
    z = zero.mean() / (zero.std(ddof=1) / np.sqrt(zero.count()))
    normalized = full.effects[full.effects["intervention"] == "zero"].set_index(["layer", "head"])["effect_normalized"]
    important = (normalized.abs() >= 0.05) & (z.reindex(normalized.index).abs() >= 3)
    assert not important.any()  # this tiny random model has no important head, so ...
    assert record["stopped"] == "none-important" and record["verified"] == 12 and record["unverified"] == 0
    assert (null.effects["method"] == "exact").sum() == 12 and record["audit_audited"] == 0


def test_a_passed_handle_is_the_model_recorded(tiny, tmp_path):  # noqa: ANN001
    from cortexmap.models import load_model

    model, tasks, _ = tiny
    handle = load_model(str(model))
    handle.spec = "my-own-handle"
    result = run_sweep(config("not-this-model", tasks, interventions=["zero"]), tmp_path / "run", handle=handle)
    assert result.manifest["model"]["spec"] == "my-own-handle"
    assert set(result.effects["model"]) == {"my-own-handle"}


def test_prompt_effects_carry_each_prompts_clean_metric(tiny, tmp_path):  # noqa: ANN001
    import cortexmap
    from cortexmap.tasks import load_task_file
    from cortexmap.tasks.evaluate import evaluate_task

    model, tasks, _ = tiny
    result = run_sweep(config(model, tasks, interventions=["zero"]), tmp_path / "run")
    handle = cortexmap.load_model(str(model))
    prompts = result.prompt_effects()
    for name, rows in prompts.groupby("task"):
        reference = evaluate_task(handle, load_task_file(tasks, handle.tokenizer, name=name)).set_index("pair")
        clean = rows.groupby("prompt")["clean"].agg(["min", "max"])
        np.testing.assert_allclose(clean["min"], clean["max"])  # one clean value per prompt, whatever the head
        np.testing.assert_allclose(clean["min"], reference.loc[clean.index, "score"], atol=1e-4)
        means = result.effects[result.effects["task"] == name]["clean"]
        np.testing.assert_allclose(means, reference["score"].mean(), atol=1e-4)


@pytest.mark.parametrize("method", ["exact", "screen"])
def test_a_task_file_with_multi_token_answers_and_corrupt_prompts_of_other_lengths_runs_every_line(tiny, tmp_path,
                                                                                                method):
    """Every line is mapped, and the exact rows equal one unpadded sequence at a time with the head edited in the weights."""
    import cortexmap
    from cortexmap.tasks import load_task_file
    from cortexmap.tasks.core import answer_ids, prompt_ids
    from cortexmap.tasks.encoding import PairIds
    from tests.sweep.test_answers import reference, reference_mean
    from tests.sweep.tiny_run import make_multi_token_file

    model, _, _ = tiny
    path = make_multi_token_file(tmp_path)
    result = run_sweep(config(model, path, interventions=["patch", "mean"], method=method), tmp_path / "run")
    handle = cortexmap.load_model(str(model))
    task = load_task_file(path, handle.tokenizer)
    assert result.manifest["tasks"]["ioi_multi"]["metric"] == "logprob_diff" and len(task.pairs) == 12
    exact = result.prompt_effects()
    exact = exact[exact["method"] == "exact"]
    items = [PairIds(i, prompt_ids(handle.tokenizer, p.prompt), [answer_ids(handle.tokenizer, p.target)],
                     [answer_ids(handle.tokenizer, p.foil)], prompt_ids(handle.tokenizer, p.corrupt))
             for i, p in enumerate(task.pairs)]
    assert {len(it.prompt) - len(it.corrupt) for it in items} == {-1, 0, 1}
    checked = 0
    for (kind, layer, head), rows in exact.groupby(["intervention", "layer", "head"]):
        assert sorted(rows["prompt"]) == list(range(12)) or method == "screen"
        if checked >= 6:
            continue
        mean = reference_mean(handle, items, layer, head) if kind == "mean" else None
        for row in rows.head(3).itertuples():
            item = items[row.prompt]
            want = reference(handle, item, "logprob_diff", kind, layer, head, mean=mean, source=item.corrupt)
            clean = reference(handle, item, "logprob_diff", "none", 0, 0)
            assert row.effect == pytest.approx(want - clean, abs=1e-4)
        checked += 1
    assert checked == 6
