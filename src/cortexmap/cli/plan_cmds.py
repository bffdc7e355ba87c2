"""`cortexmap plan`: forward passes, expected time and peak memory of a map before running it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cortexmap.cli.app import Model, _load, _say, app, console, run_guarded, table_of
from cortexmap.cli.map_cmds import DEFAULT_METHOD, DEFAULT_PROMPTS, Interventions, Method, Prompts, TaskFile, Tasks


def _config_only(spec: str) -> Any:
    """A transformers config from a ``config.json`` or a directory with one and no weights, else None."""
    path = Path(spec)
    if path.is_dir():
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            return None
        path = path / "config.json"
    if path.name != "config.json" or not path.is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path.parent))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def plan_table(plan: Any) -> Any:
    """The plan as a two-column table."""
    import pandas as pd

    mem = plan.memory
    time_s = plan.time_s
    rows = [
        ("model", f"{plan.model}: {plan.n_layers} layers x {plan.n_heads} heads, "
                  f"{plan.n_params / 1e6:.0f}M parameters, {plan.dtype_bytes * 8}-bit"),
        ("work", f"{plan.n_tasks} tasks x {len(plan.interventions)} interventions = {plan.units} units; "
                 f"{plan.n_prompts} prompts of <= {plan.seq} tokens; method {plan.method}"),
        ("forward-pass equivalents", f"{plan.forward_equivalents:,.0f} ({plan.flops / 1e12:,.1f} TFLOP)"),
        ("rows per pass", str(plan.rows_per_pass)),
        ("expected time", plan.time_source if time_s is None else f"{time_s / 60:.1f} min ({plan.time_source})"),
        ("memory", f"weights {_gb(mem.weights)} + caches {_gb(mem.caches)} + pass {_gb(mem.pass_)} "
                   f"-> peak {_gb(mem.peak)} of {_gb(mem.budget)} on {plan.device}"),
        ("verdict", plan.message),
    ]
    return pd.DataFrame(rows, columns=["", "plan"])


@app.command("plan")
def plan(
    model: Model = "smollm2-135m",
    tasks: Tasks = "all",
    task_file: TaskFile = None,
    interventions: Interventions = "zero",
    method: Method = DEFAULT_METHOD,
    prompts: Prompts = DEFAULT_PROMPTS,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N or auto; default: cuda when a GPU is visible, else cpu")] = None,
    dtype: str = "float32",
    seq: Annotated[Optional[int], typer.Option(help="prompt length in tokens (default: measured on the tasks)")] = None,
    calibrate: Annotated[bool, typer.Option(help="time one pass on the loaded model for the expected time")] = True,
) -> None:
    """Print forward passes, expected time and peak memory of a map; exit 1 if it cannot fit.

    --model may also be a config.json (or a directory with only one): the plan is then made from
    the shapes alone, without loading weights (time from FLOPs on a known GPU, else unknown).
    """
    from cortexmap.cli.map_cmds import sweep_config
    from cortexmap.sweep.plan import plan_run, require_fit
    from cortexmap.sweep.runner import build_tasks, longest_prompt

    def go() -> dict[str, Any]:
        from cortexmap.models.loading import _dtype

        config = sweep_config(model=model, tasks=tasks, task_file=task_file, interventions=interventions,
                              method=method, n_prompts=prompts, device=device, dtype=dtype)
        where = config.resolved_device
        shapes = _config_only(model)
        if shapes is not None:
            from cortexmap.tasks import tasks_for

            n_tasks = 1 if task_file else len(tasks_for(config.tasks))
            return plan_run(shapes, config, n_tasks, seq or 32, device=where, dtype=_dtype(dtype))
        handle = _load(model, where, dtype)
        built, _ = build_tasks(config, handle.tokenizer, _say)
        length = seq or longest_prompt(built, handle.tokenizer)
        return plan_run(handle, config, len(built), length, device=where, calibrated=calibrate)

    result = run_guarded(go)
    console.print(table_of(plan_table(result), title="cortexmap plan"))
    run_guarded(lambda: require_fit(result))
