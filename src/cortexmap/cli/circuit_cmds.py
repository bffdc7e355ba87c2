"""`cortexmap circuit` (a task's circuit in a run) and `cortexmap explain` (one decision's edges and heads, or with
``--attention`` why a head attends where it does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cortexmap.cli.app import Model, _load, _say, app, console, run_guarded, table_of

Screen = Annotated[str, typer.Option(help="edge screen: eap | eap-ig (MIB's EAP-IG-inputs) | eap-ig-edges")]
Steps = Annotated[int, typer.Option(help="integration steps of EAP-IG (MIB's default: 5)")]


def parse_fractions(text: str | None) -> tuple[float, ...] | None:
    """``--fractions 0.001,0.01,0.1,1`` (percent signs allowed: ``0.1%,1%,10%,100%``); None: the protocol's grid."""
    from cortexmap.errors import CortexmapError

    if text is None:
        return None
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            values.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise CortexmapError(f"bad circuit fraction {part!r}: use numbers in (0, 1] such as 0.001,0.01,0.1,1") from None
    return tuple(values)


def _task(results: Any, tokenizer: Any, name: str | None, task_file: str | None, prompts: int) -> Any:
    from cortexmap.errors import TaskError
    from cortexmap.tasks import build_task, builtin_task_names, load_task_file

    args = results.manifest.get("arguments", {})
    run_file = args.get("task_file")
    if task_file is None and name not in builtin_task_names() and run_file and Path(run_file).stem == name:
        task_file = run_file  # the run's own task file
    if task_file is not None:
        task = load_task_file(task_file, tokenizer, name=name, min_pairs=1)
        task.pairs = task.pairs[:prompts]
        return task
    if name is None:
        raise TaskError("name a task with --task NAME (a built-in task of the run) or give --task-file")
    if name not in builtin_task_names():
        raise TaskError(f"unknown task {name!r}: give a built-in task name or --task-file with its JSONL pairs")
    return build_task(name, tokenizer, n=prompts, seed=int(args.get("seed", 0)), min_pairs=1)


def _interval(value: float, low: float, high: float, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(value)} [{fmt.format(low)}, {fmt.format(high)}]"


def _size(n: int, lo: int, hi: int, total: int) -> str:
    if n < 0:
        return "not reached"
    bound = lambda k: "never" if k < 0 else f"{k:,}"
    return f"{n:,} edges ({n / total:.2%}) [{bound(lo)}, {bound(hi)}]"


def _ranking_name(r: Any) -> str:
    return f"random (mean of {r.n_draws} draws)" if r.method == "random" else r.method


def summary_rows(result: Any, split: str = "heldout") -> Any:
    """Per ranking on one split: CPR, CMD and the smallest circuit reaching the target, each with its interval.

    The random baseline is the mean of its draws; its spread over draws follows in parentheses.
    """
    import pandas as pd

    total = int(result.arguments["n_edges"])
    rows = []
    for r in result.summary[result.summary["split"] == split].itertuples():
        spread = lambda name: (f" (sd {getattr(r, name + '_sd'):.3f}, range {getattr(r, name + '_min'):.3f}-"
                               f"{getattr(r, name + '_max'):.3f})" if r.method == "random" and r.n_draws > 1 else "")
        rows.append({
            "ranking": _ranking_name(r),
            f"CPR ({r.cpr_order}; higher better)": _interval(r.cpr, r.cpr_low, r.cpr_high) + spread("cpr"),
            f"CMD ({r.cmd_order}; lower better)": _interval(r.cmd, r.cmd_low, r.cmd_high) + spread("cmd"),
            f"smallest {r.target:.0%} circuit": _size(r.smallest_n_edges, r.smallest_n_edges_low,
                                                      r.smallest_n_edges_high, total),
        })
    return pd.DataFrame(rows)


