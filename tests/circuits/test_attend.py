"""explain_attention: the record over prompts, its key rules and errors, and its drawing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from cortexmap.circuits import AttentionExplanation, explain_attention
from cortexmap.errors import CortexmapError, TaskError
from cortexmap.heads import HeadId
from cortexmap.models import load_model
from cortexmap.models.hooks import eager_attention
from cortexmap.report.circuits import LOWERS, RAISES
from cortexmap.tasks.core import Pair
from tests.circuits.test_attention import SCALE, _measure, _reference
from tests.circuits.test_explain import in_html
from tests.circuits.tiny_circuits import circuit_handle, task_batch
from tests.sweep.tiny_run import make_model_dir

PROMPT = "when anna and bert went to the store bert gave a drink to"
SWAPPED = "when bert and anna went to the store anna gave a drink to"


@pytest.fixture(scope="module")
def handle():  # noqa: ANN201
    return circuit_handle("llama_gqa", scale=SCALE)


@pytest.fixture(scope="module")
def two_lengths(handle) -> tuple[AttentionExplanation, list]:  # noqa: ANN001
    """Two batches of different token lengths whose pair indices interleave."""
    short, long = task_batch(3, 7, seed=1), task_batch(2, 9, seed=2)
    short.indices, long.indices = [0, 2, 4], [1, 3]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the per-test one-thread fixture
    try:
        return explain_attention(handle, [short, long], "L2H3", key=2, contrast=4, n_boot=200), [short, long]
    finally:
        torch.set_num_threads(before)


def test_effects_are_the_hand_computation_per_prompt_in_pair_order(handle, two_lengths) -> None:  # noqa: ANN001
    ex, batches = two_lengths
    assert list(ex.prompts["prompt"]) == [0, 1, 2, 3, 4]
    per = ex.per_prompt.pivot_table(index="prompt", columns=["side", "sender"], values="effect")
    head = HeadId(2, 3)
    for batch in batches:
        with torch.no_grad():
            reference = _reference(handle, batch, head, _measure(batch))[0]  # [n, 2U + 3]
        names = ["emb"] + [n for l in range(2) for n in [f"L{l}H{h}" for h in range(4)] + [f"M{l}"]]
        for i, sender in enumerate(names):
            np.testing.assert_allclose(per.loc[batch.indices, ("query", sender)], reference[:, i], atol=1e-5)
            np.testing.assert_allclose(per.loc[batch.indices, ("key", sender)], reference[:, len(names) + i], atol=1e-5)
        rows = ex.prompts.set_index("prompt").loc[batch.indices]
        np.testing.assert_allclose(rows["source"] - rows["clean"], reference[:, -1], atol=1e-5)
    assert np.abs(ex.senders["effect"]).max() > 0.02


def test_summary_rows_are_means_over_prompts_with_intervals(two_lengths) -> None:  # noqa: ANN001
    ex, _ = two_lengths
    means = ex.per_prompt.groupby(["side", "sender"])["effect"].mean()
    np.testing.assert_allclose(ex.senders["effect"], [means[(r.side, r.sender)] for r in ex.senders.itertuples()])
    assert (ex.senders["ci_low"] <= ex.senders["effect"] + 1e-12).all()
    assert (ex.senders["effect"] <= ex.senders["ci_high"] + 1e-12).all()
    assert list(np.abs(ex.senders["effect"])) == sorted(np.abs(ex.senders["effect"]), reverse=True)
    both = ex.totals.set_index("side").loc["both", "effect"]
    assert both == pytest.approx((ex.prompts["source"] - ex.prompts["clean"]).mean())
    np.testing.assert_allclose(ex.senders["share"], ex.senders["effect"] / both)
    assert set(ex.senders["receiver"]) == {"L2H3", "L2KV1"} and len(ex.senders) == 2 * 11
    assert ex.describe_metric() == "A(position 2) - A(position 4)"
    assert ex.clean_low <= ex.clean <= ex.clean_high and -1 <= ex.screen_spearman <= 1


def test_default_key_is_the_target_against_the_foil_where_the_prompts_hold_them(handle) -> None:  # noqa: ANN001
    batch = task_batch(4, 8, seed=3)
    batch.target_ids, batch.foil_ids = batch.input_ids[:, 1].clone(), batch.input_ids[:, 5].clone()
    ex = explain_attention(handle, [batch], "L2H0", n_boot=50)
    assert (ex.key, ex.contrast) == ("target token", "foil token")
    for row, ids in zip(ex.prompts.itertuples(), batch.input_ids):
        assert row.key == ",".join(map(str, (ids == ids[1]).nonzero().flatten().tolist()))
        assert row.contrast == ",".join(map(str, (ids == ids[5]).nonzero().flatten().tolist()))


def test_default_key_falls_back_to_the_most_attended_position_after_the_first(handle) -> None:  # noqa: ANN001
    batch = task_batch(4, 8, seed=3)
    batch.target_ids[:] = 0  # token 0 never occurs (random_ids draw from 1)
    ex = explain_attention(handle, [batch], "L1H1", ablation="mean", n_boot=50)
    assert ex.key.startswith("most attended") and ex.contrast is None
    with torch.no_grad(), eager_attention(handle.model):
        rows = handle.model(input_ids=batch.input_ids, output_attentions=True, use_cache=False).attentions[1][:, 1, -1]
    assert [int(k) for k in ex.prompts["key"]] == (rows[:, 1:].argmax(-1) + 1).tolist()
    np.testing.assert_allclose(ex.prompts["clean"], rows[:, 1:].max(-1).values, atol=1e-6)


@pytest.fixture(scope="module")
def word_handle(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return load_model(str(make_model_dir(tmp_path_factory.mktemp("attend"))))


def test_a_pair_swaps_its_answers_and_keys_on_their_tokens(word_handle) -> None:  # noqa: ANN001
    ex = explain_attention(word_handle, Pair(PROMPT, " anna", " bert"), "L2H1", n_boot=50)
    row = ex.prompts.iloc[0]
    assert (row.key, row.contrast, row.key_tokens, row.contrast_tokens) == ("1", "3,8", "'anna'", "'bert' 'bert'")
    same = explain_attention(word_handle, PROMPT, "L2H1", key="anna", contrast=" bert", corrupt=SWAPPED, n_boot=50)
    assert same.prompts.iloc[0].key == "1" and same.key == "token 'anna'"
    np.testing.assert_allclose(same.senders["effect"], ex.senders["effect"])  # the same numbers by either route


@pytest.mark.parametrize("kwargs,error,message", [
    ({"key": "carl"}, TaskError, "token 'carl' is not among the tokens"),
    ({"key": 20}, TaskError, "not at or before the query position"),
    ({"key": 1, "query": 0}, TaskError, "not at or before the query position"),
    ({"contrast": 3}, CortexmapError, "a contrast needs a key"),
    ({"metric": "score"}, CortexmapError, "unknown attention metric"),
    ({"ablation": "zero"}, CortexmapError, "unknown ablation"),
    ({"corrupt": None}, TaskError, "corrupt ablation needs a corrupt prompt"),
    ({"corrupt": "when bert and anna"}, TaskError, "needs the same length"),
    ({"ablation": "mean"}, CortexmapError, "at least two prompts of one token length"),
    ({"head": "L3H0"}, CortexmapError, "does not exist"),
])
def test_bad_input_says_what_to_do(word_handle, kwargs, error, message) -> None:  # noqa: ANN001
    args = {"corrupt": SWAPPED, **kwargs}
    head = args.pop("head", "L2H1")
    with pytest.raises(error, match=message):
        explain_attention(word_handle, PROMPT, head, **args)


def test_mean_ablation_leaves_out_prompts_alone_in_their_length(handle) -> None:  # noqa: ANN001
    pair, alone = task_batch(2, 7, seed=4), task_batch(1, 8, seed=5)
    alone.indices = [2]
    ex = explain_attention(handle, [pair, alone], "L2H0", key=3, ablation="mean", n_boot=50)
    assert ex.arguments["n_dropped"] == 1 and list(ex.prompts["prompt"]) == [0, 1]


def _lines(fig: go.Figure) -> dict[str, go.Scatter]:
    return {t.name: t for t in fig.data if t.mode == "lines"}


def test_figure_draws_the_strongest_senders_with_their_numbers(two_lengths, tmp_path: Path) -> None:  # noqa: ANN001
    ex, _ = two_lengths
    fig = ex.figure(top=8)
    lines = _lines(fig)
    shown = ex.senders.head(8)
    assert len(lines) == 8
    drawn = [lines[f"{r.sender} → {r.receiver}.{r.kind}"] for r in shown.itertuples()]
    widths = np.array([t.line.width for t in drawn])
    assert (np.diff(widths) <= 1e-12).all()  # rows come strongest first
    assert [t.line.color for t in drawn] == [LOWERS if e < 0 else RAISES for e in shown["effect"]]
    page = ex.save(tmp_path / "attention.html").read_text(encoding="utf-8")
    for r in shown.itertuples():
        hover = f"{r.sender} → {r.receiver} ({r.side} side of L2H3)"
        assert in_html(hover, page) and f"effect {r.effect:+.4f} [95% CI {r.ci_low:+.4f}, {r.ci_high:+.4f}]" in page
        assert f"eap {r.eap:+.4f} (screen)" in page
    assert "edges into L2H3: query side, into L2KV1: key side" in fig.layout.title.text
