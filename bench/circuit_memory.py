"""Peak memory of the edge screen against one forward + backward pass at the same batch size.

Usage::

    python bench/circuit_memory.py --model smollm2-135m --prompts 16

Each measurement runs in a fresh process (one thread): load the model, encode the task's longest
equal-length batch, run one warm-up forward, then record the peak resident set size *above* that
point (``ru_maxrss`` after minus before) while doing one of:

* ``forward+backward``: the metric's forward and backward, parameters with gradients (a training
  step's memory: what "one forward + backward pass" usually means);
* ``forward+backward (no param grads)``: the same with ``requires_grad`` off on every parameter and
  the gradient taken on the embeddings only (the least any backward pass can hold);
* ``eap``, ``eap-ig``, ``eap-ig-inputs``: :func:`~cortexmap.circuits.attribution.edge_scores`.

``ru_maxrss`` is a high-water mark, so each number is an upper bound on the extra memory the step
needed; repeated runs on this machine vary by about +-60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = ("forward+backward", "forward+backward (no param grads)", "eap", "eap-ig", "eap-ig-inputs")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def measure(model: str, task_name: str, prompts: int, mode: str, steps: int) -> dict:
    import torch

    import cortexmap
    from cortexmap.circuits.attribution import edge_scores
    from cortexmap.tasks import build_task, encode_task
    from cortexmap.tasks.core import logit_diff

    torch.set_num_threads(1)
    handle = cortexmap.load_model(model)
    task = build_task(task_name, handle.tokenizer, n=prompts)
    batch = max(encode_task(task, handle.tokenizer), key=len)
    with torch.no_grad():
        handle.model(input_ids=batch.input_ids, use_cache=False)
    before = _rss_mb()
    if mode.startswith("forward+backward"):
        params = "no param grads" not in mode
        for p in handle.model.parameters():
            p.requires_grad_(params)
        embeds = handle.model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
        logits = handle.model(inputs_embeds=embeds, use_cache=False).logits[:, -1]
        logit_diff(logits.float(), batch.target_ids, batch.foil_ids).sum().backward()
    else:
        edge_scores(handle, batch, mode, steps, "corrupt")
    return {"mode": mode, "rows": len(batch), "seq": int(batch.input_ids.shape[1]),
            "extra_mb": round(_rss_mb() - before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement (child process)
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per mode (the minimum is printed)")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.model, args.task, args.prompts, args.mode, args.steps)))
        return
    rows = []
    for mode in MODES:
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--task", args.task,
                                  "--prompts", str(args.prompts), "--steps", str(args.steps), "--mode", mode],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        rows.append(min(runs, key=lambda r: r["extra_mb"]))
        print(f"  {mode}: +{rows[-1]['extra_mb']:.0f} MB ({[r['extra_mb'] for r in runs]})", flush=True)
    base = rows[0]["extra_mb"]
    print(f"\n{args.model}, {args.task}, {rows[0]['rows']} prompts x {rows[0]['seq']} tokens, one thread, "
          f"EAP-IG steps={args.steps}")
    print(f"{'mode':<36}{'extra MB':>10}{'/ fwd+bwd':>11}")
    for row in rows:
        print(f"{row['mode']:<36}{row['extra_mb']:>10.0f}{row['extra_mb'] / base:>10.2f}x")


if __name__ == "__main__":
    main()
