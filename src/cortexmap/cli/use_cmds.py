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
    redundancy: Annotated[bool, typer.Option(help="jointly patch each task's strongest heads, two at a time (loads the model)")] = False,
    flips: Annotated[bool, typer.Option(help="why the model errs: patch heads from right into wrong prompts of the "
                                             "same template (loads the model when the run has wrong prompts)")] = True,
    seed: int = 0,
    permutations: Annotated[int, typer.Option(help="permutations of each null distribution")] = 2000,
) -> None:
    """Test layer bands, name roles with their evidence, find groups, regulators and why the model errs; write atlas.parquet + atlas.json."""
    from cortexmap.analysis import summarize_findings
    from cortexmap.analysis.run import analyze_run, error_candidates
    from cortexmap.sweep.measures import measure_run

    def go():  # noqa: ANN202
        candidates = error_candidates(run_dir, seed=seed, n_perm=permutations) if flips else None
        measure_run(run_dir, regulators=regulators, redundancy=redundancy, flips=candidates, seed=seed, note=_say)
        return analyze_run(run_dir, seed=seed, n_perm=permutations)

    atlas, records = run_guarded(go)
    for line in summarize_findings(records):
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

    for comp in result.comparisons:
        for finding in comp.findings():
            console.print(f"• {finding.text}", soft_wrap=True, markup=False)
        console.print(table_of(comp.matches.head(10), title=f"best-matched heads, {comp.model_a} vs {comp.model_b}",
                               floatfmt="{:.2f}"))

    def interval(value: float, low: float, high: float) -> str:
        return "not measured" if value is None or value != value else f"{value:.2f} [{low:.2f}, {high:.2f}]"

    scale = pd.DataFrame([{
        "model": r["model"], "heads": f"{r['n_layers']} x {r['n_heads']}",
        "specialization (active heads)": interval(r["specialization_mean"], r["specialization_ci_low"],
                                                  r["specialization_ci_high"]),
        "share of heads active": interval(r["active_share"], r["active_share_ci_low"], r["active_share_ci_high"]),
        "redundant pairs": interval(r["fraction_redundant"], r["fraction_redundant_ci_low"],
                                    r["fraction_redundant_ci_high"]),
    } for r in result.scale.to_dict("records")])
    console.print(table_of(scale, title="scale comparison (95% bootstrap intervals over heads; pairs over tasks)"))
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
