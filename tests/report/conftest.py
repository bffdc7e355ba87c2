"""Run directories for the report tests: the committed SmolLM2 run, and seeded synthetic runs.

``small_run`` is a copy of ``tests/data/run_small`` (a real ``cortexmap map --quick`` run, zero
ablation only) when it exists, else a synthetic zero-ablation run of the same layout: the report
of a run whose every claim rests on zero ablation. ``rich_runs`` are synthetic: run A is mapped
with patch, mean and zero (so the claims rest on patch and mean, and zero is shown beside them) and
holds everything optional a report can show: influence measurements (regulators), a pruning curve,
a traced circuit, role evidence (a planted name mover on ioi and agreement heads on sva_across_pp),
joint-intervention pairs (one planted redundant pair) and flip tests; run B is a second model
mapped with patch and mean, to compare with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cortexmap.heads import HeadId
from tests.analysis.synthetic import (
    TASKS,
    make_effects,
    make_influence,
    make_patterns,
    plant_bands,
)

RUN_SMALL = Path(__file__).resolve().parent.parent / "data" / "run_small"


def _manifest(model: str, n_layers: int, n_heads: int, tasks: dict[str, str], interventions: list[str]) -> dict:
    return {
        "schema_version": 1, "cortexmap_version": "0.1.0",
        "versions": {"cortexmap": "0.1.0", "torch": "2.3.0", "transformers": "4.56.0", "python": "3.11.7"},
        "platform": "Linux", "dtype": "float32", "device": "cpu", "seed": 0,
        "model": {"spec": model, "hash": "0" * 64, "model_type": "llama", "n_layers": n_layers, "n_heads": n_heads,
                  "n_kv_heads": n_heads, "d_head": 16, "n_params": 1_000_000, "dtype": "float32", "device": "cpu"},
        "arguments": {"model": model, "tasks": ",".join(tasks), "interventions": ",".join(interventions),
                      "method": "exact", "n_prompts": 40, "seed": 0},
        "interventions": interventions,
        "tasks": {t: {"level": lv, "n_prompts": 40, "dropped": {}, "version": "1", "has_corrupt": True} for t, lv in tasks.items()},
        "units": {f"{t}__{i}__exact": "done" for t in tasks for i in interventions},
        "timings": {"probes_s": 1.5, **{f"{t}__{i}__exact": 2.0 for t in tasks for i in interventions}, "total_s": 30.0},
        "complete": True,
    }


def _prune_curve() -> pd.DataFrame:
    rows = [{"method": "none", "replace": "zero", "healed": False, "fraction": 0.0, "heads_pruned": 0}]
    for method in ("atlas", "random"):
        for replace in ("zero", "mean"):
            for healed in (False, True):
                for fraction in (0.1, 0.2, 0.4):
                    loss_up = fraction * (20 if method == "random" else 8) * (0.5 if healed else 1.0) * (0.8 if replace == "mean" else 1.0)
                    rows.append({"method": method, "replace": replace, "healed": healed, "fraction": fraction,
                                 "heads_pruned": int(fraction * 24), "loss_delta_pct": loss_up})
    curve = pd.DataFrame(rows)
    curve["attn_params_removed"] = curve["heads_pruned"] * 4096
    curve["total_params_removed"] = curve["heads_pruned"] * 4096
    curve["heldout_loss"] = 3.0 * (1 + curve["loss_delta_pct"].fillna(0) / 100)
    curve["heldout_ppl"] = np.exp(curve["heldout_loss"])
    curve["loss_delta_pct"] = curve["loss_delta_pct"].fillna(0.0)
    return curve


def _circuit(n_layers: int, n_heads: int, model: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A schema-valid traced circuit of task ioi on the synthetic model (see docs/schema.md)."""
    from cortexmap.circuits.graph import Graph

    rng = np.random.default_rng(seed)
    edges = Graph(n_layers, n_heads, n_heads).edges
    picked = sorted(rng.choice(len(edges), 40, replace=False))
    effect = rng.normal(0, 0.3, len(picked))
    exact = np.arange(len(picked)) < 15
    table = pd.DataFrame({
        "task": "ioi", "sender": [edges[i].sender for i in picked], "receiver": [edges[i].receiver for i in picked],
        "kind": [edges[i].kind for i in picked], "score": effect * 0.9, "effect": effect,
        "ci_low": np.where(exact, effect - 0.05, np.nan), "ci_high": np.where(exact, effect + 0.05, np.nan),
        "method": np.where(exact, "exact", "estimated"), "rank": np.arange(len(picked)),
        "in_circuit": np.arange(len(picked)) < 25, "model": model, "ablation": "corrupt", "screen": "eap-ig"})
    fractions = [0.001, 0.01, 0.1, 0.5, 1.0]
    curves = []
    for method, draws in (("verified", 1), ("eap-ig", 1), ("eap", 1), ("random", 3)):
        for draw in range(draws):
            for f in fractions:
                faith = min(1.0, f ** (0.2 if method != "random" else 0.8) + rng.normal(0, 0.02))
                curves += [{"task": "ioi", "method": method, "draw": draw, "fraction": f, "n_edges": int(f * len(edges)),
                            "prompt": p, "metric": faith * 2.0, "faithfulness": faith, "ablation": "corrupt",
                            "model": model} for p in range(4)]
    summary = [{"method": m, "draw": 0, "cpr": 0.8, "cpr_low": 0.7, "cpr_high": 0.9, "cmd": 0.2, "cmd_low": 0.1,
                "cmd_high": 0.3, "smallest": 0.01, "smallest_n_edges": 11, "smallest_n_edges_low": 11,
                "smallest_n_edges_high": 110} for m in ("verified", "eap-ig", "eap")]
    return table, pd.DataFrame(curves), {"ioi": {"summary": summary}}


