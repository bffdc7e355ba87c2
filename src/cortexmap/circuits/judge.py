"""A traced task's curves judged per split: rankings' CPR / CMD, paired differences, and the circuit (no torch).

:func:`judge_curves` takes the curve table of :func:`~cortexmap.circuits.run.trace_circuit` (one
block of rows per ``split``: ``"heldout"``, the prompts the edges were not chosen on, and
``"discovery"``, the prompts that screened and verified them) and gives, per split:

* the **summary** (:func:`~cortexmap.circuits.faithfulness.ranking_summary`): per ranking CPR and
  CMD in the protocol's orders, the smallest circuit reaching the target in edges with its
  bootstrap bounds, the random baseline as the mean of its draws with their spread;
* the **differences** between every two rankings with paired bootstrap intervals over the
  split's prompts (:func:`~cortexmap.circuits.faithfulness.paired_differences`);
* the per-curve statistics of :func:`~cortexmap.circuits.faithfulness.summarize_curves`.

"The circuit" (:func:`pick_circuit`) is the smallest circuit reaching the target over the
rankings (random excluded) on the judged split, held-out when there is one, the earlier ranking
of ``rankings`` on a tie.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cortexmap.circuits.faithfulness import curve_table, paired_differences, ranking_summary, summarize_curves

SPLITS: tuple[str, ...] = ("heldout", "discovery")


def with_full_point(curves: pd.DataFrame, fractions: Sequence[float], n_edges: int) -> pd.DataFrame:
    """Add the 100% circuit of every curve: the full model's metric (keeping every edge is the clean model)."""
    if fractions[-1] != 1.0:
        return curves
    extra = []
    for split, rows in curves.groupby("split", sort=False):
        full = rows[rows["method"] == "full"]
        for (method, order, draw), _ in rows[~rows["method"].isin(["full", "empty"])].groupby(["method", "order", "draw"]):
            extra.append(full.assign(method=method, order=order, draw=draw, fraction=1.0, n_edges=n_edges))
    return pd.concat([curves, *extra], ignore_index=True)


def faithfulness_column(curves: pd.DataFrame) -> pd.DataFrame:
    """The curve table with each circuit's ``faithfulness`` (full 1, empty 0) on its split's prompts."""
    parts = []
    for split, rows in curves.groupby("split", sort=False):
        table = curve_table(rows).drop(columns="n_edges")
        part = rows.merge(table, on=["method", "order", "draw", "fraction"], how="left")
        part.loc[part["method"] == "full", "faithfulness"] = 1.0
        part.loc[part["method"] == "empty", "faithfulness"] = 0.0
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _edge_bounds(summary: pd.DataFrame, n_edges: int) -> pd.DataFrame:
    out = summary.copy()
    for column, name in (("smallest", "smallest_n_edges"), ("smallest_low", "smallest_n_edges_low"),
                         ("smallest_high", "smallest_n_edges_high")):
        values = out[column].to_numpy(float)
        finite = np.isfinite(values)
        sizes = np.full(len(values), -1, dtype=np.int64)
        sizes[finite] = np.floor(values[finite] * n_edges + 1e-9).astype(np.int64)
        out[name] = sizes
    return out


def judge_curves(curves: pd.DataFrame, rankings: Sequence[str], *, n_edges: int, cpr_order: str, cmd_order: str,
                 target: float = 0.8, seed: int = 0, n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                    pd.DataFrame]:
    """Summary, paired differences and per-curve statistics of every split of a curve table.

    Args:
        curves: curve rows with ``split``, ``method``, ``order``, ``draw`` (no faithfulness column).
        rankings: the ranking names in the order rows are listed (random comes last).
        n_edges: edges of the graph the fractions refer to.
        cpr_order, cmd_order: the protocol's orders (:class:`~cortexmap.circuits.protocol.Protocol`).
        target: faithfulness the smallest circuit must reach.
        seed: seed of the bootstrap (one set of resamples per split, shared by all rankings).
        n_boot: bootstrap resamples.

    Returns:
        ``(summary, differences, curve_stats)``, each with a ``split`` column, held-out first.
    """
    summaries, differences, stats = [], [], []
    for split in sorted(curves["split"].unique(), key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
        rows = curves[curves["split"] == split].drop(columns="split")
        options = dict(cpr_order=cpr_order, cmd_order=cmd_order, seed=seed, n_boot=n_boot, names=rankings)
        summaries.append(_edge_bounds(ranking_summary(rows, target=target, **options), n_edges).assign(split=split))
        differences.append(paired_differences(rows, **options).assign(split=split))
        stats.append(summarize_curves(rows, target=target, seed=seed, n_boot=n_boot).assign(split=split))
    first = lambda frames: pd.concat(frames, ignore_index=True).pipe(lambda f: f[["split", *f.columns[:-1]]])
    return first(summaries), first(differences), first(stats)


def pick_circuit(summary: pd.DataFrame) -> tuple[str | None, int, str | None]:
    """The ranking, size (edges) and split of the smallest circuit reaching the target (None, 0, None: none does).

    Judged on the held-out split when the summary has one, else on the discovery split; ties go
    to the ranking listed first.
    """
    split = next((s for s in SPLITS if (summary["split"] == s).any()), None)
    rows = summary[(summary["split"] == split) & (summary["method"] != "random") & (summary["smallest_n_edges"] >= 0)]
    if rows.empty:
        return None, 0, split
    row = rows.sort_values("smallest_n_edges", kind="stable").iloc[0]
    return str(row["method"]), int(row["smallest_n_edges"]), split