def difference_rows(result: Any, split: str = "heldout") -> Any:
    """Every two rankings: CPR, CMD and smallest-size faithfulness differences with paired bootstrap intervals."""
    import pandas as pd

    diffs = result.differences[result.differences["split"] == split]
    smallest = float(result.arguments["fractions"][0])
    rows = []
    for (a, b), group in diffs.groupby(["a", "b"], sort=False):
        pick = {m: group[group["measure"] == m] for m in ("cpr", "cmd")}
        faith = group[(group["measure"] == "faithfulness") & (group["fraction"] == smallest)]
        cell = lambda g: _interval(*g[["difference", "low", "high"]].iloc[0]) if len(g) else "-"
        rows.append({"a - b": f"{a} - {'random (mean)' if b == 'random' else b}", "CPR": cell(pick["cpr"]),
                     "CMD": cell(pick["cmd"]), f"faithfulness at {smallest:.1%}": cell(faith)})
    return pd.DataFrame(rows)


def _edge(row: Any) -> str:
    return f"{row.sender} -> {row.receiver}.{row.kind}"


def _counted(args: dict[str, Any]) -> str:
    """The graph's edges in both countings, named."""
    group, head = int(args["n_edges_per_kv_group"]), int(args["n_edges_per_query_head"])
    if group == head:
        return f"{head:,} edges (no grouped-query attention: one key/value input per head)"
    if args["kv_counting"] == "per query head":
        return f"{head:,} edges, key/value inputs per query head as MIB counts them ({group:,} per KV group)"
    return f"{group:,} edges, key/value inputs per KV group ({head:,} per query head, as MIB counts them)"


def _circuit_size(args: dict[str, Any], n: int) -> str:
    counts = args["circuit_edges"]
    if "per_kv_group" in counts:
        return (f"{counts['per_kv_group']:,} edges per KV group = {counts['per_query_head']:,} per query head, "
                f"{counts['per_query_head_pruned']:,} after MIB's pruning")
    return f"{n:,} edges ({counts['per_query_head_pruned']:,} after MIB's pruning)"


