"""The flip test's patched margins against hand-written hooks on tiny random models, and its bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cortexmap.heads import HeadId
from cortexmap.models import wrap_model
from cortexmap.sweep.compute import clean_metrics, prepare
from cortexmap.sweep.flips import FLIP_ROWS, layer_controls, measure_flips, patched_margins
from cortexmap.tasks.core import Pair, Task, encode_task
from tests.tiny import char_tokenizer, tiny_model

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letter_task(n: int = 40, seed: int = 0) -> Task:
    """Random letter prompts of two templates (variants) and two lengths; each pair's answers are two letters."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        length = 5 + (i % 3 == 0)
        prompt = "".join(rng.choice(list(LETTERS[:20]), size=length))
        target, foil = rng.choice(list(LETTERS[20:]), size=2, replace=False)
        pairs.append(Pair(prompt=prompt, target=str(target), foil=str(foil), variant=i % 2))
    return Task(name="letters", level="custom", description="random letters", pairs=pairs)


@pytest.fixture(params=["llama", "gpt2", "llama_gqa"])
def handle(request):  # noqa: ANN001, ANN201
    return wrap_model(tiny_model(request.param), char_tokenizer(), spec=f"tiny-{request.param}")


def hand_patched(handle, base: list[int], source: list[int], target: int, foil: int, head: HeadId) -> float:  # noqa: ANN001
    """The patched margin with plain torch hooks: record the out-projection input on the source, splice one head's slice."""
    proj, d = handle.out_proj(head.layer), handle.d_head
    cols = slice(head.head * d, (head.head + 1) * d)
    seen = {}

    def record(module, args):  # noqa: ANN001, ANN202
        seen["x"] = args[0].detach().clone()

    def splice(module, args):  # noqa: ANN001, ANN202
        x = args[0].clone()
        x[..., cols] = seen["x"][..., cols]
        return (x, *args[1:])

    with torch.no_grad():
        hook = proj.register_forward_pre_hook(record)
        try:
            handle.model(input_ids=torch.tensor([source]), use_cache=False)
        finally:
            hook.remove()
        hook = proj.register_forward_pre_hook(splice)
        try:
            logits = handle.model(input_ids=torch.tensor([base]), use_cache=False).logits[0, -1].float()
        finally:
            hook.remove()
    return float(logits[target] - logits[foil])


def test_patched_margins_equal_hand_written_hooks_and_controls_share_the_layer(handle):  # noqa: ANN001
    task = letter_task()
    tok = handle.tokenizer
    rows = measure_flips(handle, task, ["L1H2", (2, 0)], max_sources=3, seed=1)
    assert list(rows.columns) == FLIP_ROWS
    done = rows.dropna(subset=["patched"])
    assert len(done) >= 10 and set(done["role"]) == {"candidate", "control"}
    ids = {i: tok(p.prompt)["input_ids"] for i, p in enumerate(task.pairs)}
    for r in done.itertuples():
        pair = task.pairs[r.wrong]
        expect = hand_patched(handle, ids[r.wrong], ids[r.source], tok(pair.target)["input_ids"][0],
                              tok(pair.foil)["input_ids"][0], HeadId(r.layer, r.head))
        assert abs(r.patched - expect) < 1e-4, (r, expect)
        # the source is a right prompt of the wrong prompt's template and length
        source = task.pairs[r.source]
        assert source.variant == pair.variant and len(ids[r.source]) == len(ids[r.wrong])
        assert r.clean <= 0
    controls = rows[rows["role"] == "control"]
    for of, group in controls.groupby("control_of"):
        candidate = HeadId.parse(of)
        assert (group["layer"] == candidate.layer).all() and (group["head_id"] != of).all()
        assert not group["head_id"].isin(["L1H2", "L2H0"]).any()
    assert (done.groupby(["head_id", "wrong"])["source"].nunique() <= 3).all()


def test_patching_a_prompt_into_itself_changes_nothing(handle):  # noqa: ANN001
    task = letter_task()
    batch = encode_task(task, handle.tokenizer)[0]
    (prepared,) = prepare(handle, [batch], need_corrupt=False)
    clean = prepared.metric(prepared.cache.logits).numpy()
    heads = [(0, 1), (1, 3), (2, 2)]
    same = patched_margins(handle, batch.input_ids, batch.input_ids, batch.target_ids, batch.foil_ids, heads)
    np.testing.assert_allclose(same, np.repeat(clean[:, None], len(heads), axis=1), atol=1e-5)
    other = patched_margins(handle, batch.input_ids, batch.input_ids.flip(0), batch.target_ids, batch.foil_ids, heads)
    assert np.abs(other - same).max() > 1e-4  # another prompt's output does move the margin


def test_wrong_prompts_without_an_aligned_right_prompt_are_counted_not_lost():
    handle = wrap_model(tiny_model("llama"), char_tokenizer(), spec="tiny-llama")
    task = letter_task()
    rows = measure_flips(handle, task, ["L0H0"], max_sources=2, seed=0)
    batches = encode_task(task, handle.tokenizer)
    clean = clean_metrics(prepare(handle, batches, need_corrupt=False))
    wrong = set(np.flatnonzero(clean <= 0))
    mine = rows[rows["role"] == "candidate"]
    assert set(mine["wrong"]) == wrong  # every wrong prompt appears, measured or not
    lost = mine[mine["patched"].isna()]
    assert (lost["source"] == -1).all() and (lost["aligned"] == 0).all()
    assert (mine.loc[mine["patched"].notna(), "aligned"] > 0).all()
    # a second run draws the same sources and controls
    again = measure_flips(handle, task, ["L0H0"], max_sources=2, seed=0)
    assert again.equals(rows)


def test_layer_controls_avoid_candidates_when_the_layer_allows():
    rng = np.random.default_rng(0)
    heads = [HeadId(1, 0), HeadId(1, 1), HeadId(3, 2)]
    controls = layer_controls(heads, n_heads=4, n_controls=2, rng=rng)
    for h, cs in controls.items():
        assert len(cs) == 2 and all(c.layer == h.layer and c != h for c in cs)
        assert not set(cs) & set(heads)
    crowded = layer_controls([HeadId(0, 0), HeadId(0, 1)], n_heads=2, n_controls=1, rng=rng)
    assert crowded == {HeadId(0, 0): [HeadId(0, 1)], HeadId(0, 1): [HeadId(0, 0)]}
