"""`cortexmap plan`: a calibrated plan of a tiny saved model, and a config-only plan that cannot fit."""

from __future__ import annotations

from tests.cli.invoke import assert_ok, assert_one_line_error, invoke
from tests.tiny import _config


def test_plan_command_on_a_model_directory(tiny) -> None:  # noqa: ANN001
    model, tasks, _ = tiny
    out = assert_ok(invoke("plan", "--model", model, "--task-file", tasks, "--method", "exact"))
    assert "forward-pass equivalents" in out and "calibrated on cpu" in out
    assert "fits: about" in out


def test_plan_command_from_a_config_alone_refuses_what_cannot_fit(tmp_path) -> None:  # noqa: ANN001
    config = _config("llama")
    config.update({"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 28672,
                   "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000})
    config.save_pretrained(tmp_path)  # a config.json with no weights: 69B parameters, planned from shapes
    result = invoke("plan", "--model", tmp_path, "--tasks", "ioi", "--dtype", "bfloat16")
    assert_one_line_error(result, "GB")
    assert "weights alone" in result.output
    assert "80 layers x 64 heads" in result.output


def test_plan_command_refuses_an_unknown_method_in_one_line(tiny) -> None:  # noqa: ANN001
    assert_one_line_error(invoke("plan", "--model", tiny[0], "--method", "guess"), "unknown method 'guess'")
