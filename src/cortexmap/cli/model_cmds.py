"""`cortexmap models` and `cortexmap info`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cortexmap.cli.app import _load, _say, app, console, run_guarded


@app.command()
def models() -> None:
    """List the bundled models and whether each is fetched and converted."""
    from cortexmap.models.bundled import BUNDLED, cache_dir, gguf_path, sha256_file

    table = Table(title=f"bundled models (cache: {cache_dir()})")
    for col in ("name", "description", "fetched", "converted"):
        table.add_column(col)
    for name, model in BUNDLED.items():
        path = gguf_path(name)
        fetched = path.exists()
        converted = fetched and (cache_dir() / "converted" / sha256_file(path)[:16] / ".complete").exists()
        table.add_row(name, model.description, "yes" if fetched else "no (fetched on first use)",
                      "yes" if converted else "no")
    console.print(table)


@app.command()
def info(model: Annotated[str, typer.Argument(help="model spec")] = "smollm2-135m",
         device: str = "cpu", dtype: str = "float32") -> None:
    """Print a model's layers, heads, KV heads, head dim, parameters and dtype.

    A directory written by ``cortexmap prune`` shows as its dense view (what ``map`` measures):
    the original grid, with the pruned heads listed.
    """
    handle = run_guarded(lambda: _load(model, device, dtype))
    table = Table(title=model, show_header=False)
    for key, value in handle.describe().items():
        if key == "pruned_heads":
            shown = " ".join(value[:12]) + (f" ... (+{len(value) - 12})" if len(value) > 12 else "")
            value = f"{len(value)} of {handle.n_layers * handle.n_heads} (zero in this view): {shown}"
        table.add_row(key, str(value))
    if handle.n_kv_heads != handle.n_heads:
        groups = {}
        for h in range(handle.n_heads):
            groups.setdefault(handle.kv_head(h), []).append(str(h))
        table.add_row("kv groups", "  ".join(f"kv{g}: q{','.join(q)}" for g, q in groups.items()))
    table.add_row("checked", checked_line(handle))
    console.print(table)


def checked_line(handle: Any) -> str:
    """Whether and when ``cortexmap check`` last checked this model in this dtype."""
    from cortexmap.checks import last_record

    record = last_record(handle.model_hash, str(handle.dtype).replace("torch.", ""))
    if record is None:
        return f"not checked: run cortexmap check {handle.spec}"
    failed = f" ({', '.join(record['failed'])})" if record["failed"] else ""
    return (f"{record['status']}{failed}, {record['subset']} check, {record['checked_at']}, "
            f"cortexmap {record['cortexmap_version']}")


@app.command()
def check(model: Annotated[str, typer.Argument(help="model spec")] = "smollm2-135m",
          device: str = "cpu", dtype: str = "float32",
          fast: Annotated[bool, typer.Option(help="only the invariants map runs first (a few forward passes)")] = False,
          json_out: Annotated[Optional[str], typer.Option("--json", help="also write the report as JSON here")] = None) -> None:
    """Prove cortexmap's assumptions on MODEL: each invariant's largest deviation against its tolerance.

    Exits 1 with one line naming every failed invariant; reported rows never fail.
    """
    from cortexmap.atomic import write_json
    from cortexmap.checks import check as run_check
    from cortexmap.errors import CheckFailedError

    handle = run_guarded(lambda: _load(model, device, dtype))
    report = run_guarded(lambda: run_check(handle, "fast" if fast else "full", progress=lambda n: _say(f"checking {n}")))
    table = Table(title=f"{model}: {report.subset} check ({report.model['dtype']}, {report.seconds:.0f} s)")
    for col in ("invariant", "claim", "deviation", "tolerance", "result", "detail"):
        table.add_column(col, overflow="fold")
    tones = {"pass": "green", "FAIL": "bold red", "reported": "cyan", "not checked": "dim"}
    for r in report.results:
        deviation = "" if r.deviation is None else f"{r.deviation:.2g}"
        tolerance = "bit-identical" if r.tolerance == 0 and r.passed is not None else f"{r.tolerance:.0e}"
        table.add_row(r.name, r.claim, deviation, tolerance, f"[{tones[r.outcome]}]{r.outcome}[/]", r.detail)
    console.print(table)
    if json_out:
        run_guarded(lambda: write_json(report.to_dict(), json_out))
        console.print(f"wrote {json_out}")
    if not report.passed:
        def fail() -> None:
            raise CheckFailedError(report.failure_line())

        run_guarded(fail)
    counts = report.summary()["counts"]
    console.print(f"passed: {counts['pass']} invariants hold, {counts['reported']} reported, "
                  f"{counts['not checked']} not checked on this model ({report.seconds:.0f} s)")
