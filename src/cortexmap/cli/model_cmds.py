"""`cortexmap models` and `cortexmap info`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cortexmap.cli.app import _load, app, console, run_guarded


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
    console.print(table)
