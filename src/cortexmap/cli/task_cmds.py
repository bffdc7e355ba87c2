"""`cortexmap tasks list` and `cortexmap tasks check`."""

from __future__ import annotations

from typing import Annotated

import typer

from cortexmap.cli.app import Model, _load, console, run_guarded, table_of, tasks_app

# The title of each kind's table: what it is and the option that runs it.
TITLES = {
    "task": "tasks: map --tasks takes names, levels, comma lists of those, or all",
    "probe": "mechanistic probes: map scores every probe into patterns.parquet (--no-probes skips them)",
    "condition": "condition sets: analyze --regulators compares heads' influence on easy vs demanding prompts",
}


@tasks_app.command("list")
def list_() -> None:
    """List what a map can measure: the built-in tasks, the mechanistic probes and the condition sets."""
    from cortexmap.tasks import list_tasks
    from cortexmap.tasks.registry import list_battery

    battery = list_battery()
    tasks = list_tasks().set_index("name")
    for kind, title in TITLES.items():
        rows = battery[battery["kind"] == kind]
        if kind == "task":  # "patch": the task has corrupt prompts; "answers": a target and a foil, or answer sets
            view = rows[["name", "level", "description"]].assign(
                patch=rows["name"].map(tasks["has_corrupt"]).map({True: "yes", False: "no"}),
                answers=rows["name"].map(tasks["answers"]))
        else:
            view = rows[["name", "description"]]
        console.print(table_of(view, title=title))


@tasks_app.command("check")
def check(
    model: Model = "smollm2-135m",
    tasks: Annotated[str, typer.Option(help="task names, levels, or all")] = "all",
    prompts: Annotated[int, typer.Option(help="pairs per task")] = 64,
    seed: int = 0,
    out: Annotated[str, typer.Option(help="also write the table to this CSV or Parquet file")] = "",
) -> None:
    """Baseline table: usable pairs, the metric, top-1 accuracy, mean metric with a 95% CI, chance level."""
    from cortexmap.tasks import check_tasks, tasks_for

    def go():  # noqa: ANN202
        names = tasks_for(tasks)
        handle = _load(model)
        return check_tasks(handle, names, n=prompts, seed=seed)

    table = run_guarded(go)
    console.print(table_of(table, title=f"task baselines on {model}"))
    above = int(table["above_chance"].sum())
    console.print(f"{above}/{len(table)} tasks above chance (95% CI of the mean metric minus its chance level "
                  "excludes 0; chance is 0 for a pair's difference)")
    if out:
        (table.to_parquet if out.endswith(".parquet") else table.to_csv)(out, index=False)
