"""Commands over finished runs: analyze and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from cortexmap.results.layout import ATLAS, COMPARE, FINDINGS
from cortexmap.cli.app import _say, app, console, run_guarded, table_of


@app.command()
def analyze(
    run_dir: Annotated[str, typer.Argument(help="a run directory written by cortexmap map")],
    regulators: Annotated[bool, typer.Option(help="measure head-to-head influence (loads the model)")] = False,
    redundancy: Annotated[bool, typer.Option(help="pairwise-ablate each task's strongest heads (loads the model)")] = False,
    seed: int = 0,
    permutations: Annotated[int, typer.Option(help="permutations of each null distribution")] = 2000,
) -> None:
    """Find functional groups, layer bands, head roles and regulator heads; write atlas.parquet + atlas.json."""
    from cortexmap.analysis import summarize_findings
    from cortexmap.analysis.run import analyze_run
    from cortexmap.sweep.measures import measure_run

    def go():  # noqa: ANN202
        measure_run(run_dir, regulators=regulators, redundancy=redundancy, seed=seed, note=_say)
        return analyze_run(run_dir, seed=seed, n_perm=permutations)

    atlas, findings = run_guarded(go)
    for line in summarize_findings(findings):
        console.print(f"• {line}", soft_wrap=True, markup=False)  # a task name in brackets is not a style
    console.print(f"wrote {Path(run_dir) / ATLAS} ({len(atlas)} heads) and {FINDINGS}; next: cortexmap report {run_dir}")


@app.command()
def compare(
    run_dirs: Annotated[List[str], typer.Argument(help="two or more run directories (first = reference)")],
    seed: int = 0,
) -> None:
    """Match heads across models by profile similarity and test conservation against a shuffled null."""
    from cortexmap.errors import CortexmapError
    from cortexmap.analysis.run import compare_runs

    def go():  # noqa: ANN202
        if len(run_dirs) < 2:
            raise CortexmapError("compare needs at least two run directories")
        return compare_runs(run_dirs, seed=seed)

    result = run_guarded(go)
    import pandas as pd

    for comp in result["comparisons"]:
        console.print(
            f"{comp['a']} vs {comp['b']}: profile conservation {comp['conservation']:.2f} over {comp['n_pairs']} "
            f"matched active heads and {comp['n_tasks']} tasks vs task-shuffled null mean {comp['null_mean']:.2f} "
            f"(95th pct {comp['null_p95']:.2f}), p = {comp['p_value']:.3f}; relative depth of matched heads "
            f"(similarity >= 0.5, {comp['n_depth_pairs']} pairs): Spearman {comp['depth_rho']:.2f} "
            f"[95% CI {comp['depth_ci_low']:.2f}, {comp['depth_ci_high']:.2f}]", soft_wrap=True)
        matches = pd.DataFrame(comp["matches"]).head(10)
        console.print(table_of(matches, title=f"best-matched heads, {comp['a']} vs {comp['b']}", floatfmt="{:.2f}"))
    def interval(r: dict, key: str) -> str:
        stem = key.removesuffix("_mean")
        return f"{r[key]:.2f} [{r[stem + '_ci_low']:.2f}, {r[stem + '_ci_high']:.2f}]"

    scale = pd.DataFrame([{
        "model": r["model"], "heads": f"{r['n_layers']} x {r['n_heads']}",
        "specialization (denoised, active heads)": interval(r, "specialization_mean"),
        "share of heads active": interval(r, "active_share"),
        "redundant pairs": "not measured" if r["fraction_redundant"] != r["fraction_redundant"] else interval(r, "fraction_redundant"),
    } for r in result["scale"]])
    console.print(table_of(scale, title="scale comparison (95% bootstrap intervals over heads)"))
    console.print(f"wrote {Path(run_dirs[0]) / COMPARE}")


@app.command()
def report(
    run_dir: Annotated[str, typer.Argument(help="a run directory")],
    compare: Annotated[Optional[List[str]], typer.Option("--compare", help="another run to compare with, repeatable")] = None,
    out: Annotated[Optional[str], typer.Option(help="HTML file (default RUN_DIR/report.html)")] = None,
    screenshot: Annotated[Optional[str], typer.Option(help="also save a PNG screenshot (needs chromium)")] = None,
    screenshot_height: Annotated[Optional[int], typer.Option(help="screenshot height in px (default: the whole page)")] = None,
) -> None:
    """Write one self-contained HTML atlas (opens offline in any browser); runs the analysis if needed."""
    from cortexmap.report import render_report
    from cortexmap.report import screenshot as shoot

    def go():  # noqa: ANN202
        path = render_report(run_dir, compare=compare or None, out=out)
        if screenshot:
            shoot(path, screenshot, height=screenshot_height)
        return path

    path = run_guarded(go)
    console.print(f"wrote {path}" + (f" and {screenshot}" if screenshot else ""))


@app.command()
def figures(
    run_dir: Annotated[str, typer.Argument(help="a run directory")],
    out: Annotated[str, typer.Option(help="output directory")] = "figures",
) -> None:
    """Export the atlas figures as files for papers (HTML; SVG/PNG where kaleido can render)."""
    from cortexmap.report import export_figures

    written = run_guarded(lambda: export_figures(run_dir, out))
    console.print("wrote " + ", ".join(str(p) for p in written))
