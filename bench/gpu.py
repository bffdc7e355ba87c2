"""The prepared GPU run: the whole GPU table in one command, each part time-boxed.

Two steps. On a machine with the bundled model cached (this project's CPU box)::

    python bench/gpu.py prepare --assets bench/gpu_assets      # SmolLM2 config + tokenizer, bench wheels

then, on the GPU machine (with ``bench/gpu_assets`` carried along)::

    python bench/gpu.py run --assets bench/gpu_assets --out $OUT/gpu --budget-s 480

``run`` writes ``gpu.json`` and ``gpu.md`` to ``--out`` after every part, so whatever finished is
kept when a later part runs out of time. Parts, each a subprocess with its own time limit:

* ``peer``: ``bench/sweep_vs_transformerlens.py`` on a SmolLM2-135M-shaped model with random
  weights (timings do not depend on weights; agreement is a property of the computation), fp32
  and bf16: speed-up over transformer-lens and the largest difference;
* ``battery``: ``cortexmap map --method exact`` of the whole built-in battery (25 tasks, zero
  ablation, 32 pairs) on that model: what ``--method exact`` costs on the GPU;
* ``scale``: ``bench/scale.py`` on the GPT-2, Pythia and LLaMA-2 shapes in bf16 with a capped
  number of heads: heads per second, share of the bf16 peak, peak memory against ``cortexmap plan``.

The SmolLM2-shaped model is its config (``prepare`` copies it with the tokenizer from the
bundled model) with weights drawn on the GPU machine. ``--dry-run`` runs every part on tiny
shapes on the CPU in about a minute (``tests/bench/test_gpu_dry_run.py`` runs it in CI).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCALE_MODELS = "gpt2-small,gpt2-medium,gpt2-large,pythia-1.4b,pythia-2.8b,pythia-6.9b,llama-2-7b,llama-2-13b"
WHEELS = ("transformer-lens", "gguf", "plotly")  # not on the GPU machine
# Their pure-Python dependencies that machine lacks; everything is fetched and installed without
# dependency resolution, so no CUDA torch or other large package is pulled in. transformer-lens's
# training-only dependencies (wandb, datasets) stay behind: the benchmark does not import them.
EXTRA_WHEELS = ("einops", "fancy-einsum", "jaxtyping", "wadler-lindig", "beartype", "typeguard",
                "narwhals", "sentencepiece")
SHARES = {"peer": 0.3, "battery": 0.35, "scale": 0.35}  # of --budget-s


def prepare(assets: Path, wheels: bool) -> None:
    """Write the SmolLM2 config and tokenizer (and, with ``wheels``, the bench wheels) to ``assets``."""
    import cortexmap

    handle = cortexmap.load_model("smollm2-135m")
    target = assets / "smollm2"
    target.mkdir(parents=True, exist_ok=True)
    handle.model.config.save_pretrained(target)
    handle.tokenizer.save_pretrained(target)
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "--python-version", "3.12", "-d", str(assets / "wheels"), *WHEELS, *EXTRA_WHEELS], check=True)
    print(f"wrote {target}" + (f" and {assets / 'wheels'}" if wheels else ""))


def random_model(assets: Path, out: Path, dry_run: bool) -> Path:
    """A SmolLM2-shaped model directory with random weights (tiny layers in a dry run)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(assets / "smollm2")
    if dry_run:
        config.num_hidden_layers, config.hidden_size, config.intermediate_size = 2, 64, 128
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    path = out / ("tiny-smollm2-random" if dry_run else "smollm2-random")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(assets / "smollm2").save_pretrained(path)
    return path


def _install_wheels(assets: Path) -> str:
    wheels = assets / "wheels"
    if _importable("transformer_lens.patching") and not _missing("gguf") and not _missing("plotly"):
        return "already installed"
    if not wheels.exists():
        return f"no wheels in {wheels}: transformer-lens is left out of the peer comparison"
    files = sorted(str(w) for w in wheels.glob("*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *files],
                          capture_output=True, text=True)
    return "installed from wheels" if done.returncode == 0 else f"install failed: {done.stderr.strip()[-300:]}"


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _importable(module: str) -> bool:
    """Whether ``module`` imports in a fresh interpreter (a wheel installed without its dependencies may not)."""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def _run(part: str, cmd: list[str], limit: float, log: Path) -> dict[str, Any]:
    """Run ``cmd`` with a time limit; its output goes to ``log``."""
    start = time.perf_counter()
    with log.open("w") as sink:
        try:
            rc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, timeout=limit,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    return {"part": part, "status": status, "wall_s": round(time.perf_counter() - start, 1), "log": log.name,
            "command": " ".join(cmd)}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU run ({env['device']}, torch {env['torch']}, CUDA {env['cuda']}, transformers {env['transformers']})",
             "", "| part | status | wall s |", "|---|---|---:|"]
    lines += [f"| {p['part']} | {p['status']} | {p['wall_s']} |" for p in report["parts"]]
    for dtype, peer in report.get("peer", {}).items():
        if peer:
            lines += ["", f"## Exact sweep vs transformer-lens ({dtype})", "",
                      "| pair | speed-up (wall) | max abs diff, per-head mean | max abs diff, per prompt |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {k} | {v['speedup_wall']:.2f}x | {v['max_abs_diff_mean']:.2e} | {v['max_abs_diff_prompt']:.2e} |"
                      for k, v in peer["pairs"].items()]
    battery = report.get("battery")
    if battery:
        lines += ["", "## Full exact map of the battery", "",
                  f"{battery['tasks']} tasks, {battery['n_prompts']} pairs, zero ablation, `--method exact`: "
                  f"{battery['total_s']:.1f} s (sweep and probes; model load excluded)."]
    if report.get("scale"):
        lines += ["", f"## Throughput by model shape ({report['scale'][0]['dtype']}, capped heads, extrapolated)", "",
                  "| model | heads | timed | exact s | heads/s | % bf16 peak | peak mem GB | plan estimate s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in report["scale"]:
            frac = "n/a" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%"
            plan = "-" if r["plan_time_s"] is None else f"{r['plan_time_s']:.0f}"
            lines.append(f"| {r['model']} | {r['n_layers'] * r['n_heads']} | {r['timed_heads']} | {r['exact_s']:.1f} "
                         f"| {r['heads_per_s']:.1f} | {frac} | {r['peak_memory_gb']:.1f} | {plan} |")
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, Any]:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}