# Planted role evidence: per task, its statistics and the value every planted head of the task shows.
EVIDENCE = {"ioi": {"attn_target_minus_foil": 0.45, "attn_target": 0.6, "ov_target": 0.35, "dla": 0.3},
            "sva_across_pp": {"attn_cue": 0.55}}
EVIDENCE_HALF = 0.03  # half-width of a planted head's 95% interval


def planted_heads(tasks: dict[str, str], n_layers: int, n_heads: int, seed: int) -> dict[str, list[str]]:
    """Per task, the heads :func:`write_synthetic_run` plants an effect on (``"L2H3"``)."""
    planted = plant_bands(n_layers, n_heads, per_task=2, seed=seed, tasks=tasks)
    return {t: sorted(f"L{a}H{b}" for (a, b), effs in planted.items() if t in effs) for t in tasks}


def _evidence(tasks: dict[str, str], n_layers: int, n_heads: int, seed: int) -> pd.DataFrame:
    """Evidence rows (sweep/evidence.py's schema): noise around 0 for every head, the planted values for planted heads."""
    rng = np.random.default_rng(seed + 5)
    heads = planted_heads(tasks, n_layers, n_heads, seed)
    rows = []
    for task, stats in EVIDENCE.items():
        if task not in tasks:
            continue
        for stat, value in stats.items():
            for layer in range(n_layers):
                for head in range(n_heads):
                    hit = f"L{layer}H{head}" in heads[task]
                    v = value if hit else float(rng.normal(0.0, 0.02))
                    half = EVIDENCE_HALF if hit else 0.05
                    rows.append({"source": "task", "name": task, "layer": layer, "head": head, "stat": stat,
                                 "value": v, "ci_low": v - half, "ci_high": v + half, "n": 40})
    return pd.DataFrame(rows)


def _pairs(heads: dict[str, list[str]], seed: int, n_prompts: int = 24) -> pd.DataFrame:
    """Per-prompt joint ablations of each task's two planted heads: redundant on ioi, additive elsewhere."""
    rng = np.random.default_rng(seed + 6)
    rows = []
    for task in ("ioi", "sva_across_pp"):
        a, b = heads[task][:2]
        for prompt in range(n_prompts):
            ea, eb = -0.4 + rng.normal(0, 0.05), -0.3 + rng.normal(0, 0.05)
            extra = -0.5 if task == "ioi" else 0.0  # super-additive: joint harm beyond the sum
            rows.append({"task": task, "head_a": a, "head_b": b, "prompt": prompt, "effect_a": ea, "effect_b": eb,
                         "effect_ab": ea + eb + extra + rng.normal(0, 0.05), "intervention": "patch"})
    return pd.DataFrame(rows)


def _flips(head: str, control: str, n_wrong: int = 8) -> pd.DataFrame:
    """Flip rows (sweep/flips.py's schema) on ioi: ``head`` patched from right prompts flips 7 of 8, its control none."""
    rows = []
    for wrong in range(n_wrong):
        for role, who, patched in (("candidate", head, 0.4 if wrong else -0.1), ("control", control, -0.4)):
            at = HeadId.parse(who)
            for source in (100 + wrong, 200 + wrong):
                rows.append({"task": "ioi", "variant": wrong % 2, "head_id": who, "layer": at.layer, "head": at.head,
                             "role": role, "control_of": head, "wrong": wrong, "source": source, "aligned": True,
                             "unaligned": False, "clean": -0.5, "patched": patched})
    return pd.DataFrame(rows)