@app.command()
def circuit(
    run_dir: Annotated[str, typer.Argument(help="a run directory written by cortexmap map")],
    task: Annotated[str | None, typer.Option(help="task name (a built-in task, or the run's task file)")] = None,
    task_file: Annotated[str | None, typer.Option(help="JSONL file of your own pairs")] = None,
    protocol: Annotated[str, typer.Option(
        help="cortexmap (key/value edges per KV group, |score| rankings) | mib (MIB's protocol: edges per query head, "
             "BOS, CPR from signed and CMD from |score| rankings)")] = "cortexmap",
    heldout: Annotated[float, typer.Option(
        help="share of the prompts held out (seeded): the screen and verification see the rest, faithfulness, "
             "CPR/CMD and the circuit are judged on these; 0: judge in sample")] = 0.5,
    in_sample: Annotated[bool, typer.Option(help="also judge the rankings on the discovery prompts")] = True,
    verify: Annotated[int | None, typer.Option(
        help="top screened edges to measure exactly (default: twice the smallest circuit on the grid, at least 32)")] = None,
    screen: Annotated[str | None, typer.Option(
        help="edge screen: eap | eap-ig (MIB's EAP-IG-inputs, the default) | eap-ig-edges (default under mean ablation)")] = None,
    rankings: Annotated[str | None, typer.Option(
        help="screens to rank, comma-separated (default eap,eap-ig; eap,eap-ig-edges under mean ablation)")] = None,
    steps: Steps = 5,
    fractions: Annotated[str | None, typer.Option(
        help="circuit sizes as fractions of edges (default: MIB's 10 points 0.1%,0.2%,0.5%,...,50%,100%)")] = None,
    ablation: Annotated[str, typer.Option(help="what a patched edge carries: corrupt | mean")] = "corrupt",
    prompts: Annotated[int | None, typer.Option(help="prompts in all, both parts (default: the run's n_prompts)")] = None,
    random: Annotated[int, typer.Option("--random", help="random rankings for the baseline")] = 5,
    import_graph: Annotated[str | None, typer.Option(
        help="an EAP-IG / MIB graph .json whose edge scores join the rankings as 'imported'")] = None,
    export: Annotated[str | None, typer.Option(
        help="write the circuit's ranking and the circuit as an EAP-IG / MIB graph .json (MIB's evaluation reads it)")] = None,
    top: Annotated[int, typer.Option(help="verified edges to print")] = 10,
) -> None:
    """Trace a task's circuit: screen and verify edges on some prompts, judge faithfulness on held-out ones."""
    from cortexmap.circuits.interchange import read_mib_graph
    from cortexmap.circuits.protocol import protocol_named
    from cortexmap.circuits.run import trace_circuit
    from cortexmap.circuits.store import write_circuit
    from cortexmap.errors import CortexmapError
    from cortexmap.results import load_results

    def go():
        grid = parse_fractions(fractions)
        proto = protocol_named(protocol)
        names = None if rankings is None else tuple(r.strip() for r in rankings.split(",") if r.strip())
        if export is not None and not export.endswith(".json"):
            raise CortexmapError(f"--export writes an EAP-IG / MIB graph .json, got {export!r}")
        results = load_results(run_dir)
        n = prompts if prompts is not None else int(results.manifest.get("arguments", {}).get("n_prompts", 32))
        if n < 1:
            raise CortexmapError(f"--prompts must be at least 1, got {n}")
        model = results.manifest["model"]
        handle = _load(results.model, results.manifest.get("device", "cpu"), model.get("dtype", "float32"))
        imported = None
        if import_graph is not None:
            shape, scores, _, _ = read_mib_graph(import_graph)
            if not proto.per_head_kv and handle.n_kv_heads != handle.n_heads:
                raise CortexmapError("an EAP-IG / MIB graph counts key/value edges per query head, and this model "
                                     "groups them; import it with --protocol mib")
            if (shape.n_layers, shape.n_heads) != (handle.n_layers, handle.n_heads):
                raise CortexmapError(f"{import_graph} is a graph of {shape.n_layers} layers x {shape.n_heads} heads, "
                                     f"but {handle.spec} has {handle.n_layers} x {handle.n_heads}")
            imported = {"imported": scores}
        the_task = _task(results, handle.tokenizer, task, task_file, n)
        result = trace_circuit(handle, the_task, protocol=proto, ablation=ablation, screen=screen, rankings=names,
                               steps=steps, verify=verify, fractions=grid, n_random=random, heldout=heldout,
                               in_sample=in_sample, imported=imported, seed=int(results.manifest.get("seed", 0)),
                               progress=_say)
        exported = None if export is None else result.export(export, int(handle.model.config.hidden_size))
        return the_task.name, result, write_circuit(run_dir, the_task.name, result), exported

    name, result, paths, exported = run_guarded(go)
    args = result.arguments
    judged = args["judged_on"]
    where = (f"{args['n_heldout']} held-out prompts (screen and verification on the other {args['n_discovery']})"
             if judged == "heldout" else f"the {args['n_discovery']} prompts the edges were chosen on (in sample)")
    console.print(table_of(summary_rows(result, judged), title=f"{name}, protocol {args['protocol']}: faithfulness of "
                           f"edge rankings on {where}; {_counted(args)}; {args['ablation']} ablation (95% bootstrap "
                           "intervals over prompts)"))
    if judged == "heldout" and (result.summary["split"] == "discovery").any():
        console.print(table_of(summary_rows(result, "discovery").iloc[:, :3],
                               title=f"in sample: the same on the {args['n_discovery']} discovery prompts"))
    diffs = difference_rows(result, judged)
    if len(diffs):
        console.print(table_of(diffs, title="differences between rankings (a - b) with paired bootstrap intervals over "
                                            "the same prompts"))
    edges = result.edges[result.edges["method"] == "exact"].sort_values("effect", key=abs, ascending=False).head(top)
    table = edges.assign(edge=[_edge(r) for r in edges.itertuples()],
                         effect=[_interval(r.effect, r.ci_low, r.ci_high) for r in edges.itertuples()])
    console.print(table_of(table[["edge", "score", "effect"]].rename(columns={"score": args["screen"]}),
                           title="strongest verified edges: exact effect (patched - clean) [95% CI], discovery prompts"))
    if result.circuit_method is None:
        console.print(f"no ranking reached {args['target']:.0%} faithfulness on this grid; try larger --fractions")
    else:
        n = int(result.edges["in_circuit"].sum())
        ends = ", ".join(result.end_heads[:8]) or "no head (only emb / MLPs write to the logits)"
        whole = " (the whole model: no smaller circuit on the grid reaches the target)" if n == args["n_edges"] else ""
        console.print(f"circuit ({result.circuit_method} ranking, {_circuit_size(args, n)}{whole}, "
                      f"{len(result.top_heads)} nodes) ends in {ends}", soft_wrap=True)
    _print_errs(name, result.prompts)
    also = f"; exported {exported}" if exported else ""
    console.print(f"took {result.timings['total_s']:.0f} s; wrote {paths[0]}, {paths[1].name} and {paths[2].name}{also}",
                  soft_wrap=True)