def run(assets: Path, out: Path, budget_s: float, dry_run: bool) -> dict[str, Any]:
    """Every part within ``budget_s`` seconds; ``gpu.json`` and ``gpu.md`` rewritten after each."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {"environment": _environment(), "dry_run": dry_run, "parts": [], "peer": {}}
    device = "cpu" if dry_run else "cuda"

    def save() -> None:
        (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "gpu.md").write_text(_markdown(report))

    def left(share: float) -> float:
        return max(5.0, min(budget_s * share, budget_s - (time.perf_counter() - started)))

    report["wheels"] = _install_wheels(assets)
    model = random_model(assets, out, dry_run)
    save()
    py = sys.executable
    peer_args = ["--prompts", "4", "--reps", "1", "--sample-layers", "1"] if dry_run else \
                ["--prompts", "16", "--reps", "2", "--sample-layers", "6"]
    with_lens = _importable("transformer_lens.patching") and _importable("transformer_lens.model_bridge")
    report["transformer_lens"] = with_lens
    contenders = "cortexmap,plain-loop" + (",transformer-lens" if with_lens else "")
    for dtype in ("float32", "bfloat16"):
        path = out / f"peer-{dtype}.json"
        report["parts"].append(_run(f"peer {dtype}", [py, str(HERE / "sweep_vs_transformerlens.py"), "--model", str(model),
                                                      "--device", device, "--dtype", dtype, "--threads", "0",
                                                      "--contenders", contenders, "--json", str(path), *peer_args],
                                    left(SHARES["peer"] / 2), out / f"peer-{dtype}.log"))
        report["peer"][dtype] = _read_json(path)
        save()

    run_dir = out / "battery-run"
    tasks, prompts = ("ioi,capitals", "4") if dry_run else ("all", "32")
    report["parts"].append(_run("battery", [py, "-m", "cortexmap.cli", "map", "--model", str(model), "--tasks", tasks,
                                            "--method", "exact", "--prompts", prompts, "--device", device,
                                            "--out", str(run_dir)], left(SHARES["battery"]), out / "battery.log"))
    manifest = _read_json(run_dir / "manifest.json")
    if manifest and manifest.get("complete"):
        report["battery"] = {"tasks": len(manifest["tasks"]), "n_prompts": int(prompts),
                             "total_s": manifest["timings"]["total_s"], "timings": manifest["timings"]}
    save()

    path = out / "scale.json"
    scale_args = ["--models", "gpt2-small", "--device", "cpu", "--dtype", "float32", "--max-heads", "4",
                  "--prompts", "4", "--seq", "8"] if dry_run else \
                 ["--models", SCALE_MODELS, "--device", "cuda", "--dtype", "bfloat16", "--max-heads", "64",
                  "--prompts", "64", "--seq", "16", "--plan"]
    report["parts"].append(_run("scale", [py, str(HERE / "scale.py"), *scale_args, "--json", str(path)],
                                left(SHARES["scale"]), out / "scale.log"))
    report["scale"] = _read_json(path)
    report["total_s"] = round(time.perf_counter() - started, 1)
    save()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="write the model config, tokenizer and wheels the GPU run needs")
    p.add_argument("--assets", type=Path, default=HERE / "gpu_assets")
    p.add_argument("--wheels", action=argparse.BooleanOptionalAction, default=True)
    r = sub.add_parser("run", help="run every part, time-boxed, and write gpu.json + gpu.md")
    r.add_argument("--assets", type=Path, default=HERE / "gpu_assets")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget-s", type=float, default=480.0)
    r.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.assets, args.wheels)
        return
    report = run(args.assets, args.out, args.budget_s, args.dry_run)
    print(_markdown(report))


if __name__ == "__main__":
    main()
