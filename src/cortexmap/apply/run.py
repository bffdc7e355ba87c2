"""The functions behind ``cortexmap prune``, ``cortexmap edit`` and ``cortexmap monitor``.

Each loads a model spec, does one job, and writes a directory with a Parquet table, a
``manifest.json`` (``schema_version``, versions, model facts, arguments, timings) and, for
pruning, ``curve.png`` and the pruned models of the best method (``models/<method>-<replace>-<pct>``).
Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from cortexmap.atomic import write_json, write_parquet, write_with
from cortexmap.errors import ResultsError
from cortexmap.results import read_manifest
from cortexmap.results.layout import (
    CURVE, CURVE_PLOT, EFFECTS, GENERATIONS, IMPORTANCE, MANIFEST, MONITOR, SCHEMA_VERSION,
)
from cortexmap.interventions import mean_head_outputs
from cortexmap.models import load_model
from cortexmap.apply.battery import BATTERY_SEED, battery_scorer
from cortexmap.apply.corpus import corpus_info, token_chunks
from cortexmap.apply.curve import gradient_scorer, heals, pruning_curve, select_cumulative
from cortexmap.apply.edit import compare_generations, edit_model, head_factors
from cortexmap.apply.heal import heal as heal_model
from cortexmap.apply.importance import importance_from_effects, layer_order_importance, random_importance
from cortexmap.apply.monitor import monitor
from cortexmap.apply.prune import prune_heads
from cortexmap.apply.storage import save_model, save_pruned

log = logging.getLogger(__name__)

METHODS = ("gradient", "random", "layer")
DEFAULT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time,")


def _manifest(out_dir: Path, handle: Any, arguments: dict[str, Any], extra: dict[str, Any]) -> None:
    import torch
    import transformers

    from cortexmap import __version__

    data = {
        "schema_version": SCHEMA_VERSION, "cortexmap_version": __version__,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__},
        "model": handle.describe(), "arguments": arguments, **extra,
    }
    write_json(data, out_dir / MANIFEST)


def _atlas_effects(run_dir: str | Path) -> pd.DataFrame:
    run = Path(run_dir)
    if not (run / EFFECTS).exists():
        raise ResultsError(f"{run} has no {EFFECTS}; pass the directory of a finished sweep run")
    if (run / MANIFEST).exists():
        read_manifest(run)  # refuses another schema version
    return pd.read_parquet(run / EFFECTS)


def plot_curve(curve: pd.DataFrame, path: str | Path) -> bool:
    """Draw the curve's loss (and task-battery) change against parameters removed; False without matplotlib.

    One colour per method, solid for zero and dashed for mean replacement, circles before and
    triangles after healing. Panels: held-out loss against attention and against total
    parameters removed, and the battery against attention parameters when it was scored.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping %s", path)
        return False
    rows = curve[curve["method"] != "none"]
    scored = "task_delta_pct" in rows and rows["task_delta_pct"].notna().any()
    panels = [("attn_params_removed_frac", "loss_delta_pct", "held-out loss change (%)"),
              ("total_params_removed_frac", "loss_delta_pct", "held-out loss change (%)")]
    if scored:
        panels.insert(1, ("attn_params_removed_frac", "task_delta_pct", "task battery score change (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0))
    palette = plt.get_cmap("tab10")
    colors = {m: palette(i % 10) for i, m in enumerate(sorted(rows["method"].unique()))}
    for (method, replace, healed), group in rows.groupby(["method", "replace", "healed"]):
        group = group.sort_values("fraction")
        label = f"{method}/{replace}" + (" healed" if healed else "")
        for ax, (x, y, _) in zip(axes, panels):
            ax.plot([0] + list(100 * group[x]), [0] + list(group[y]), "--" if replace == "mean" else "-",
                    marker="^" if healed else "o", color=colors[method], alpha=0.55 if healed else 1.0, label=label)
    for ax, (x, y, title) in zip(axes, panels):
        ax.set_xlabel("attention parameters removed (%)" if x.startswith("attn") else "total parameters removed (%)")
        ax.set_ylabel(title)
        ax.axhline(2.0 if y == "loss_delta_pct" else -2.0, color="grey", lw=0.8, ls=":")
        top = rows[y].abs().max()
        if y == "loss_delta_pct" and math.isfinite(top) and top > 50:
            ax.set_yscale("symlog", linthresh=10)  # a few collapsed curves would flatten the rest
            ax.set_ylim(bottom=min(-1.0, 1.1 * float(rows[y].min())))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = min(8, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04 * math.ceil(len(labels) / columns) + 0.02, 1, 1))
    write_with(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
    return True


@dataclass(frozen=True)
class PruneOptions:
    """What :func:`run_prune` measures (recorded in its manifest).

    Attributes:
        fractions: fractions of query heads to prune.
        replace: replacement modes (``zero``, ``mean``).
        methods: importance methods among ``gradient``, ``random``, ``layer`` (plus ``atlas``
            when a run directory is given).
        heal: distillation steps after pruning (0: none).
        heal_methods: curves to heal, ``method`` or ``method/replace`` (default: all).
        iterative: re-score gradient importance after each fraction (otherwise once per mode).
        n_chunks: held-out chunks of ``seq_len`` tokens.
        seq_len: tokens per chunk.
        importance_chunks: training chunks for gradient importance.
        save_models: save the pruned models of the best (method, replace) per fraction.
        battery_prompts: pairs per task of the task battery scored on each model (0: none).
        seed: seed of the random baseline.
    """

    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4)
    replace: Sequence[str] = ("zero", "mean")
    methods: Sequence[str] = METHODS
    heal: int = 0
    heal_methods: Sequence[str] | None = None
    iterative: bool = False
    n_chunks: int = 32
    seq_len: int = 128
    importance_chunks: int = 16
    save_models: bool = True
    battery_prompts: int = 16
    seed: int = 0


def run_prune(model_spec: str, options: PruneOptions | None = None, *, run_dir: str | Path | None = None,
              out_dir: str | Path = "prune-out", task_score: Callable[[Any], float] | None = None,
              progress: Callable[[str], None] | None = None, device: str = "cpu") -> pd.DataFrame:
    """Compute a pruning curve for a model and write it (with the best method's pruned models) to ``out_dir``.

    Args:
        model_spec: a ``load_model`` spec.
        options: fractions, replacement modes, importance methods, healing, sizes (:class:`PruneOptions`).
        run_dir: a sweep run directory; adds the ``atlas`` method from its ``effects.parquet``.
        out_dir: output directory (``curve.parquet``, ``curve.png``, ``importance.parquet``,
            ``manifest.json``, ``models/``).
        task_score: optional ``task_score(handle) -> float`` column; None scores the built-in
            task battery (:func:`~cortexmap.apply.battery.battery_scorer`).
        progress: called with one-line messages.
        device: torch device.

    Returns:
        The curve DataFrame (see :func:`~cortexmap.apply.pruning_curve`).
    """
    o = options or PruneOptions()
    fractions, replace, heal, iterative, methods = o.fractions, o.replace, o.heal, o.iterative, o.methods
    heal_methods, n_chunks, seq_len, seed = o.heal_methods, o.n_chunks, o.seq_len, o.seed
    importance_chunks, save_models, battery_prompts = o.importance_chunks, o.save_models, o.battery_prompts
    say = progress or log.info
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model(model_spec, device=device)
    train = token_chunks(handle.tokenizer, "train", seq_len)
    if task_score is None and battery_prompts > 0:
        say(f"task battery: building {battery_prompts} pairs per task (seed {BATTERY_SEED}) ...")
        task_score = battery_scorer(handle, "all", n_prompts=battery_prompts)
        if task_score is None:
            say("task battery: no task fits this tokenizer; the curve has no task column")
    scorers: dict[str, Any] = {}
    if "gradient" in methods:  # matched to each replacement mode; batches of 4 rows for CPU speed
        scorers["gradient"] = gradient_scorer(handle, train.ids[:importance_chunks], batch_size=4, iterative=iterative)
    if "random" in methods:
        scorers["random"] = random_importance(handle, seed)
    if "layer" in methods:
        scorers["layer"] = layer_order_importance(handle, "last")
    if run_dir is not None:
        effects = _atlas_effects(run_dir)
        several = "model" in effects.columns and effects["model"].nunique() > 1
        scorers["atlas"] = importance_from_effects(effects, model=model_spec if several else None,
                                                 shape=(handle.n_layers, handle.n_heads))
    static = [t.assign(method=m) for m, t in scorers.items() if isinstance(t, pd.DataFrame)]
    if "gradient" in scorers and not iterative:
        static.append(scorers["gradient"]([], None).assign(method="gradient"))
    if static:
        write_parquet(pd.concat(static), out / IMPORTANCE)
    curve = pruning_curve(handle, scorers, fractions, replace, heal_steps=heal, heal_methods=heal_methods,
                          train_text=train, task_score=task_score, n_chunks=n_chunks, seq_len=seq_len, progress=say)
    write_parquet(curve, out / CURVE)
    plotted = plot_curve(curve, out / CURVE_PLOT)
    pruned_rows = curve[(curve["method"] != "none") & ~curve["healed"]]
    best = pruned_rows.groupby(["method", "replace"])["heldout_loss"].mean().idxmin()
    saved = []
    if save_models:
        means = mean_head_outputs(handle, train.ids[:16]) if best[1] == "mean" else None  # as pruning_curve does
        n_total = handle.n_layers * handle.n_heads
        for fraction, chosen in select_cumulative(scorers[best[0]], n_total, fractions, means):
            pruned = prune_heads(handle, chosen, replace=best[1], reference=means)
            if heal and heals(best[0], best[1], heal_methods):
                heal_model(pruned, handle, train.ids, steps=heal)
            target = out / "models" / f"{best[0]}-{best[1]}-{round(100 * fraction)}pct"
            save_pruned(pruned, target)
            saved.append(str(target))
            say(f"saved {target}")
    arguments = {"model_spec": model_spec, "run_dir": str(run_dir) if run_dir else None, "fractions": list(fractions),
                 "replace": list(replace), "heal": heal, "iterative": iterative, "methods": list(scorers),
                 "heal_methods": heal_methods, "n_chunks": n_chunks, "seq_len": seq_len,
                 "importance_chunks": importance_chunks, "seed": seed,
                 "battery": {"prompts_per_task": battery_prompts, "seed": BATTERY_SEED,
                             "scored": task_score is not None}}
    _manifest(out, handle, arguments, {"corpus": corpus_info(), "best": {"method": best[0], "replace": best[1]},
                                       "saved_models": saved, "plot": plotted,
                                       "timings": {"total_s": time.perf_counter() - started}})
    return curve


def run_edit(model_spec: str, amplify: Mapping[str, float] | None = None, ablate: Sequence[str] | None = None,
             out_dir: str | Path = "edit-out", prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 32,
             progress: Callable[[str], None] | None = None, device: str = "cpu") -> pd.DataFrame:
    """Bake head edits into a copy of a model, save it, and compare greedy generations.

    Writes ``out_dir/model`` (loads with plain transformers), ``generations.parquet`` and
    ``manifest.json``; returns the generations table (:func:`~cortexmap.apply.compare_generations`).
    """
    say = progress or log.info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    handle = load_model(model_spec, device=device)
    factors = head_factors(handle, amplify, ablate)
    edited = edit_model(handle, amplify=amplify, ablate=ablate)
    save_model(edited, out / "model")
    say(f"saved the edited model to {out / 'model'}")
    generations = compare_generations(handle, edited, list(prompts), max_new_tokens)
    write_parquet(generations, out / GENERATIONS)
    _manifest(out, handle, {"model_spec": model_spec, "amplify": dict(amplify or {}), "ablate": list(ablate or []),
                            "prompts": list(prompts), "max_new_tokens": max_new_tokens},
              {"factors": {str(h): f for h, f in factors.items()}})
    return generations


def run_monitor(model_spec: str, heads: Sequence[str], prompt: str, max_new_tokens: int = 32,
                thresholds: Mapping[str, Any] | None = None, out_dir: str | Path | None = None,
                progress: Callable[[str], None] | None = None, device: str = "cpu") -> pd.DataFrame:
    """Generate greedily from ``prompt`` while monitoring ``heads``; optionally write ``monitor.parquet``.

    Returns:
        The monitor table (see :mod:`cortexmap.apply.monitor`), with the generated text in ``attrs["text"]``.
    """
    say = progress or log.info
    handle = load_model(model_spec, device=device)
    ids = handle.tokenizer(prompt, return_tensors="pt")["input_ids"].to(handle.device)
    with monitor(handle, heads, thresholds) as rec:
        generated = handle.model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=handle.tokenizer.eos_token_id)
    frame = rec.frame(generated)
    frame.attrs["text"] = handle.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    say(f"{(frame['flag'] != '').sum()} flagged (step, head) values over {frame['step'].nunique()} steps")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_parquet(frame, out / MONITOR)
        _manifest(out, handle, {"model_spec": model_spec, "heads": list(heads), "prompt": prompt,
                                "max_new_tokens": max_new_tokens, "thresholds": dict(thresholds or {})},
                  {"text": frame.attrs["text"]})
    return frame
