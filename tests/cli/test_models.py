"""`cortexmap models` and `cortexmap info`."""

from __future__ import annotations

from cortexmap.models.bundled import BUNDLED
from tests.cli.invoke import assert_ok, assert_one_line_error, invoke


def test_models_lists_every_bundled_model():
    out = assert_ok(invoke("models"))
    assert "bundled models" in out
    for name in BUNDLED:
        assert name in out


def test_info_prints_the_shape_and_the_kv_groups_of_a_model_directory(tiny):  # noqa: ANN001
    model, _, _ = tiny
    out = assert_ok(invoke("info", model))
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3}
    assert rows["model_type"] == "llama" and rows["n_layers"] == "3" and rows["n_heads"] == "4"
    assert rows["n_kv_heads"] == "2" and rows["d_head"] == "8"
    assert rows["kv groups"] == "kv0: q0,1  kv1: q2,3"  # query heads 0-1 read KV head 0, 2-3 KV head 1


def test_info_on_a_directory_without_a_model_is_one_line(tmp_path):  # noqa: ANN001
    assert_one_line_error(invoke("info", tmp_path), "not a Hugging Face model directory")
