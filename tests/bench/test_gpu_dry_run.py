"""``bench/gpu.py`` cannot rot: its dry run (tiny shapes, CPU) runs every part and writes the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_part(tmp_path):  # noqa: ANN001
    assets, out = tmp_path / "assets", tmp_path / "out"
    subprocess.run([sys.executable, str(SCRIPT), "prepare", "--assets", str(assets), "--no-wheels"], check=True)
    assert (assets / "smollm2" / "config.json").exists() and (assets / "smollm2" / "tokenizer.json").exists()
    done = subprocess.run([sys.executable, str(SCRIPT), "run", "--assets", str(assets), "--out", str(out),
                           "--dry-run", "--budget-s", "400"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    statuses = {p["part"]: p["status"] for p in report["parts"]}
    assert statuses == {"peer float32": "ok", "peer bfloat16": "ok", "battery": "ok", "scale": "ok"}, \
        {p["part"]: (out / p["log"]).read_text()[-1500:] for p in report["parts"] if p["status"] != "ok"}
    assert report["battery"]["tasks"] == 2 and report["battery"]["total_s"] > 0
    assert report["scale"][0]["model"] == "gpt2-small" and report["peer"]["float32"]["pairs"]
    pair = report["peer"]["float32"]["pairs"]["cortexmap vs plain-loop"]
    assert pair["max_abs_diff_prompt"] < 1e-3  # the dry run still checks agreement of two code paths
    assert "Full exact map of the battery" in (out / "gpu.md").read_text()
