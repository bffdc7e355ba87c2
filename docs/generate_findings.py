"""Write docs/findings.md from the runs: every number below comes from a run's files, none is typed.

Usage (the commands that make the runs are printed into the document)::

    python docs/generate_findings.py --smollm2 runs/smollm2-135m --exact runs/smollm2-exact \\
        --zero runs/smollm2-zero --gemma runs/gemma3-270m --gemma-exact runs/gemma3-exact \\
        --time-log runs/smollm2-135m.time --gemma-time-log runs/gemma3-270m.time --out docs/findings.md

Each run must have been analysed (``cortexmap analyze``) by the cortexmap that runs this script.
``--time-log`` is the output of ``/usr/bin/time -v cortexmap map ...`` (its wall clock is quoted).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cortexmap.analysis.findings import Finding
from cortexmap.analysis.run import compare_runs, load_atlas
from cortexmap.atomic import write_text
from cortexmap.results import load_results

COUNTERFACTUAL = ("patch", "mean")
# Head-level claims docs/findings.md published before the map measured counterfactual interventions
# (zero ablation only). They are re-measured here, never restated.
EARLIER = [("L0H8", "subject_verb_agreement", "subject-verb agreement role (zero ablation)"),
           ("L1H5", "ioi", "IOI name mover role (zero ablation)"),
           ("L23H3", "ioi", "IOI name mover role (zero ablation)"),
           ("L16H0", "arithmetic", "arithmetic role (zero ablation); a previous-token head")]
SECTIONS = [
    ("Do the two counterfactual interventions agree?", {"agreement", "disagreement"}),
    ("Levels: depth order, level depths, layer bands, adaptivity",
     {"depth_order", "depth_step", "level_depth", "layer_bands", "band", "adaptivity"}),
    ("Functional groups and specialization", {"groups", "specialization"}),
    ("Named roles (with their evidence rows) and heads critical for a task", {"role", "role_evidence", "critical"}),
    ("Why the model errs", {"errs", "errs_unit", "errs_flip"}),
    ("Regulators", {"regulator", "contrast", "regulation"}),
    ("Redundancy", {"redundancy", "redundancy_pair"}),
    ("Screen audit, settings and what was not evaluated", {"audit", "note", "not_evaluated"}),
]


def wall_clock(path: str | None) -> str | None:
    """``h:mm:ss`` / ``m:ss`` wall clock of a ``/usr/bin/time -v`` log, as "N min S s"."""
    if not path or not Path(path).exists():
        return None
    found = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", Path(path).read_text())
    if not found:
        return None
    parts = [float(p) for p in found.group(1).split(":")]
    seconds = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def top10(effects: pd.DataFrame, iv: str) -> dict[str, set[tuple[int, int]]]:
    rows = effects[(effects["intervention"] == iv) & (effects["method"] == "exact")]
    rows = rows.reindex(rows["effect"].abs().sort_values(ascending=False, kind="stable").index)
    return {t: set(zip(g.head(10)["layer"], g.head(10)["head"])) for t, g in rows.groupby("task", sort=False)}


def measured(effects: pd.DataFrame, iv: str) -> dict[str, set[tuple[int, int]]]:
    rows = effects[(effects["intervention"] == iv) & (effects["method"] == "exact")]
    return {t: set(zip(g["layer"], g["head"])) for t, g in rows.groupby("task")}


def recall_table(truth: pd.DataFrame, run: pd.DataFrame, levels: dict[str, str]) -> tuple[str, dict[str, list[int]]]:
    per: dict[str, dict[str, int]] = {}
    by_iv: dict[str, list[int]] = {}
    for iv in COUNTERFACTUAL:
        top, got = top10(truth, iv), measured(run, iv)
        for task in sorted(top, key=lambda t: (list(levels).index(t) if t in levels else 99, t)):
            per.setdefault(task, {})[iv] = len(top[task] & got.get(task, set()))
        by_iv[iv] = [per[t][iv] for t in per]
    lines = ["| task | level | patch | mean |", "|---|---|---:|---:|"]
    lines += [f"| {t} | {levels.get(t, '')} | {v['patch']} | {v['mean']} |" for t, v in per.items()]
    lines.append("| **median / worst** | | " + " | ".join(f"**{_median_worst(by_iv[iv])}**" for iv in COUNTERFACTUAL) + " |")
    return "\n".join(lines), by_iv


def _median_worst(counts: list[int]) -> str:
    return f"{np.median(counts):.0f} / {min(counts)}"


def recall_summary(by_iv: dict[str, list[int]]) -> str:
    """``patch M / W, mean M / W``: median and worst top-10 recall over tasks per intervention."""
    return ", ".join(f"{iv} {_median_worst(by_iv[iv])}" for iv in COUNTERFACTUAL)


def effect_cell(effects: pd.DataFrame | None, head: str, task: str, iv: str) -> str:
    if effects is None:
        return "not measured"
    row = effects[(effects["head_id"] == head) & (effects["task"] == task) & (effects["intervention"] == iv)
                  & (effects["method"] == "exact")]
    if row.empty:
        return "not measured"
    r = row.iloc[0]
    scale = abs(float(r["clean"])) or float("nan")
    return f"{r['effect_normalized']:+.3f} [{r['ci_low'] / scale:+.3f}, {r['ci_high'] / scale:+.3f}]"


def earlier_table(exact: pd.DataFrame, zero: pd.DataFrame | None, atlas: pd.DataFrame) -> str:
    lines = ["| head | task | published before | zero (off-distribution) | mean ablation | patching | "
             "in the new atlas |", "|---|---|---|---:|---:|---:|---|"]
    for head, task, before in EARLIER:
        a = atlas.set_index("head_id").loc[head] if head in set(atlas["head_id"]) else None
        now = "; ".join(x for x in (a["roles"] if a is not None else "", "critical for " + a["critical_for"]
                                    if a is not None and a["critical_for"] else "") if x) or "no claim"
        lines.append(f"| {head} | {task} | {before} | {effect_cell(zero, head, task, 'zero')} | "
                     f"{effect_cell(exact, head, task, 'mean')} | {effect_cell(exact, head, task, 'patch')} | {now} |")
    return "\n".join(lines)


def findings_blocks(found: list[Finding]) -> str:
    out = []
    for title, kinds in SECTIONS:
        texts = [("  " if f.parent else "") + f.text for f in found if f.kind in kinds]
        if texts:
            out.append(f"#### {title}\n\n```text\n" + "\n".join(texts) + "\n```\n")
    return "\n".join(out)


def run_facts(results) -> str:  # noqa: ANN001
    m = results.manifest
    model = m["model"]
    audit = m.get("audit") or {}
    timings = m.get("timings", {})
    sweep_s = sum(v for k, v in timings.items() if isinstance(v, (int, float)) and k.count("__") == 2)
    extra = sum(float(timings.get(k, 0.0)) for k in ("probes_s", "evidence_s"))
    text = (f"{model.get('n_layers')} layers x {model.get('n_heads')} heads, method `{m.get('method')}`, "
            f"interventions {', '.join(sorted({str(i) for i in results.effects['intervention'].unique()}))}, "
            f"{len(m.get('tasks', {}))} tasks x {m['arguments'].get('n_prompts')} pairs, seed {m.get('seed')}, "
            f"cortexmap {m.get('cortexmap_version')}, torch {m.get('versions', {}).get('torch')}; "
            f"{sweep_s:.0f} s of sweep + {extra:.0f} s of probes and evidence")
    by_iv = audit.get("by_intervention") or {}
    for iv, a in by_iv.items():
        if a.get("rate") is not None:
            text += (f"; {iv} audit: {a['important']} important among {a['audited']} audited heads, miss rate "
                     f"{100 * a['rate']:.1f}% [{100 * a['ci_low']:.1f}%, {100 * a['ci_high']:.1f}%]")
    return text


def task_facts(results) -> str:  # noqa: ANN001
    """Each metric and the tasks scored by it; the pairs a task dropped, and why."""
    tasks = results.manifest.get("tasks", {})
    by: dict[str, list[str]] = {}
    for name, v in tasks.items():
        by.setdefault(str(v.get("metric")), []).append(name)
    text = "; ".join(f"`{metric}` ({len(names)}): {', '.join(names)}" for metric, names in by.items())
    dropped = {n: v["dropped"] for n, v in tasks.items() if v.get("dropped")}
    return text + (". Pairs left out before sampling: " + "; ".join(
        f"{n} {', '.join(f'{k} {c}' for k, c in d.items())}" for n, d in dropped.items()) if dropped
        else ". No task left a pair out") + "."


def partial_tasks(truth, default) -> list[str] | None:  # noqa: ANN001
    """The truth's tasks where it holds only some of the default map's, else None."""
    tasks = list(truth.manifest.get("tasks", {}))
    return None if set(default.manifest.get("tasks", {})) <= set(tasks) else tasks


def tasks_flag(truth, default) -> str:  # noqa: ANN001
    """`` --tasks a,b`` where the truth holds some of the default map's tasks, else nothing."""
    tasks = partial_tasks(truth, default)
    return "" if tasks is None else f" --tasks {','.join(tasks)}"


