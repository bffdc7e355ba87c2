"""`cortexmap circuit` on a tiny run and `cortexmap explain` on the tiny model: tables, files, figures, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cortexmap.results.layout import CIRCUIT, CIRCUIT_CURVES, CIRCUIT_PROMPTS, MANIFEST, REGULATION
from tests.circuits.test_explain import in_html
from tests.cli.invoke import assert_ok, assert_one_line_error, invoke

PROMPT = "when anna and bert went to the store bert gave a drink to"


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    model, tasks, _ = tiny
    out = tmp_path_factory.mktemp("circuit") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the per-test one-thread fixture
    try:
        assert_ok(invoke("map", "--model", model, "--task-file", tasks, "--method", "exact", "--no-probes",
                         "--interventions", "zero", "--out", out))
    finally:
        torch.set_num_threads(before)
    return out, tasks


def _documented_columns(heading: str) -> set[str]:
    text = (Path(__file__).parents[2] / "docs" / "schema.md").read_text(encoding="utf-8")
    section = re.split(rf"^#+ {re.escape(heading)}\n", text, maxsplit=1, flags=re.MULTILINE)[1]
    section = re.split(r"^#", section, maxsplit=1, flags=re.MULTILINE)[0]
    return {name for cell in re.findall(r"^\| ([^|]+) \|", section, re.MULTILINE) for name in re.findall(r"`([a-z_]+)`", cell)}


def test_circuit_writes_documented_tables_and_prints_rankings(tiny_run):
    run, _ = tiny_run
    out = assert_ok(invoke("circuit", run, "--task", "ioi_tiny", "--verify", "8", "--fractions", "5%,0.2,1",
                           "--prompts", "8", "--steps", "2", "--random", "2"))
    out = " ".join(out.split())  # rich wraps long titles
    for word in ("verified", "eap-ig", "random (mean of 2 draws)", "CPR (absolute", "CMD (absolute",
                 "smallest 80% circuit", "strongest verified edges", "4 held-out prompts (screen and verification on "
                 "the other 4)", "in sample", "paired bootstrap", "per KV group", "per query head"):
        assert word in out, word
    edges = pd.read_parquet(run / CIRCUIT)
    assert set(edges.columns) == _documented_columns("circuit.parquet")
    assert (edges["method"] == "exact").sum() == 8 and set(edges["task"]) == {"ioi_tiny"}
    curves = pd.read_parquet(run / CIRCUIT_CURVES)
    assert set(curves.columns) == _documented_columns("circuit_curves.parquet")
    assert {"verified", "eap", "eap-ig", "random", "full", "empty"} == set(curves["method"])
    assert set(curves["split"]) == {"heldout", "discovery"}
    prompts = pd.read_parquet(run / CIRCUIT_PROMPTS)
    assert set(prompts.columns) == _documented_columns("circuit_prompts.parquet") and len(prompts) == 8 * 4
    assert "why the model errs on ioi_tiny (edges" in out.lower()
    entry = json.loads((run / MANIFEST).read_text())["circuits"]["ioi_tiny"]
    assert entry["arguments"]["n_prompts"] == 8 and entry["arguments"]["fractions"] == [0.05, 0.2, 1.0]
    assert (entry["arguments"]["n_discovery"], entry["arguments"]["n_heldout"]) == (4, 4)
    assert [row["method"] for row in entry["summary"]] == ["verified", "eap", "eap-ig", "random"]


@pytest.fixture(scope="module")
def bos_run(tiny, tmp_path_factory):
    """The tiny model with a BOS token (MIB's protocol prepends one) and a finished run of it."""
    import shutil

    from transformers import AutoTokenizer

    model, tasks, _ = tiny
    root = tmp_path_factory.mktemp("bos")
    shutil.copytree(model, root / "bos-model")
    tok = AutoTokenizer.from_pretrained(root / "bos-model")
    tok.bos_token = "[UNK]"
    tok.save_pretrained(root / "bos-model")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert_ok(invoke("map", "--model", root / "bos-model", "--task-file", tasks, "--method", "exact", "--no-probes",
                         "--interventions", "zero", "--out", root / "run"))
    finally:
        torch.set_num_threads(before)
    return root / "run"


def test_mib_protocol_exports_and_a_reimport_reproduces_its_numbers(bos_run, tmp_path):
    common = ["--task", "ioi_tiny", "--verify", "6", "--fractions", "5%,0.2,1", "--prompts", "8", "--steps", "2",
              "--random", "2", "--protocol", "mib"]
    path = tmp_path / "ioi.json"
    out = " ".join(assert_ok(invoke("circuit", bos_run, *common, "--export", path)).split())
    assert "protocol mib" in out and "CPR (signed" in out and "CMD (absolute" in out and f"exported {path}" in out
    assert "key/value inputs per query head as MIB counts them" in out and "after MIB's pruning" in out
    graph = json.loads(path.read_text())
    assert set(graph) == {"cfg", "nodes", "edges"} and graph["cfg"]["parallel_attn_mlp"] is False
    again = assert_ok(invoke("circuit", bos_run, *common, "--import-graph", path, "--no-in-sample"))
    assert "imported" in again
    circuits = json.loads((bos_run / MANIFEST).read_text())["circuits"]
    rows = {row["method"]: row for row in circuits["ioi_tiny@mib"]["summary"]}
    exported = circuits["ioi_tiny@mib"]["circuit_method"] or "eap-ig"
    for name in ("cpr", "cmd", "smallest"):
        assert rows["imported"][name] == pytest.approx(rows[exported][name], abs=1e-6), name
    curves = pd.read_parquet(bos_run / CIRCUIT_CURVES)
    assert set(curves.loc[curves["protocol"] == "mib", "order"]) == {"absolute", "signed", "random", ""}


@pytest.mark.parametrize("extra,message", [
    (["--task", "no_such_task"], "unknown task 'no_such_task'"),
    (["--task", "ioi_tiny", "--screen", "acdc"], "unknown screen"),
    (["--task", "ioi_tiny", "--fractions", "0.5,0.1"], "must increase"),
    (["--task", "ioi_tiny", "--fractions", "a,b"], "bad circuit fraction"),
    (["--task", "ioi_tiny", "--prompts", "0"], "--prompts must be at least 1"),
    (["--task", "ioi_tiny", "--prompts", "1"], "at least two prompts"),
    (["--task", "ioi_tiny", "--heldout", "1"], "in [0, 1)"),
    (["--task", "ioi_tiny", "--protocol", "acdc"], "unknown protocol 'acdc'"),
    (["--task", "ioi_tiny", "--protocol", "mib"], "prepends a BOS token"),
    (["--task", "ioi_tiny", "--protocol", "mib", "--ablation", "mean"], "MIB's protocol patches edges from corrupt"),
    (["--task", "ioi_tiny", "--export", "x.csv"], "--export writes an EAP-IG / MIB graph .json"),
    (["--task", "ioi_tiny", "--import-graph", "no_such.json"], "is not an EAP-IG / MIB graph file"),
])
def test_circuit_bad_input_is_one_line(tiny_run, extra, message):
    run, _ = tiny_run
    assert_one_line_error(invoke("circuit", run, *extra), message)


def test_importing_a_per_head_graph_under_grouped_counting_is_refused(tiny_run, tmp_path):
    from cortexmap.circuits.graph import Graph
    from cortexmap.circuits.interchange import write_mib_graph

    run, _ = tiny_run
    path = write_mib_graph(tmp_path / "g.json", Graph(3, 4, 4), np.zeros(Graph(3, 4, 4).n_edges),
                           np.zeros(Graph(3, 4, 4).n_edges, bool), 32)
    assert_one_line_error(invoke("circuit", run, "--task", "ioi_tiny", "--import-graph", path),
                          "import it with --protocol mib")


def test_circuit_on_a_directory_that_is_no_run(tmp_path):
    assert_one_line_error(invoke("circuit", tmp_path, "--task", "ioi"), "is not a cortexmap run")


def test_explain_prints_a_table(tiny):
    model, _, _ = tiny
    out = assert_ok(invoke("explain", "--model", model, "--prompt", PROMPT, "--target", " anna", "--foil", " bert",
                           "--verify", "6", "--steps", "2"))
    assert "edges that carried it" in out and "share" in out and "heads:" in out
    assert "when bert and anna went to the store anna gave a drink to" in out  # the swapped corrupt prompt


def test_explain_out_draws_every_verified_edge(tiny, tmp_path):
    from cortexmap.circuits import explain_decision
    from cortexmap.models import load_model

    model, _, _ = tiny
    path = tmp_path / "explain.html"
    out = assert_ok(invoke("explain", "--model", model, "--prompt", PROMPT, "--target", " anna", "--foil", " bert",
                           "--verify", "6", "--steps", "2", "--out", path))
    assert f"wrote {path}" in out
    page = path.read_text(encoding="utf-8")
    ex = explain_decision(load_model(str(model)), PROMPT, " anna", " bert", verify=6, steps=2)  # the same numbers
    for r in ex.edges.itertuples():
        assert in_html(f"{r.sender} → {r.receiver} ({r.kind})", page) and f"effect {r.effect:+.3f} (exact)" in page


@pytest.mark.parametrize("extra,message", [
    (["--target", " anna carl", "--foil", " bert"], "give a single-token target"),
    (["--target", " anna", "--foil", " anna"], "same token"),
    (["--target", " anna", "--foil", " bert", "--corrupt", "when bert and anna went"], "same length"),
    (["--target", " carl", "--foil", " dora"], "pass --corrupt"),
    (["--target", " anna", "--foil", " bert", "--out", "explain.gif"], "give a path ending in .svg, .png, .pdf, .html"),
])
def test_explain_bad_input_is_one_line(tiny, extra, message):
    model, _, _ = tiny
    assert_one_line_error(invoke("explain", "--model", model, "--prompt", PROMPT, *extra), message)


def test_explain_without_a_prompt_or_a_head_is_one_line(tiny):
    model, _, _ = tiny
    assert_one_line_error(invoke("explain", "--model", model, "--target", " anna"), "explain needs --prompt")
    assert_one_line_error(invoke("explain", "--model", model, "--prompt", PROMPT, "--target", " anna", "--foil", " bert",
                                 "--json", "x.json"), "--json writes explain --attention's tables")


def test_explain_attention_over_a_task_prints_senders_and_draws_them(tiny, tmp_path):
    from cortexmap.circuits import explain_attention
    from cortexmap.models import load_model
    from cortexmap.tasks import load_task_file

    model, tasks, _ = tiny
    path, saved = tmp_path / "attention.html", tmp_path / "attention.json"
    out = assert_ok(invoke("explain", "--model", model, "--attention", "L2H1", "--task-file", tasks, "--prompts", "6",
                           "--top", "5", "--out", path, "--json", saved))
    assert "L2H1: A(target token) - A(foil token) at query position -1 =" in out and "over 6 prompts" in out
    assert "query side" in out and "key side" in out and "95% CI over prompts" in out and f"wrote {path}" in out
    handle = load_model(str(model))
    task = load_task_file(tasks, handle.tokenizer, min_pairs=1)
    task.pairs = task.pairs[:6]
    ex = explain_attention(handle, task, "L2H1")  # the same numbers through the library
    page = path.read_text(encoding="utf-8")
    for r in ex.senders.head(5).itertuples():
        assert f"{r.effect:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]" in out
        assert in_html(f"{r.sender} → {r.receiver} ({r.side} side of L2H1)", page)
    record = json.loads(saved.read_text())  # the same tables, for scripts
    assert record["head"] == "L2H1" and len(record["prompts"]) == 6 and len(record["senders"]) == len(ex.senders)
    assert [(r["sender"], r["side"]) for r in record["senders"]] == list(zip(ex.senders["sender"], ex.senders["side"]))
    assert [r["effect"] for r in record["senders"]] == pytest.approx(list(ex.senders["effect"]), abs=1e-9)
    assert {r["side"]: r["effect"] for r in record["totals"]} == pytest.approx(
        dict(zip(ex.totals["side"], ex.totals["effect"])), abs=1e-9)


def test_explain_attention_on_one_prompt_has_no_intervals(tiny):
    model, _, _ = tiny
    out = assert_ok(invoke("explain", "--model", model, "--attention", "L2H1", "--prompt", PROMPT, "--key", "anna",
                           "--contrast", "3", "--corrupt", "when bert and anna went to the store anna gave a drink to",
                           "--metric", "log-weight"))
    assert "log A(token 'anna') - log A(position 3)" in out and "over 1 prompts" in out and "95% CI" not in out


@pytest.mark.parametrize("extra,message", [
    (["--attention", "L9H0", "--prompt", PROMPT], "L9H0 does not exist"),
    (["--attention", "H2", "--prompt", PROMPT], "is not a head name"),
    (["--attention", "L2H1"], "exactly one of --task NAME, --task-file FILE or --prompt TEXT"),
    (["--attention", "L2H1", "--task", "nope"], "unknown task 'nope'"),
    (["--attention", "L2H1", "--prompt", PROMPT, "--key", "carl", "--target", " anna", "--foil", " bert"],
     "token 'carl' is not among the tokens"),
    (["--attention", "L2H1", "--prompt", PROMPT], "corrupt ablation needs a corrupt prompt"),
    (["--attention", "L2H1", "--prompt", PROMPT, "--target", " anna", "--foil", " bert", "--metric", "score"],
     "unknown attention metric 'score'"),
    (["--attention", "L2H1", "--prompt", PROMPT, "--target", " anna", "--foil", " bert", "--out", "a.gif"],
     "give a path ending in .svg, .png, .pdf, .html"),
])
def test_explain_attention_bad_input_is_one_line(tiny, extra, message):
    model, _, _ = tiny
    assert_one_line_error(invoke("explain", "--model", model, *extra), message)


def test_regulate_writes_its_table_and_analyze_states_it(tiny_run):
    run, _ = tiny_run
    out = assert_ok(invoke("regulate", run, "--head", "L1H0", "--condition", "ambiguity", "--prompts", "3",
                           "--edges", "3", "--random", "2"))
    assert "Regulator test on edges, L1H0 on ambiguity" in out and "mean ablation (counterfactual)" in out
    table = pd.read_parquet(run / REGULATION)
    assert set(table.columns) == _documented_columns("regulation.parquet")
    assert len(table) == 3 * 2 * 3 and set(table["role"]) == {"candidate", "baseline"}
    entry = json.loads((run / MANIFEST).read_text())["regulation"]["L1H0:ambiguity"]
    assert len(entry["edges"]) == 3 and entry["arguments"]["n_random"] == 2
    analyzed = assert_ok(invoke("analyze", run))
    assert "Regulator test on edges, L1H0 on ambiguity" in analyzed


@pytest.mark.parametrize("extra,message", [
    (["--head", "L9H0"], "L9H0 is not a head of this model"),
    (["--head", "L1H0", "--condition", "mood"], "unknown condition 'mood'"),
    (["--head", "L2H1"], "no query or key edge lies above L2H1"),
])
def test_regulate_bad_input_is_one_line(tiny_run, extra, message):
    run, _ = tiny_run
    assert_one_line_error(invoke("regulate", run, *extra, "--prompts", "2", "--random", "0"), message)
