"""Seeded synthetic result tables with planted structure, for the analysis tests.

Per-prompt effects are ``true effect + Normal(0, noise_sd)`` in units of ``|clean|``; the effects
table reports their mean and a normal 95% interval, as the sweep reports a bootstrap interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TASKS: dict[str, str] = {
    "article_agreement": "lexical",
    "plural_morphology": "lexical",
    "past_tense": "lexical",
    "subject_verb_agreement": "syntactic",
    "sva_across_pp": "syntactic",
    "antonyms": "semantic",
    "hypernyms": "semantic",
    "pronoun_gender": "pragmatic",
    "ioi": "pragmatic",
    "greater_than": "reasoning",
    "arithmetic": "reasoning",
    "capitals": "reasoning",
}
Head = tuple[int, int]


def make_effects(
    n_layers: int,
    n_heads: int,
    planted: dict[Head, dict[str, float]],
    *,
    tasks: dict[str, str] = TASKS,
    noise_sd: float = 0.3,
    n_prompts: int = 40,
    clean: float = 2.0,
    seed: int = 0,
    model: str = "synthetic",
    intervention: str = "zero",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Effects and per-prompt effects with ``planted[(layer, head)][task]`` true normalized effects."""
    rng = np.random.default_rng(seed)
    n_total = n_layers * n_heads
    rows, prompt_rows = [], []
    for task, level in tasks.items():
        truth = np.zeros(n_total)
        for (layer, head), effs in planted.items():
            truth[layer * n_heads + head] = effs.get(task, 0.0)
        per_prompt = (truth[None, :] + rng.normal(0.0, noise_sd, (n_prompts, n_total))) * clean
        mean = per_prompt.mean(axis=0)
        half = 1.959964 * per_prompt.std(axis=0, ddof=1) / np.sqrt(n_prompts)
        for idx in range(n_total):
            layer, head = divmod(idx, n_heads)
            rows.append({
                "model": model, "task": task, "level": level, "intervention": intervention, "alpha": np.nan,
                "method": "exact", "layer": layer, "head": head, "head_id": f"L{layer}H{head}",
                "n_prompts": n_prompts, "clean": clean, "intervened": clean + mean[idx], "effect": mean[idx],
                "effect_normalized": mean[idx] / clean, "ci_low": mean[idx] - half[idx], "ci_high": mean[idx] + half[idx],
            })
        layer_col = np.repeat(np.arange(n_total) // n_heads, 1)
        prompt_rows.append(pd.DataFrame({
            "task": task, "intervention": intervention,
            "layer": np.tile(layer_col, n_prompts), "head": np.tile(np.arange(n_total) % n_heads, n_prompts),
            "prompt": np.repeat(np.arange(n_prompts), n_total), "effect": per_prompt.ravel(),
        }))
    return pd.DataFrame(rows), pd.concat(prompt_rows, ignore_index=True)


def plant_bands(n_layers: int, n_heads: int, *, per_task: int = 3, structured: bool = True, seed: int = 0,
                tasks: dict[str, str] = TASKS) -> dict[Head, dict[str, float]]:
    """Important heads per task: lexical in the first third, reasoning in the last, the rest between.

    With ``structured=False`` the heads are drawn from all layers, whatever the level.
    """
    rng = np.random.default_rng(seed)
    third = n_layers // 3
    band = {"lexical": range(0, third), "reasoning": range(n_layers - third, n_layers)}
    middle = range(third, n_layers - third)
    planted: dict[Head, dict[str, float]] = {}
    for task, level in tasks.items():
        layers = band.get(level, middle) if structured else range(n_layers)
        for _ in range(per_task):
            head = (int(rng.choice(list(layers))), int(rng.integers(n_heads)))
            planted.setdefault(head, {})[task] = -float(rng.uniform(0.2, 0.6))
    return planted


def make_patterns(n_layers: int, n_heads: int, planted: dict[str, list[Head]], *, seed: int = 0,
                  model: str = "synthetic") -> pd.DataFrame:
    """Probe scores: background Beta(2, 18) scores (mean 0.1), planted heads near 0.9."""
    rng = np.random.default_rng(seed)
    probes = ["previous_token", "induction", "duplicate_token", "sink", "local_window", "successor"]
    rows = []
    for probe in probes:
        for layer in range(n_layers):
            for head in range(n_heads):
                score = 0.9 + rng.normal(0, 0.02) if (layer, head) in planted.get(probe, []) else rng.beta(2, 18)
                score = float(np.clip(score, 0, 1))
                rows.append({"model": model, "probe": probe, "layer": layer, "head": head, "head_id": f"L{layer}H{head}",
                             "score": score, "ci_low": max(0.0, score - 0.03), "ci_high": min(1.0, score + 0.03),
                             "n_prompts": 50})
    return pd.DataFrame(rows)


def make_influence(n_layers: int, n_heads: int, *, regulator: Head | None = (1, 2),
                   strength: dict[str, float] | None = None, n_prompts: int = 20, seed: int = 0) -> pd.DataFrame:
    """Influence rows for every (source, later target) pair; ``regulator`` moves all later heads.

    Background out_change ~ |Normal(0.02, 0.01)| per prompt; the regulator adds
    ``strength[condition]`` (+ Normal(0, 0.1) per prompt) to every later target.
    """
    strength = {"reasoning:easy": 0.2, "reasoning:multi_step": 0.5} if strength is None else strength
    rng = np.random.default_rng(seed)
    pairs = [(sl, sh, tl, th) for sl in range(n_layers) for sh in range(n_heads)
             for tl in range(sl + 1, n_layers) for th in range(n_heads)]
    pairs_arr = np.array(pairs)
    frames = []
    for condition, boost in strength.items():
        for prompt in range(n_prompts):
            out = np.abs(rng.normal(0.02, 0.01, len(pairs)))
            if regulator is not None:
                hit = (pairs_arr[:, 0] == regulator[0]) & (pairs_arr[:, 1] == regulator[1])
                out[hit] += boost + rng.normal(0, 0.1, hit.sum())
            frames.append(pd.DataFrame({
                "condition": condition, "prompt": prompt, "source_layer": pairs_arr[:, 0], "source_head": pairs_arr[:, 1],
                "target_layer": pairs_arr[:, 2], "target_head": pairs_arr[:, 3], "out_change": out,
                "attn_kl": out * rng.uniform(0.5, 1.5, len(pairs)),
            }))
    return pd.concat(frames, ignore_index=True)