def truth_facts(truth, default, earlier: bool = True) -> str:  # noqa: ANN001
    """The exact map's facts; where it holds some of the default map's tasks, which and why."""
    tasks = partial_tasks(truth, default)
    if tasks is None:
        return run_facts(truth)
    every = len(default.manifest.get("tasks", {}))
    return (f"{run_facts(truth)}. This truth holds {len(tasks)} of the {every} tasks ({', '.join(tasks)}): "
            "those whose answers or metric changed with answers of any length and answer sets"
            + (", and those of the earlier claims below" if earlier else "") + "; the other tasks' recall was measured on the full truth before that change "
            "(git history of this file)")


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (cells as they are)."""
    rows = [list(frame.columns), ["---"] * len(frame.columns), *frame.astype(str).to_numpy().tolist()]
    return "\n".join("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows)


def clean_of(run_dir: str, task: str, protocol: str) -> str:
    """Mean clean metric over a traced task's discovery prompts, with its 95% bootstrap interval."""
    from cortexmap.stats import bootstrap_cis

    rows = pd.read_parquet(Path(run_dir) / "circuit_prompts.parquet")
    rows = rows[(rows["task"] == task) & (rows["protocol"] == protocol)].drop_duplicates("prompt")
    low, high = bootstrap_cis(rows[["clean"]].to_numpy(dtype=float))
    return f"{rows['clean'].mean():+.3f} [{low[0]:+.3f}, {high[0]:+.3f}] over {len(rows)} prompts"


