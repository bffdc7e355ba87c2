"""How a map compares with the all-exact truth: heads measured exactly, roles, bands, groups and depth.

Usage (each run analysed first with ``cortexmap analyze``)::

    python bench/default_vs_exact.py runs/exact32 runs/default runs/attribution-verify5

The first run is the truth (``--method exact``). A run made with ``--method attribution`` or
``attribution+verify:K`` is compared through the atlas of its attribution rows (what such runs
published before the atlas read exact rows only), rebuilt here. For every other run and task: how many of the
truth's top-10 heads (largest ``|effect|``, either sign, zero ablation) the run measured exactly;
then, from the two ``atlas.json`` files, the layer-band verdict and rho, the level depths, the
functional groups' agreement (adjusted Rand index over all heads) and the named roles (heads per
role, and the share of the truth's (role, head) pairs the run also names).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import adjusted_rand_score

from cortexmap.analysis import AtlasOptions
from cortexmap.results import load_results


def exact_heads(effects: pd.DataFrame) -> dict[str, set[tuple[int, int]]]:
    rows = effects[(effects["intervention"] == "zero") & (effects["method"] == "exact")]
    return {t: set(zip(g["layer"], g["head"])) for t, g in rows.groupby("task")}


def top10(effects: pd.DataFrame) -> dict[str, set[tuple[int, int]]]:
    rows = effects[(effects["intervention"] == "zero") & (effects["method"] == "exact")]
    rows = rows.reindex(rows["effect"].abs().sort_values(ascending=False).index)
    return {t: set(zip(g.head(10)["layer"], g.head(10)["head"])) for t, g in rows.groupby("task", sort=False)}


def role_pairs(findings: dict) -> set[tuple[str, str]]:
    return {(r["role"], r["head_id"]) for r in findings["roles"]["table"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truth")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--tuned", default="ioi,capitals,subject_verb_agreement,past_tense,antonyms")
    args = parser.parse_args()
    truth = load_results(args.truth)
    truth_top = top10(truth.effects)
    truth_findings = json.loads((Path(args.truth) / "atlas.json").read_text())
    truth_atlas = pd.read_parquet(Path(args.truth) / "atlas.parquet").set_index("head_id")
    tuned = set(args.tuned.split(","))
    per_task = pd.DataFrame(index=sorted(truth_top))
    summary = []
    for run_dir in args.runs:
        run = load_results(run_dir)
        name = f"{Path(run_dir).name} ({run.manifest.get('method', run.manifest['arguments']['method'])})"
        measured = exact_heads(run.effects)
        per_task[name] = [len(truth_top[t] & measured.get(t, set())) for t in per_task.index]
        if str(run.manifest["arguments"]["method"]).startswith("attribution"):
            # The atlas such a run published before the atlas read exact rows only: from the estimate.
            from cortexmap.analysis import build_atlas

            atlas, findings = build_atlas(run, options=AtlasOptions(method="attribution"))
            atlas = atlas.set_index("head_id").reindex(truth_atlas.index)
        else:
            findings = json.loads((Path(run_dir) / "atlas.json").read_text())
            atlas = pd.read_parquet(Path(run_dir) / "atlas.parquet").set_index("head_id").reindex(truth_atlas.index)
        hyp, thyp = findings["bands"]["hypothesis"], truth_findings["bands"]["hypothesis"]
        roles, troles = role_pairs(findings), role_pairs(truth_findings)
        held = per_task.loc[[t for t in per_task.index if t not in tuned], name]
        summary.append({
            "run": name, "time_s": run.manifest["timings"]["total_s"],
            "top10 median": per_task[name].median(), "top10 min": per_task[name].min(),
            "held-out median": held.median(), "held-out min": held.min(),
            "band verdict": f"{hyp['verdict']} (rho {hyp['rho']:.2f}) vs {thyp['verdict']} (rho {thyp['rho']:.2f})",
            "groups ARI": adjusted_rand_score(truth_atlas["group"], atlas["group"]),
            "groups": f"{findings['groups']['k']} vs {truth_findings['groups']['k']}",
            "roles shared": f"{len(roles & troles)} of {len(troles)} (run names {len(roles)})",
            "depths": "; ".join(f"{a['level']} {a['mean_depth']:.2f} vs {b['mean_depth']:.2f}"
                                for a, b in zip(findings["bands"]["level_depths"], truth_findings["bands"]["level_depths"])
                                if a["mean_depth"] is not None and b["mean_depth"] is not None),
            "important cells": f"{sum(r['n_important'] for r in findings['bands']['level_depths'])} vs "
                               f"{sum(r['n_important'] for r in truth_findings['bands']['level_depths'])}",
        })
    per_task["held out"] = [t not in tuned for t in per_task.index]
    print("Truth top-10 heads measured exactly, per task:")
    print(per_task.to_string())
    print()
    for row in summary:
        for key, value in row.items():
            print(f"{key}: {value}")
        print()


if __name__ == "__main__":
    main()
