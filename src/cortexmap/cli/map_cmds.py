"""`cortexmap map` (the main job) and `cortexmap plan`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cortexmap.cli.app import Model, _say, app, console, err, run_guarded, table_of
from cortexmap.results.layout import EXACT
from cortexmap.sweep.config import SweepConfig

DEFAULT_METHOD = "auto"
DEFAULT_PROMPTS = SweepConfig.n_prompts
# Options shared by `map` and `plan`.
Tasks = Annotated[str, typer.Option(help="task names, levels (lexical, ...), comma lists, or all")]
TaskFile = Annotated[Optional[str], typer.Option(help="JSONL file of your own pairs")]
Interventions = Annotated[str, typer.Option(help="patch,mean,resample,zero,amplify:ALPHA (default: the counterfactual patch,mean; zero ablation is off-distribution)")]
Method = Annotated[str, typer.Option(help="auto (exact on a GPU, else screen) | exact | screen | attribution | attribution+verify:K")]
Prompts = Annotated[int, typer.Option(help="pairs per built-in task")]


def parse_method(text: str) -> tuple[str, int]:
    """``--method`` into ``(method, verify)``: ``attribution+verify:K`` is attribution with K exact heads."""
    from cortexmap.errors import CortexmapError
    from cortexmap.sweep.config import METHODS

    if text in METHODS:
        return text, 0
    base, _, k = text.partition("+verify:")
    if base == "attribution" and k.isdigit() and int(k) > 0:
        return base, int(k)
    raise CortexmapError(f"unknown method {text!r}: use {', '.join(METHODS)} or attribution+verify:K (K > 0)")


def sweep_config(*, tasks: str, interventions: str, method: str, batch_size: str = "auto", **values: Any) -> Any:
    """A :class:`~cortexmap.sweep.config.SweepConfig` from the command line's strings."""
    from cortexmap.errors import CortexmapError
    from cortexmap.interventions.specs import parse_interventions
    from cortexmap.sweep.config import SweepConfig

    base, verify = parse_method(method)
    if batch_size != "auto" and not batch_size.isdigit():
        raise CortexmapError(f"impossible batch size {batch_size!r}: use auto or a positive integer")
    names = [part.strip() for part in tasks.split(",") if part.strip()]
    return SweepConfig(tasks=names, interventions=parse_interventions(interventions), method=base, verify=verify,
                       batch_size=None if batch_size == "auto" else int(batch_size), **values)