def strongest(edges: pd.DataFrame, screen: str, top: int = 8) -> pd.DataFrame:
    """The ``top`` verified edges by |exact effect|: edge, screen score, effect [95% CI]."""
    rows = edges.reindex(edges["effect"].abs().sort_values(ascending=False, kind="stable").index).head(top)
    return pd.DataFrame({"edge": [f"{r.sender} -> {r.receiver}.{r.kind}" for r in rows.itertuples()],
                         screen: [f"{v:+.3f}" for v in rows["score"]],
                         "exact effect [95% CI]": [f"{r.effect:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                                                   for r in rows.itertuples()]})


def leaning(ex: dict) -> str:
    """Which key positions a head's clean attention contrast favours, from its interval."""
    if ex["clean_low"] > 0:
        return "the target's positions more than the foil's"
    if ex["clean_high"] < 0:
        return "the foil's positions more than the target's"
    return "neither side more than the other (the interval holds 0)"


def circuit_section(run_dir: str, task: str) -> str:
    """The circuit of ``task`` under both protocols: held-out beside in-sample, paired differences, strongest edges."""
    from types import SimpleNamespace

    from cortexmap.circuits.store import circuit_key
    from cortexmap.cli.circuit_cmds import _counted, difference_rows, summary_rows

    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    edges = pd.read_parquet(Path(run_dir) / "circuit.parquet")
    edges = edges[(edges["task"] == task) & (edges["method"] == "exact")]
    out = []
    for protocol in ("cortexmap", "mib"):
        entry = manifest.get("circuits", {}).get(circuit_key(task, protocol))
        if entry is None:
            out.append(f"Protocol `{protocol}`: not traced in `{run_dir}`.\n")
            continue
        args = entry["arguments"]
        frame = lambda records, split: pd.DataFrame(records).assign(split=split)  # noqa: E731
        result = SimpleNamespace(arguments=args, summary=pd.concat(
            [frame(entry["summary"], "heldout"), frame(entry["summary_in_sample"], "discovery")]),
            differences=pd.concat([frame(entry["differences"], "heldout"),
                                   frame(entry["differences_in_sample"], "discovery")]))
        heldout, in_sample = summary_rows(result, "heldout"), summary_rows(result, "discovery")
        in_sample.columns = [c if i == 0 else f"in sample: {c}" for i, c in enumerate(in_sample.columns)]
        table = heldout.merge(in_sample.iloc[:, :3], on="ranking", how="left")
        grid = ", ".join(f"{100 * f:g}%" for f in args["fractions"])
        circuit = (f"the circuit: `{entry['circuit_method']}` ranking, {len(entry['circuit_heads'])} nodes, ends in "
                   f"{', '.join(entry['end_heads'][:8]) or 'no head'}" if entry["circuit_method"]
                   else "no ranking reached the target on this grid")
        out.append(f"""#### Protocol `{protocol}`: {_counted(args)}

{args['ablation']} ablation; screen `{args['screen']}` ({args['steps']} steps), {args['verify']} edges verified
exactly; grid {grid}; judged on {args['n_heldout']} held-out prompts (screen and verification on the other
{args['n_discovery']}, split seeded); {args['n_random']} random rankings; 95% bootstrap intervals over prompts;
{circuit}; {entry['timings']['total_s']:.0f} s.

{markdown(table)}

Paired differences between rankings on the held-out prompts (a - b, bootstrap over the same prompts):

{markdown(difference_rows(result, 'heldout'))}

The strongest verified edges (exact effect of patching the edge alone, patched - clean, on the discovery prompts;
their mean clean logit difference is {clean_of(run_dir, task, protocol)}):

{markdown(strongest(edges[edges["protocol"] == protocol], args["screen"]))}
""")
    return "\n".join(out)


def attention_section(attention: str, task: str) -> str:
    """A head's attention explained (``explain --attention --json``): clean contrast, totals per side, senders."""
    from cortexmap.cli.circuit_cmds import _interval

    ex = json.loads(Path(attention).read_text())
    cell = lambda r, fmt="{:+.3f}": _interval(r["effect"], r["ci_low"], r["ci_high"], fmt)  # noqa: E731
    sides = {r["side"]: cell(r) for r in ex["totals"]}
    top = pd.DataFrame([{"sender": r["sender"], "side": r["side"], "exact effect [95% CI]": cell(r, "{:+.4f}"),
                         "share of the total": f"{r['share']:+.2f}", "EAP (screen)": f"{r['eap']:+.4f}"}
                        for r in ex["senders"][:12]])
    args = ex["arguments"]
    return f"""#### Why {ex['head']} attends where it does (`cortexmap explain --attention {ex['head']} --task {task}`)

{ex['described']} at the last position, {len(ex['prompts'])} {task} prompts (on IOI the target is the indirect
object, the foil the subject, both of its mentions): {_interval(ex['clean'], ex['clean_low'], ex['clean_high'], '{:+.3f}')}
on the clean prompts, i.e. the head attends {leaning(ex)}. Every upstream sender patched from the corrupt prompt ({args['ablation']} ablation) moves it by
{sides['both']}: query side {sides['query']}, key side {sides['key']}. The strongest single senders, each patched
alone on one side (EAP ranks all {len(ex['senders'])} sender-sides with Spearman {ex['screen_spearman']:.2f} against these):

{markdown(top)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", required=True, help="the default map of SmolLM2")
    parser.add_argument("--exact", required=True, help="the full exact map of SmolLM2 (patch, mean)")
    parser.add_argument("--zero", help="an exact zero-ablation map of the earlier claims' tasks")
    parser.add_argument("--gemma", required=True, help="the default map of Gemma-3")
    parser.add_argument("--gemma-exact", required=True, help="the full exact map of Gemma-3 (patch, mean)")
    parser.add_argument("--time-log")
    parser.add_argument("--gemma-time-log")
    parser.add_argument("--circuit", help="a run directory holding IOI traced under both protocols")
    parser.add_argument("--attention", help="explain --attention --json output for a head on IOI")
    parser.add_argument("--out", default="docs/findings.md")
    args = parser.parse_args()

    default, exact, gemma, gemma_exact = (load_results(p) for p in (args.smollm2, args.exact, args.gemma,
                                                                       args.gemma_exact))
    zero = load_results(args.zero).effects if args.zero else None
    atlases = {}
    for name, res in (("default", default), ("exact", exact), ("gemma", gemma)):
        stored = load_atlas(res)
        if stored is None and name != "exact":
            raise SystemExit(f"{res.root}: run `cortexmap analyze {res.root}` first")
        atlases[name] = stored
    levels = {t: v.get("level", "") for t, v in default.manifest.get("tasks", {}).items()}
    table, by_iv = recall_table(exact.effects, default.effects, levels)
    gemma_table, gemma_by_iv = recall_table(gemma_exact.effects, gemma.effects, levels)
    comparison = compare_runs([args.smollm2, args.gemma])
    wall = wall_clock(args.time_log)
    gemma_wall = wall_clock(args.gemma_time_log)
    today = datetime.date.today().isoformat()

    doc = [f"""# Findings on the bundled models

Generated by `python docs/generate_findings.py` ({today}) from the runs below; every number is read
from a run's files, nothing is typed. The seed paper's head IDs and numbers are hypotheses, not
results: nothing here is copied from it. All runs: this project's 2-core CPU, fp32, seed 0, offline.

```bash
/usr/bin/time -v cortexmap map --out {args.smollm2}                  # the default: patch + mean, screen + verification + audit
cortexmap analyze {args.smollm2} --regulators --redundancy
cortexmap map --method exact --interventions patch,mean{'' if partial_tasks(exact, default) is None else ' --no-probes'}{tasks_flag(exact, default)} --out {args.exact}   # every head on every prompt: the truth
""" + (f"cortexmap analyze {args.exact}\n" if atlases["exact"] is not None else "") + f"""cortexmap map --tasks subject_verb_agreement,ioi,arithmetic --interventions zero --method exact --no-probes --out {args.zero}
/usr/bin/time -v cortexmap map --model gemma3-270m --out {args.gemma}
cortexmap analyze {args.gemma}
cortexmap map --model gemma3-270m --method exact --interventions patch,mean --no-probes{tasks_flag(gemma_exact, gemma)} --out {args.gemma_exact}
cortexmap compare {args.smollm2} {args.gemma}
""" + (f"""cortexmap map --tasks ioi --prompts 24 --no-probes --out {args.circuit}
cortexmap circuit {args.circuit} --task ioi --rankings eap,eap-ig,eap-ig-edges
cortexmap circuit {args.circuit} --task ioi --protocol mib --rankings eap,eap-ig
""" if args.circuit else "") + (f"""cortexmap explain --model smollm2-135m --attention L23H3 --task ioi --json {args.attention}
""" if args.attention else "") + f"""python docs/generate_findings.py --smollm2 {args.smollm2} --exact {args.exact} --zero {args.zero} --gemma {args.gemma} \\
    --gemma-exact {args.gemma_exact} --time-log {args.time_log}""" + (
    f" --gemma-time-log {args.gemma_time_log}" if args.gemma_time_log else "") + (
    f" \\\n    --circuit {args.circuit}" if args.circuit else "") + (
    f" --attention {args.attention}" if args.attention else "") + f"""
```

## What the default map measures, and why not zero ablation

`cortexmap map` measures every head under two counterfactual interventions: **activation patching**
from each task's corrupt prompt (the head's output replaced by its output on the prompt whose
answer is the foil) and **mean ablation** (the head's output replaced by its mean over the task's
prompts). Both keep the head's output on its own distribution, so a change of the answer means
the head carries task information. Zero ablation sets the output to a value the head never
produces; everything downstream then sees an input it was never trained on, and a head can look
critical because its *constant* part (a bias, an attention-sink write) is removed. A head-level
claim of the atlas holds only where it holds under **both** counterfactual interventions; where
they disagree the atlas says so. Zero ablation stays available (`--interventions zero`) and is
called off-distribution wherever it is reported.

## SmolLM2-135M-Instruct

Default map: {run_facts(default)}; wall clock {wall or 'not recorded'} (model already cached).

Truth: {truth_facts(exact, default)}.

Metrics (`logit_diff`: one-token target and foil; `logprob_diff`: answers of several tokens, the
teacher-forced log-probability difference; `prob_diff`: answer sets, probability mass of the valid
answers minus the invalid ones): {task_facts(default)}

### The default map against the truth

Of each task's 10 heads with the largest exact |effect| (either sign) under each intervention, how
many the default map measured exactly. Median / worst over tasks: {recall_summary(by_iv)}.
The screen's policy (`VerifyPolicy`: 2 screen pairs, the best 120 heads refined on 4 more, 32 to
40 heads verified, 8 audited) was chosen by replaying candidates on the first 16 pairs of an
earlier 32-pair exact map of SmolLM2 and checked on this truth (`bench/verify_policy.py`), so this
table is not a held-out test on SmolLM2; Gemma-3's below is (it played no part in the choice).

{table}

### What changed since the zero-ablation atlas, and why

The atlas published before this one named roles from zero-ablation harm alone. Re-measured
(normalised effect = change of the logit difference / |clean logit difference|, 95% bootstrap
interval over prompts; zero from `{args.zero}`, the others from the exact truth):

{earlier_table(exact.effects, zero, atlases['default'][0])}

A head whose zero-ablation harm vanishes under mean ablation and patching was taken off its
distribution, not found to carry the task: it is no longer named. A mechanistic name now needs
the evidence rows its literature defines (attention from the decision position, OV / direct-logit
score, a counterfactual effect), printed below beside each role; ablation harm alone makes a head
"critical for TASK". Level claims now resample and permute tasks, not layers (the old depth-order
test's false-positive rate on a task-clustered null is in BENCHMARKS.md), conservation compares
standardised profiles with heads permuted within tasks, and why the model errs is tested within
template, adjusted for the clean margin, with patching from right into wrong prompts as the
causal test.

### The atlas of the default map (`cortexmap analyze {args.smollm2}`)

{findings_blocks(atlases['default'][1].findings())}
""" + (f"""### The atlas of the truth, for comparison (`cortexmap analyze {args.exact}`)

{findings_blocks([f for f in atlases['exact'][1].findings() if f.kind not in ('errs_unit', 'role_evidence', 'band', 'depth_step', 'level_depth', 'disagreement', 'redundancy_pair')])}""" if atlases["exact"] is not None else "") + f"""
## Gemma-3-270M

Default map: {run_facts(gemma)}; wall clock {gemma_wall or 'not recorded'}.

Truth: {truth_facts(gemma_exact, gemma, earlier=False)}.

Metrics: {task_facts(gemma)}

### The default map against the truth

Median / worst over tasks: {recall_summary(gemma_by_iv)} of the exact top-10 measured exactly.

{gemma_table}

### The atlas of the default map (`cortexmap analyze {args.gemma}`)

{findings_blocks(atlases['gemma'][1].findings())}
## SmolLM2 against Gemma-3 (`cortexmap compare {args.smollm2} {args.gemma}`)

```text
""" + "\n".join(f.text for c in comparison.comparisons for f in c.findings()) + """
```

""" + (f"""
## The IOI circuit of SmolLM2, judged on held-out prompts under both protocols

`cortexmap circuit` screens every edge, verifies the top ones by exact path patching and judges the
rankings' faithfulness curves on prompts the edges were not chosen on. Protocol `cortexmap` counts a
key/value input once per KV group and ranks by |score|; protocol `mib` is MIB's: key/value edges per
query head, BOS prepended, CPR from signed and CMD from |score| rankings (MIB's sign), so its
numbers stand beside MIB's published ones. `eap-ig` is MIB's EAP-IG-inputs; `eap-ig-edges`
integrates along the edge-weight path; `verified` is the screen with the verified edges' exact
effects in their place. CPR: area under the faithfulness curve (higher better); CMD: area between
the curve and 1 (lower better); random: the mean of the draws, their spread in parentheses.

{circuit_section(args.circuit, "ioi")}""" if args.circuit else "") + (
    "\n" + attention_section(args.attention, "ioi") if args.attention else "") + """
Why the model errs on edges, the regulator test on edges and pruning were measured earlier and are
not regenerated here: [earlier_findings.md](earlier_findings.md).
"""]
    write_text(Path(args.out), "".join(doc))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