def _print_errs(task: str, prompts: Any) -> None:
    """Why the model errs: the verified edges' screen (as analyze states it), its table and its findings."""
    from cortexmap.analysis import AtlasOptions
    from cortexmap.analysis.mistakes import edge_rows, errors_of_rows

    if prompts.empty:
        return
    opts = AtlasOptions()  # the settings of `cortexmap analyze`, so it states the same numbers
    errors = errors_of_rows(edge_rows(prompts.assign(task=task)), n_boot=opts.n_boot, n_perm=opts.n_perm,
                            seed=opts.seed)
    shown = errors.contrasts.sort_values("p_value").head(8)
    if len(shown):
        table = shown.assign(edge=shown["unit"], step=[_interval(r.effect, r.ci_low, r.ci_high)
                                                       for r in shown.itertuples()])
        console.print(table_of(table[["edge", "mean_right", "mean_wrong", "unadjusted", "step", "p_value", "q_value"]],
                               title="why the model errs: verified edges, wrong - right step within template "
                                     "beyond the clean-margin line"))
    for f in errors.findings():
        console.print(f.text, soft_wrap=True, markup=False)


@app.command()
def explain(
    model: Model,
    prompt: Annotated[str | None, typer.Option(help="the prompt")] = None,
    target: Annotated[str | None, typer.Option(help="the answer the model gives (one token, e.g. ' Mary')")] = None,
    foil: Annotated[str | None, typer.Option(help="the competing answer (one token)")] = None,
    corrupt: Annotated[str | None, typer.Option(
        help="same-length prompt whose answer is the foil (default: the prompt with target and foil swapped)")] = None,
    verify: Annotated[int, typer.Option(help="top screened edges to measure exactly")] = 16,
    screen: Screen = "eap-ig",
    steps: Steps = 5,
    device: Annotated[str, typer.Option(help="cpu, cuda, mps")] = "cpu",
    top: Annotated[int, typer.Option(help="edges (senders) to print")] = 10,
    out: Annotated[str | None, typer.Option(
        help="also draw the verified edges: .html (interactive, self-contained) or .svg / .png / .pdf")] = None,
    attention: Annotated[str | None, typer.Option(
        "--attention", help="explain why this head attends where it does, e.g. L23H3 (every upstream sender, "
                            "query side and key side, exactly)")] = None,
    task: Annotated[str | None, typer.Option(help="--attention over a built-in task's pairs (e.g. ioi)")] = None,
    task_file: Annotated[str | None, typer.Option(help="--attention over a JSONL file of pairs")] = None,
    prompts: Annotated[int, typer.Option(help="--attention --task: pairs")] = 16,
    seed: Annotated[int, typer.Option(help="--attention --task: seed of the pairs and of the intervals")] = 0,
    key: Annotated[str | None, typer.Option(
        help="--attention: key position (an index) or token (default: the target's token against the foil's "
             "where the prompts hold both, else the position the head attends most)")] = None,
    contrast: Annotated[str | None, typer.Option(
        help="--attention: position or token subtracted from the key's")] = None,
    query: Annotated[int, typer.Option(help="--attention: query position (default: the last)")] = -1,
    ablation: Annotated[str, typer.Option(
        help="--attention: what a patched sender carries: corrupt | mean")] = "corrupt",
    metric: Annotated[str, typer.Option(
        help="--attention: weight | log-weight (of the attention on the key positions)")] = "weight",
    json_out: Annotated[str | None, typer.Option(
        "--json", help="--attention: also write the senders, totals and prompts as JSON here")] = None,
) -> None:
    """Explain one decision (the heads and paths that carried the target over the foil), or with --attention why a
    head attends where it does."""
    if attention is not None:
        _explain_attention(model, attention, prompt, target, foil, corrupt, task, task_file, prompts, seed, key,
                           contrast, query, ablation, metric, device, top, out, json_out)
        return
    from cortexmap.circuits.explain import explain_decision
    from cortexmap.errors import CortexmapError

    def go():
        if prompt is None or target is None or foil is None:
            raise CortexmapError("explain needs --prompt, --target and --foil (or --attention HEAD to explain a head)")
        if json_out is not None:
            raise CortexmapError("--json writes explain --attention's tables; for a decision, draw it with --out")
        if out is not None:
            from cortexmap.report.export import figure_format

            figure_format(out)  # a bad suffix fails before the model loads
        handle = _load(model, device)
        _say("scoring every edge on this prompt, then verifying the top ones")
        ex = explain_decision(handle, prompt, target, foil, corrupt, screen=screen, steps=steps, verify=verify)
        return ex, None if out is None else ex.save(out)

    ex, path = run_guarded(go)
    console.print(f"logit({ex.pair.target!r}) - logit({ex.pair.foil!r}): {ex.clean:.2f} on the prompt, "
                  f"{ex.corrupt:.2f} on {ex.pair.corrupt!r}", soft_wrap=True, markup=False)
    edges = ex.edges.head(top)
    table = edges.assign(edge=[_edge(r) for r in edges.itertuples()])[["edge", "score", "effect", "share"]]
    console.print(table_of(table.rename(columns={"score": screen}),
                           title="edges that carried it (exact effect of patching each alone; share of the flip)"))
    heads = ex.heads[ex.heads["node"].str.contains("H")].head(5)
    console.print("heads: " + ", ".join(f"{r.node} (out {r.effect_out:+.2f}, in {r.effect_in:+.2f})"
                                        for r in heads.itertuples()), soft_wrap=True)
    console.print(f"took {sum(ex.timings.values()):.0f} s" + (f"; wrote {path}" if path else ""), soft_wrap=True)


