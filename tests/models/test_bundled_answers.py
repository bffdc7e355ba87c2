"""Slow: ``cortexmap map --task-file`` on SmolLM2 with multi-token answers and corrupt prompts of other lengths.

Every line is mapped, and the exact per-prompt effects equal the independent computation of
tests/sweep/test_answers.py (one unpadded sequence per answer, the head's output-projection columns
edited in a copy of the weights, the mean or the aligned corrupt output added to the projection).
"""

from __future__ import annotations

import json

import pytest

from cortexmap.results import load_results
from cortexmap.tasks import load_task_file
from cortexmap.tasks.core import answer_ids, prompt_ids
from cortexmap.tasks.encoding import PairIds
from tests.cli.invoke import assert_ok, invoke
from tests.sweep.test_answers import reference, reference_mean

pytestmark = pytest.mark.slow

LANDMARKS = [("The Statue of Liberty", " New York"), ("The Golden Gate Bridge", " San Francisco"),
             ("The Hollywood sign", " Los Angeles"), ("The Eiffel Tower", " Paris"), ("Big Ben", " London"),
             ("The Colosseum", " Rome"), ("The Space Needle", " Seattle"), ("The Sagrada Familia", " Barcelona"),
             ("The Brandenburg Gate", " Berlin"), ("The Little Mermaid", " Copenhagen")]


def test_map_task_file_with_multi_token_answers_equals_the_independent_computation(smollm2, tmp_path):  # noqa: ANN001
    lines = []
    for (name, city), (other, foil) in zip(LANDMARKS, LANDMARKS[1:] + LANDMARKS[:1]):
        lines.append(json.dumps({"prompt": f"{name} is in the city of", "target": city, "foil": foil,
                                 "corrupt": f"{other} is in the city of", "level": "knowledge"}))
    path = tmp_path / "cities.jsonl"
    path.write_text("\n".join(lines) + "\n")
    tok = smollm2.tokenizer
    task = load_task_file(path, tok)
    items = [PairIds(i, prompt_ids(tok, p.prompt), [answer_ids(tok, p.target)], [answer_ids(tok, p.foil)],
                     prompt_ids(tok, p.corrupt)) for i, p in enumerate(task.pairs)]
    assert len(items) == len(LANDMARKS) and task.metric == "logprob_diff"
    assert any(len(it.targets[0]) > 1 for it in items) and any(len(it.prompt) != len(it.corrupt) for it in items)

    assert_ok(invoke("map", "--model", "smollm2-135m", "--task-file", path, "--out", tmp_path / "run", "--no-probes"))
    run = load_results(tmp_path / "run")
    assert run.manifest["tasks"]["cities"]["n_prompts"] == len(LANDMARKS)
    prompts = run.prompt_effects()
    exact = prompts[prompts["method"] == "exact"]
    clean = {it.index: reference(smollm2, it, "logprob_diff", "none", 0, 0) for it in items}
    for kind in ("patch", "mean"):
        rows = exact[exact["intervention"] == kind]
        counts = rows.groupby(["layer", "head"])["prompt"].nunique()
        assert len(counts) >= 32 and (counts == len(LANDMARKS)).all()  # every verified head on every line
        heads = list(counts.index[:: max(1, len(counts) // 4)][:4])
        for layer, head in heads:
            mean = reference_mean(smollm2, items, layer, head) if kind == "mean" else None
            for row in rows[(rows["layer"] == layer) & (rows["head"] == head)].itertuples():
                item = items[row.prompt]
                want = reference(smollm2, item, "logprob_diff", kind, layer, head, mean=mean, source=item.corrupt)
                assert row.clean == pytest.approx(clean[row.prompt], abs=1e-4)
                assert row.effect == pytest.approx(want - clean[row.prompt], abs=1e-4), (kind, layer, head, row.prompt)
