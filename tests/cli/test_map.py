"""`cortexmap map` on a tiny saved model: a whole run, kill-and-resume, and bad input (one line, exit 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.cli.invoke import assert_one_line_error, invoke


def _cli(*args: str) -> subprocess.Popen:
    # One intra-op thread: a tiny model gains nothing from more, and they are slow on a busy machine.
    return subprocess.Popen([sys.executable, "-m", "cortexmap.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_kill_at_any_moment_then_resume_gives_the_unbroken_numbers(tiny, tmp_path):  # noqa: ANN001
    model, tasks, _ = tiny
    args = ["map", "--model", str(model), "--task-file", str(tasks), "--method", "exact", "--no-probes",
            "--interventions", "zero,mean,resample,patch,amplify:0.5,amplify:-0.5,amplify:2"]
    whole = tmp_path / "whole"
    proc = _cli(*args, "--out", str(whole))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "strongest heads per task" in stdout and "effects.parquet" in stdout and "Traceback" not in stderr
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
    assert_one_line_error(invoke("map", "--model", model, "--out", tmp_path / "r", *extra), message)


def test_patching_without_corrupt_prompts_is_refused(tiny, tmp_path):  # noqa: ANN001
    model, _, no_corrupt = tiny
    result = invoke("map", "--model", model, "--task-file", no_corrupt, "--no-probes", "--interventions", "patch",
                    "--method", "exact", "--out", tmp_path / "r")
    assert_one_line_error(result, "corrupt prompts")


def test_malformed_task_file_is_refused_before_running(tiny, tmp_path):  # noqa: ANN001
    model, _, _ = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "when anna", "target": " bert", "foil": " carl"}\n{"prompt": 3}\n')
    result = invoke("map", "--model", model, "--task-file", bad, "--out", tmp_path / "r")
    assert_one_line_error(result, f"{bad}:2")
    assert not (tmp_path / "r" / "effects.parquet").exists()