def _position(text: str | None) -> int | str | None:
    """``--key 5`` is a position, ``--key ' Mary'`` a token."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _explain_attention(model: str, head: str, prompt: str | None, target: str | None, foil: str | None,
                       corrupt: str | None, task: str | None, task_file: str | None, prompts: int, seed: int,
                       key: str | None, contrast: str | None, query: int, ablation: str, metric: str, device: str,
                       top: int, out: str | None, json_out: str | None) -> None:
    """``explain --attention``: every upstream sender's exact effect on the head's attention, per side."""
    import time

    from cortexmap.circuits.attend import explain_attention
    from cortexmap.errors import CortexmapError
    from cortexmap.heads import HeadId
    from cortexmap.tasks.core import Pair

    def go():
        tic = time.perf_counter()
        HeadId.parse(head)  # a bad name fails before the model loads
        if out is not None:
            from cortexmap.report.export import figure_format

            figure_format(out)
        if sum(x is not None for x in (task, task_file, prompt)) != 1:
            raise CortexmapError("--attention needs exactly one of --task NAME, --task-file FILE or --prompt TEXT")
        if prompts < 1:
            raise CortexmapError(f"--prompts must be at least 1, got {prompts}")
        handle = _load(model, device)
        if task is not None or task_file is not None:
            from cortexmap.tasks import build_task, builtin_task_names, load_task_file

            if task is not None and task not in builtin_task_names():
                raise CortexmapError(f"unknown task {task!r}: give a built-in task name or --task-file with its pairs")
            source = (build_task(task, handle.tokenizer, n=prompts, seed=seed, min_pairs=1) if task is not None
                      else load_task_file(task_file, handle.tokenizer, min_pairs=1))
            source.pairs = source.pairs[:prompts]
        elif target is not None and foil is not None:
            source = Pair(prompt, target, foil, corrupt)
        else:
            source = prompt
        ex = explain_attention(handle, source, head, key=_position(key), contrast=_position(contrast), query=query,
                               corrupt=corrupt, ablation=ablation, metric=metric, seed=seed, progress=_say)
        path = None if out is None else ex.save(out)
        if json_out is not None:
            from cortexmap.atomic import write_json

            write_json(ex.to_dict() | {"model": handle.spec}, json_out)
        return ex, path, time.perf_counter() - tic

    ex, path, seconds = run_guarded(go)
    one = len(ex.prompts) == 1  # one prompt: no interval
    shown_as = lambda v, lo, hi, fmt="{:+.3f}": fmt.format(v) if one else _interval(v, lo, hi, fmt)  # noqa: E731
    sides = {r.side: shown_as(r.effect, r.ci_low, r.ci_high) for r in ex.totals.itertuples()}
    first = ex.prompts.iloc[0]
    where = f"key {first.key_tokens or first.key}" + (
        f" against {first.contrast_tokens or first.contrast}" if ex.contrast else "")
    console.print(f"{ex.head}: {ex.describe_metric()} at query position {query} = "
                  f"{shown_as(ex.clean, ex.clean_low, ex.clean_high)} over {len(ex.prompts)} prompts ({where} on the "
                  f"first prompt); every sender patched ({ex.arguments['ablation']}): {sides['both']} (query side "
                  f"{sides['query']}, key side {sides['key']})", soft_wrap=True, markup=False)
    shown = ex.senders.head(top)
    table = shown.assign(effect=[shown_as(r.effect, r.ci_low, r.ci_high, "{:+.4f}") for r in shown.itertuples()])
    console.print(table_of(table[["sender", "side", "effect", "share", "eap"]].rename(columns={"eap": "eap (screen)"}),
                           title=f"senders that move {ex.head}'s attention: exact effect of patching each alone on one "
                                 "side (patched - clean" + ("" if one else ", 95% CI over prompts") + ")"))
    console.print(f"screen: EAP ranks the {len(ex.senders)} sender-sides with Spearman {ex.screen_spearman:.2f} "
                  "against the exact effects", soft_wrap=True)
    if ex.arguments.get("n_dropped"):
        console.print(f"{ex.arguments['n_dropped']} prompts alone in their token length were left out (mean ablation)")
    wrote = ", ".join(str(p) for p in (path, json_out) if p)
    console.print(f"took {seconds:.0f} s" + (f"; wrote {wrote}" if wrote else ""), soft_wrap=True)


@app.command()
def regulate(
    run_dir: Annotated[str, typer.Argument(help="a run directory written by cortexmap map")],
    head: Annotated[str, typer.Option(help="the candidate regulator, e.g. L12H4")],
    condition: Annotated[str, typer.Option(help="condition contrast: reasoning | ambiguity | length")] = "reasoning",
    prompts: Annotated[int, typer.Option(help="matched easy / demanding pairs")] = 16,
    edges: Annotated[int, typer.Option(help="query/key edges to measure exactly")] = 16,
    random: Annotated[int, typer.Option(
        "--random", help="baseline heads drawn at random from the candidate's layer and below, off the edges")] = 19,
    ablation: Annotated[str, typer.Option(
        help="how heads are ablated: mean (counterfactual) | zero (off-distribution)")] = "mean",
) -> None:
    """The regulator test on edges: does ablating HEAD change other heads' q/k composition more on demanding prompts?"""
    from cortexmap.analysis import AtlasOptions
    from cortexmap.analysis.regulation import regulation_record
    from cortexmap.circuits.regulation import measure_regulation
    from cortexmap.circuits.store import write_regulation
    from cortexmap.errors import CortexmapError
    from cortexmap.heads import HeadId
    from cortexmap.results import load_results
    from cortexmap.tasks import condition_names, condition_sets

    def go():
        if condition not in condition_names():
            raise CortexmapError(f"unknown condition {condition!r}: use one of {', '.join(condition_names())}")
        candidate = HeadId.parse(head)
        results = load_results(run_dir)
        model = results.manifest["model"]
        handle = _load(results.model, results.manifest.get("device", "cpu"), model.get("dtype", "float32"))
        easy, demanding = condition_sets(handle.tokenizer, n=prompts, seed=int(results.manifest.get("seed", 0)))[condition]
        result = measure_regulation(handle, easy, demanding, candidate, n_random=random, n_edges=edges,
                                    seed=int(results.manifest.get("seed", 0)), condition=condition, ablation=ablation,
                                    progress=_say)
        opts = AtlasOptions()  # the settings of `cortexmap analyze`, so it states the same numbers
        return (result, regulation_record(result.prompts, n_boot=opts.n_boot, seed=opts.seed),
                write_regulation(run_dir, result))

    result, test, path = run_guarded(go)
    console.print(test.finding().text, soft_wrap=True, markup=False)
    console.print(f"took {result.timings['total_s']:.0f} s; wrote {path} (cortexmap analyze states it with the findings)")