class RichProgress:
    """Adapts the sweep's progress protocol to a rich progress bar with an ETA."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=False)
        self.task: Any = None

    def start(self, total: float, description: str) -> None:
        self.bar.start()
        self.task = self.bar.add_task(description, total=max(total, 1e-9))

    def advance(self, amount: float, description: str | None = None) -> None:
        if self.task is not None:
            self.bar.update(self.task, advance=amount, **({"description": description} if description else {}))

    def note(self, message: str) -> None:
        err.print(f"[dim]{message}[/dim]")

    def stop(self) -> None:
        self.bar.stop()


def summary_table(effects: Any, top: int = 3) -> Any:
    """Per task and intervention: clean metric and the strongest heads, each with its effect and CI."""
    import pandas as pd

    rows = []
    exact = effects[effects["method"] == EXACT]
    source = exact if len(exact) else effects
    for (task, level, kind), group in source.groupby(["task", "level", "intervention"], sort=False):
        best = group.reindex(group["effect"].abs().sort_values(ascending=False).index).head(top)
        for rank, r in enumerate(best.itertuples()):
            first = rank == 0
            rows.append({"task": task if first else "", "level": level if first else "",
                         "intervention": kind if first else "", "clean": f"{r.clean:.2f}" if first else "",
                         "head": r.head_id, "effect": f"{r.effect:+.2f}", "95% CI": f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
                         "method": r.method})
    return pd.DataFrame(rows)


def checked_model(config: Any, skip: bool) -> tuple[Any, dict[str, Any]]:
    """The model ``map`` measures, loaded here and gated by the fast check (:func:`cortexmap.checks.gate`).

    With the Ray backend the workers load their own replicas; the check is then left to
    ``cortexmap check`` and the manifest says so.
    """
    if config.backend != "local":
        return None, {"status": "not run", "reason": f"{config.backend} backend: run cortexmap check {config.model} first"}
    from cortexmap.checks import gate
    from cortexmap.models import load_model

    handle = load_model(config.model, device=config.resolved_device, dtype=config.dtype, progress=_say)
    return handle, gate(handle, skip=skip, progress=_say)


@app.command("map")
def map_(
    model: Model = "smollm2-135m",
    tasks: Tasks = "all",
    task_file: TaskFile = None,
    interventions: Interventions = "patch,mean",
    method: Method = DEFAULT_METHOD,
    prompts: Prompts = DEFAULT_PROMPTS,
    out: Annotated[str, typer.Option(help="run directory")] = "runs/smollm2-135m",
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N, or auto (shard the model over every visible GPU); default: cuda when a GPU is visible, else cpu")] = None,
    dtype: str = "float32",
    batch_size: Annotated[str, typer.Option(help="auto or rows (prompts x heads) per forward pass")] = "auto",
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="continue a killed run in --out")] = False,
    quick: Annotated[bool, typer.Option(help="a fast smoke map: 3 tasks, 16 prompts, attribution")] = False,
    probes: Annotated[bool, typer.Option(help="score the mechanistic attention probes")] = True,
    backend: Annotated[str, typer.Option(help="local or ray")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (with --backend ray)")] = None,
    workers: Annotated[int, typer.Option(help="Ray workers (one model replica each)")] = 2,
    gpus_per_worker: Annotated[int, typer.Option(help="GPUs per Ray worker; with --device auto the replica is sharded over them")] = 1,
    screen_prompts: Annotated[int, typer.Option(help="screen method: prompts every head is measured on first")] = 2,
    refine_heads: Annotated[int, typer.Option(help="screen method: the best screened heads measured on --refine-prompts more")] = 120,
    refine_prompts: Annotated[int, typer.Option(help="screen method: prompts the refined heads are measured on besides the first")] = 4,
    max_verify: Annotated[int, typer.Option(help="screen method: most heads verified on every prompt, per task")] = 40,
    audit: Annotated[int, typer.Option(help="screen method: unverified heads measured at random per task, for the miss rate")] = 8,
    skip_check: Annotated[bool, typer.Option(help="map a model that is not bundled without checking cortexmap's invariants on it first (recorded)")] = False,
) -> None:
    """Map every head x task x intervention of a model into RUN_DIR (effects, patterns, manifest)."""
    from cortexmap.sweep import run_sweep

    if quick:
        tasks, prompts, method = "ioi,capitals,subject_verb_agreement", 16, "attribution"
    progress = RichProgress()

    def go():  # noqa: ANN202
        config = sweep_config(model=model, tasks=tasks, task_file=task_file, interventions=interventions, method=method,
                              n_prompts=prompts, seed=seed, batch_size=batch_size, device=device, dtype=dtype,
                              probes=probes, backend=backend, address=address, n_workers=workers,
                              gpus_per_worker=gpus_per_worker, screen_prompts=screen_prompts, max_verify=max_verify,
                              audit=audit, refine_heads=refine_heads, refine_prompts=refine_prompts)
        handle, check = checked_model(config, skip_check)
        try:
            return run_sweep(config, out, resume=resume, progress=progress, handle=handle, check=check)
        finally:
            progress.stop()

    result = run_guarded(go)
    console.print(table_of(summary_table(result.effects), title=f"{model}: strongest heads per task"))
    for key, info in result.manifest.get("attribution", {}).items():
        rho = "n/a" if info["spearman"] is None else f"{info['spearman']:+.2f}"
        console.print(f"attribution vs exact, {key}: Spearman {rho} over the top {info['verified_heads']} heads")
    found = result.manifest.get("audit")
    if found and found.get("rate") is not None:
        verified = [u["verified"] for u in result.manifest["verification"].values()]
        console.print(f"screen: {min(verified)}-{max(verified)} heads per task verified on every prompt; audit of "
                      f"{found['audited']} unverified heads: {found['important']} important, miss rate "
                      f"{found['rate']:.3f} [95% CI {found['ci_low']:.3f}, {found['ci_high']:.3f}]")
    console.print(f"wrote {result.root}/effects.parquet, patterns.parquet, manifest.json "
                  f"in {result.manifest['timings']['total_s']:.0f} s; next: cortexmap analyze {result.root}")