def write_synthetic_run(root: Path, *, model: str = "synthetic-a", n_layers: int = 6, n_heads: int = 4, seed: int = 0,
                        interventions: tuple[str, ...] = ("zero",), influence: bool = False, prune: bool = False,
                        n_tasks: int = 6, circuit: bool = False, evidence: bool = False) -> Path:
    """Write a schema-valid, finished run directory with planted layer bands; return ``root``.

    ``evidence`` adds role evidence, joint-intervention pairs and flip tests on the planted heads.
    """
    tasks = dict(list(TASKS.items())[:: max(1, len(TASKS) // n_tasks)][:n_tasks])
    planted = plant_bands(n_layers, n_heads, per_task=2, seed=seed, tasks=tasks)
    effects, prompts = [], []
    for i, intervention in enumerate(interventions):
        eff, per_prompt = make_effects(n_layers, n_heads, planted, tasks=tasks, n_prompts=40, seed=seed + 10 + i,
                                       model=model, intervention=intervention)
        effects.append(eff)
        prompts.append(per_prompt.assign(alpha=np.nan, method="exact"))
    root.mkdir(parents=True, exist_ok=True)
    pd.concat(effects, ignore_index=True).to_parquet(root / "effects.parquet", index=False)
    pd.concat(prompts, ignore_index=True).to_parquet(root / "prompt_effects.parquet", index=False)
    probes = {"previous_token": [(0, 1)], "induction": [(n_layers // 2, 2)], "sink": [(1, 0)]}
    make_patterns(n_layers, n_heads, probes, seed=seed, model=model).to_parquet(root / "patterns.parquet", index=False)
    if influence:
        make_influence(n_layers, n_heads, regulator=(1, 2), n_prompts=8, seed=seed).to_parquet(root / "influence.parquet", index=False)
    if prune:
        (root / "prune").mkdir(exist_ok=True)
        _prune_curve().to_parquet(root / "prune" / "curve.parquet", index=False)
    if evidence:
        heads = planted_heads(tasks, n_layers, n_heads, seed)
        _evidence(tasks, n_layers, n_heads, seed).to_parquet(root / "evidence.parquet", index=False)
        _pairs(heads, seed).to_parquet(root / "pairs.parquet", index=False)
        first = HeadId.parse(heads["ioi"][0])
        control = next(str(HeadId(first.layer, h)) for h in range(n_heads) if str(HeadId(first.layer, h)) not in heads["ioi"])
        _flips(heads["ioi"][0], control).to_parquet(root / "flips.parquet", index=False)
    manifest = _manifest(model, n_layers, n_heads, tasks, list(interventions))
    if circuit:
        table, curves, manifest["circuits"] = _circuit(n_layers, n_heads, model, seed)
        table.to_parquet(root / "circuit.parquet", index=False)
        curves.to_parquet(root / "circuit_curves.parquet", index=False)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run without analysis: the committed SmolLM2 run, else a synthetic one."""
    root = tmp_path_factory.mktemp("small") / "run"
    if (RUN_SMALL / "manifest.json").exists():
        shutil.copytree(RUN_SMALL, root)
        for name in ("atlas.parquet", "atlas.json", "report.html"):
            (root / name).unlink(missing_ok=True)
        return root
    return write_synthetic_run(root, n_layers=8, n_heads=4)


@pytest.fixture(scope="session")
def small_report(small_run: Path) -> Path:
    """The report of ``small_run``, rendered once (it builds the atlas)."""
    from cortexmap.report import render_report

    assert not (small_run / "atlas.json").exists()
    return render_report(small_run)


@pytest.fixture(scope="session")
def rich_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Run A (patch, mean and zero; every optional measurement) and run B, a second model (module docstring)."""
    base = tmp_path_factory.mktemp("rich")
    run_a = write_synthetic_run(base / "a", interventions=("patch", "mean", "zero"), influence=True, prune=True,
                                circuit=True, evidence=True)
    run_b = write_synthetic_run(base / "b", model="synthetic-b", n_layers=8, n_heads=3, seed=1,
                                interventions=("patch", "mean"))
    return run_a, run_b


@pytest.fixture(scope="session")
def rich_report(rich_runs: tuple[Path, Path]) -> Path:
    """The report of the rich run compared with the second model."""
    from cortexmap.report import render_report

    run_a, run_b = rich_runs
    return render_report(run_a, compare=[run_b])
