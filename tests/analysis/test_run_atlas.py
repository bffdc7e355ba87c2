"""One code path from a run to its findings, and screened-out heads read as "no effect", never as estimates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cortexmap.analysis import AtlasOptions, build_atlas
from cortexmap.analysis.selection import select_effects
from cortexmap.rules import IMPORTANT
from cortexmap.errors import ResultsError

from .conftest import N_HEADS, N_LAYERS

RUN_SMALL = Path(__file__).parents[1] / "data" / "run_small"


def test_build_atlas_on_a_loaded_run_equals_cortexmap_analyze(tmp_path):  # noqa: ANN001
    from cortexmap.analysis.run import analyze_run
    from cortexmap.results import load_results

    run = tmp_path / "run"
    shutil.copytree(RUN_SMALL, run)
    for name in ("atlas.parquet", "atlas.json"):
        (run / name).unlink(missing_ok=True)
    effects = pd.read_parquet(run / "effects.parquet")
    by_size = effects.reindex(effects["effect"].abs().sort_values(ascending=False).index)
    verified = by_size.assign(method="exact").groupby("task").head(20)
    pd.concat([effects.assign(method="screen"), verified]).to_parquet(run / "effects.parquet")  # a screen run
    (run / "prompt_effects.parquet").unlink()
    cli_atlas, cli = analyze_run(run, n_perm=200)
    library_atlas, library = build_atlas(load_results(run), options=AtlasOptions(n_perm=200))
    stored = json.loads((run / "atlas.json").read_text())
    assert stored["method"] == "exact" == library.method
    assert any("screened out" in note for note in library.notes)
    pd.testing.assert_frame_equal(library_atlas, cli_atlas)
    assert [f.text for f in library.findings()] == [f.text for f in cli.findings()]
    from cortexmap.analysis.run import load_atlas

    loaded = load_atlas(load_results(run))
    assert loaded is not None and [f.text for f in loaded[1].findings()] == [f.text for f in cli.findings()]


def test_screened_out_heads_have_no_effect_and_are_never_important(banded):  # noqa: ANN001
    effects, _ = banded
    zero = effects[effects["intervention"] == effects["intervention"].iloc[0]]
    screen = zero.assign(method="screen", effect_normalized=zero["effect_normalized"] * 5, effect=zero["effect"] * 5)
    top = zero.sort_values("effect").groupby("task").head(5)
    selected = select_effects(pd.concat([screen, top], ignore_index=True))
    assert selected.attrs["selection"]["method"] == "exact"
    assert len(selected) == len(zero)  # every head of every task, measured or screened out
    out = selected[selected["screened_out"]]
    assert len(out) == len(zero) - len(top) and (out["effect_normalized"] == 0).all() and out["ci_low"].isna().all()
    assert not IMPORTANT.mask(out["effect_normalized"].to_numpy(), out["se_normalized"].to_numpy()).any()
    kept = selected[~selected["screened_out"]].merge(top, on=["task", "layer", "head"], suffixes=("", "_top"))
    assert np.allclose(kept["effect"], kept["effect_top"])
    atlas, findings = build_atlas(pd.concat([screen, top], ignore_index=True), shape=(N_LAYERS, N_HEADS),
                                  options=AtlasOptions(n_boot=50, n_perm=100))
    significant = atlas[atlas["top_significant"]]
    measured = set(top["head_id"])
    assert set(significant["head_id"]) <= measured  # no finding rests on a screened-out head
    with pytest.raises(ResultsError, match="shape"):
        build_atlas(top)


def test_screened_out_rows_are_added_per_amplification_alpha(banded):  # noqa: ANN001
    effects, _ = banded
    zero = effects[effects["intervention"] == effects["intervention"].iloc[0]]
    amp = pd.concat([zero.assign(intervention="amplify", alpha=a) for a in (0.5, 1.0)], ignore_index=True)
    exact = amp[amp["alpha"] == 0.5].sort_values("effect").groupby("task").head(5).assign(method="exact")
    table = pd.concat([amp.assign(method="screen"), exact], ignore_index=True)
    for alpha, measured in ((0.5, len(exact)), (1.0, 0)):
        selected = select_effects(table, intervention="amplify", alpha=alpha)
        assert len(selected) == len(zero)  # every head of every task at this alpha
        assert (~selected["screened_out"]).sum() == measured
