"""`cortexmap prune`, `edit` and `monitor` on a tiny saved model: what they write, and bad input."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers as tf

from cortexmap.apply import load_pruned, pruning_result
from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


def test_prune_writes_the_curve_and_the_pruned_models(tiny, tmp_path):  # noqa: ANN001
    model, _, _ = tiny
    out = tmp_path / "prune"
    stdout = assert_ok(invoke("prune", "--model", model, "--fractions", "0.25,0.5", "--replace", "zero",
                              "--methods", "random", "--battery", 0, "--out", out))
    assert "pruning curve" in stdout and f"wrote {out}/curve.parquet" in stdout
    curve = pd.read_parquet(out / "curve.parquet")
    assert curve[["method", "fraction"]].values.tolist() == [["none", 0.0], ["random", 0.25], ["random", 0.5]]
    assert curve["heads_pruned"].tolist() == [0, 3, 6]  # of 3 layers x 4 heads
    pruned = load_pruned(out / "models" / "random-zero-50pct")
    assert len(pruning_result(pruned).heads) == 6


@pytest.mark.parametrize("extra,message", [
    (["--fractions", "0.2,1.5"], "each must lie strictly between 0 and 1"),
    (["--fractions", "a,b"], "give comma-separated numbers"),
    (["--replace", "resample"], "bad --replace 'resample'"),
])
def test_prune_refuses_bad_options_in_one_line(tiny, tmp_path, extra, message):  # noqa: ANN001
    assert_one_line_error(invoke("prune", "--model", tiny[0], "--out", tmp_path / "p", *extra), message)


def test_edit_bakes_the_edits_into_a_model_transformers_loads(tiny, tmp_path):  # noqa: ANN001
    model, _, _ = tiny
    out = tmp_path / "edit"
    stdout = assert_ok(invoke("edit", "--model", model, "--amplify", "L1H1=0.5", "--ablate", "L0H0",
                              "--prompt", "when anna and", "--max-new-tokens", 2, "--out", out))
    assert "greedy continuations before / after" in stdout and "when anna and" in stdout
    def out_proj_weights(path: object) -> list[torch.Tensor]:
        return [layer.self_attn.o_proj.weight for layer in tf.AutoModelForCausalLM.from_pretrained(path).model.layers]

    before, after = out_proj_weights(model), out_proj_weights(out / "model")
    d = 8  # hidden 32 / 4 heads: a head is 8 input columns of o_proj
    assert torch.equal(after[0][:, :d], torch.zeros_like(before[0][:, :d]))  # L0H0 ablated
    assert torch.equal(after[0][:, d:], before[0][:, d:])
    assert torch.allclose(after[1][:, d:2 * d], 1.5 * before[1][:, d:2 * d])  # L1H1 x (1 + 0.5)
    assert torch.equal(after[1][:, :d], before[1][:, :d]) and torch.equal(after[1][:, 2 * d:], before[1][:, 2 * d:])
    assert torch.equal(after[2], before[2])
    assert pd.read_parquet(out / "generations.parquet")["prompt"].tolist() == ["when anna and"]


@pytest.mark.parametrize("extra,message", [
    ([], "nothing to edit"),
    (["--amplify", "L1H1"], "bad amplification 'L1H1'"),
    (["--ablate", "L7H0"], "L7H0 does not exist"),
])
def test_edit_refuses_bad_options_in_one_line(tiny, tmp_path, extra, message):  # noqa: ANN001
    assert_one_line_error(invoke("edit", "--model", tiny[0], "--out", tmp_path / "e", *extra), message)


def test_monitor_flags_the_norms_above_a_threshold(tiny, tmp_path):  # noqa: ANN001
    model, _, _ = tiny
    args = ["monitor", "--model", model, "--heads", "L0H1,L2H2", "--prompt", "when anna and bert",
            "--max-new-tokens", 3]
    plain = assert_ok(invoke(*args, "--out", tmp_path / "plain"))
    assert "L0H1 norm" in plain and "L2H2 entropy" in plain
    norms = pd.read_parquet(tmp_path / "plain" / "monitor.parquet")
    limit = float(norms["norm"].median())  # from the data: some values above, some not
    result = invoke(*args, "--norm", f",{limit!r}", "--out", tmp_path / "flagged")
    assert_ok(result)
    frame = pd.read_parquet(tmp_path / "flagged" / "monitor.parquet")
    assert frame["norm"].tolist() == norms["norm"].tolist()
    above = frame["norm"] > limit
    assert 0 < above.sum() < len(frame)
    assert (frame["flag"] == above.map({True: f"norm>{limit:g}", False: ""})).all()
    assert f"{int(above.sum())} flagged (step, head) values over {frame['step'].nunique()} steps" in result.stderr


@pytest.mark.parametrize("extra,message", [
    (["--norm", "abc"], "bad threshold 'abc'"),
    (["--heads", "L9H0"], "L9H0 does not exist"),
])
def test_monitor_refuses_bad_options_in_one_line(tiny, extra, message):  # noqa: ANN001
    assert_one_line_error(invoke("monitor", "--model", tiny[0], "--prompt", "when anna", *extra), message)
