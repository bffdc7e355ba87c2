"""The run directory: one place names its files, writes are atomic, and it loads as a Hugging Face dataset."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cortexmap import atomic
from cortexmap.errors import ResultsError
from cortexmap.results import layout, load_results, write_card

RUN_SMALL = Path(__file__).parents[1] / "data" / "run_small"
SRC = Path(__file__).parents[2] / "src" / "cortexmap"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    shutil.copytree(RUN_SMALL, tmp_path / "run")
    return tmp_path / "run"


def test_every_run_file_name_is_spelled_only_in_the_layout() -> None:
    names = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v]
    assert {"effects.parquet", "manifest.json", "atlas.json", "report.html"} <= set(names)
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "results" / "layout.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if re.search(rf"[\"'/]{re.escape(n)}[\"']", text)]
    assert offenders == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    atomic.write_json({"a": 1}, target)

    def explode(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, explode)
    assert target.read_text() == '{\n  "a": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    atomic.write_with(tmp_path / "dir", lambda tmp: (tmp.mkdir(), (tmp / "x").write_text("1")))
    atomic.write_with(tmp_path / "dir", lambda tmp: (tmp.mkdir(), (tmp / "y").write_text("2")))  # replaces the directory
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["y"]


def test_the_run_loads_as_a_hugging_face_dataset_offline(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(run.parent / "hf-cache"))
    card = write_card(run, load_results(run).manifest)
    head = card.read_text().split("---")[1]
    assert "config_name: effects" in head and "config_name: atlas" not in head  # only tables present
    for name, file in (("effects", layout.EFFECTS), ("patterns", layout.PATTERNS)):
        loaded = datasets.load_dataset(str(run), name, split="train").to_pandas()
        expected = pd.read_parquet(run / file)
        assert len(loaded) == len(expected) and list(loaded.columns) == list(expected.columns)
        pd.testing.assert_series_equal(loaded["effect" if name == "effects" else expected.columns[-1]],
                                       expected["effect" if name == "effects" else expected.columns[-1]], check_dtype=False)


def test_results_display_in_a_notebook(run: Path) -> None:
    results = load_results(run)
    page = results._repr_html_()
    top = results.effects.reindex(results.effects["effect"].abs().sort_values(ascending=False).index).iloc[0]
    assert results.model in page and str(top["head_id"]) in page and "<table" in page
    assert results.atlas() is None and results.table(layout.INFLUENCE) is None


def test_loading_says_what_is_wrong(tmp_path: Path, run: Path) -> None:
    with pytest.raises(ResultsError, match="not a cortexmap run"):
        load_results(tmp_path)
    (run / layout.EFFECTS).unlink()
    with pytest.raises(ResultsError, match="--resume"):
        load_results(run)


def test_the_card_describes_every_table_a_run_can_hold(tmp_path: Path) -> None:
    for name, file in layout.TABLES.items():
        pd.DataFrame({"x": [1]}).to_parquet(tmp_path / file)
    text = write_card(tmp_path, {"model": {"spec": "m"}, "seed": 0}).read_text()
    for name, file in layout.TABLES.items():
        assert f"- `{name}` ({file}): " in text
