"""End-to-end sweeps on a tiny saved model: schema, kill-and-resume, bad input, Ray = local."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cortexmap.cli import app
from cortexmap.sweep import SweepConfig, load_results, run_sweep
from tests.sweep.tiny_run import make_model_dir, make_task_file

EFFECT_COLUMNS = ["model", "task", "level", "intervention", "alpha", "method", "layer", "head", "head_id",
                  "n_prompts", "clean", "intervened", "effect", "effect_normalized", "ci_low", "ci_high"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("tiny")
    return make_model_dir(root), make_task_file(root), make_task_file(root / "..", corrupt=False)


def config(model: Path, task_file: Path, **kw) -> SweepConfig:  # noqa: ANN003
    base = dict(model=str(model), task_file=str(task_file), interventions="zero,mean,resample,patch,amplify:0.5",
                method="exact", probes=False)
    return SweepConfig(**{**base, **kw})


def test_sweep_writes_the_documented_schema(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    result = run_sweep(config(model, tasks), tmp_path / "run")
    effects = pd.read_parquet(tmp_path / "run" / "effects.parquet")
    assert list(effects.columns) == EFFECT_COLUMNS
    assert set(effects["intervention"]) == {"zero", "mean", "resample", "patch", "amplify"}
    assert len(effects) == 5 * 3 * 4 and (effects["ci_low"] <= effects["ci_high"]).all()
    amp = effects[effects.intervention == "amplify"]
    assert (amp["alpha"] == 0.5).all() and effects[effects.intervention == "zero"]["alpha"].isna().all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for key in ("schema_version", "versions", "model", "seed", "arguments", "timings", "tasks"):
        assert key in manifest
    assert manifest["model"]["hash"] and manifest["complete"]
    assert load_results(tmp_path / "run").effects.equals(result.effects)
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "run" / "effects.parquet"), split="train")
    assert ds.num_rows == len(effects)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cortexmap.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kill_at_any_moment_then_resume_gives_the_unbroken_numbers(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    args = ["map", "--model", str(model), "--task-file", str(tasks), "--method", "exact", "--no-probes",
            "--interventions", "zero,mean,resample,patch,amplify:0.5,amplify:-0.5,amplify:2"]
    whole = tmp_path / "whole"
    assert _cli(*args, "--out", str(whole)).wait() == 0
    broken = tmp_path / "broken"
    proc = _cli(*args, "--out", str(broken))
    deadline = time.time() + 120
    while time.time() < deadline and not any((broken / "units").glob("*.effects.parquet")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (broken / "units").glob("*.effects.parquet")}
    assert 0 < len(done_before) < 7, "the kill should land mid-run"
    for path in broken.rglob("*.parquet"):  # nothing half-written
        pd.read_parquet(path)
    json.loads((broken / "manifest.json").read_text())
    resumed = _cli(*args, "--out", str(broken), "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    for name, mtime in done_before.items():  # finished units were not redone
        assert (broken / "units" / name).stat().st_mtime_ns == mtime
    a = pd.read_parquet(whole / "effects.parquet").sort_values(["intervention", "alpha", "layer", "head"])
    b = pd.read_parquet(broken / "effects.parquet").sort_values(["intervention", "alpha", "layer", "head"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


@pytest.mark.parametrize("extra,message", [
    (["--tasks", "no_such_task"], "no_such_task"),
    (["--batch-size", "0"], "impossible batch size"),
    (["--interventions", "zero,explode"], "unknown intervention"),
    (["--method", "attribution+verify:x"], "unknown method"),
])
def test_bad_arguments_get_one_line_and_exit_1(tiny, tmp_path, extra, message):  # noqa: ANN001
    model, _, _ = tiny
    result = CliRunner().invoke(app, ["map", "--model", str(model), "--out", str(tmp_path / "r"), *extra])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_patching_without_corrupt_prompts_is_refused(tiny, tmp_path):  # noqa: ANN001
    model, _, no_corrupt = tiny
    result = CliRunner().invoke(app, ["map", "--model", str(model), "--task-file", str(no_corrupt), "--no-probes",
                                      "--interventions", "patch", "--method", "exact", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "corrupt prompts" in result.output


def test_malformed_task_file_is_refused_before_running(tiny, tmp_path):  # noqa: ANN001
    model, _, _ = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "when anna", "target": " bert", "foil": " carl"}\n{"prompt": 3}\n')
    result = CliRunner().invoke(app, ["map", "--model", str(model), "--task-file", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and ":2" in result.output and not (tmp_path / "r" / "effects.parquet").exists()


def test_an_existing_run_needs_resume(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    run_sweep(config(model, tasks, interventions="zero"), tmp_path / "run")
    with pytest.raises(Exception, match="--resume"):
        run_sweep(config(model, tasks, interventions="zero"), tmp_path / "run")
    with pytest.raises(Exception, match="other arguments"):
        run_sweep(config(model, tasks, interventions="mean"), tmp_path / "run", resume=True)


def test_attribution_with_verification_records_the_rank_correlation(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    result = run_sweep(config(model, tasks, interventions="zero", method="attribution+verify:6"), tmp_path / "run")
    info = next(iter(result.manifest["attribution"].values()))
    assert info["verified_heads"] == 6 and -1 <= info["spearman"] <= 1
    assert set(result.effects["method"]) == {"attribution", "exact"}
    assert (result.effects["method"] == "exact").sum() == 6


@pytest.mark.ray
def test_ray_backend_equals_local(tiny, tmp_path):  # noqa: ANN001
    pytest.importorskip("ray")
    model, tasks, _ = tiny
    local = run_sweep(config(model, tasks, interventions="zero,patch"), tmp_path / "local")
    remote = run_sweep(config(model, tasks, interventions="zero,patch", backend="ray", n_workers=2), tmp_path / "ray")
    key = ["intervention", "layer", "head"]
    a = local.effects.sort_values(key).reset_index(drop=True)
    b = remote.effects.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)
    stats = remote.manifest["ray"]
    assert stats["workers"] == 2 and 0 < stats["busy_fraction"] <= 1.05
    # Screen units run whole on the workers, several in flight: the same numbers as in this process.
    screen = dict(interventions="zero,mean", method="screen", screen_prompts=2, max_verify=4, audit=2)
    local = run_sweep(config(model, tasks, **screen), tmp_path / "local-screen")
    remote = run_sweep(config(model, tasks, backend="ray", n_workers=2, **screen), tmp_path / "ray-screen")
    key = ["intervention", "method", "layer", "head"]
    pd.testing.assert_frame_equal(local.effects.sort_values(key).reset_index(drop=True),
                                  remote.effects.sort_values(key).reset_index(drop=True), check_exact=False, atol=1e-6, rtol=0)
    assert remote.manifest["audit"] == local.manifest["audit"]


def test_exact_units_are_cut_into_blocks_of_equal_cost():
    from cortexmap.sweep.ray_backend import balanced_blocks

    heads = [(l, h) for l in range(30) for h in range(9)]
    blocks = balanced_blocks(heads, 30, 4)
    assert sorted(h for b in blocks for h in b) == heads and len(blocks) == 4
    costs = [sum(30 - l for l, _ in b) for b in blocks]
    assert max(costs) - min(costs) <= 2 * 30  # within two heads' cost of each other
    assert balanced_blocks(heads[:3], 30, 8) == [[h] for h in heads[:3]]


def test_screen_verifies_in_screen_order_audits_the_rest_and_matches_exact(tiny, tmp_path):  # noqa: ANN001
    """Screen rows cover every head on a subsample; exact rows equal an all-exact run's for the heads they cover."""
    model, tasks, _ = tiny
    run = run_sweep(config(model, tasks, interventions="zero,mean", method="screen", screen_prompts=2, max_verify=4,
                           audit=3), tmp_path / "screen")
    full = run_sweep(config(model, tasks, interventions="zero,mean"), tmp_path / "exact")
    screen = run.effects[(run.effects["method"] == "screen") & (run.effects["intervention"] == "zero")]
    exact = run.effects[run.effects["method"] == "exact"]
    assert len(screen) == 12 and (screen["n_prompts"] == 2).all()
    assert len(exact) == 2 * (4 + 3) and (exact["n_prompts"] == 12).all()
    # Zero ablation reuses the screen's prompts, mean ablation (task mean of all prompts) remeasures them.
    merged = exact.merge(full.effects, on=["intervention", "layer", "head"], suffixes=("", "_full"))
    assert len(merged) == len(exact) and np.allclose(merged["effect"], merged["effect_full"], atol=1e-6)
    first = screen.reindex(screen["effect"].abs().sort_values(ascending=False).index).head(4)
    verified = set(zip(first["layer"], first["head"]))
    assert verified <= set(zip(exact["layer"], exact["head"]))  # the screen's top 4 were verified
    record = next(iter(run.manifest["verification"].values()))
    assert record["verified"] == 4 and record["audit_audited"] == 3 and record["stopped"] == "budget"
    assert run.manifest["method"] == "screen" and run.manifest["audit"]["audited"] == 6
    assert run.manifest["audit"]["ci_low"] <= run.manifest["audit"]["rate"] <= run.manifest["audit"]["ci_high"]


def test_a_passed_handle_is_the_model_recorded(tiny, tmp_path):  # noqa: ANN001
    from cortexmap.models import load_model

    model, tasks, _ = tiny
    handle = load_model(str(model))
    handle.spec = "my-own-handle"
    result = run_sweep(config("not-this-model", tasks, interventions="zero"), tmp_path / "run", handle=handle)
    assert result.manifest["model"]["spec"] == "my-own-handle"
    assert set(result.effects["model"]) == {"my-own-handle"}
