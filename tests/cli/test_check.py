"""`cortexmap check` on a tiny saved model, `info`'s record of it, and the gate `map` runs first."""

from __future__ import annotations

import json

import pytest

from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


@pytest.fixture()
def cache(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """A private cache for check records (the tiny model needs nothing else from the cache)."""
    monkeypatch.setenv("CORTEXMAP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _break_hooks(monkeypatch) -> None:  # noqa: ANN001
    """Intervention hooks that are silently never registered."""
    monkeypatch.setattr("cortexmap.interventions.context.register_edits", lambda handle, edits: [])


def test_check_prints_the_table_writes_json_and_info_shows_it(tiny, tmp_path, cache):  # noqa: ANN001
    model, _, _ = tiny
    assert "not checked: run cortexmap check" in assert_ok(invoke("info", model))
    out = assert_ok(invoke("check", model, "--json", tmp_path / "check.json"))
    assert "weight_edit" in out and "padding" in out and "passed: 11 invariants hold" in out
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and len(report["results"]) == 12 and report["subset"] == "full"
    assert all(r["deviation"] is None or r["deviation"] <= r["tolerance"] or not r["gate"] for r in report["results"])
    assert "passed, full check" in assert_ok(invoke("info", model))


def test_broken_hooks_fail_in_one_line_and_exit_1(tiny, monkeypatch, cache):  # noqa: ANN001
    model, _, _ = tiny
    _break_hooks(monkeypatch)
    result = invoke("check", model, "--fast")
    assert_one_line_error(result, "weight_edit")
    assert "not applied" in result.stderr
    assert "failed (weight_edit), fast check" in assert_ok(invoke("info", model))  # failed checks are recorded too


def test_map_refuses_a_model_that_fails_the_gate_and_skip_check_is_recorded(tiny, tmp_path, monkeypatch, cache):  # noqa: ANN001
    model, tasks, _ = tiny
    _break_hooks(monkeypatch)
    args = ["map", "--model", model, "--task-file", tasks, "--no-probes", "--method", "exact", "--interventions", "zero"]
    result = invoke(*args, "--out", tmp_path / "refused")
    assert_one_line_error(result, "weight_edit")
    assert "--skip-check" in result.stderr and not (tmp_path / "refused" / "manifest.json").exists()
    assert_ok(invoke(*args, "--out", tmp_path / "skipped", "--skip-check"))
    manifest = json.loads((tmp_path / "skipped" / "manifest.json").read_text())
    assert manifest["check"]["status"] == "skipped" and manifest["check"]["reason"] == "--skip-check"


def test_map_records_the_gate_it_passed(tiny, tmp_path, cache):  # noqa: ANN001
    model, tasks, _ = tiny
    assert_ok(invoke("map", "--model", model, "--task-file", tasks, "--no-probes", "--method", "exact",
                     "--interventions", "zero", "--out", tmp_path / "r"))
    record = json.loads((tmp_path / "r" / "manifest.json").read_text())["check"]
    assert record["status"] == "passed" and record["subset"] == "fast" and record["failed"] == []
    assert record["counts"]["pass"] == 5


def test_report_header_says_whether_the_model_was_checked():  # noqa: D103
    from cortexmap.report.render import check_chip

    assert check_chip(None).startswith("model not checked")
    assert check_chip({"status": "passed", "subset": "fast", "checked_at": "2026-12-05T21:00:00+00:00"}) == \
        "invariants passed (fast check, 2026-12-05)"
    bundled = {"status": "not run", "reason": "bundled model", "last": None}
    assert check_chip(bundled) == "invariants not checked: bundled model"
    skipped = {"status": "skipped", "reason": "--skip-check",
               "last": {"status": "passed", "subset": "full", "checked_at": "2026-12-01T00:00:00+00:00"}}
    assert check_chip(skipped) == "invariants passed (full check, 2026-12-01), map ran with --skip-check"
