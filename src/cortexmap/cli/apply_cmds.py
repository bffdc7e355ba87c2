"""Uses of the map: `cortexmap prune`, `cortexmap edit`, `cortexmap monitor`."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from cortexmap.cli.app import Model, _say, app, console, run_guarded, table_of
from cortexmap.errors import CortexmapError


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CortexmapError(f"bad {what} {text!r}: give comma-separated numbers, e.g. 0.1,0.2") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise CortexmapError(f"bad {what} {text!r}: each must lie strictly between 0 and 1")
    return values


def _assignments(items: list[str]) -> dict[str, float]:
    """``["L12H3=0.5", ...]`` -> ``{"L12H3": 0.5}``."""
    out = {}
    for item in items:
        head, _, value = item.partition("=")
        try:
            out[head.strip()] = float(value)
        except ValueError:
            raise CortexmapError(f"bad amplification {item!r}: write HEAD=ALPHA, e.g. L12H3=0.5") from None
    return out


@app.command()
def prune(
    model: Model = "smollm2-135m",
    run: Annotated[Optional[str], typer.Option(help="a map run: adds the atlas importance curve")] = None,
    fractions: Annotated[str, typer.Option(help="fractions of heads to prune")] = "0.1,0.2,0.3,0.4",
    replace: Annotated[str, typer.Option(help="zero, mean, or zero,mean")] = "zero,mean",
    heal: Annotated[int, typer.Option(help="distillation steps after pruning (0: none)")] = 0,
    iterative: Annotated[bool, typer.Option(help="re-score gradient importance after each step")] = False,
    methods: Annotated[str, typer.Option(help="importance baselines: gradient,random,layer")] = "gradient,random,layer",
    battery: Annotated[int, typer.Option(help="pairs per task of the battery scored on each pruned model (0: none)")] = 16,
    out: Annotated[str, typer.Option(help="output directory")] = "prune-out",
    device: str = "cpu",
) -> None:
    """Prune heads physically along a curve of fractions; save the pruned models and the curve."""
    from cortexmap.apply import PruneOptions, run_prune

    def go():  # noqa: ANN202
        modes = [m.strip() for m in replace.split(",") if m.strip()]
        if not modes or any(m not in ("zero", "mean") for m in modes):
            raise CortexmapError(f"bad --replace {replace!r}: use zero, mean or zero,mean")
        options = PruneOptions(fractions=_floats(fractions, "--fractions"), replace=modes, heal=heal,
                               iterative=iterative, methods=[m.strip() for m in methods.split(",") if m.strip()],
                               battery_prompts=battery)
        return run_prune(model, options, run_dir=run, out_dir=out, progress=_say, device=device)

    curve = run_guarded(go)
    cols = ["method", "replace", "healed", "fraction", "heads_pruned", "attn_params_removed_frac",
            "total_params_removed_frac", "heldout_ppl", "loss_delta_pct", "task_delta_pct"]
    console.print(table_of(curve[[c for c in cols if c in curve.columns]], title=f"pruning curve: {model}"))
    console.print(f"wrote {out}/curve.parquet, curve.png, models/; load a pruned model with "
                  "cortexmap.apply.load_pruned(DIR) or transformers (see README)")


@app.command()
def edit(
    model: Model = "smollm2-135m",
    amplify: Annotated[Optional[List[str]], typer.Option(help="HEAD=ALPHA, repeatable (e.g. L12H3=0.5)")] = None,
    ablate: Annotated[Optional[List[str]], typer.Option(help="HEAD to zero, repeatable")] = None,
    prompt: Annotated[Optional[List[str]], typer.Option(help="prompt to compare before/after, repeatable")] = None,
    max_new_tokens: int = 24,
    out: Annotated[str, typer.Option(help="output directory (the edited model goes to OUT/model)")] = "edit-out",
) -> None:
    """Bake amplifications and ablations into the weights; save a model plain transformers loads."""
    from cortexmap.apply import run_edit
    from cortexmap.apply.run import DEFAULT_PROMPTS

    def go():  # noqa: ANN202
        if not amplify and not ablate:
            raise CortexmapError("nothing to edit: give --amplify HEAD=ALPHA and/or --ablate HEAD")
        return run_edit(model, _assignments(amplify or []), ablate or [], out_dir=out,
                        prompts=prompt or DEFAULT_PROMPTS, max_new_tokens=max_new_tokens, progress=_say)

    generations = run_guarded(go)
    console.print(table_of(generations, title="greedy continuations before / after"))


@app.command()
def monitor(
    model: Model = "smollm2-135m",
    heads: Annotated[str, typer.Option(help="comma-separated heads, e.g. L23H3,L29H1")] = "L23H3",
    prompt: Annotated[str, typer.Option(help="the prompt to continue")] = "When Mary and John went to the store, John gave a drink to",
    max_new_tokens: int = 16,
    norm: Annotated[Optional[str], typer.Option(help="flag output norms outside LO,HI")] = None,
    entropy: Annotated[Optional[str], typer.Option(help="flag attention entropies outside LO,HI")] = None,
    out: Annotated[Optional[str], typer.Option(help="also write monitor.parquet here")] = None,
) -> None:
    """Generate while recording chosen heads' output norm and attention entropy per token."""
    from cortexmap.apply import run_monitor

    def bounds(text: Optional[str]):  # noqa: ANN202
        if text is None:
            return None
        lo, _, hi = text.partition(",")
        try:
            return (float(lo) if lo else None, float(hi) if hi else None)
        except ValueError:
            raise CortexmapError(f"bad threshold {text!r}: write LO,HI (either may be empty)") from None

    def go():  # noqa: ANN202
        thresholds = {k: v for k, v in (("norm", bounds(norm)), ("entropy", bounds(entropy))) if v is not None}
        return run_monitor(model, [h.strip() for h in heads.split(",") if h.strip()], prompt, max_new_tokens,
                           thresholds or None, out_dir=out, progress=_say)

    frame = run_guarded(go)
    wide = frame.pivot_table(index=["step", "token"], columns="head_id", values=["norm", "entropy"], sort=True)
    wide.columns = [f"{head} {value}" for value, head in wide.columns]
    flags = frame.groupby(["step", "token"], sort=True)["flag"].apply(lambda s: " ".join(v for v in s if v))
    view = wide.reset_index().assign(flags=flags.values)
    console.print(table_of(view, title=f"{prompt!r} -> {frame.attrs.get('text', '')!r}", floatfmt="{:.2f}"))
